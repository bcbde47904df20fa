"""Inverted and rotated digits, on real MNIST test images and the shipped models."""
import shutil

import pytest
import torch

from igptlib import plots
from igptlib.datasets import load_split
from igptlib.judge import digit_classifier
from igptlib.robustness import ORIENTATIONS, TRANSFORMS, detect_inversion, handle, measure, rotation_nats, transform, turn_upright
from igptlib.shipped import load_model, shipped_path


@pytest.fixture(scope="module")
def test_images(mnist_root):
    images, labels = load_split("mnist", mnist_root, train=False)
    return images[:6], labels[:6]


def test_quarter_turns_and_inversion_undo_exactly_and_inversion_is_detected(test_images):
    images, _ = test_images
    for degrees in (90, 180, 270):
        assert torch.equal(transform(transform(images, False, degrees), False, -degrees), images)
    inverted = transform(images, True, 0)
    assert torch.equal(255 - inverted, images)
    assert detect_inversion(inverted).all() and not detect_inversion(images).any()


def test_the_handling_undoes_an_inversion_and_picks_an_orientation_the_model_finds_likelier(test_images):
    images, _ = test_images
    module = load_model("mnist")
    shown = transform(images, True, 180)
    handled, inverted, rotation = handle(module.model, module.palette, shown)
    assert handled.shape == images.shape and handled.dtype == torch.uint8
    assert inverted.all()
    assert set(rotation.tolist()) <= set(ORIENTATIONS)


def test_turn_upright_turns_as_asked_or_takes_the_quarter_turn_the_model_finds_most_likely(test_images):
    images, _ = test_images
    module = load_model("mnist")
    digit = images[0]
    turned, notes = turn_upright(module.model, module.palette, digit, 3)
    assert torch.equal(turned, torch.rot90(digit, 3, (-2, -1))) and notes == ["turned 90° clockwise, as asked"]
    # Quarter turns by rotate and by rot90 are the same pixels, so the model judges what it is given.
    for k in range(4):
        assert torch.equal(transform(digit[None], False, 90 * k)[0], torch.rot90(digit, k, (-2, -1)))
    shown = torch.rot90(digit, 1, (-2, -1))
    nats = rotation_nats(module.model, module.palette, shown, [0, 90, 180, 270])
    chosen, notes = turn_upright(module.model, module.palette, shown, None)
    assert torch.equal(chosen, torch.rot90(shown, int(nats.argmin()), (-2, -1)))
    assert "most likely that way" in notes[0] and f"{nats.min():.3f}" in notes[0]
    with pytest.raises(ValueError, match="quarter turns in 0..3"):
        turn_upright(module.model, module.palette, digit, 4)


def test_a_row_of_the_table_measures_completion_and_classification(mnist_root, test_images):
    images, labels = test_images
    generator, classifier = load_model("mnist"), load_model("mnist-classifier")
    judge, _ = digit_classifier(mnist_root)
    off = measure(generator, classifier, judge, images, labels, "inverted", handling=False, samples=1)
    on = measure(generator, classifier, judge, images, labels, "inverted", handling=True, samples=1)
    assert set(TRANSFORMS) >= {off["transform"]} and off["images"] == 6 and "inversion_detected_right" not in off
    assert on["inversion_detected_right"] == 1.0  # MNIST's black border turns white: the rule cannot miss it
    # Its wrong turns are counted per true digit, and are exactly the images it did not turn right.
    wrong = on["turned_wrongly_by_digit"]
    assert len(wrong) == 10 and sum(wrong) == round((1 - on["rotation_chosen_right"]) * len(images))
    assert all(count <= int((labels == digit).sum()) for digit, count in enumerate(wrong))
    for row in (off, on):
        assert all(0 <= row[key] <= 1 for key in ("class_agreement", "pixel_agreement", "classification_accuracy"))
    # Undoing a detected inversion gives the classifier back the digits it was trained on.
    assert on["classification_accuracy"] >= off["classification_accuracy"]
    with pytest.raises(ValueError, match="known transforms are"):
        measure(generator, classifier, judge, images, labels, "mirrored", handling=False)


