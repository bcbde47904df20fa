"""The CPU ladder: three model sizes trained alike on 2 CPU cores, and compared.

S, M and L (the presets cpu-s, cpu-m, cpu-l) see the same data, palette, batch, steps and schedule,
so that what differs between them is size alone. S is trained three times more, each time with one
thing changed (TWINS): without augmentation, the ablation that says what augmentation buys; with
BERT's objective instead of the autoregressive one, the paper's central comparison; and with
rotations added to the augmentation, for rotated digits. `igpt ladder` runs it stage by
stage, per run:

    pretrain   L_AR (or L_BERT) on augmented images, a checkpoint kept at each of the named steps
    evaluate   test likelihood (AR only) and linear probes at each named checkpoint, completions
               (AR only) at the last
    finetune   L_GEN + L_CLF from the last pre-training checkpoint, one recipe for every size
    classify   the fine-tuned head's test accuracy and kappa

It records the run for the report (--records) after each stage it finishes, so that the end of a
session loses none, and goes on from wherever it stopped: a finished stage is skipped, a training
stage resumes from its last checkpoint, an evaluation from the passes over the splits it finished,
and with --budget-minutes the running stage stops before the budget runs out (a training stage at a
checkpoint; an evaluation between two batches, --reserve-minutes before the end, which leaves the
probe fits, completions and figures that follow its passes the time they need). The runs take
hours: keep their folder (--runs) where it outlives a session. A run whose record holds its
classification is finished: it is skipped even where its run folder is gone (a fresh machine); any
other run starts again from what its run folder holds.
"""
from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path

import lightning as L

from igptlib.device import bf16_faster_on_cpu
from igptlib.metrics import OutOfTime

LADDER = ("cpu-s", "cpu-m", "cpu-l")
TWIN_SIZE = "cpu-s"  # the size trained again with one thing changed
TWINS = {  # run name suffix -> what changes
    "noaug": dict(augment=[]),
    "bert": dict(objective="bert"),  # mask probability 0.15
    "rotate": dict(rotate=True),  # turns of up to 10 degrees either way, beside the preset's crops
}
# The seed saved iGPT checkpoints at 131,000, 262,000 and 524,000 steps; the ladder keeps the
# 1:2:4 ratio at 1/200 of that scale.
NAMED_STEPS = (655, 1310, 2620)
FINETUNE = dict(steps=500, lr=5e-4, warmup_steps=50, val_every=100, augment=["crop"])  # one recipe for every run
EVALUATION = dict(probe_train=10_000, samples=4)  # on the CPU, in bfloat16 autocast where it is the faster
# The ladder evaluates 15 checkpoints, and at L one pass over 10,000 images costs about a third of
# 625 training steps of 4.6 s (`igpt bench train --size cpu-l --batch-size 16`), some 16 minutes:
# the probe's best layer is picked on 2,000 validation images rather than all 6,000.
EVALUATION_DATA = dict(batch_size=64, limit_val=2_000)
COMPLETIONS = 8  # test images completed at the last named step (the report's figure per size)


@dataclasses.dataclass
class Stage:
    name: str
    done: Callable[[], bool]
    run: Callable[[float | None], bool]  # seconds it may take (None: no budget) -> True when the stage finished
    trains: bool  # a training stage stops at a checkpoint; an evaluation's last part (after its passes) cannot stop


class Progress(L.Callback):
    """A line every `every` steps: the stage, its step, its speed and the time it has left."""

    def __init__(self, label: str, stage: str, every: int = 100):
        self.label, self.stage, self.every = label, stage, every
        self.started = self.first_step = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step
        if self.started is None:
            self.started, self.first_step = time.perf_counter(), step
        elif step % self.every == 0:
            rate = (time.perf_counter() - self.started) / (step - self.first_step)
            print(f"{self.label}: {self.stage} step {step}/{trainer.max_steps}, {rate:.2f} s/step, "
                  f"about {(trainer.max_steps - step) * rate / 60:.0f} min left in this stage", flush=True)


