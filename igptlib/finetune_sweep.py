"""The fine-tuning learning rate, chosen on the validation split.

One short fine-tuning per learning rate, all from the same pre-trained checkpoint with the same
data, steps and schedule (finetune_config, with only the rate changed). The best validation
accuracy picks the rate; the test set is never read. `igpt finetune-sweep` goes on from wherever
it stopped (a finished rate is skipped, a started one resumes from its last checkpoint) and stops
cleanly at a checkpoint before its time budget runs out. Once every rate is done it writes finetune_sweep.json (a row per rate,
the rate chosen, the base config and the command) and a figure of the validation accuracy per
rate into `out`, a record to commit under report/runs/.
"""
from __future__ import annotations

import os
import shlex
import time
from pathlib import Path

from igptlib import plots
from igptlib.config import FINETUNE_LEARNING_RATES, FINETUNE_SWEEP_STEPS, RunConfig, read_json, write_json
from igptlib.course import Unfinished, train_once
from igptlib.records import training_seconds
from igptlib.shipped import training_config

LABEL = "finetune-sweep"


def finetune_config(pretrained: RunConfig, init_from: Path, steps: int) -> RunConfig:
    """The sweep's fine-tuning recipe (the CPU ladder's, igptlib.experiments), from a pre-trained
    run's config and checkpoint: crops, a 50-step warm-up and a cosine decay, validated every 100 steps."""
    return pretrained.replace(
        data=pretrained.data.replace(augment=["crop"]).to_dict(),
        optim=pretrained.optim.replace(finetune=True, lr=5e-4, warmup_steps=50, schedule="cosine").to_dict(),
        # test=False: the test split is read once, by the classifier's evaluation, never while choosing
        train=pretrained.train.replace(steps=steps, checkpoint_steps=[], val_every=min(100, steps),
                                       init_from=str(init_from), test=False).to_dict(),
    )


def sweep_configs(source: str | os.PathLike, lrs=FINETUNE_LEARNING_RATES,
                  steps: int = FINETUNE_SWEEP_STEPS) -> dict[float, RunConfig]:
    """The fine-tuning config of each learning rate, from a pre-trained run's checkpoint or a model file
    (igptlib.shipped.training_config)."""
    if not lrs or any(lr <= 0 for lr in lrs):
        raise ValueError(f"expected one or more positive learning rates, got {list(lrs)}")
    pretrained, weights = training_config(source)
    base = finetune_config(pretrained, weights, steps)
    return {lr: base.replace(optim=base.optim.replace(lr=lr).to_dict()) for lr in sorted(set(lrs))}


def run_folder(runs: Path, lr: float) -> Path:
    return Path(runs) / f"lr-{lr:g}"


def finetune_sweep(checkpoint: str | Path, runs: str | Path, out: str | Path, lrs=FINETUNE_LEARNING_RATES,
                   steps: int = FINETUNE_SWEEP_STEPS, budget_minutes: float | None = None,
                   command: list[str] | None = None) -> dict | None:
    """Fine-tune from `checkpoint` at each rate into `runs`/lr-<rate>; once all are done, write the
    sweep's JSON and figure into `out` and return the JSON. None when the budget stopped it first."""
    configs = sweep_configs(checkpoint, lrs, steps)
    deadline = None if budget_minutes is None else time.monotonic() + budget_minutes * 60
    for lr, config in configs.items():
        print(f"{LABEL}: fine-tuning at lr {lr:g} in {run_folder(runs, lr)}", flush=True)
        try:
            train_once(config, run_folder(runs, lr), deadline)
        except Unfinished as stopped:
            print(f"{LABEL}: {stopped}; the same command goes on", flush=True)
            return None
    print(f"{LABEL}: every rate is trained", flush=True)
    rows = []
    for lr in configs:
        metrics = read_json(run_folder(runs, lr) / "metrics.json")
        seconds = training_seconds(run_folder(runs, lr))  # every process of a resumed run
        rows.append({"lr": lr, "best_val_acc": metrics["best_val_acc"], "steps": metrics["global_step"],
                     "stopped_early": metrics["stopped_early"], "minutes": None if seconds is None else round(seconds / 60, 1)})
    chosen = max(rows, key=lambda row: row["best_val_acc"])
    base = next(iter(configs.values()))
    result = {"checkpoint": str(checkpoint), "steps": steps, "rows": rows, "chosen_lr": chosen["lr"],
              "chosen_best_val_acc": chosen["best_val_acc"], "base_config": base.to_dict(),
              "command": shlex.join(command) if command else None}
    out = Path(out)
    write_json(out / "finetune_sweep.json", result)
    curves = {f"lr {lr:g}": run_folder(runs, lr) for lr in configs}
    fig = plots.comparison_curves(curves, "val/acc", title=f"fine-tuning from {Path(checkpoint).name}: "
                                                          "validation accuracy per learning rate", ylabel="validation accuracy")
    plots.save_figure(fig, "finetune_sweep", out, close=True)
    print(f"{LABEL}: lr {chosen['lr']:g} has the best validation accuracy, {chosen['best_val_acc']:.4f} "
          f"(written to {out / 'finetune_sweep.json'})", flush=True)
    return result
