"""The long experiments: named parameter sets of the course notebooks, run by papermill.

Each experiment is data: the notebooks it runs and the papermill parameters it gives them
(igptlib.course.CourseParameters says what each means). `igpt experiment NAME` runs them into
runs/NAME/ (runs/NAME-seed<K> for another seed), keeps the executed notebooks in its notebooks/
folder and records the run for the report (report/runs/NAME, igptlib.records) after each notebook
that finishes. With a time budget, 05_training stops at a checkpoint once it runs out and says the
run is unfinished; the same command goes on from there (a finished training stage is not trained
again).
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from igptlib.config import ConfigError, excerpt
from igptlib.course import CourseParameters
from igptlib.sweep import PIPELINE, execute, papermill


@dataclasses.dataclass(frozen=True)
class Experiment:
    name: str
    about: str
    parameters: dict  # papermill parameters (CourseParameters fields) for every notebook that declares them
    notebooks: tuple[str, ...] = PIPELINE


# The CPU ladder: S, M and L (presets cpu-s, cpu-m, cpu-l) see the same data, palette, batch, steps and
# schedule, so that size alone differs. The seed saved checkpoints at 131,000, 262,000 and 524,000 steps;
# the ladder keeps the 1:2:4 ratio at 1/200 of that scale, and evaluates each. Fine-tuning is one
# recipe for every run: 500 steps from the last named step, crops, a cosine decay from 5e-4. The
# schedule is the presets' (2,620 steps).
LADDER = dict(
    evaluate_steps=[655, 1310, 2620], finetune_steps=500, probe_train=10_000, samples=4,
    finetune_overrides=["data.augment=[crop]", "optim.lr=5e-4", "optim.warmup_steps=50", "optim.schedule=cosine",
                        "train.val_every=100", "train.save_every=100"],
)
# The classifier recipe's long fine-tuning of the shipped mnist model (the shipped classifier's): 4
# passes over the training split at the rate that validation chose among 1e-4, 3e-4, 1e-3 and 3e-3
# (report/runs/finetune-sweep-mnist), validated every 500 steps on 2,000 images and, in the
# schedule's second half, stopped after 5 validations without a better accuracy.
CLASSIFIER = dict(
    finetune_from="mnist", finetune_steps=13_500,
    finetune_overrides=["data.augment=[crop]", "optim.lr=1e-3", "optim.warmup_steps=50", "optim.schedule=cosine",
                        "train.val_every=500", "train.val_batches=125", "train.save_every=500", "train.early_stop=5",
                        "train.early_stop_from=6750"],
)

EXPERIMENTS = {experiment.name: experiment for experiment in (
    Experiment("mnist-course", "the course's default run, as `make` and Run All train it", {},
               notebooks=("01_data", "02_augmentation", "03_centroids", "04_model", *PIPELINE)),
    Experiment("ladder-cpu-s", "the CPU ladder's S (1.5M parameters), and the inverted and rotated digits measured",
               dict(LADDER, size="cpu-s", robustness=True)),
    Experiment("ladder-cpu-m", "the CPU ladder's M (5M parameters)", dict(LADDER, size="cpu-m")),
    Experiment("ladder-cpu-l", "the CPU ladder's L (15M parameters)", dict(LADDER, size="cpu-l")),
    Experiment("ladder-cpu-s-noaug", "S without augmentation: what augmentation buys",
               dict(LADDER, size="cpu-s", augment=[])),
    Experiment("ladder-cpu-s-bert", "S with BERT's objective (mask probability 0.15) instead of the autoregressive one",
               dict(LADDER, size="cpu-s", objective="bert"), notebooks=("05_training", "07_evaluation")),  # BERT does not complete
    Experiment("ladder-cpu-s-rotate", "S with turns of up to 10 degrees beside its crops, and the inverted and rotated "
               "digits measured", dict(LADDER, size="cpu-s", augment=["crop", "rotate"], robustness=True)),
    Experiment("classifier-mnist", "the classifier recipe's long fine-tuning of the shipped mnist model",
               CLASSIFIER, notebooks=("05_training", "07_evaluation")),
)}


# Smoke mode checks that an experiment runs, not what it measures: besides the notebooks' tiny data and
# steps, a model of two narrow layers (a given model to fine-tune keeps its own), fine-tuned at a rate
# that gets its untrained head above chance within those few steps.
SMOKE_MODEL = ["model.n_embd=64", "model.n_layer=2", "model.n_head=2"]
SMOKE_FINETUNE = ["optim.lr=3e-3"]


def experiment(name: str) -> Experiment:
    if name not in EXPERIMENTS:
        raise ConfigError(f"unknown experiment {excerpt(name)}; the experiments are {', '.join(EXPERIMENTS)}")
    return EXPERIMENTS[name]


def run_name(name: str, seed: int = 0) -> str:
    """The run folder's and the record's name: the experiment's, and -seed<K> for a seed other than 0."""
    if seed < 0:
        raise ConfigError(f"seed: expected 0 or a positive integer, got {seed}")
    return experiment(name).name + (f"-seed{seed}" if seed else "")