def pretrain_config(size: str, steps=NAMED_STEPS, overrides=(), objective: str = "ar", augment: list[str] | None = None,
                    rotate: bool = False):
    """The preset's run on MNIST, to the last named step; `augment` replaces the preset's augmentation,
    `rotate` adds rotations to it."""
    from igptlib.config import RunConfig, apply_overrides, run_config

    values = run_config(size, "mnist", objective).to_dict()
    values["train"].update(steps=steps[-1], checkpoint_steps=list(steps), test=False)
    if augment is not None:
        values["data"]["augment"] = list(augment)
    if rotate:
        values["data"]["augment"] = [*values["data"]["augment"], "rotate"]
    return RunConfig.from_dict(apply_overrides(values, list(overrides)))


def finetune_config(pretrained, init_from: Path, steps: int = FINETUNE["steps"]):
    """The ladder's one fine-tuning recipe, from a pre-trained run's config and checkpoint."""
    return pretrained.replace(
        data=pretrained.data.replace(augment=FINETUNE["augment"]).to_dict(),
        optim=pretrained.optim.replace(finetune=True, lr=FINETUNE["lr"], warmup_steps=FINETUNE["warmup_steps"],
                                       schedule="cosine").to_dict(),
        # test=False: the test split is read once, by the classify stage, never while choosing
        train=pretrained.train.replace(steps=steps, checkpoint_steps=[], val_every=min(FINETUNE["val_every"], steps),
                                       init_from=str(init_from), test=False).to_dict(),
    )


def finished(run_dir: Path, steps: int) -> bool:
    """The run has trained all its steps, or stopped early for want of progress on validation."""
    path = run_dir / "metrics.json"
    metrics = json.loads(path.read_text()) if path.exists() else {}
    return metrics.get("global_step", 0) >= steps or metrics.get("stopped_early", False)


def training(name: str, config, run_dir: Path, label: str = "ladder") -> Stage:
    """Train `config` into `run_dir`, resuming it if it was started; `label` begins each progress line."""
    from igptlib.train import train

    def run(seconds_left: float | None) -> bool:
        print(f"{label}: {name} in {run_dir}", flush=True)
        metrics = train(config, run_dir, resume=(run_dir / "config.yaml").exists(),
                        callbacks=[Progress(label, name)], budget_seconds=seconds_left)
        return not metrics["stopped_by_budget"]

    return Stage(name, lambda: finished(run_dir, config.train.steps), run, trains=True)


def evaluation_precision() -> str:
    """bf16 where this CPU multiplies bfloat16 faster than float32, else 32. The choice costs no
    accuracy worth the name: the shipped mnist model measures 0.299612 test nats/px in bfloat16
    autocast (report/runs/shipped-mnist) and 0.299605 in float32 (report/bench/converge-cpu-fast-60min)."""
    return "bf16" if bf16_faster_on_cpu() else "32"


def evaluation(name: str, checkpoint: Path, out: Path, label: str = "ladder", **options) -> Stage:
    """Evaluate one checkpoint into `out` (a JSON), with its figures in the folder beside it."""

    def run(seconds_left: float | None) -> bool:
        from igptlib.config import RunConfig
        from igptlib.evaluate import evaluate_checkpoint, summary

        print(f"{label}: {name}", flush=True)
        trained_on = RunConfig.load_yaml(checkpoint.parent.parent / "config.yaml").data
        limit_val = min(trained_on.limit_val or EVALUATION_DATA["limit_val"], EVALUATION_DATA["limit_val"])
        try:
            results = evaluate_checkpoint(checkpoint, out, data_changes=dict(EVALUATION_DATA, limit_val=limit_val),
                                          precision=evaluation_precision(), budget_seconds=seconds_left,
                                          **EVALUATION, **options)
        except OutOfTime as stopped:
            print(f"{label}: {stopped}", flush=True)
            return False
        print(summary(results), flush=True)
        return True

    return Stage(name, out.exists, run, trains=False)


