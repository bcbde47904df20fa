"""The classifier recipe as one resumable command: the rate swept on validation, the long fine-tuning
at that rate with early stopping, the test split read once at the end, and the run recorded."""
import json
import math

import pytest
import torch

from igptlib.classifier_recipe import PATIENCE, classifier
from igptlib.cli import main
from igptlib.config import RunConfig


def test_the_recipe_sweeps_fine_tunes_tests_and_records_resumably(tiny_checkpoint, tmp_path, capsys):
    runs, records = tmp_path / "runs", tmp_path / "records"
    recipe = dict(passes=0.5, lrs=[3e-3, 1e-4], sweep_steps=2)
    pretrained = tiny_checkpoint.parent.parent.name

    assert not classifier(tiny_checkpoint, runs, records, budget_minutes=0.001, **recipe)  # the sweep's first run stops
    assert torch.load(runs / "sweep/lr-0.0001/checkpoints/last.ckpt", weights_only=True)["global_step"] == 1
    assert not (runs / "finetune").exists()

    # With no time left for the test split, it stops after the fine-tuning.
    assert not classifier(tiny_checkpoint, runs, records, budget_minutes=60, reserve_minutes=61, **recipe)
    sweep = json.loads((records / f"finetune-sweep-{pretrained}/finetune_sweep.json").read_text())
    tuned = RunConfig.load_yaml(runs / "finetune/config.yaml")
    # 0.5 passes over the tiny run's 64 training images at batch 16: 2 steps.
    assert tuned.optim.lr == sweep["chosen_lr"] and tuned.optim.finetune and tuned.train.steps == math.ceil(0.5 * 64 / 16)
    assert tuned.train.early_stop == PATIENCE and tuned.train.init_from == str(tiny_checkpoint)
    assert tuned.train.early_stop_from == tuned.train.steps // 2  # not while the rate is at its peak
    assert "stopping before classify" in capsys.readouterr().out and not (runs / "finetune/evaluation.json").exists()

    assert classifier(tiny_checkpoint, runs, records, **recipe)
    evaluation = json.loads((runs / "finetune/evaluation.json").read_text())
    assert evaluation["checkpoint"].endswith("finetune/checkpoints/best.ckpt")  # chosen on validation, not on the test set
    assert 0 <= evaluation["classification"]["accuracy"] <= 1
    record = records / f"classifier-{pretrained}"
    assert json.loads((record / "evaluation.json").read_text()) == evaluation and (record / "config.yaml").exists()

    capsys.readouterr()
    assert classifier(tiny_checkpoint, runs, records, **recipe)  # nothing left to do
    assert "every stage is done" in capsys.readouterr().out


def test_the_command_refuses_a_bad_checkpoint_and_bad_passes(tmp_path, tiny_checkpoint, capsys):
    assert main(["classifier", "--model", str(tmp_path / "absent.ckpt"), "--runs", str(tmp_path / "runs")]) == 2
    assert "no such checkpoint" in capsys.readouterr().err and not (tmp_path / "runs").exists()
    with pytest.raises(SystemExit) as exit:
        main(["classifier", "--model", str(tiny_checkpoint), "--passes", "0"])
    assert exit.value.code == 2
    assert "argument --passes: expected a finite positive number, got 0" in capsys.readouterr().err
