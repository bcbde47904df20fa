"""Training runs: one config, one run folder, Lightning's Trainer, and resuming an interrupted run.

A run folder holds everything a run produces:
    config.yaml                the RunConfig (data, model, optim, train), loadable with RunConfig.load_yaml
    checkpoints/last.ckpt      refreshed every train.save_every steps and at the end (resume from it)
    checkpoints/best.ckpt      lowest validation nats per pixel so far
    checkpoints/step-N.ckpt    at the chosen steps (the paper names checkpoints by iterations: 131000, ...)
    logs/csv/version_*/        metrics.csv and hparams.yaml, one version per (re)start
    logs/tensorboard/version_*/
    metrics.json               final metrics, test metrics, step, and the wall time of the last
                               (re)start only: a resumed run's whole time is summed from its
                               TensorBoard logs (igptlib.records, timing.json)
    machines.json              per (re)start the step it began at, the hardware and the precision
                               it trained in: a run resumed on another machine says which steps ran where

`igpt train` resumes with --resume: the Trainer restores weights, optimiser, schedule and step
from last.ckpt, and TrainBatches replays the data from the same place with the same order and
augmentation, so that the run goes on as if it had never stopped. Multi-GPU and multi-node runs are
Lightning's DDP, chosen with --devices, --strategy ddp and --num-nodes.
"""
from __future__ import annotations

import contextlib
import datetime
import fcntl
import math
import os
import time
import warnings
from pathlib import Path

import lightning as L
import numpy as np
import torch
import yaml
from torch.utils.data import default_collate

from igptlib.config import ConfigError, RunConfig, excerpt, read_json, read_yaml, write_atomically, write_json
from igptlib.device import bf16_faster_on_cpu, bf16_on_gpu, lightning_accelerator
from igptlib.records import describe_hardware
from igptlib.model_files import check_checkpoint
from igptlib.lightning_module import ImageGPT, decay_start


# -- data: resumable training batches --------------------------------------------------------------


def _seed_for(*numbers: int) -> int:
    return int(np.random.SeedSequence(list(numbers)).generate_state(1)[0])


class TrainBatches:
    """Training batches whose order and augmentation depend only on (seed, epoch, batch, rank).

    Lightning restores an interrupted run's step but restarts a DataLoader from its first batch,
    with other random numbers. These batches instead start where the global step says (read when
    an epoch's iteration begins), so a resumed run sees exactly the batches it would have seen.
    Like DistributedSampler: a seeded permutation per epoch, every world_size-th sample per process
    (a remainder that cannot be shared evenly is left out of that epoch). Batches are fetched in
    the main process, each under its own seed, so random augmentation is reproducible too.
    Not torchdata's StatefulDataLoader: its position lives in the checkpoint's loader state, which
    checkpoints from before it lack; here the global step alone says where to go on.
    """

    def __init__(self, dataset, batch_size: int, seed: int, rank: int = 0, world_size: int = 1, start_step=lambda: 0):
        self.dataset, self.batch_size, self.seed = dataset, batch_size, seed
        self.rank, self.world_size, self.start_step = rank, world_size, start_step
        self.per_rank = len(dataset) // world_size
        if self.per_rank == 0:
            raise ValueError(f"{len(dataset)} training samples cannot be shared among {world_size} processes")

    def __len__(self) -> int:
        return math.ceil(self.per_rank / self.batch_size)

    def __iter__(self):
        epoch, first = divmod(self.start_step(), len(self))
        order = torch.randperm(len(self.dataset), generator=torch.Generator().manual_seed(_seed_for(self.seed, epoch)))
        mine = order[self.rank :: self.world_size][: self.per_rank]
        for index in range(first, len(self)):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(_seed_for(self.seed, epoch, index, self.rank))
                picked = mine[index * self.batch_size : (index + 1) * self.batch_size]
                yield default_collate([self.dataset[int(i)] for i in picked])


