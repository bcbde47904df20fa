"""Shipped models: a checkpoint exported to safetensors loads back as the same model, or fails clearly."""
import numpy as np
import pytest
import torch

from igptlib.cli import main
from igptlib.model_files import CheckpointError, read_notes
from igptlib.lightning_module import load_checkpoint
from igptlib.shipped import export_model, load_model, model_dataset, model_name, shipped_models


def test_an_exported_model_gives_the_checkpoints_logits_and_palette(tiny_checkpoint, tmp_path):
    path = export_model(tiny_checkpoint, tmp_path / "tiny.safetensors", {"steps": 2})
    original, shipped = load_checkpoint(tiny_checkpoint), load_model(path)
    tokens = torch.randint(0, 16, (2, 784), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(shipped.model(tokens), original.model(tokens), rtol=0, atol=0)
    np.testing.assert_array_equal(shipped.palette, original.palette)
    assert shipped.model_config == original.model_config
    assert read_notes(path) == {"steps": 2}
    assert not list(tmp_path.glob("*.partial"))


def test_models_load_by_name_from_the_models_folder(tiny_checkpoint, tmp_path):
    export_model(tiny_checkpoint, tmp_path / "digits.safetensors")
    assert shipped_models(tmp_path) == ["digits"]
    assert load_model("digits", tmp_path).model_config.n_px == 28
    with pytest.raises(CheckpointError, match=r"'mnist' is neither a shipped model \(digits\)"):
        load_model("mnist", tmp_path)


def test_a_model_knows_the_dataset_it_was_trained_on(tiny_checkpoint, tmp_path):
    import shutil

    assert model_dataset(tiny_checkpoint) == "mnist"  # from its run folder's config.yaml
    assert model_dataset(export_model(tiny_checkpoint, tmp_path / "digits.safetensors")) == "mnist"
    assert model_dataset("digits", tmp_path) == "mnist"
    alone = tmp_path / "alone" / "model.ckpt"  # a checkpoint outside any run folder
    alone.parent.mkdir()
    shutil.copyfile(tiny_checkpoint, alone)
    assert model_dataset(alone) is None
    assert model_dataset(export_model(alone, tmp_path / "unknown.safetensors")) is None


def test_a_model_is_named_by_its_shipped_name_or_its_run_folder(tiny_checkpoint, tmp_path):
    export_model(tiny_checkpoint, tmp_path / "digits.safetensors")
    assert model_name("digits", tmp_path) == "digits"
    assert model_name(tmp_path / "digits.safetensors", tmp_path) == "digits"
    pretrained = tmp_path / "runs" / "ladder-cpu-s-rotate"
    for run in (pretrained, pretrained / "finetune"):
        (run / "checkpoints").mkdir(parents=True)
        (run / "config.yaml").write_text("")  # what marks a run folder
    assert model_name(pretrained / "checkpoints" / "last.ckpt", tmp_path) == "ladder-cpu-s-rotate"
    assert model_name(pretrained / "finetune" / "checkpoints" / "last.ckpt", tmp_path) == "ladder-cpu-s-rotate-finetune"
    assert model_name(tmp_path / "elsewhere" / "model.ckpt", tmp_path) == "model"  # no run folder: the file's name


def test_files_that_are_not_models_are_refused_clearly(tmp_path):
    (tmp_path / "text.safetensors").write_text("not tensors")
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_model(tmp_path / "text.safetensors")
    with pytest.raises(CheckpointError, match="no such model file"):
        load_model(tmp_path / "absent.safetensors")
    from safetensors.torch import save_file

    save_file({"weights": torch.zeros(2)}, tmp_path / "other.safetensors")
    with pytest.raises(CheckpointError, match="not a shipped igpt model"):
        load_model(tmp_path / "other.safetensors")


def test_igpt_export_then_complete_with_the_exported_model(mnist_root, tiny_checkpoint, tmp_path, capsys):
    from PIL import Image

    from igptlib.datasets import load_split

    out = tmp_path / "tiny.safetensors"
    assert main(["export", "--model", str(tiny_checkpoint), "--out", str(out), "--note", "data=mnist"]) == 0
    assert read_notes(out) == {"checkpoint": str(tiny_checkpoint), "data": "mnist"}
    Image.fromarray(load_split("mnist", mnist_root, train=False)[0][0, 0].numpy()).save(tmp_path / "digit.png")
    args = ["complete", "--model", str(out), "--image", str(tmp_path / "digit.png"), "--samples", "2",
            "--out", str(tmp_path / "fig.png")]
    assert main(args) == 0
    assert "2 completions of the bottom 14 rows" in capsys.readouterr().out
    assert main(["export", "--model", str(tiny_checkpoint), "--out", str(out), "--note", "oops"]) == 2
    assert "expected KEY=VALUE" in capsys.readouterr().err
