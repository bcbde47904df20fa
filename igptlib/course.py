"""What the notebooks share: their parameters (validated, since papermill only warns about unknown
names), the smoke mode the tests switch on, and where a run's files go.

Every notebook opens with its Colab badge and the same set-up cell (on Colab it clones and installs
the course: igptlib.colab; elsewhere it does nothing). The next cell does the imports and ends with
`_names_before = set(globals())`; then comes the cell tagged `parameters` (which papermill follows
with its injected cell), each name typed as CourseParameters types it (`steps: "Optional[int]" =
300`, quoted where the type would need an import) so that `papermill --help-notebook` lists the
types; then `params = course.parameters(globals(), _names_before)`: any name that appeared in
between must be a known parameter of the right type. Notebooks run from the repository root (course.go_to_root),
so their paths mean the same under JupyterLab, papermill and nbval.
"""
from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

import torch

from igptlib.config import (DEVICES, OBJECTIVES, Config, ConfigError, DataConfig, RunConfig, apply_overrides, finetune_run_config,
                            read_json, run_config, write_atomically)
from igptlib.device import resolve_device


def go_to_root() -> Path:
    """Make the repository root the working directory (notebooks start in notebooks/)."""
    here = Path.cwd()
    for folder in (here, *here.parents):
        if (folder / "igptlib").is_dir() and (folder / "notebooks").is_dir():
            os.chdir(folder)
            return folder
    return here


def smoke_default() -> bool:
    """Smoke mode is on when IGPT_SMOKE=1: how the test suite runs every notebook in seconds."""
    return os.environ.get("IGPT_SMOKE") == "1"


@dataclasses.dataclass
class CourseParameters(Config):
    """The parameters any notebook of the course may take (each uses the ones it needs)."""

    dataset: str = "mnist"
    # The preset (igptlib.config.TRAIN_PRESETS): course, the default, is the time-to-quality recipe
    # sized for the 30-minute CPU pipeline; xs a smaller CPU model; s, m, l the one-GPU sweep.
    size: str = "course"
    objective: str = "ar"  # ar (next pixel) or bert (masked pixels)
    augment: list[str] | None = None  # pre-training's augmentation (None: the size's preset; [] for none)
    # More changes to the pre-training and fine-tuning configs, as SECTION.FIELD=VALUE (igptlib.config.apply_overrides).
    overrides: list[str] = dataclasses.field(default_factory=list)
    finetune_overrides: list[str] = dataclasses.field(default_factory=list)
    # Pre-training steps whose checkpoints are kept and evaluated (07_evaluation: evaluation-step-N.json);
    # the last of them is then the pre-trained model that is fine-tuned and evaluated in full. []: the best checkpoint.
    evaluate_steps: list[int] = dataclasses.field(default_factory=list)
    # Fine-tune this checkpoint or model file (a shipped model's name, a .safetensors or a .ckpt) instead
    # of pre-training: the run folder then holds the fine-tuning alone.
    finetune_from: str | None = None
    # 05_training stops at a checkpoint once this many minutes have passed; run it again to go on. None: no limit.
    budget_minutes: float | None = None
    robustness: bool = False  # 07_evaluation also measures inverted and rotated test digits (igptlib.robustness)
    # Pre-training steps; None: the size's preset schedule (its steps, warm-up, validation and checkpoints).
    steps: int | None = None
    # Fine-tuning steps (L_GEN + L_CLF) from the pre-trained checkpoint; None: the size's fine-tuning
    # preset (igptlib.config.FINETUNE_PRESETS), else a tenth of pre-training.
    finetune_steps: int | None = None
    probe_train: int = 10000  # training images the linear probes are fitted on
    batch_size: int | None = None  # None: the size's preset
    seed: int = 0
    data_root: str = "data"
    run_dir: str | None = None  # where a run's checkpoints, logs and metrics live (None: see run_path)
    figures_dir: str | None = None  # None: figures/ (runs/smoke/figures in smoke mode)
    checkpoint: str | None = None  # a checkpoint to complete or evaluate with (None: the run's best)
    samples: int = 8
    rows: int | None = None  # rows of the image kept for completion (None: the top half)
    smoke: bool = False  # tiny data and steps: what the tests run
    device: str = "auto"  # where the model trains and samples: auto (the GPU when there is one), cpu or cuda
    show_tensorboard: bool = True  # 05_training shows its logs inline (never in smoke mode; sweeps turn it off)

    def validate(self):
        DataConfig(dataset=self.dataset, root=self.data_root, batch_size=self.batch_size or 1, seed=self.seed)
        for name in ("steps", "finetune_steps", "samples", "probe_train"):
            if getattr(self, name) is None and name in ("steps", "finetune_steps"):
                continue
            if getattr(self, name) < 1:
                raise ConfigError(f"parameter {name}: expected a positive integer, got {getattr(self, name)}")
        if self.device not in DEVICES:
            raise ConfigError(f"parameter device: expected one of {list(DEVICES)}, got {self.device!r}")
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"parameter objective: expected one of {list(OBJECTIVES)}, got {self.objective!r}")
        if any(step < 1 for step in self.evaluate_steps) or self.evaluate_steps != sorted(set(self.evaluate_steps)):
            raise ConfigError(f"parameter evaluate_steps: expected increasing positive steps, got {self.evaluate_steps}")
        if self.budget_minutes is not None and self.budget_minutes <= 0:
            raise ConfigError(f"parameter budget_minutes: expected a positive number of minutes, got {self.budget_minutes}")
        if self.finetune_from is not None and (self.evaluate_steps or self.overrides or self.augment is not None):
            raise ConfigError("parameter finetune_from: a run that fine-tunes a given model has no pre-training, so "
                              "evaluate_steps, overrides and augment do not apply (use finetune_overrides)")

    @property
    def torch_device(self) -> torch.device:
        """The device the `device` parameter names (an error for cuda on a machine without a GPU)."""
        return resolve_device(self.device)

    def data_config(self, **changes) -> DataConfig:
        """The DataConfig these parameters describe; smoke mode keeps a few hundred images."""
        limits = dict(limit_train=512, limit_val=64, limit_test=64, batch_size=16) if self.smoke else {}
        values = dict(dataset=self.dataset, root=self.data_root, seed=self.seed)
        if self.batch_size is not None:
            values["batch_size"] = self.batch_size
        return DataConfig(**{**values, **limits, **changes})

    @property
    def runs(self) -> Path:
        """The folder of the course's runs: runs/, or runs/smoke/ in smoke mode."""
        return Path("runs/smoke" if self.smoke else "runs")

    @property
    def run_path(self) -> Path:
        """The run folder 05_training trains into: run_dir, else runs/<dataset>-<size> (runs/smoke/... in smoke mode)."""
        if self.run_dir is not None:
            return Path(self.run_dir)
        return self.runs / f"{self.dataset}-{self.size}"

    @property
    def figures(self) -> Path:
        """Where figures go: figures/ for real runs; smoke runs keep their throwaway plots apart."""
        if self.figures_dir is not None:
            return Path(self.figures_dir)
        return Path("runs/smoke/figures") if self.smoke else Path("figures")


