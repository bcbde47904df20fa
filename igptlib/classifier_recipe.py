"""A classifier at the seed's level: the fine-tuning recipe as one resumable command.

`igpt classifier --model MODEL` fine-tunes a pre-trained run (or a model file, a shipped one by
its name) with L_GEN + L_CLF in three stages:

    sweep      `igpt finetune-sweep`: one short fine-tuning per learning rate, the rate chosen by
               validation accuracy (its record: <records>/finetune-sweep-<pre-trained run>)
    fine-tune  at the chosen rate for several passes over the training split, with the ladder's
               crops, warm-up and cosine schedule (igptlib.ladder.finetune_config); validated every
               VAL_EVERY steps on VAL_IMAGES validation images and, in the schedule's second half
               (once the cosine rate is down to about half its peak), stopped early after PATIENCE
               validations without a better accuracy; best.ckpt keeps the best
    classify   best.ckpt's test accuracy and kappa: the test split is read once, at the very end

and then records the fine-tuning run as <records>/classifier-<pre-trained run>. Like the ladder, it
goes on from wherever it stopped, and with a budget it stops before the budget runs out (training at
a checkpoint; the classification's pass over the test split --reserve-minutes before the end).
"""
from __future__ import annotations

import math
from pathlib import Path

from igptlib.config import CLASSIFIER_PASSES, FINETUNE_LEARNING_RATES, FINETUNE_SWEEP_STEPS, RunConfig, read_json
from igptlib.finetune_sweep import finetune_sweep, sweep_configs
from igptlib.ladder import Stage, evaluation, finished, run_stages, training
from igptlib.records import record_run
from igptlib.shipped import model_name

VAL_EVERY = 500
VAL_IMAGES = 2_000  # enough to tell 99.0% from 99.3% by more than one image in a thousand
PATIENCE = 5  # validations without a better accuracy before the run stops
LABEL = "classifier"


def recipe_config(sweep_base: RunConfig, lr: float, passes: float = CLASSIFIER_PASSES) -> RunConfig:
    """The long fine-tuning: the sweep's config at the chosen rate, trained for `passes` passes over
    the training split, validated every VAL_EVERY steps on VAL_IMAGES images, stopped early in the
    second half of its schedule."""
    from igptlib.data import training_split

    train_images = len(training_split(sweep_base.data)[0])
    batch = sweep_base.data.batch_size
    steps = max(1, math.ceil(passes * train_images / batch))
    val_every = min(VAL_EVERY, steps)
    return sweep_base.replace(
        optim=sweep_base.optim.replace(lr=lr).to_dict(),
        train=sweep_base.train.replace(steps=steps, val_every=val_every, val_batches=math.ceil(VAL_IMAGES / batch),
                                       save_every=val_every, early_stop=PATIENCE, early_stop_from=steps // 2).to_dict())


def classifier(checkpoint: str | Path, runs: str | Path, records: str | Path, passes: float = CLASSIFIER_PASSES,
               lrs=FINETUNE_LEARNING_RATES, sweep_steps: int = FINETUNE_SWEEP_STEPS, budget_minutes: float | None = None,
               reserve_minutes: float = 10.0, command: list[str] | None = None) -> bool:
    """Run every stage not yet done, within the budget; True once the classifier is tested and recorded."""
    runs, records = Path(runs), Path(records)
    base = next(iter(sweep_configs(checkpoint, lrs, sweep_steps).values()))  # refuses a bad checkpoint or rates first
    pretrained = model_name(checkpoint)
    sweep_record, tuned = records / f"finetune-sweep-{pretrained}" / "finetune_sweep.json", runs / "finetune"

    def sweep(seconds_left: float | None) -> bool:
        return finetune_sweep(checkpoint, runs / "sweep", sweep_record.parent, lrs, sweep_steps,
                              budget_minutes=None if seconds_left is None else seconds_left / 60, command=command) is not None

    def chosen() -> RunConfig:
        return recipe_config(base, read_json(sweep_record)["chosen_lr"], passes)

    def fine_tune(seconds_left: float | None) -> bool:
        config = chosen()
        print(f"{LABEL}: fine-tuning at lr {config.optim.lr:g} for {config.train.steps} steps ({passes:g} passes), "
              f"stopping early after {PATIENCE} validations without a better accuracy "
              f"from step {config.train.early_stop_from}", flush=True)
        return training("fine-tune", config, tuned, label=LABEL).run(seconds_left)

    stages = [
        Stage("sweep", sweep_record.exists, sweep, trains=True),
        Stage("fine-tune", lambda: sweep_record.exists() and finished(tuned, chosen().train.steps), fine_tune, trains=True),
        evaluation("classify", tuned / "checkpoints" / "best.ckpt", tuned / "evaluation.json", label=LABEL,
                   probes=False, classification=True, completions=0),
    ]
    if not run_stages(stages, budget_minutes, reserve_minutes, label=LABEL):
        return False
    print(f"{LABEL}: recorded {record_run(tuned, name=f'classifier-{pretrained}', records=records)}", flush=True)
    return True
