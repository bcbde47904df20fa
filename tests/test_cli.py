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
