"""The papermill sweep and the report built from its run folders (smoke mode: tiny data and steps)."""
import json
import shutil
from pathlib import Path

import pytest

from igptlib.config import run_config
from igptlib.course import CourseParameters, run_configs
from igptlib.report import build_report
from igptlib.sweep import execute, sweep

REPO = Path(__file__).resolve().parents[1]


def results_notebook(folder: Path) -> Path:
    """A folder holding the report's notebook 09 alone (the one that shows every record's tables)."""
    folder.mkdir()
    shutil.copyfile(REPO / "notebooks" / "09_results.ipynb", folder / "09_results.ipynb")
    return folder


def test_sweep_runs_the_notebooks_into_run_folders_and_the_report_reads_them(mnist_root, tmp_path):
    runs = tmp_path / "runs"
    folders = sweep(sizes=["xs"], notebooks=["05_training", "07_evaluation"], runs=runs, smoke=True)
    folder = folders[0]
    assert folder == runs / "mnist-xs"
    for notebook in ("05_training", "07_evaluation"):
        assert (folder / "notebooks" / f"{notebook}.ipynb").exists(), "executed notebooks are kept"
    metrics = json.loads((folder / "metrics.json").read_text())
    evaluation = json.loads((folder / "evaluation.json").read_text())

    report = build_report(runs, tmp_path / "report", models_dir=tmp_path / "no-models", notebooks=results_notebook(tmp_path / "nb"))
    text = report.read_text()
    # The report's numbers are the run folder's own, through its record.
    entry = json.loads((tmp_path / "report" / "results.json").read_text())[0]
    assert entry["name"] == "mnist-xs" and (tmp_path / "report" / "runs" / "mnist-xs" / "evaluation.json").exists()
    recorded = tmp_path / "report" / "runs" / "mnist-xs" / "notebooks"
    for notebook in ("05_training", "07_evaluation"):  # executed, outputs kept: a reader sees the run
        executed = json.loads((recorded / f"{notebook}.ipynb").read_text())
        assert any(cell.get("outputs") for cell in executed["cells"])
    assert entry["nats_per_pixel"] == evaluation["likelihood"]["nats_per_pixel"]
    assert f"| <code>mnist-xs</code> | mnist | 64 | bfloat16 | {evaluation['likelihood']['nats_per_pixel']:.4f} |" in text
    assert entry["steps"] == metrics["global_step"]
    assert entry["eval_precision"] == "bf16"  # 07 evaluates under bfloat16 autocast
    finetuned = json.loads((folder / "finetune" / "evaluation.json").read_text())
    assert entry["kappa"] == finetuned["classification"]["kappa"] and f"{finetuned['classification']['kappa']:.4f}" in text
    assert (tmp_path / "report" / "index.html").read_text().count("<img") >= 4
    for image in (tmp_path / "report" / "figures").iterdir():
        assert image.stat().st_size > 0 and f"figures/{image.name}" in text


def test_an_empty_runs_folder_gives_a_report_that_says_so(tmp_path):
    text = build_report(tmp_path / "none", tmp_path / "report", models_dir=tmp_path / "none",
                        notebooks=results_notebook(tmp_path / "nb")).read_text()
    assert "No records yet" in text


def test_an_unknown_notebook_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no notebook '09_magic'"):
        execute("09_magic", tmp_path / "out.ipynb", {})


def test_igpt_sweep_shows_which_notebook_and_cell_is_running_and_for_how_long(tmp_path, capsys, caplog):
    from igptlib.cli import main

    assert main(["sweep", "--sizes", "xs", "--notebooks", "04_model", "--smoke", "--runs", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    assert f"xs: 04_model -> {tmp_path / 'mnist-xs' / 'notebooks'}" in out and "xs: 04_model done in" in out
    assert "04_model: 100%" in err and "cell" in err  # papermill's bar: cells done of all, time taken
    logged = [record.getMessage() for record in caplog.records if record.name.startswith("papermill")]
    assert any(message.startswith("Executing Cell 6") for message in logged)  # each cell as it starts
    assert any("tokens (2, 784) -> logits" in message for message in logged)  # and its output as it comes


@pytest.mark.parametrize("size", ["s", "m", "l", "cpu-s"])
def test_the_preset_schedule_trains_each_size_for_its_own_steps_warmup_and_checkpoints(size):
    # What `igpt sweep --preset-schedule` hands the notebooks (papermill injects steps = None).
    params = CourseParameters.from_dict({"size": size, "steps": None, "finetune_steps": None, "device": "cpu"})
    pretrain, finetune = run_configs(params)
    preset = run_config(size)
    assert pretrain.train.steps == preset.train.steps and pretrain.train.steps >= 2620
    assert pretrain.train.checkpoint_steps == preset.train.checkpoint_steps
    assert max(pretrain.train.checkpoint_steps) == pretrain.train.steps  # every named checkpoint is reached
    if size in ("s", "m", "l"):  # the GPU sweep keeps the seed's steps, the same for every size
        assert pretrain.train.checkpoint_steps == [131000, 262000, 524000]
    assert (pretrain.train.val_every, pretrain.train.save_every) == (preset.train.val_every, preset.train.save_every)
    assert pretrain.optim == preset.optim
    assert finetune.train.steps == preset.train.steps // 10 and finetune.optim.finetune
    # The notebooks' own default (steps None) is that same schedule.
    notebook, _ = run_configs(CourseParameters(size=size, device="cpu"))
    assert notebook.train == pretrain.train


def test_the_course_default_is_the_course_preset_and_its_fine_tuning_preset():
    from igptlib.config import FINETUNE_PRESETS

    pretrain, finetune = run_configs(CourseParameters(device="cpu"))
    preset = run_config("course")
    assert (pretrain.data.n_px, pretrain.data.batch_size, pretrain.train.steps) == (16, 16, preset.train.steps)
    tuned = FINETUNE_PRESETS["course"]
    assert finetune.optim.finetune and finetune.optim.lr == tuned["optim"]["lr"]
    assert finetune.train.steps == tuned["train"]["steps"] and finetune.data.augment == tuned["data"]["augment"]
    assert finetune.model == pretrain.model and finetune.train.init_from.endswith("mnist-course/checkpoints/best.ckpt")
    _, shorter = run_configs(CourseParameters(device="cpu", finetune_steps=90))
    assert shorter.train.steps == 90 and shorter.train.val_every == 30


def test_igpt_sweep_takes_either_steps_or_the_preset_schedule(capsys):
    from igptlib.cli import main

    with pytest.raises(SystemExit):
        main(["sweep", "--steps", "10", "--preset-schedule"])
    assert "not allowed with argument" in capsys.readouterr().err