class ResumableData(L.LightningDataModule):
    """A data module (PixelDataModule or any with the same loaders) whose training batches resume.

    Validation and test loaders are the wrapped module's own; Lightning shards them under DDP.
    """

    def __init__(self, inner: L.LightningDataModule, seed: int):
        super().__init__()
        self.inner, self.seed = inner, seed

    @property
    def palette(self):
        return getattr(self.inner, "palette", None)

    def prepare_data(self):
        self.inner.prepare_data()

    def setup(self, stage: str):
        self.inner.setup(stage)

    def train_dataloader(self):
        loader = self.inner.train_dataloader()
        trainer = self.trainer
        return TrainBatches(loader.dataset, loader.batch_size, self.seed, trainer.global_rank, trainer.world_size,
                            start_step=lambda: trainer.global_step)

    def val_dataloader(self):
        return self.inner.val_dataloader()

    def test_dataloader(self):
        return self.inner.test_dataloader()


# -- checkpoints ------------------------------------------------------------------------------------


class RunCheckpoints(L.Callback):
    """checkpoints/last.ckpt every `save_every` steps and at the last step; step-N.ckpt at chosen steps.

    Saved after a whole optimizer step, never in the middle of one, so that resuming from any of
    them continues exactly. last.ckpt is written beside and then renamed, so an interruption while
    saving leaves the previous one intact. Not ModelCheckpoint(every_n_train_steps, save_last):
    it writes last.ckpt in place, keeps steps at a fixed interval rather than a list (the paper's
    131k/262k/524k), and saves nothing when a time budget stops the run between its intervals.
    """

    def __init__(self, folder: Path, save_every: int, steps: list[int]):
        self.folder, self.save_every, self.steps = Path(folder), save_every, set(steps)
        self.saved_step = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step
        if step in self.steps:
            trainer.save_checkpoint(self.folder / f"step-{step}.ckpt", weights_only=False)
        if step % self.save_every == 0 or step == trainer.max_steps:
            self._save_last(trainer)

    def on_train_end(self, trainer, pl_module):
        # A run stopped early (a time budget, an interrupt Lightning caught) still resumes from its last step.
        if trainer.global_step != self.saved_step:
            self._save_last(trainer)

    def _save_last(self, trainer) -> None:
        partial = self.folder / "last.ckpt.partial"
        trainer.save_checkpoint(partial, weights_only=False)
        if trainer.is_global_zero:
            os.replace(partial, self.folder / "last.ckpt")
        trainer.strategy.barrier("last.ckpt")
        self.saved_step = trainer.global_step


class StopAfter(L.Callback):
    """Stop training cleanly, after a whole step, once `seconds` have passed since it was made.

    Not Lightning's Timer (Trainer(max_time=...)): that one keeps its elapsed time in the
    checkpoint, so a resumed run would count the earlier processes' time against this one's budget.
    """

    def __init__(self, seconds: float):
        self.seconds, self.started = seconds, time.perf_counter()
        self.stopped = False

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if time.perf_counter() - self.started >= self.seconds:
            self.stopped = trainer.should_stop = True


class EarlyStoppingFrom(L.pytorch.callbacks.EarlyStopping):
    """Lightning's EarlyStopping, counting only the validations from step `start` on: at a cosine
    schedule's peak rate, fine-tuning's validation accuracy wanders for thousands of steps before
    the rate falls and it climbs (classifier-mnist-4passes: 0.9575, 0.9505, 0.9375 at steps 1499,
    1999 and 2499), and stopping there would keep a classifier the schedule never refined."""

    def __init__(self, *args, start: int = 0, **kwargs):
        super().__init__(*args, **kwargs)
        self.start = start

    def on_validation_end(self, trainer, pl_module):
        if trainer.global_step >= self.start:
            super().on_validation_end(trainer, pl_module)


class StepProgressBar(L.pytorch.callbacks.TQDMProgressBar):
    """Lightning's tqdm bar, counting the run's optimizer steps out of all its steps (train.steps).
    A run here is a number of steps over as many epochs as they take (max_epochs=-1), which
    Lightning's own bars count by epoch: "Epoch 0/-2"."""

    def on_train_start(self, trainer, pl_module):
        super().on_train_start(trainer, pl_module)
        bar = self.train_progress_bar
        bar.total = trainer.max_steps
        bar.n = bar.initial = trainer.global_step  # a resumed run starts part way; its speed counts from here
        bar.set_description("training steps")

    def on_train_epoch_start(self, trainer, *_):
        pass  # one bar for the whole run, not one per epoch

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        bar = self.train_progress_bar
        if self._should_update(trainer.global_step, trainer.max_steps) and not bar.disable:
            bar.n = trainer.global_step
            bar.set_postfix(self.get_metrics(trainer, pl_module))  # and redraws the bar


