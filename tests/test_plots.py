"""Figures: each plot draws from real inputs and saves a PNG; bad input gets a clear error."""
import json

import matplotlib.pyplot as plt
import numpy as np
import pytest
from PIL import Image

from igptlib.datasets import load_split
from igptlib.judge import classify_images, digit_classifier
from igptlib.metrics import classification_metrics
from igptlib.plots import (
    actual_vs_predicted,
    comparison_curves,
    completion_figure,
    confusion_matrix_plot,
    image_grid,
    predictions_figure,
    loss_curves,
    metrics_files,
    probe_accuracy_plot,
    read_metrics_csv,
    save_figure,
)

# Lightning's CSVLogger layout: one row per logging call, only the columns logged then filled in.
# Training metrics every few steps, validation metrics once per validation.
LIGHTNING_CSV = """epoch,step,train/bits_per_pixel,train/loss,train/lr,train/nats_per_pixel,val/bits_per_pixel,val/loss,val/nats_per_pixel
0,0,,,0.0001,,,,
0,9,3.5,2.43,0.001,2.43,,,
0,19,2.9,2.01,0.001,2.01,,,
0,19,,,,,2.8,1.94,1.94
0,29,2.4,1.66,0.0009,1.66,,,
0,39,2.1,1.46,0.0008,1.46,,,
0,39,,,,,2.0,1.39,1.39
"""


def write_run(folder, csv_text: str, version: int = 0):
    path = folder / "logs" / "csv" / f"version_{version}" / "metrics.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(csv_text)
    return path


def assert_png(path, min_side: int = 100):
    assert path.exists() and path.suffix == ".png"
    with Image.open(path) as image:
        assert image.format == "PNG" and min(image.size) >= min_side


@pytest.fixture(scope="module")
def test_digits(mnist_root):
    images, labels = load_split("mnist", mnist_root, train=False)
    return images[:1000], labels[:1000]


def test_save_figure_can_close_what_it_saved(tmp_path):
    fig = plt.figure()
    path = save_figure(fig, "empty", tmp_path, close=True)
    assert path == tmp_path / "empty.png" and path.exists()
    assert not plt.fignum_exists(fig.number)


def test_image_grid_of_real_digits(test_digits, tmp_path):
    images, labels = test_digits
    fig = image_grid(images[:20], ncols=10, row_labels=["a", "b"], title="digits")
    assert_png(save_figure(fig, "grid", tmp_path, close=True))


def test_completion_figure_has_input_samples_and_original(test_digits, tmp_path):
    images, _ = test_digits
    originals = images[:3]
    samples = originals[:, None].repeat(1, 4, 1, 1, 1)
    samples[:, 1:, :, 14:] = 255 - samples[:, 1:, :, 14:]  # three "samples" that differ from the original below
    fig = completion_figure(originals, samples, keep_rows=14, title="half-image completion")
    titles = [ax.get_title() for ax in fig.axes[:6]]
    assert titles == ["input", "sample 1", "sample 2", "sample 3", "sample 4", "original"]
    assert len(fig.axes) == 3 * 6
    # The cut input: kept rows untouched, the rest mid grey.
    shown = fig.axes[0].images[0].get_array()
    np.testing.assert_array_equal(shown[:14], originals[0, 0, :14].numpy())
    assert (np.asarray(shown[14:]) == 128).all()
    assert_png(save_figure(fig, "completions", tmp_path, close=True))


def test_completion_figure_rejects_mismatched_shapes(test_digits):
    images, _ = test_digits
    with pytest.raises(ValueError, match="same images"):
        completion_figure(images[:3], images[:2, None], keep_rows=14)
    with pytest.raises(ValueError, match=r"keep_rows must lie in 0\.\.28"):
        completion_figure(images[:2], images[:2, None], keep_rows=29)


def test_read_metrics_csv_keeps_each_columns_own_steps(tmp_path):
    path = write_run(tmp_path, LIGHTNING_CSV)
    columns = read_metrics_csv(path)
    assert columns["train/loss"] == ([9, 19, 29, 39], [2.43, 2.01, 1.66, 1.46])
    assert columns["val/nats_per_pixel"] == ([19, 39], [1.94, 1.39])
    assert columns["train/lr"][0] == [0, 9, 19, 29, 39]
    assert "epoch" not in columns and "step" not in columns


