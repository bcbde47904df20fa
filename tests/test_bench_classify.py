"""`igpt bench classify`: a recipe stopped by its budget goes on from its checkpoint with its clock, and is tested once."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from igptlib.bench_classify import classify, stage_configs
from igptlib.cli import main

TINY = ["data.n_px=8", "data.limit_train=128", "data.limit_val=64", "train.val_every=4", "train.save_every=2",
        "train.progress_bar=false"]


def read_state(run_dir):
    return json.loads((run_dir / "bench-state.json").read_text())


def test_a_recipe_stopped_by_its_budget_goes_on_with_its_clock(mnist_root, tmp_path):
    run_dir = tmp_path / "run"
    settings = dict(size="xs", pretrain_steps=8, finetune_steps=8, overrides=[*TINY, f"data.root={mnist_root}"],
                    pretrain_overrides=[], finetune_overrides=["optim.lr=1e-3"], probe=False)
    # A budget (1.2 s) that runs out while the data is set up: the pre-training stops after its first step.
    assert classify("tiny", run_dir, budget_minutes=0.02, **settings) is None
    assert read_state(run_dir)["stages"] == {}
    assert (run_dir / "pretrain" / "checkpoints" / "last.ckpt").exists()

    record = classify("tiny", run_dir, budget_minutes=None, **settings)
    stages = read_state(run_dir)["stages"]
    assert stages["pretrain"]["steps"] == 8 and stages["finetune"]["steps"] == 8
    # The curve runs through both stages, its minutes never going back, the fine-tuning's after the pre-training's.
    points = record["curve"]
    for stage in ("pretrain", "finetune"):
        steps = [p["step"] for p in points if p["stage"] == stage]
        assert steps == sorted(set(steps)) and steps[-1] == 8 and 4 in steps  # each validated step once
    stages_in_order = [p["stage"] for p in points]
    assert stages_in_order == sorted(stages_in_order, key=["pretrain", "finetune"].index)  # pre-training's first
    minutes = [p["minutes"] for p in points]
    first_finetune = next(p for p in points if p["stage"] == "finetune")
    assert minutes == sorted(minutes) and first_finetune["minutes"] > stages["pretrain"]["minutes"]
    assert "val_nats_per_pixel" in points[0] and 0 <= points[-1]["val_acc"] <= 1
    assert record["training"]["minutes"] == pytest.approx(stages["pretrain"]["minutes"] + stages["finetune"]["minutes"], abs=0.01)
    test = record["test"]
    assert test["images"] == 10_000 and sum(map(sum, test["confusion_matrix"])) == 10_000
    assert test["accuracy"] == pytest.approx(sum(test["confusion_matrix"][i][i] for i in range(10)) / 10_000)

    # Done is done: a third call trains nothing and reads the same test result.
    again = classify("tiny", run_dir, budget_minutes=None, **settings)
    assert again["test"] == test and again["curve"] == points


def test_a_folder_of_other_settings_is_refused(mnist_root, tmp_path):
    # Two steps, fewer than a validation's four: the test reads the last weights, there being no best.
    settings = dict(size="xs", pretrain_steps=0, finetune_steps=2, pretrain_overrides=[], finetune_overrides=[],
                    probe=False, budget_minutes=None)
    assert classify("a", tmp_path, overrides=[*TINY, f"data.root={mnist_root}"], **settings)["test"]["checkpoint"] == "last.ckpt"
    with pytest.raises(ValueError, match="other settings"):
        classify("a", tmp_path, overrides=[*TINY, f"data.root={mnist_root}", "model.n_layer=1"], **settings)


def test_the_labels_alone_control_has_no_pretraining_and_no_generative_loss():
    pretrain, finetune = stage_configs("xs", 0, 100, ["data.n_px=16"], [], ["optim.gen_weight=0"])
    assert pretrain is None and finetune.optim.finetune and finetune.optim.gen_weight == 0
    assert finetune.train.init_from is None and finetune.data.n_px == 16


def test_the_stages_must_read_the_same_images():
    with pytest.raises(ValueError, match="same images"):
        stage_configs("xs", 10, 10, [], ["data.n_px=16"], [])


def test_the_command_refuses_a_budget_that_is_not_a_positive_number(capsys):
    with pytest.raises(SystemExit) as exit:
        main(["bench", "classify", "--name", "x", "--budget-minutes", "nan"])
    assert exit.value.code == 2 and "positive number, got nan" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["../x", "a/b", ""])
def test_a_recipe_name_is_never_a_path(name, capsys):
    assert main(["bench", "classify", "--name", name, "--cnn"]) == 2
    assert "expected a plain recipe name" in capsys.readouterr().err


@pytest.mark.skipif(not Path("/proc/self/autogroup").exists(), reason="no Linux scheduler autogroups here")
def test_the_machine_record_gives_the_autogroup_priority_a_benchmark_ran_at():
    # A new session is a new autogroup; lowering its priority needs no privilege.
    script = ("from pathlib import Path; Path('/proc/self/autogroup').write_text('7');"
              "from igptlib.bench_classify import machine; print(machine()['autogroup_nice'])")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, start_new_session=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "7"


def test_the_report_says_which_kind_of_classifier_is_ahead_from_the_records():
    from igptlib.results import classifier_family, pretraining_pays

    def record(name, kind, accuracy, minutes, pretrain_steps=0, gen_weight=1.0):
        stages = {"finetune": {"steps": 10}, **({"pretrain": {"steps": pretrain_steps}} if pretrain_steps else {})}
        return {"name": name, "kind": kind, "test": {"accuracy": accuracy}, "training": {"minutes": minutes},
                "stages": stages, "settings": {"finetune": {"optim": {"gen_weight": gen_weight}}}}

    pretrained = record("r1", "transformer", 0.9876, 81.7, pretrain_steps=3000)
    alone = record("alone", "transformer", 0.9512, 60.0, gen_weight=0.0)
    cnn = record("cnn", "cnn", 0.9891, 3.7)
    assert [classifier_family(r) for r in (pretrained, alone, cnn)] == [
        "the pre-trained transformer", "the transformer on labels alone", "the convolutional control"]
    said = str(pretraining_pays([alone, pretrained, cnn]))
    assert said.index("convolutional") < said.index("pre-trained") < said.index("labels alone")
    assert "0.9512 after 60.0 wall minutes" in said
    assert "one kind of classifier" in str(pretraining_pays([pretrained]))