def parameters(namespace: dict, names_before: set[str]) -> CourseParameters:
    """The notebook's parameters as a validated CourseParameters.

    `namespace` is the notebook's globals(); names_before, the names that existed before the
    parameters cell. A new name that is not a parameter (a typo in a papermill call, say) is an error.
    """
    known = {field.name for field in dataclasses.fields(CourseParameters)}
    new = {name for name in namespace if name not in names_before and not name.startswith("_")}
    unknown = sorted(new - known)
    if unknown:
        raise ConfigError(f"unknown notebook parameter(s) {unknown}; known parameters are {sorted(known)}")
    return CourseParameters.from_dict({name: namespace[name] for name in new}, where="notebook parameters")


SMOKE_STEPS, SMOKE_FINETUNE_STEPS = 20, 60


def named_steps(params: CourseParameters) -> list[int]:
    """The pre-training steps whose checkpoints are kept and evaluated: evaluate_steps, which smoke
    mode scales to its few steps, keeping their proportions."""
    steps = params.evaluate_steps
    if not params.smoke or not steps:
        return list(steps)
    return sorted({max(1, round(step * SMOKE_STEPS / steps[-1])) for step in steps})


def pretrained_checkpoint(run_path: Path, params: CourseParameters) -> Path:
    """The pre-trained model that is fine-tuned and evaluated in full: the last named step's
    checkpoint where evaluate_steps names steps, else the best on validation."""
    steps = named_steps(params)
    return run_path / "checkpoints" / (f"step-{steps[-1]}.ckpt" if steps else "best.ckpt")


def finetune_path(params: CourseParameters) -> Path:
    """Where 05_training fine-tunes: finetune/ in the run folder, or the run folder itself for a run
    that fine-tunes a given model (finetune_from) and so has no pre-training of its own."""
    return params.run_path if params.finetune_from is not None else params.run_path / "finetune"