def test_igpt_robustness_writes_every_transform_with_the_handling_off_and_on(mnist_root, tmp_path, capsys):
    import json

    from igptlib.cli import main
    from igptlib.markdown import code
    from igptlib.results import replaced_since, robustness_table, robustness_tables, side_by_side, wrong_turns_table

    out = tmp_path / "robustness-mnist" / "robustness.json"
    command = ["robustness", "--images", "2", "--samples", "1", "--root", str(mnist_root), "--out", str(out)]
    # A budget stops it after a row, kept in the record; the report waits for the whole table.
    assert main([*command, "--budget-minutes", "0"]) == 0
    partial = json.loads(out.read_text())
    assert len(partial["rows"]) == 1 and not partial["complete"] and "the same command measures the rest" in capsys.readouterr().out
    assert robustness_tables(tmp_path) == []
    # The same command goes on from there, keeping the row measured; other settings never touch the record.
    assert main(command) == 0
    printed = capsys.readouterr().out
    table = json.loads(out.read_text())
    assert table["complete"] and table["rows"][0] == partial["rows"][0]
    assert main([*command[:-2], "--samples", "2", "--out", str(out)]) == 2
    assert "holds a table of other settings" in capsys.readouterr().err and json.loads(out.read_text()) == table
    # Nor does a classifier of the same name with other weights (a shipped model replaced by a better one).
    impostor = tmp_path / "elsewhere" / "mnist-classifier.safetensors"
    impostor.parent.mkdir()
    shutil.copyfile(shipped_path("fashion-mnist-classifier"), impostor)  # fine-tuned, other weights
    assert main([*command, "--classifier", str(impostor)]) == 2
    assert "holds a table of other settings" in capsys.readouterr().err and json.loads(out.read_text()) == table
    assert [(row["transform"], row["handling"]) for row in table["rows"]] == [
        (name, handling) for name in TRANSFORMS for handling in (False, True)]
    assert table["judge"]["test_accuracy"] > 0.9 and table["command"].startswith("igpt robustness")
    assert "turned 90° handling on" in printed and f"table: {out}" in printed
    assert main(["robustness", "--model", "no-such-model", "--out", str(out)]) == 2

    # The report's table is read from the record the command wrote.
    assert robustness_tables(tmp_path) == [table]
    lines = robustness_table(table).splitlines()
    assert sum(line.startswith("| turned 90° |") for line in lines) == 2  # off and on
    wrong_turns = wrong_turns_table(table).splitlines()
    assert wrong_turns[0] == "| transform | 0 | 1 | 2 | 3 | 4 | 5 | 6 | 7 | 8 | 9 | all |"
    counted = next(line for line in wrong_turns if line.startswith("| turned 90° |")).strip("| ").split(" | ")
    on_90 = next(row for row in table["rows"] if row["transform"] == "turned 90°" and row["handling"])
    assert [int(n) for n in counted[1:]] == [*on_90["turned_wrongly_by_digit"], sum(on_90["turned_wrongly_by_digit"])]
    assert side_by_side([table]) == []  # one model: nothing to set beside it
    # Once a better classifier is shipped under the same name, the table says it measured the earlier one.
    shipped = {"mnist": table["model_weights"], "mnist-classifier": table["classifier_weights"]}
    assert replaced_since(table, shipped) == []
    assert replaced_since(table, {**shipped, "mnist-classifier": "f" * 64}) == [
        f"Measured with an earlier <code>mnist-classifier</code> (weights {table['classifier_weights'][:12]}), not the "
        f"one shipped now (ffffffffffff): move this record away and run {code(table['command'])} to measure "
        "the shipped one."]

    # A twin measured on the same images is set beside it, column by column; one measured on other
    # images is not.
    twin = dict(table, model="twin", classifier="twin-finetune")
    twin["rows"] = [dict(row, class_agreement=1 - row["class_agreement"]) for row in table["rows"]]
    other = dict(table, model="other", rows=[dict(row, images=3) for row in table["rows"]])
    for record in (twin, other):
        folder = tmp_path / f"robustness-{record['model']}"
        folder.mkdir()
        (folder / "robustness.json").write_text(json.dumps(record))
    groups = side_by_side(robustness_tables(tmp_path))
    assert [[t["model"] for t in group["tables"]] for group in groups] == [["mnist", "twin"]]
    side = groups[0]["table"].splitlines()
    turned = next(line for line in side if line.startswith("| turned 90° | on |")).strip("|").split("|")
    measured = next(row for row in table["rows"] if (row["transform"], row["handling"]) == ("turned 90°", True))
    assert [cell.strip() for cell in turned[2:]] == [
        f"{measured['class_agreement']:.3f}", f"{measured['classification_accuracy']:.3f}",
        f"{1 - measured['class_agreement']:.3f}", f"{measured['classification_accuracy']:.3f}"]
    # and drawn (notebook 11): a line per model in each of the four panels.
    figure = plots.robustness_plot({t["model"]: t["rows"] for t in groups[0]["tables"]})
    assert len(figure.axes) == 4 and all(len(ax.lines) == 2 for ax in figure.axes)
