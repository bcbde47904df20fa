"""Papermill runs of the course: the notebooks of one model size executed into that size's run folder.

`igpt sweep --sizes s m l --preset-schedule` (`make sweep`) runs the training, completion and
evaluation notebooks once per size, each size trained for its preset's own schedule
(igptlib.config.TRAIN_PRESETS) rather than the notebooks' few hundred CPU steps;
the executed notebooks are kept in each run folder (runs/<dataset>-<size>/notebooks/), beside the
checkpoints, logs and metrics the notebooks write there. Each finished run is then recorded in
report/runs/<dataset>-<size>/ (igptlib.records), from which `igpt report` builds the report.
"""
from __future__ import annotations

import time
from pathlib import Path

from igptlib.extras import require

REPO = Path(__file__).resolve().parents[1]


def find_notebooks() -> Path:
    """The course's notebooks: igptlib/notebooks/, the package data of an installed package; else
    notebooks/ beside igptlib/, in a clone (an editable install too)."""
    package_data = Path(__file__).resolve().parent / "notebooks"
    return package_data if package_data.is_dir() else REPO / "notebooks"


NOTEBOOKS = find_notebooks()
PIPELINE = ("05_training", "06_completion", "07_evaluation")


def papermill():
    """papermill, which runs the notebooks; MissingExtra (one line, `igpt` exits 2) where it is not installed."""
    return require("papermill", "course", "running the course's notebooks (igpt sweep)")


def run_folder(dataset: str, size: str, runs: str | Path = "runs") -> Path:
    return Path(runs) / f"{dataset}-{size}"


def execute(notebook: str, out: Path, parameters: dict) -> Path:
    """Execute notebooks/<notebook>.ipynb with `parameters` into `out` (kept even when a cell fails)."""
    runner = papermill()
    source = NOTEBOOKS / f"{notebook}.ipynb"
    if not source.exists():
        known = sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb"))
        raise FileNotFoundError(f"no notebook {notebook!r}; the course has {known}")
    # The sweep's common settings go only to the notebooks that declare them (04_model has no run folder).
    declared = runner.inspect_notebook(str(source))
    parameters = {name: value for name, value in parameters.items() if name in declared}
    out.parent.mkdir(parents=True, exist_ok=True)
    # The kernel is named explicitly: papermill would otherwise look for the notebook's own, which a
    # virtual environment's Jupyter may not know by that name. In a clone the notebooks run from its
    # root (course.go_to_root finds it); an installed package's run where the user is, beside data/.
    cwd = NOTEBOOKS if NOTEBOOKS == REPO / "notebooks" else Path.cwd()
    # An hour-long notebook must not run silently: a bar of its cells (count and time taken), and
    # each cell's number and output as it comes (log_output; `igpt sweep` shows papermill's log).
    runner.execute_notebook(
        str(source), str(out), parameters=parameters, kernel_name="python3", cwd=str(cwd),
        progress_bar={"desc": notebook}, log_output=True,
    )
    return out


def sweep(sizes=("s", "m", "l"), dataset: str = "mnist", notebooks=PIPELINE, runs: str | Path = "runs",
          steps: int | None = None, smoke: bool = False, device: str = "auto", records: str | Path | None = None,
          command: list[str] | None = None, preset_schedule: bool = False) -> list[Path]:
    """Run `notebooks` for every size; return the run folders, in order.

    steps: pre-training steps for every size (None: the notebooks' own); preset_schedule: each
    size trains for its preset's schedule instead, and fine-tunes for a tenth of it.

    records: where to record each finished run for the report (igptlib.records; None: nowhere),
    with `command` noted in its run folder as what made it.
    """
    from igptlib.records import note_command, record_run

    papermill()  # before any notebook is announced
    folders = []
    for size in sizes:
        folder = run_folder(dataset, size, runs)
        # No inline TensorBoard: its server would outlive the notebook's kernel.
        parameters = {"dataset": dataset, "size": size, "run_dir": str(folder.resolve()), "smoke": smoke,
                      "device": device, "show_tensorboard": False}
        if preset_schedule:
            parameters.update(steps=None, finetune_steps=None)
        elif steps is not None:
            parameters["steps"] = steps
        for notebook in notebooks:
            print(f"{size}: {notebook} -> {folder / 'notebooks'}", flush=True)
            started = time.perf_counter()
            out = execute(notebook, folder / "notebooks" / f"{notebook}.ipynb", parameters)
            print(f"{size}: {notebook} done in {time.perf_counter() - started:.0f} s -> {out}", flush=True)
        if records is not None and (folder / "metrics.json").exists():
            note_command(folder, command)
            print(f"{size}: recorded in {record_run(folder, records=records)}", flush=True)
        folders.append(folder)
    return folders
