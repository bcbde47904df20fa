"""The `igpt` command on real data: what it prints, what it writes, how it fails."""
import numpy as np
import pytest

from igptlib.cli import main
from igptlib.quantize import load_palette


def test_igpt_data_reports_source_counts_and_split(mnist_root, capsys):
    assert main(["data", "--dataset", "mnist", "--root", str(mnist_root)]) == 0
    out = capsys.readouterr().out
    assert "from files under the data root" in out
    assert "train: 60000 images (1, 28, 28)" in out and "test: 10000 images" in out
    assert "54000 train, 6000 validation" in out


def test_igpt_centroids_writes_a_palette_then_reuses_it(mnist_root, tmp_path, capsys):
    out = tmp_path / "mnist16.npy"
    args = ["centroids", "--dataset", "mnist", "--root", str(mnist_root), "--clusters", "16", "--out", str(out)]
    assert main(args + ["--figure", str(tmp_path / "palette.png")]) == 0
    palette = load_palette(out, clusters=16, channels=1)
    assert (tmp_path / "palette.png").stat().st_size > 0
    assert main(args) == 0
    assert "exists; loading it" in capsys.readouterr().out
    np.testing.assert_array_equal(load_palette(out), palette)


def test_igpt_augment_writes_the_set_and_a_grid(mnist_root, tmp_path):
    # The whole training split (54,000 images) is written; a few seconds on 2 cores.
    args = ["augment", "--root", str(mnist_root), "--out", str(tmp_path / "aug.npz"), "--grid", str(tmp_path / "grid.png")]
    assert main(args) == 0
    assert np.load(tmp_path / "aug.npz")["images"].shape == (54000, 1, 28, 28)
    assert (tmp_path / "grid.png").stat().st_size > 0


def test_errors_are_clear_and_exit_2(tmp_path, capsys):
    assert main(["centroids", "--root", str(tmp_path)]) == 2
    assert "no mnist files under" in capsys.readouterr().err
    bad = tmp_path / "palette.npy"
    bad.write_text("not an array")
    assert main(["centroids", "--root", str(tmp_path), "--out", str(bad)]) == 2
    assert "not a .npy array" in capsys.readouterr().err
    with pytest.raises(SystemExit) as caught:
        main(["data", "--dataset", "mnsit"])
    assert caught.value.code == 2
    assert "invalid choice: 'mnsit'" in capsys.readouterr().err


def test_igpt_complete_draws_the_completion_figure(mnist_root, tiny_checkpoint, tmp_path, capsys):
    from PIL import Image

    from igptlib.data import load_split

    digit = load_split("mnist", mnist_root, train=False)[0][0, 0].numpy()
    Image.fromarray(255 - np.kron(digit, np.ones((2, 2), np.uint8))).save(tmp_path / "paper.jpg")  # dark on white
    out = tmp_path / "figs" / "completion.png"
    args = ["complete", "--checkpoint", str(tiny_checkpoint), "--image", str(tmp_path / "paper.jpg"),
            "--samples", "3", "--rows", "20", "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "resized 56x56 to 28x28" in printed and "white background detected" in printed
    assert "3 completions of the bottom 8 rows" in printed
    assert out.stat().st_size > 0


def test_igpt_complete_turns_the_image_as_asked_or_as_the_model_finds_it_most_likely(mnist_root, tiny_checkpoint, tmp_path, capsys):
    from PIL import Image

    from igptlib.data import load_split

    Image.fromarray(load_split("mnist", mnist_root, train=False)[0][0, 0].numpy()).save(tmp_path / "seven.png")
    args = ["complete", "--checkpoint", str(tiny_checkpoint), "--image", str(tmp_path / "seven.png"), "--samples", "1",
            "--out", str(tmp_path / "completion.png")]
    assert main(args + ["--turn", "90"]) == 0
    assert "turned 90° anticlockwise, as asked" in capsys.readouterr().out
    assert main(args + ["--turn", "auto"]) == 0
    assert "the model finds it most likely that way (nats per pixel: none " in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(args + ["--turn", "45"])
    assert "invalid choice: '45'" in capsys.readouterr().err


def test_igpt_complete_errors_are_clear(tiny_checkpoint, tmp_path, capsys):
    (tmp_path / "notes.png").write_text("not a picture")
    assert main(["complete", "--checkpoint", str(tiny_checkpoint), "--image", str(tmp_path / "notes.png")]) == 2
    assert "not an image (expected a PNG, JPG or JPEG file)" in capsys.readouterr().err
    assert main(["complete", "--checkpoint", str(tmp_path / "notes.png"), "--image", str(tmp_path / "notes.png")]) == 2
    assert "not a loadable checkpoint" in capsys.readouterr().err