class MachineLoad(L.Callback):
    """Log the machine's load average (processes running or waiting for a core, over the last
    minute) beside the training curves: a run's wall minutes mean little without it on a shared
    machine, and the report reads it from the logs (comparison.mean_load)."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        pl_module.log("machine/load_average", os.getloadavg()[0], on_step=True, on_epoch=False)


# -- the run ----------------------------------------------------------------------------------------


def validation_score(config: RunConfig) -> tuple[str, str]:
    """The logged metric that picks best.ckpt and stops a run early, and whether "min" or "max" is better:
    a classifier is judged by its accuracy, a generative model by its likelihood."""
    return ("val/acc", "max") if config.optim.finetune else ("val/nats_per_pixel", "min")


# mallopt's parameter numbers and glibc's defaults for them (malloc.h, mallopt(3))
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_MMAP_MAX = -1, -3, -4
GLIBC_DEFAULTS = {M_TRIM_THRESHOLD: 128 * 1024, M_MMAP_THRESHOLD: 128 * 1024, M_MMAP_MAX: 65536}


@contextlib.contextmanager
def freed_memory_reused():
    """While inside, make glibc's malloc keep freed memory for reuse instead of handing it back to
    the kernel; on leaving, hand it back and restore glibc's defaults. Yields False where the C
    library is not glibc (nothing is changed then).

    On a CPU every activation is a malloc. glibc serves large blocks with mmap and unmaps them when
    freed, so each training step faults its gigabytes of activations in anew, and the threads queue
    on the kernel's memory lock: at batch 64 here a step took 2.3x as long. With mmap and trimming
    off, freed blocks are reused. But only while training: the ladder's process went on to
    evaluate ladder-cpu-m at batch 64 with the settings left on, its heap grew by some 250 MB a
    batch, never given back, and the kernel killed it at 24 GB.
    """
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        yield False
        return
    reusing = bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1))
    try:
        yield reusing
    finally:
        for parameter, value in GLIBC_DEFAULTS.items():
            libc.mallopt(parameter, value)
        libc.malloc_trim(0)


def first_process() -> bool:
    """True in the process a user started (not in the ranks Lightning or a cluster launches besides it)."""
    return all(int(os.environ.get(name, "0")) == 0 for name in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"))


def checkpoint_steps(config: RunConfig) -> list[int]:
    """The steps that keep a checkpoint of their own: the chosen ones, and where a wsd decay begins
    (the checkpoint to extend the run from)."""
    o, steps = config.optim, list(config.train.checkpoint_steps)
    if o.schedule == "wsd":
        steps.append(decay_start(o.warmup_steps, config.train.steps, o.decay_fraction))
    return sorted(set(steps))


def find_run_folder(checkpoint: str | Path) -> Path | None:
    """The run folder of a checkpoint: the folder holding config.yaml, the checkpoint's or its parent's."""
    checkpoint = Path(checkpoint)
    for folder in (checkpoint.parent, checkpoint.parent.parent):
        if (folder / "config.yaml").exists():
            return folder
    return None


class RunFolderBusy(OSError):
    """Another process is training in this run folder."""


def _check_folder(run_dir: Path, resume: bool) -> None:
    saved = run_dir / "config.yaml"
    if not resume and (saved.exists() or any((run_dir / "checkpoints").glob("*.ckpt"))):
        raise FileExistsError(
            f"{run_dir} already holds a run; continue it with --resume (resume=True) or choose another run folder"
        )
    if resume and not saved.exists():
        raise FileNotFoundError(f"nothing to resume in {run_dir}: it has no config.yaml")


def lock_run_folder(run_dir: Path):
    """Hold run_dir/.lock until the returned file is closed: one training process per run folder.

    flock, not a marker file: the kernel releases it when the process ends, killed or not, so a
    crash never leaves a folder locked.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    handle = open(run_dir / ".lock", "a")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise RunFolderBusy(f"{run_dir} is in use: another process is training in it (it holds {run_dir / '.lock'}); "
                            "wait for it to end, or choose another run folder") from None
    return handle