def test_a_resumed_run_reads_its_versions_in_order(tmp_path):
    write_run(tmp_path, LIGHTNING_CSV, version=0)
    write_run(tmp_path, "epoch,step,train/loss,val/loss\n0,49,1.3,\n0,59,,1.2\n", version=1)
    write_run(tmp_path, "epoch,step,train/loss\n0,69,1.1\n", version=10)  # version 10 after 1, not before
    assert [p.parent.name for p in metrics_files(tmp_path)] == ["version_0", "version_1", "version_10"]
    columns = read_metrics_csv(tmp_path)
    assert columns["train/loss"][0] == [9, 19, 29, 39, 49, 69]
    assert columns["val/loss"] == ([19, 39, 59], [1.94, 1.39, 1.2])


def test_metrics_errors_name_what_is_there(tmp_path):
    with pytest.raises(FileNotFoundError, match="no metrics.csv"):
        read_metrics_csv(tmp_path)
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="'step' column"):
        read_metrics_csv(bad)
    path = write_run(tmp_path, LIGHTNING_CSV)
    with pytest.raises(ValueError, match=r"no values of 'val/acc'; logged metrics are \[.*'val/loss'"):
        loss_curves(path, metrics=["val/acc"])


def test_loss_curves_from_lightning_csv(tmp_path):
    write_run(tmp_path, LIGHTNING_CSV)
    fig = loss_curves(tmp_path, title="xs run")
    labels = [line.get_label() for line in fig.axes[0].get_lines()]
    assert labels == ["train/loss", "val/loss"]  # by default: the loss columns
    assert_png(save_figure(fig, "loss", tmp_path, close=True))
    fig = loss_curves(tmp_path, metrics=["train/bits_per_pixel", "val/bits_per_pixel"])
    assert_png(save_figure(fig, "bits", tmp_path, close=True))


def test_small_medium_large_comparison(tmp_path):
    runs = {}
    for size, scale in (("iGPT-S", 1.0), ("iGPT-M", 0.9), ("iGPT-L", 0.8)):
        rows = ["epoch,step,train/loss,val/loss"] + [f"0,{step},{scale * 3 / (1 + step / 50):.4f}," for step in range(0, 200, 10)]
        rows += [f"0,{step},,{scale * 3.1 / (1 + step / 50):.4f}" for step in (50, 100, 150)]
        runs[size] = write_run(tmp_path / size, "\n".join(rows) + "\n")
    fig = comparison_curves(runs, "val/loss", title="Image completion loss")
    assert [line.get_label() for line in fig.axes[0].get_lines()] == ["iGPT-S", "iGPT-M", "iGPT-L"]
    assert_png(save_figure(fig, "compare", tmp_path, close=True))
    with pytest.raises(ValueError, match="no runs"):
        comparison_curves({}, "val/loss")


def test_confusion_matrix_and_actual_vs_predicted_from_a_real_classifier(mnist_root, test_digits, tmp_path):
    images, labels = test_digits
    classifier, _ = digit_classifier(mnist_root)
    metrics = classification_metrics(labels.numpy(), classify_images(classifier, images).numpy())
    matrix = metrics["confusion_matrix"]
    fig = confusion_matrix_plot(matrix)
    assert len(fig.axes[0].texts) == 100  # every cell's count written in it
    assert_png(save_figure(fig, "confusion", tmp_path, close=True))
    fig = actual_vs_predicted(matrix)
    bubbles = fig.axes[0].collections[0]
    assert len(bubbles.get_offsets()) == np.count_nonzero(matrix)  # one bubble per (actual, predicted) pair seen
    assert f"{np.trace(matrix)} of 1000 on the diagonal" in fig.axes[0].get_title()
    assert_png(save_figure(fig, "actual_vs_predicted", tmp_path, close=True))


