"""Choosing the fine-tuning learning rate on validation: one short fine-tuning per rate from the same
checkpoint, stopped by a budget and resumed, then the rate with the best validation accuracy."""
import json
import shutil

import pytest
import torch

from igptlib.config import RunConfig, model_config
from igptlib.finetune_sweep import finetune_sweep, sweep_configs
from igptlib.results import finetune_sweep_table, finetune_sweeps


def test_the_sweep_stops_on_budget_resumes_and_picks_the_best_validation_accuracy(tiny_checkpoint, tmp_path, capsys):
    runs, out = tmp_path / "runs", tmp_path / "record"
    assert finetune_sweep(tiny_checkpoint, runs, out, lrs=[3e-3, 1e-4], steps=2, budget_minutes=0.001) is None
    assert torch.load(runs / "lr-0.0001/checkpoints/last.ckpt", weights_only=True)["global_step"] == 1
    assert "UNFINISHED, stopped at step 1 of 2" in capsys.readouterr().out and not out.exists()

    result = finetune_sweep(tiny_checkpoint, runs, out, lrs=[3e-3, 1e-4], steps=2, command=["igpt", "finetune-sweep"])
    assert [row["lr"] for row in result["rows"]] == [1e-4, 3e-3] and all(row["steps"] == 2 for row in result["rows"])
    best = max(result["rows"], key=lambda row: row["best_val_acc"])
    assert result["chosen_lr"] == best["lr"] and result["chosen_best_val_acc"] == best["best_val_acc"]
    for row in result["rows"]:  # each rate's own run, from the same checkpoint, fine-tuning
        config = RunConfig.load_yaml(runs / f"lr-{row['lr']:g}" / "config.yaml")
        assert config.optim.lr == row["lr"] and config.optim.finetune and config.train.init_from == str(tiny_checkpoint)
        assert row["best_val_acc"] == json.loads((runs / f"lr-{row['lr']:g}" / "metrics.json").read_text())["best_val_acc"]
    assert json.loads((out / "finetune_sweep.json").read_text()) == result
    assert (out / "finetune_sweep.png").stat().st_size > 0 and result["command"] == "igpt finetune-sweep"

    capsys.readouterr()
    assert finetune_sweep(tiny_checkpoint, runs, out, lrs=[3e-3, 1e-4], steps=2) is not None  # nothing left to train
    assert "already holds this run, finished" in capsys.readouterr().out

    # The report reads the record alone.
    records = tmp_path / "records"
    shutil.copytree(out, records / "finetune-sweep-tiny")
    [sweep] = finetune_sweeps(records)
    assert sweep["record"] == "finetune-sweep-tiny" and sweep["figure"].exists()
    assert (sweep["chosen_lr"], sweep["chosen_best_val_acc"]) == (result["chosen_lr"], result["chosen_best_val_acc"])
    assert f"| 0.0001 | {result['rows'][0]['best_val_acc']:.4f} | 2 |" in finetune_sweep_table(sweep)


def test_the_sweep_refuses_what_it_cannot_sweep(tiny_checkpoint, tmp_path):
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        sweep_configs(tmp_path / "absent.ckpt")
    with pytest.raises(ValueError, match=r"expected one or more positive learning rates, got \[0.001, -1.0\]"):
        sweep_configs(tiny_checkpoint, lrs=[1e-3, -1.0])
    lone = tmp_path / "lone.ckpt"
    lone.write_bytes(tiny_checkpoint.read_bytes())
    with pytest.raises(ValueError, match="not in a run folder"):
        sweep_configs(lone)


def test_a_model_file_fine_tunes_from_its_weights_with_its_presets_recipe(tiny_checkpoint, tmp_path):
    from igptlib.config import run_config
    from igptlib.lightning_module import ImageGPT
    from igptlib.shipped import export_model

    model_file = export_model(tiny_checkpoint, tmp_path / "tiny.safetensors")
    configs = sweep_configs(model_file, lrs=[1e-3], steps=5)
    config = configs[1e-3]
    xs = run_config("xs", "mnist")
    # A model file keeps no run config: its shape names the preset (xs) whose batch and data it gets.
    assert config.train.init_from == str(model_file) and config.data.batch_size == xs.data.batch_size
    assert config.model == RunConfig.load_yaml(tiny_checkpoint.parent.parent / "config.yaml").model
    assert config.optim.finetune and config.optim.lr == 1e-3 and config.train.steps == 5
    assert xs.train.test and not config.train.test  # the sweep never reads the test split, whatever the preset says

    from_file, from_checkpoint = (ImageGPT.from_pretrained(path, config.optim) for path in (model_file, tiny_checkpoint))
    assert from_file.state_dict().keys() == from_checkpoint.state_dict().keys()
    assert all(torch.equal(from_file.state_dict()[name], tensor) for name, tensor in from_checkpoint.state_dict().items())
    assert (from_file.palette == from_checkpoint.palette).all()


def test_a_model_file_of_no_presets_shape_is_refused(tmp_path):
    from igptlib.model import GPT
    from igptlib.model_files import write_model_file

    odd = model_config("xs", n_embd=32, n_head=1, vocab_size=16, n_px=28)
    path = write_model_file(tmp_path / "odd.safetensors", odd, GPT(odd).state_dict(), torch.rand(16, 1).numpy(),
                            dataset="mnist")
    with pytest.raises(ValueError, match=r"how it was trained is unknown .*'n_embd': 32.*train on from its run's .ckpt"):
        sweep_configs(path)
