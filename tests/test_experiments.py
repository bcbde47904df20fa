"""The named experiments: papermill runs of the real course notebooks (smoke mode: tiny data and steps)."""
import json
from pathlib import Path

import papermill
import pytest
import torch

from igptlib import experiments
from igptlib.cli import main
from igptlib.config import ConfigError
from igptlib.course import CourseParameters, run_configs
from igptlib.sweep import execute


def configs(name: str, folder: Path, seed: int = 0):
    return run_configs(CourseParameters.from_dict(experiments.parameters(name, folder, seed)))


def test_an_experiment_runs_its_notebooks_end_to_end_and_records_every_stage(mnist_root, tmp_path):
    runs, records = tmp_path / "runs", tmp_path / "records"
    command = ["igpt", "experiment", "ladder-cpu-s-noaug", "--smoke"]
    assert experiments.run("ladder-cpu-s-noaug", runs=runs, records=records, smoke=True, command=command)
    record = records / "ladder-cpu-s-noaug"
    assert (runs / "ladder-cpu-s-noaug" / "commands.txt").read_text() == " ".join(command) + "\n"
    for stage in ("", "finetune"):
        assert (record / stage / "metrics.json").exists() and (record / stage / "evaluation.json").exists()
    # The named steps 655, 1310 and 2620, scaled to smoke mode's 20: each kept and evaluated, the last fine-tuned.
    assert sorted(path.name for path in record.glob("evaluation-step-*.json")) == ["evaluation-step-10.json",
                                                                                     "evaluation-step-5.json"]
    saved = (runs / "ladder-cpu-s-noaug" / "finetune" / "config.yaml").read_text()
    assert "step-20.ckpt" in saved and "schedule: cosine" in saved
    assert "augment: []" in (record / "config.yaml").read_text()
    for notebook in ("05_training", "06_completion", "07_evaluation"):  # executed, outputs kept
        executed = json.loads((record / "notebooks" / f"{notebook}.ipynb").read_text())
        assert any(cell.get("outputs") for cell in executed["cells"]), notebook
    # An experiment's figures stay in its run folder, not the course's figures/.
    assert (runs / "ladder-cpu-s-noaug" / "figures" / "ladder-cpu-s-noaug_pretraining_loss.png").exists()


def test_a_budget_stops_training_at_a_checkpoint_and_the_same_run_goes_on(mnist_root, tmp_path):
    runs, records = tmp_path / "runs", tmp_path / "records"
    folder = runs / "ladder-cpu-s-noaug-seed1"  # another seed, another folder and record
    assert not experiments.run("ladder-cpu-s-noaug", seed=1, budget_minutes=0.001, runs=runs, records=records, smoke=True)
    assert torch.load(folder / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] < 20
    text = (folder / "notebooks" / "05_training.ipynb").read_text()
    assert "UNFINISHED, stopped at step" in text and "run the notebook again" in text
    assert not (folder / "finetune").exists() and not (folder / "notebooks" / "07_evaluation.ipynb").exists()
    assert not records.exists(), "an unfinished run is not recorded"

    assert experiments.run("ladder-cpu-s-noaug", seed=1, runs=runs, records=records, smoke=True)
    record = records / "ladder-cpu-s-noaug-seed1"
    assert json.loads((record / "metrics.json").read_text())["global_step"] == 20
    assert "seed: 1" in (record / "config.yaml").read_text()
    assert json.loads((record / "finetune" / "evaluation.json").read_text())["classification"]["accuracy"] > 0.1


def test_an_unknown_experiment_and_a_bad_parameter_are_one_line_errors(mnist_root, tmp_path, capsys):
    assert main(["experiment", "--list"]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert listed == list(experiments.EXPERIMENTS) and "ladder-cpu-s-bert" in listed and "classifier-mnist" in listed
    assert main(["experiment", "ladder-cpu-xl"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "unknown experiment 'ladder-cpu-xl'; the experiments are mnist-course" in error
    with pytest.raises(ConfigError, match="^seed: expected 0 or a positive integer, got -2$"):
        experiments.run_name("ladder-cpu-s", -2)
    with pytest.raises(ConfigError, match=r"^parameter evaluate_steps: expected increasing positive steps, got \[10, 5\]$"):
        CourseParameters(evaluate_steps=[10, 5])
    with pytest.raises(ConfigError, match=r"^parameter budget_minutes: expected a positive number of minutes, got 0.0$"):
        CourseParameters(budget_minutes=0.0)
    # In the notebook itself: one line saying which parameter and what was expected.
    with pytest.raises(papermill.PapermillExecutionError) as failed:
        execute("05_training", tmp_path / "05.ipynb", {"smoke": True, "run_dir": str(tmp_path / "run"),
                                                       "overrides": ["optim.nope=1"], "show_tensorboard": False})
    assert failed.value.ename == "ConfigError" and "\n" not in failed.value.evalue
    assert failed.value.evalue.startswith("parameter overrides: ") and "SECTION.FIELD=VALUE with a known field" in failed.value.evalue


def test_the_course_defaults_are_unchanged_and_the_experiments_hold_their_recipes(tmp_path):
    assert experiments.EXPERIMENTS["mnist-course"].parameters == {}
    defaults = CourseParameters()
    assert (defaults.objective, defaults.augment, defaults.overrides, defaults.finetune_overrides, defaults.evaluate_steps,
            defaults.finetune_from, defaults.budget_minutes, defaults.robustness) == ("ar", None, [], [], [], None, None, False)
    course = CourseParameters.from_dict({k: v for k, v in experiments.parameters("mnist-course", tmp_path).items()
                                         if k not in ("run_dir", "show_tensorboard")})
    assert run_configs(course) == run_configs(defaults)
    # The notebooks' own defaults are CourseParameters' (papermill passes nothing for a default).
    for notebook in ("05_training", "07_evaluation"):
        for name, parameter in papermill.inspect_notebook(f"notebooks/{notebook}.ipynb").items():
            if name in ("objective", "augment", "overrides", "finetune_overrides", "evaluate_steps", "finetune_from",
                        "budget_minutes", "robustness"):
                assert eval(parameter["default"]) == getattr(defaults, name), (notebook, name)

    pretrain, finetune = configs("ladder-cpu-s", tmp_path / "s")
    assert (pretrain.train.steps, pretrain.train.checkpoint_steps, pretrain.data.augment) == (2620, [655, 1310, 2620], ["crop"])
    assert (finetune.train.steps, finetune.optim.lr, finetune.optim.schedule, finetune.data.augment) == (500, 5e-4, "cosine", ["crop"])
    assert finetune.train.init_from == str((tmp_path / "s").resolve() / "checkpoints" / "step-2620.ckpt")
    assert configs("ladder-cpu-s-noaug", tmp_path / "n")[0].data.augment == []
    assert configs("ladder-cpu-s-rotate", tmp_path / "r")[0].data.augment == ["crop", "rotate"]
    assert configs("ladder-cpu-s-bert", tmp_path / "b")[0].model.objective == "bert"
    assert configs("ladder-cpu-l", tmp_path / "l", seed=2)[0].data.seed == 2
    assert experiments.run_name("ladder-cpu-l", 2) == "ladder-cpu-l-seed2" and experiments.run_name("ladder-cpu-l") == "ladder-cpu-l"
    none, classifier = configs("classifier-mnist", tmp_path / "c")
    assert none is None and classifier.optim.finetune and classifier.train.early_stop == 5
    assert classifier.train.init_from.endswith("mnist.safetensors")