def stages(runs: Path, sizes=LADDER, twin_size: str = TWIN_SIZE, twins: dict[str, dict] = TWINS, steps=NAMED_STEPS,
           overrides=(), finetune_steps: int = FINETUNE["steps"]) -> list[Stage]:
    """Every stage of the ladder, in order: the smallest size first, then the twins (cheap, and what
    the ablation and the AR-against-BERT comparison use), then the larger sizes, the longest last."""
    plan = ([(f"ladder-{sizes[0]}", sizes[0], {})] + [(f"ladder-{twin_size}-{suffix}", twin_size, changes)
                                                       for suffix, changes in twins.items()]
            + [(f"ladder-{size}", size, {}) for size in sizes[1:]])
    found = []
    for name, size, changes in plan:
        folder = Path(runs) / name
        config = pretrain_config(size, steps, overrides, **changes)
        ar = config.model.objective == "ar"
        found.append(training(f"pretrain {name}", config, folder))
        for step in steps:
            last = step == steps[-1]
            found.append(evaluation(
                f"evaluate {name} at step {step}", folder / "checkpoints" / f"step-{step}.ckpt",
                folder / ("evaluation.json" if last else f"evaluation-step-{step}.json"),
                classification=False, completions=COMPLETIONS if last and ar else 0))
        tuned = folder / "finetune"
        found.append(training(f"finetune {name}", finetune_config(config, folder / "checkpoints" / "last.ckpt", finetune_steps),
                              tuned))
        found.append(evaluation(f"classify {name}", tuned / "checkpoints" / "last.ckpt", tuned / "evaluation.json",
                                probes=False, classification=True, completions=0))
    return found


def ladder(runs: Path, budget_minutes: float | None = None, reserve_minutes: float = 20.0,
           records: Path | None = None, **plan) -> bool:
    """Run every stage not yet done, within the budget; True when the whole ladder is done.

    plan: sizes, twin_size, twins, steps, overrides and finetune_steps, as stages() takes them.
    """
    from igptlib.records import record_run

    def run_name(stage: Stage) -> str:
        return stage.name.split()[1]

    def recorded(name: str) -> bool:  # classified and recorded: not trained again where its run folder is gone
        return records is not None and (Path(records) / name / "finetune" / "evaluation.json").exists()

    def record(stage: Stage) -> None:  # after every stage, so that a session's end loses no finished stage
        if records is not None:
            print(f"ladder: recorded {record_run(Path(runs) / run_name(stage), records=records)}", flush=True)

    todo = stages(runs, **plan)
    finished_runs = sorted({run_name(stage) for stage in todo if recorded(run_name(stage))})
    if finished_runs:
        print(f"ladder: finished and recorded in {records}, so skipped: {', '.join(finished_runs)}", flush=True)
    todo = [stage for stage in todo if run_name(stage) not in finished_runs]
    return run_stages(todo, budget_minutes, reserve_minutes, after=record)


def run_stages(todo: list[Stage], budget_minutes: float | None = None, reserve_minutes: float = 20.0,
               after: Callable[[Stage], None] | None = None, label: str = "ladder") -> bool:
    """Run every stage not yet done, in order, within the budget; after(stage) once each finishes.
    True when all are done; False when the budget stopped them (the same call goes on from there).
    An evaluation starts only with more than `reserve_minutes` left, and is given all but those."""
    print(f"{label}: " + "; ".join(f"{s.name} ({'done' if s.done() else 'to do'})" for s in todo), flush=True)
    deadline = None if budget_minutes is None else time.perf_counter() + budget_minutes * 60
    for stage in todo:
        if stage.done():
            continue
        left = None if deadline is None else deadline - time.perf_counter()
        reserve = 0 if stage.trains else reserve_minutes * 60
        if left is not None and left <= reserve:
            print(f"{label}: stopping before {stage.name}: {max(left, 0) / 60:.0f} min of the budget left", flush=True)
            return False
        if not stage.run(None if left is None else left - reserve):
            kept = "at a checkpoint" if stage.trains else "keeping the passes over the splits it finished"
            print(f"{label}: {stage.name} stopped {kept} as the budget ran out; the same command goes on", flush=True)
            return False
        if after is not None:
            after(stage)
    print(f"{label}: every stage is done", flush=True)
    return True