def parameters(name: str, folder: Path, seed: int = 0, smoke: bool = False, budget_minutes: float | None = None) -> dict:
    """The papermill parameters of one run of the experiment, checked as the notebooks will check them."""
    values = dict(experiment(name).parameters, seed=seed, smoke=smoke, budget_minutes=budget_minutes,
                  run_dir=str(folder.resolve()), show_tensorboard=False)  # no TensorBoard server outliving the kernel
    if smoke and "finetune_from" not in values:
        values["overrides"] = [*values.get("overrides", []), *SMOKE_MODEL]
    if smoke:
        values["finetune_overrides"] = [*values.get("finetune_overrides", []), *SMOKE_FINETUNE]
    if name != "mnist-course":  # the course's figures are the repository's figures/; an experiment keeps its own
        values["figures_dir"] = str(folder.resolve() / "figures")
    CourseParameters.from_dict(values, where=f"experiment {name}")
    return values


def run(name: str, seed: int = 0, budget_minutes: float | None = None, runs: str | Path = "runs",
        records: str | Path | None = "report/runs", smoke: bool = False, command: list[str] | None = None) -> bool:
    """Run the experiment's notebooks into runs/<run name>; True once every one has run, False when
    the budget stopped training (the same call goes on from there). records: where each finished
    stage is recorded (None: nowhere)."""
    from igptlib.records import note_command, record_run

    pm = papermill()
    folder = Path(runs) / run_name(name, seed)
    values = parameters(name, folder, seed, smoke, budget_minutes)
    note_command(folder, command)
    deadline = None if budget_minutes is None else time.monotonic() + budget_minutes * 60
    for notebook in experiment(name).notebooks:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:  # only training stops part way: nothing else may start once the budget is spent
                print(f"{folder.name}: the budget ran out before {notebook}; the same command goes on from there", flush=True)
                return False
            values["budget_minutes"] = left / 60
        print(f"{folder.name}: {notebook} -> {folder / 'notebooks'}", flush=True)
        started = time.perf_counter()
        out = folder / "notebooks" / f"{notebook}.ipynb"
        try:
            execute(notebook, out, values)
        except pm.PapermillExecutionError as error:
            if error.ename == "Unfinished":  # the budget ran out: a clean stop at a checkpoint
                print(f"{folder.name}: {error.evalue}", flush=True)
                return False
            # One line; the executed notebook, kept, shows the cell and its traceback.
            failed = ConfigError if error.ename == "ConfigError" else RuntimeError
            raise failed(f"{notebook} (kept in {out}): {error.ename}: {error.evalue}") from None
        print(f"{folder.name}: {notebook} done in {time.perf_counter() - started:.0f} s", flush=True)
        if records is not None and (folder / "metrics.json").exists():
            print(f"{folder.name}: recorded in {record_run(folder, records=records)}", flush=True)
    return True