def test_predictions_figure_titles_each_image_with_its_prediction_and_marks_mistakes(mnist_root, test_digits, tmp_path):
    images, labels = test_digits
    classifier, _ = digit_classifier(mnist_root)
    predicted = classify_images(classifier, images[:24]).numpy()
    predicted[0] = (labels[0].item() + 1) % 10  # one mistake for certain
    fig = predictions_figure(images[:24], labels[:24].numpy(), predicted)
    titles = [ax.title for ax in fig.axes[:24]]
    assert titles[0].get_text() == f"{predicted[0]} (is {labels[0].item()})" and titles[0].get_color() == "tab:red"
    right = [i for i in range(24) if predicted[i] == labels[i]]
    assert right and all(titles[i].get_text() == str(predicted[i]) and titles[i].get_color() == "black" for i in right)
    assert_png(save_figure(fig, "predictions", tmp_path, close=True))
    with pytest.raises(ValueError, match="expected one each"):
        predictions_figure(images[:3], labels[:2].numpy(), predicted[:3])


def test_matrix_plots_reject_bad_input():
    with pytest.raises(ValueError, match="square confusion matrix"):
        confusion_matrix_plot([[1, 2, 3], [4, 5, 6]])
    with pytest.raises(ValueError, match="3 class names for a 2-class matrix"):
        actual_vs_predicted([[1, 0], [0, 1]], class_names=["a", "b", "c"])


def test_probe_plot_reads_results_back_from_json(tmp_path):
    probes = {"val_accuracy": {0: 0.5, 1: 0.7, 2: 0.6}, "test_accuracy": {0: 0.52, 1: 0.69, 2: 0.61}, "best_layer": 1}
    fig = probe_accuracy_plot(json.loads(json.dumps(probes)))  # JSON turns the layer keys into strings
    xs, ys = fig.axes[0].get_lines()[1].get_data()
    assert list(xs) == [0, 1, 2] and list(ys) == [0.52, 0.69, 0.61]
    assert_png(save_figure(fig, "probes", tmp_path, close=True))
    with pytest.raises(ValueError, match="val_accuracy"):
        probe_accuracy_plot({"test_accuracy": {}})


def test_a_completion_figure_draws_at_most_16_images(test_digits, tmp_path):
    images, _ = test_digits
    originals = images[:20]
    fig = completion_figure(originals, originals[:, None].repeat(1, 2, 1, 1, 1), keep_rows=14)
    assert len(fig.axes) == 16 * 4  # 16 rows of input, 2 samples, original: the other 4 images are measured, not drawn
    fig = completion_figure(originals, originals[:, None], keep_rows=14, max_rows=3)
    assert len(fig.axes) == 3 * 3
    plt.close("all")


def test_saved_figures_are_the_same_bytes_every_time_and_carry_no_software_stamp(tmp_path):
    write_run(tmp_path, LIGHTNING_CSV)
    first = save_figure(loss_curves(tmp_path), "first", tmp_path, close=True).read_bytes()
    second = save_figure(loss_curves(tmp_path), "second", tmp_path, close=True).read_bytes()
    assert first == second
    with Image.open(tmp_path / "first.png") as image:
        assert "Software" not in image.info


def test_overlapping_curves_are_drawn_so_each_shows(tmp_path):
    # train/loss and train/nats_per_pixel are the same numbers in pre-training: one must not hide the other.
    write_run(tmp_path, LIGHTNING_CSV)
    lines = loss_curves(tmp_path, metrics=["train/loss", "train/nats_per_pixel"]).axes[0].get_lines()
    assert lines[0].get_ydata().tolist() == lines[1].get_ydata().tolist()
    assert lines[0].get_linestyle() != lines[1].get_linestyle() and lines[0].get_marker() != lines[1].get_marker()
    assert all(line.get_alpha() < 1 for line in lines)
    runs = {"a": write_run(tmp_path / "a", LIGHTNING_CSV), "b": write_run(tmp_path / "b", LIGHTNING_CSV)}
    lines = comparison_curves(runs, "val/loss").axes[0].get_lines()
    assert lines[0].get_linestyle() != lines[1].get_linestyle()
    plt.close("all")