def _overridden(config: RunConfig, overrides: list[str], name: str, smoke: bool) -> RunConfig:
    try:
        config = RunConfig.from_dict(apply_overrides(config.to_dict(), overrides), where=f"parameter {name}")
    except ConfigError as error:
        raise ConfigError(f"parameter {name}: {error}") from None
    if smoke:  # a long run's intervals and warm-up would leave a smoke run unvalidated, or still warming up
        train = config.train
        config = config.replace(train=train.replace(val_every=min(train.val_every, train.steps),
                                                    save_every=min(train.save_every, train.steps)).to_dict(),
                                optim=config.optim.replace(warmup_steps=min(config.optim.warmup_steps, train.steps // 5)).to_dict())
    return config


def run_configs(params: CourseParameters):
    """(pre-training, fine-tuning) RunConfigs for the parameters: the size's presets (its schedule,
    and its fine-tuning preset where it has one) changed by the notebook's steps, batch size, seed,
    objective, augmentation and overrides; smoke mode shrinks data, steps and validation. With
    finetune_from there is no pre-training (None): the given model's own training config is fine-tuned."""
    data = {"root": params.data_root, "seed": params.seed}
    if params.batch_size is not None:
        data["batch_size"] = params.batch_size
    if params.finetune_from is not None:
        from igptlib.shipped import training_config

        config, weights = training_config(params.finetune_from)
        config = config.replace(data=config.data.replace(**data).to_dict())
        init_from = str(weights)
    else:
        config = run_config(params.size, params.dataset, params.objective, **data)
        if params.augment is not None:
            config = config.replace(data=config.data.replace(augment=params.augment).to_dict())
        init_from = str(pretrained_checkpoint(params.run_path, params))
    # The test split is 07_evaluation's: a test pass here would only repeat it.
    train = config.train.replace(progress_bar=not params.smoke, test=False, accelerator=params.device)
    optim, data = config.optim, config.data
    if params.smoke:  # smoke runs still have to pass the notebooks' checks (the loss falls, accuracy beats chance)
        data = data.replace(limit_train=512, limit_val=64, limit_test=64, batch_size=16)
        steps, finetune_steps = SMOKE_STEPS, SMOKE_FINETUNE_STEPS
    else:
        steps, finetune_steps = params.steps or train.steps, params.finetune_steps
    if params.smoke or params.steps is not None:
        every = max(steps // 5, 1)
        optim = optim.replace(warmup_steps=min(optim.warmup_steps, steps // 5))
        train = train.replace(steps=steps, val_every=every, save_every=every, checkpoint_steps=[],
                              log_every=max(steps // 30, 1), val_batches=2 if params.smoke else 10)
    if params.evaluate_steps:
        named = named_steps(params)
        if named[-1] > train.steps:
            raise ConfigError(f"parameter evaluate_steps: step {named[-1]} is past the run's last step, {train.steps}")
        train = train.replace(checkpoint_steps=named)
    pretrain = config.replace(data=data.to_dict(), optim=optim.to_dict(), train=train.to_dict())
    pretrain = _overridden(pretrain, params.overrides, "overrides", params.smoke)
    finetune = None if params.finetune_from is not None else finetune_run_config(params.size, pretrain, init_from)
    if finetune is None:
        finetune_steps = finetune_steps or max(pretrain.train.steps // 10, 1)
        finetune = pretrain.replace(
            optim=pretrain.optim.replace(finetune=True, lr=pretrain.optim.lr / 3,
                                         warmup_steps=max(finetune_steps // 10, 1)).to_dict(),
            train=pretrain.train.replace(checkpoint_steps=[], init_from=init_from).to_dict())
    if finetune_steps is not None:
        every = max(finetune_steps // 3, 1)
        finetune = finetune.replace(
            optim=finetune.optim.replace(warmup_steps=min(finetune.optim.warmup_steps, finetune_steps // 5)).to_dict(),
            train=finetune.train.replace(steps=finetune_steps, val_every=every, save_every=every).to_dict())
    finetune = _overridden(finetune, params.finetune_overrides, "finetune_overrides", params.smoke)
    return (None if params.finetune_from is not None else pretrain), finetune


LATEST_RUN = "latest-run.txt"  # in the runs folder: the run folder 05_training trained last


def remember_run(params: CourseParameters) -> Path:
    """Note params.run_path as the run that 06_completion and 07_evaluation work on by default, so
    that a run's parameters are set once, in 05_training."""
    return write_atomically(params.runs / LATEST_RUN, f"{params.run_path}\n")


def trained_run(params: CourseParameters) -> tuple[Path, RunConfig]:
    """(the run folder, its pre-training config) that 06_completion and 07_evaluation work on: run_dir
    when given, else the run 05_training trained last; everything else about the run is read from
    its config.yaml."""
    latest = params.runs / LATEST_RUN
    if params.run_dir is not None:
        folder = Path(params.run_dir)
    elif latest.exists():
        folder = Path(latest.read_text().strip())
    else:
        folder = params.run_path
    if not (folder / "config.yaml").exists():
        raise ConfigError(f"{folder} holds no run (it has no config.yaml): run 05_training first, or set the "
                          "run_dir parameter to the folder of a run it trained")
    return folder, RunConfig.load_yaml(folder / "config.yaml")


class Unfinished(Exception):
    """A training stage that its time budget stopped at a checkpoint: running the notebook again goes on from it."""


def deadline(params: CourseParameters) -> float | None:
    """When the notebook's budget runs out (time.monotonic()); None without a budget."""
    return None if params.budget_minutes is None else time.monotonic() + params.budget_minutes * 60


def finished(metrics: dict, config: RunConfig) -> bool:
    """The run trained all its steps, or stopped early for want of progress on validation."""
    return metrics.get("global_step", 0) >= config.train.steps or metrics.get("stopped_early", False)


def train_once(config: RunConfig, run_dir: str | Path, deadline: float | None = None) -> dict:
    """Train the run unless run_dir already holds this very run, finished: then return its metrics.

    This is what makes the README's main command cheap to repeat. A run of this very config that
    was stopped (by a budget, or killed) goes on from its last checkpoint. With a deadline
    (time.monotonic()), training stops at a checkpoint once it has passed, and Unfinished says so:
    nothing after it may treat a half-trained model as trained. A folder holding another config is
    left to train.train, which refuses to overwrite it.
    """
    from igptlib.train import train

    run_dir = Path(run_dir)
    saved, metrics = run_dir / "config.yaml", run_dir / "metrics.json"
    same = saved.exists() and RunConfig.load_yaml(saved) == config
    if same and metrics.exists() and finished(read_json(metrics), config):
        print(f"{run_dir} already holds this run, finished; delete the folder to train again")
        return read_json(metrics)
    budget = None if deadline is None else max(deadline - time.monotonic(), 0.0)
    done = train(config, run_dir, resume=same, budget_seconds=budget)
    if not finished(done, config):
        raise Unfinished(f"{run_dir}: UNFINISHED, stopped at step {done['global_step']} of {config.train.steps} as the "
                         "time budget ran out (checkpoints/last.ckpt keeps it); nothing below is run on a half-trained "
                         "model: run the notebook again with the same parameters to go on from there")
    return done


RECORDS = Path("report/runs")


def recorded_results(dataset: str = "mnist", records: str | Path = RECORDS) -> str:
    """A Markdown table of what the committed records give: the course's default run (what `make`
    trains), the shipped models and the longest CPU run, read from their evaluation.json files, for
    the notebooks to show beside their own numbers. A record not committed yet says so."""
    records = Path(records)
    rows = [(f"{dataset}-course", f"{dataset}-course/finetune", "the default run (`make`, Run All on the defaults)"),
            (f"shipped-{dataset}", f"shipped-{dataset}-classifier", "the shipped models"),
            ("ladder-cpu-l", "ladder-cpu-l/finetune", "the CPU ladder's L (hours of training)")]
    lines = ["| run | image side | test nats/px | best linear probe | fine-tuned test accuracy | kappa |",
             "|---|---|---|---|---|---|"]
    for pretrained, finetuned, what in rows:
        found = [records / name / "evaluation.json" for name in (pretrained, finetuned)]
        if not all(path.exists() for path in found):
            lines.append(f"| {what} | no committed record yet ({records / pretrained}) | | | | |")
            continue
        generative, classifier = (read_json(path) for path in found)
        probes, scores = generative.get("probes", {}), classifier["classification"]
        probe = (f"{probes['best_test_accuracy']:.4f} (layer {probes['best_layer']}, {probes['train_examples']:,} images)"
                 if probes else "not measured")
        likelihood = generative.get("likelihood", {}).get("nats_per_pixel")
        lines.append(f"| {what} (`{records / pretrained}`) | {generative['data']['n_px']} | "
                     f"{'not measured' if likelihood is None else f'{likelihood:.4f}'} | {probe} | "
                     f"{scores['accuracy']:.4f} | {scores['kappa']:.4f} |")
    return "\n".join(lines)
