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
from pathlib import Path

import torch

from igptlib.config import DEVICES, Config, ConfigError, DataConfig, RunConfig, read_json, run_config
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
    size: str = "xs"  # model preset: xs (CPU), s, m, l
    objective: str = "ar"
    # Pre-training steps (the xs default fits the 20-minute CPU pipeline); None: the size's preset
    # schedule (its steps, warm-up, validation and checkpoints), what the GPU sweep trains.
    steps: int | None = 300
    # Fine-tuning steps (L_GEN + L_CLF) from the pre-trained checkpoint; None: a tenth of pre-training.
    finetune_steps: int | None = 150
    probe_train: int = 5000  # training images the linear probes are fitted on
    batch_size: int = 64
    seed: int = 0
    data_root: str = "data"
    run_dir: str | None = None  # where a run's checkpoints, logs and metrics live (None: see run_path)
    figures_dir: str | None = None  # None: figures/ (runs/smoke/figures in smoke mode)
    checkpoint: str | None = None  # a checkpoint to complete or evaluate with (None: the run's best)
    samples: int = 8
    rows: int = 14  # rows of the image kept for completion
    smoke: bool = False  # tiny data and steps: what the tests run
    device: str = "auto"  # where the model trains and samples: auto (the GPU when there is one), cpu or cuda
    show_tensorboard: bool = True  # 05_training shows its logs inline (never in smoke mode; sweeps turn it off)

    def validate(self):
        DataConfig(dataset=self.dataset, root=self.data_root, batch_size=self.batch_size, seed=self.seed)
        for name in ("steps", "finetune_steps", "samples", "probe_train"):
            if getattr(self, name) is None and name in ("steps", "finetune_steps"):
                continue
            if getattr(self, name) < 1:
                raise ConfigError(f"parameter {name}: expected a positive integer, got {getattr(self, name)}")
        if self.device not in DEVICES:
            raise ConfigError(f"parameter device: expected one of {list(DEVICES)}, got {self.device!r}")

    @property
    def torch_device(self) -> torch.device:
        """The device the `device` parameter names (an error for cuda on a machine without a GPU)."""
        return resolve_device(self.device)

    def data_config(self, **changes) -> DataConfig:
        """The DataConfig these parameters describe; smoke mode keeps a few hundred images."""
        limits = dict(limit_train=512, limit_val=64, limit_test=64, batch_size=16) if self.smoke else {}
        values = dict(dataset=self.dataset, root=self.data_root, batch_size=self.batch_size, seed=self.seed)
        return DataConfig(**{**values, **limits, **changes})

    @property
    def run_path(self) -> Path:
        """The run folder: run_dir, else runs/<dataset>-<size>; smoke runs default to runs/smoke/..."""
        if self.run_dir is not None:
            return Path(self.run_dir)
        return Path("runs/smoke" if self.smoke else "runs") / f"{self.dataset}-{self.size}"

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


def run_configs(params: CourseParameters):
    """(pre-training, fine-tuning) RunConfigs for the parameters: the size's preset with the
    notebook's steps, batch size and seed (or, with steps None, the preset's own schedule); smoke
    mode shrinks data, steps and validation."""
    config = run_config(params.size, params.dataset, params.objective, root=params.data_root,
                        batch_size=params.batch_size, seed=params.seed)
    # The test split is 07_evaluation's: a test pass here would only repeat it.
    train = config.train.replace(progress_bar=not params.smoke, test=False, accelerator=params.device)
    optim = config.optim
    if params.smoke:  # smoke runs still have to pass the notebooks' checks (the loss falls, accuracy beats chance)
        steps, finetune_steps = 20, 60
    else:
        steps = config.train.steps if params.steps is None else params.steps
        finetune_steps = max(steps // 10, 1) if params.finetune_steps is None else params.finetune_steps
    data = params.data_config() if params.smoke else config.data
    if params.smoke or params.steps is not None:
        every = max(steps // 5, 1)
        optim = optim.replace(warmup_steps=min(optim.warmup_steps, steps // 5))
        train = train.replace(steps=steps, val_every=every, save_every=every, checkpoint_steps=[],
                              log_every=max(steps // 30, 1), val_batches=2 if params.smoke else 10)
    pretrain = config.replace(data=data.to_dict(), optim=optim.to_dict(), train=train.to_dict())
    finetune = pretrain.replace(
        optim=pretrain.optim.replace(finetune=True, lr=pretrain.optim.lr / 3,
                                     warmup_steps=max(finetune_steps // 10, 1)).to_dict(),
        train=pretrain.train.replace(steps=finetune_steps, val_every=max(finetune_steps // 3, 1),
                                     save_every=max(finetune_steps // 3, 1), checkpoint_steps=[],
                                     init_from=str(params.run_path / "checkpoints" / "best.ckpt")).to_dict(),
    )
    return pretrain, finetune


def train_once(config, run_dir: str | Path) -> dict:
    """Train the run unless run_dir already holds this very run, finished: then return its metrics.

    This is what makes the README's main command cheap to repeat. A folder holding another
    config, or an unfinished run, is left to train.train, which refuses to overwrite it.
    """
    from igptlib.train import train

    run_dir = Path(run_dir)
    metrics = run_dir / "metrics.json"
    if metrics.exists() and RunConfig.load_yaml(run_dir / "config.yaml") == config:
        print(f"{run_dir} already holds this run, finished; delete the folder to train again")
        return read_json(metrics)
    return train(config, run_dir)