def _flat(values: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in values.items():
        flat.update(_flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return flat


def _record_config(config: RunConfig, run_dir: Path, resume: bool, step: int) -> None:
    """Write config.yaml; a resumed run whose settings changed also gets an entry in history.yaml."""
    saved = run_dir / "config.yaml"
    if resume:
        before, after = _flat(RunConfig.load_yaml(saved).to_dict()), _flat(config.to_dict())
        changes = {key: [before.get(key), value] for key, value in after.items() if before.get(key) != value}
        if changes:
            print(f"{run_dir}: resumed at step {step} with changed settings (recorded in history.yaml): "
                  + ", ".join(f"{key} {old!r} -> {new!r}" for key, (old, new) in changes.items()))
            history_path = run_dir / "history.yaml"
            history = read_yaml(history_path, "the run's history as igpt writes it") if history_path.exists() else []
            if not isinstance(history, list):
                raise ConfigError(f"{history_path}: holds {excerpt(history)}; expected the list of resumptions igpt writes "
                                  "(move it away to start a new one)")
            history.append({"resumed_at_step": step, "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                            "changes": changes})
            write_atomically(history_path, yaml.safe_dump(history, sort_keys=False))
    config.save_yaml(saved)


def _record_machine(run_dir: Path, step: int, precision: str) -> None:
    """Add this process to machines.json: the step it starts from, the hardware and the precision
    it trains in. A run started before machines.json was kept begins the list with what the last
    earlier process wrote into metrics.json (its only trace; null where it wrote none)."""
    path = run_dir / "machines.json"
    machines = read_json(path) if path.exists() else []
    if not machines and step > 0:
        earlier = read_json(run_dir / "metrics.json") if (run_dir / "metrics.json").exists() else {}
        machines.append({"from_step": 0, "hardware": earlier.get("hardware"), "precision": earlier.get("precision")})
    machines.append({"from_step": step, "hardware": describe_hardware(), "precision": precision})
    write_json(path, machines)


def train(config: RunConfig, run_dir: str | os.PathLike, resume: bool = False,
          datamodule: L.LightningDataModule | None = None, callbacks: list[L.Callback] = (),
          budget_seconds: float | None = None) -> dict:
    """Train (or go on training) the run in `run_dir`; return the metrics also written to metrics.json.

    resume: continue from checkpoints/last.ckpt (the folder must hold this run's config.yaml).
    datamodule: defaults to PixelDataModule(config.data); any module whose loaders yield
    (tokens [B, T], labels [B]) and which has a .palette after setup() will do.
    callbacks: more Lightning callbacks for the Trainer.
    budget_seconds: stop after a whole step once this much wall time has passed (counted from this
    call), with last.ckpt saved there, so that `resume` goes on from it.
    """
    stop = StopAfter(budget_seconds) if budget_seconds is not None else None
    from lightning.pytorch.accelerators import CPUAccelerator
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    from igptlib.data import PixelDataModule

    run_dir = Path(run_dir)
    checkpoints = run_dir / "checkpoints"
    last = checkpoints / "last.ckpt"
    # The device first: cuda without a GPU is an error before anything else happens.
    accelerator, precision = lightning_accelerator(config.train.accelerator), config.train.precision
    if accelerator == "gpu" and precision == "bf16-mixed" and not bf16_on_gpu(torch.device("cuda")):
        precision = "16-mixed"  # a GPU without bfloat16 units (a T4) only emulates it, slowly
        print("this GPU computes bfloat16 only by emulation: training in float16 autocast (16-mixed) instead")
    if accelerator == "cpu" and precision == "bf16-mixed" and not bf16_faster_on_cpu():
        precision = "32-true"  # autocast would only add conversions around slower kernels
        print("this CPU multiplies bfloat16 more slowly than float32: training in float32 (32-true) instead")
    ckpt_path, step = None, 0
    if first_process():
        _check_folder(run_dir, resume)
    if resume and last.exists():
        # a clear error before Lightning meets another shape
        step = check_checkpoint(last, config.model).get("global_step", 0)
        ckpt_path = str(last.resolve())

    # On 2 cores the main process loads data (num_workers=0) on purpose; TrainBatches resumes
    # mid-epoch though Lightning cannot tell; a resumed run's checkpoint folder is not empty.
    for message in ("does not have many workers", "your dataloader is not resumable", "exists and is not empty"):
        warnings.filterwarnings("ignore", f".*{message}.*")
    seed = config.data.seed  # the one seed: split, palette, initialisation, data order, masks
    L.seed_everything(seed, workers=True, verbose=False)
    data = ResumableData(datamodule if datamodule is not None else PixelDataModule(config.data), seed)
    t = config.train
    if t.init_from:
        module = ImageGPT.from_pretrained(t.init_from, config.optim, seed=seed, model=config.model)
    else:
        module = ImageGPT(config.model, config.optim, seed=seed)

    monitor, mode = validation_score(config)
    best = ModelCheckpoint(
        dirpath=checkpoints, filename="best", monitor=monitor, mode=mode, save_top_k=1,
        auto_insert_metric_name=False, enable_version_counter=False,
    )
    early = None if t.early_stop is None else EarlyStoppingFrom(monitor, mode=mode, patience=t.early_stop,
                                                                start=t.early_stop_from, check_on_train_epoch_end=False)
    trainer = L.Trainer(
        max_steps=t.steps, max_epochs=-1, val_check_interval=t.val_every, check_val_every_n_epoch=None,
        limit_val_batches=t.val_batches if t.val_batches is not None else 1.0,
        precision=precision, accelerator=accelerator, devices=t.devices, strategy=t.strategy, num_nodes=t.num_nodes,
        gradient_clip_val=config.optim.grad_clip or None, gradient_clip_algorithm="norm",
        logger=[CSVLogger(run_dir / "logs", name="csv"), TensorBoardLogger(run_dir / "logs", name="tensorboard", default_hp_metric=False)],
        callbacks=[RunCheckpoints(checkpoints, t.save_every, checkpoint_steps(config)), best, MachineLoad(), *callbacks,
                   *([stop] if stop else []), *([early] if early else []), *([StepProgressBar()] if t.progress_bar else [])],
        enable_progress_bar=t.progress_bar, enable_model_summary=t.progress_bar, log_every_n_steps=t.log_every,
        default_root_dir=run_dir,
    )
    lock = None
    if first_process():
        # Only now that every check has passed: a run refused by any of them changes no file.
        lock = lock_run_folder(run_dir)
        _check_folder(run_dir, resume)  # again, under the lock: another process may have started this run
        _record_config(config, run_dir, resume, step)
        _record_machine(run_dir, step, precision)
        if resume and ckpt_path is None:
            print(f"{run_dir}: no checkpoint saved yet; starting from step 0")
    try:
        # glibc keeps freed memory for reuse while training on the CPU, and only then (see freed_memory_reused)
        with freed_memory_reused() if isinstance(trainer.accelerator, CPUAccelerator) else contextlib.nullcontext():
            started = time.perf_counter()
            trainer.fit(module, datamodule=data, ckpt_path=ckpt_path, weights_only=True)
            wall = time.perf_counter() - started
            metrics = {
                "global_step": trainer.global_step,
                "epoch": trainer.current_epoch,
                "wall_seconds": round(wall, 1),
                "stopped_by_budget": bool(stop and stop.stopped),
                "stopped_early": bool(early and early.wait_count >= early.patience),
                "parameters": module.model.num_parameters(),
                "hardware": describe_hardware(),  # the run's record says what it trained on
                "precision": precision,  # the one it trained in, which the config's may not be
                "best_checkpoint": best.best_model_path or None,
                f"best_{monitor.replace('/', '_')}": None if best.best_model_score is None else float(best.best_model_score),
                "final": {k: float(v) for k, v in trainer.callback_metrics.items()},
            }
            if t.test:
                results = trainer.test(module, datamodule=data, ckpt_path=best.best_model_path or None,
                                       weights_only=True, verbose=t.progress_bar)
                metrics["test"] = {k: float(v) for k, v in results[0].items()} if results else {}
            if trainer.is_global_zero:
                write_json(run_dir / "metrics.json", metrics)
            return metrics
    except BaseException:
        if lock is not None and not resume and not any(checkpoints.glob("*.ckpt")):
            (run_dir / "config.yaml").unlink(missing_ok=True)  # nothing to resume: the folder can take a new run
        raise
    finally:
        if lock is not None:
            lock.close()
