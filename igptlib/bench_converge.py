"""`igpt bench converge`: time to quality, the wait a user of this machine actually feels.

Trains a preset from scratch for a wall-clock budget and records, at every validation, the
validation nats per pixel against the wall minutes since the command started (data set-up and
validation time included), then the test nats per pixel of the final model on the whole test split,
in float32. Beside the curve it records what the time depends on: the machine's matmul peak, its
load average before and after, the threads, the recipe (the run's whole config).

A benchmark, not a test: it writes report/bench/converge-<name>.json and redraws
report/bench/converge.png, every recorded recipe's curve on one plot.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import lightning as L
import torch

from igptlib.config import PRECISION_WORDS, ConfigError, RunConfig, apply_overrides, read_json, run_config, write_json
from igptlib.lightning_module import decay_start

TARGETS = (0.32, 0.31)  # nats per pixel, on the MNIST test set


class ConvergenceCurve(L.Callback):
    """(minutes since `started`, step, validation nats per pixel) at the end of every validation, and
    the minutes at which each step in `kept` (the steps that keep a checkpoint) ended: a later run
    branched from such a checkpoint starts its clock there."""

    def __init__(self, started: float, kept: list[int] = ()):
        self.started, self.points, self.kept, self.kept_minutes = started, [], set(kept), {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step in self.kept:
            self.kept_minutes[str(trainer.global_step)] = round((time.perf_counter() - self.started) / 60, 3)

    def on_validation_end(self, trainer, pl_module):
        if trainer.sanity_checking:
            return
        self.points.append({
            "minutes": round((time.perf_counter() - self.started) / 60, 3),
            "step": trainer.global_step,
            "val_nats_per_pixel": float(trainer.callback_metrics["val/nats_per_pixel"]),
        })


def minutes_to(points: list[dict], target: float, final: tuple[float, float] | None = None) -> float | None:
    """The first validation's minutes at or below `target`; failing that, the end of training if the
    final model's test value is (`final`: its minutes and nats per pixel); else None. The targets are
    the test set's: a run whose last steps come after its last validation is judged by its final model."""
    reached = next((p["minutes"] for p in points if p["val_nats_per_pixel"] <= target), None)
    if reached is None and final is not None and final[1] <= target:
        return final[0]
    return reached


def minutes_to_targets(record: dict) -> dict[str, float | None]:
    """minutes_to for each of TARGETS, from a record's curve and its final model's test value."""
    final = (record["training"]["minutes"], record["test"]["nats_per_pixel"])
    return {str(target): minutes_to(record["curve"], target, final) for target in TARGETS}


def converge(name: str, size: str, minutes: float, overrides: list[str], run_dir: Path, threads: int | None) -> dict:
    """Train `size` (changed by `overrides`) for `minutes` into run_dir; return the JSON record."""
    if minutes <= 0:
        raise ValueError(f"--minutes must be positive, got {minutes}")
    values = apply_overrides(run_config(size, "mnist").to_dict(), overrides)
    values["train"]["test"] = False  # the final model is tested below, in float32, outside the timed training
    config = RunConfig.from_dict(values, where="--set")
    record = {"name": name, "size": size, "overrides": overrides, "budget_minutes": minutes, "run_dir": str(run_dir)}
    return _train_and_test(record, config, run_dir, threads, started=time.perf_counter(), resume=False)


def branch(name: str, parent: dict, parent_run_dir: Path, at_step: int, minutes: float, run_dir: Path,
           threads: int | None) -> dict:
    """A shorter run of the `parent` record's wsd recipe, its decay starting at `at_step`, timed from scratch.

    Its clock starts at the parent's wall minutes at that step, so its minutes are those of the
    shorter run trained from scratch; its curve is the parent's up to there, then its own.
    """
    config, parent_minutes = prepare_branch(parent, parent_run_dir, at_step, run_dir)
    if minutes <= parent_minutes:
        raise ValueError(f"--minutes {minutes:g}: the parent had already trained {parent_minutes:.1f} minutes at step {at_step}")
    record = {"name": name, "size": parent["size"], "overrides": parent["overrides"] + [f"train.steps={config.train.steps}"],
              "budget_minutes": minutes, "run_dir": str(run_dir),
              "branch": {"parent": parent["name"], "at_step": at_step, "parent_minutes": parent_minutes}}
    started = time.perf_counter() - parent_minutes * 60
    record = _train_and_test(record, config, run_dir, threads, started=started, resume=True)
    record["curve"] = [p for p in parent["curve"] if p["step"] <= at_step] + record["curve"]
    record["minutes_to"] = minutes_to_targets(record)
    return record


def prepare_branch(parent: dict, parent_run_dir: Path, at_step: int, run_dir: Path):
    """Lay out run_dir to resume from the parent's step-AT_STEP.ckpt as the run whose wsd decay starts there.

    Up to its decay a wsd schedule does not depend on the run's length, so the parent's first
    `at_step` steps are exactly those of the shorter run. Returns (the shorter run's config, the
    parent's wall minutes at `at_step`).
    """
    config = RunConfig.from_dict(parent["config"], where=f"converge record {parent['name']!r}")
    o = config.optim
    if o.schedule != "wsd":
        raise ConfigError(f"--branch-from {parent['name']}: only a wsd run can be branched, its schedule is {o.schedule!r}")
    steps = round(at_step / (1 - o.decay_fraction))
    if not at_step < steps <= parent["training"]["steps"] or decay_start(o.warmup_steps, steps, o.decay_fraction) != at_step:
        raise ConfigError(f"--at-step {at_step}: no run of at most {parent['training']['steps']} steps with a "
                          f"{o.decay_fraction:g} decay share starts its decay there")
    checkpoint = Path(parent_run_dir) / "checkpoints" / f"step-{at_step}.ckpt"
    parent_minutes = parent.get("checkpoint_minutes", {}).get(str(at_step))
    if parent_minutes is None or not checkpoint.exists():
        kept = ", ".join(parent.get("checkpoint_minutes", {})) or "none"
        raise FileNotFoundError(f"--at-step {at_step}: the parent run must have kept {checkpoint} and its minutes "
                                f"(steps kept with their minutes: {kept})")
    if (run_dir / "config.yaml").exists():
        raise FileExistsError(f"{run_dir} already holds a run; choose another --run-dir")
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(checkpoint, run_dir / "checkpoints" / "last.ckpt")
    config.save_yaml(run_dir / "config.yaml")  # the parent's settings; train() records the new length in history.yaml
    return config.replace(train=config.train.replace(steps=steps).to_dict()), parent_minutes


def _train_and_test(record: dict, config, run_dir: Path, threads: int | None, started: float, resume: bool) -> dict:
    """Train until the budget (counted from `started`) or the last step, then test the final weights."""
    from igptlib.device import matmul_gflops
    from igptlib.data import PixelDataModule
    from igptlib.metrics import likelihood
    from igptlib.lightning_module import load_checkpoint
    from igptlib.records import describe_hardware
    from igptlib.train import checkpoint_steps, train

    if config.data.limit_test is not None:
        raise ConfigError("the test nats per pixel are measured on the whole test split: leave data.limit_test unset")
    if threads:
        torch.set_num_threads(threads)
    record["machine"] = {"hardware": describe_hardware(), "threads": torch.get_num_threads(), "torch": torch.__version__,
                         "matmul_gflops": {d: round(matmul_gflops(getattr(torch, d)), 1) for d in ("float32", "bfloat16")},
                         "load_average_before": os.getloadavg()}
    record["config"] = config.to_dict()
    curve = ConvergenceCurve(started, kept=checkpoint_steps(config))
    budget = record["budget_minutes"] * 60 - (time.perf_counter() - started)
    metrics = train(config, run_dir, resume=resume, callbacks=[curve], budget_seconds=budget)
    record["training"] = {"minutes": round((time.perf_counter() - started) / 60, 2), "steps": metrics["global_step"],
                          "stopped_by_budget": metrics["stopped_by_budget"], "parameters": metrics["parameters"],
                          "precision": metrics["precision"]}
    record["machine"]["load_average_after_training"] = os.getloadavg()
    record["curve"] = curve.points
    record["checkpoint_minutes"] = curve.kept_minutes

    model = load_checkpoint(run_dir / "checkpoints" / "last.ckpt").model  # the final weights, as the run ended
    data = PixelDataModule(config.data)
    data.prepare_data()
    data.setup()
    evaluated = time.perf_counter()
    test = likelihood(model, data.test_dataloader(), progress=True)
    record["test"] = {**test, "images": len(data.test_set), "precision": "float32",
                      "seconds": round(time.perf_counter() - evaluated, 1),
                      "meets": {str(target): test["nats_per_pixel"] <= target for target in TARGETS}}
    record["minutes_to"] = minutes_to_targets(record)
    return record


def plot_curves(records: list[dict], title: str = "Time to quality on this machine (MNIST, 16 colours)"):
    """Validation nats/px against wall minutes for each record; the final test value as a marker."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for record in records:
        points = record["curve"]
        line, = ax.plot([p["minutes"] for p in points], [p["val_nats_per_pixel"] for p in points], marker=".",
                        label=f"{record['name']} (test {record['test']['nats_per_pixel']:.4f} at {record['training']['minutes']:.0f} min)")
        ax.plot([record["training"]["minutes"]], [record["test"]["nats_per_pixel"]], marker="*", markersize=12,
                color=line.get_color(), linestyle="none")
    for target in TARGETS:
        ax.axhline(target, color="grey", linestyle=":", linewidth=1)
    ax.set(xlabel="wall minutes since the command started (validation included)", ylabel="nats per pixel",
           title=title, ylim=(0.29, 0.5))
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


README_START = "<!-- converge: written by `igpt bench converge` from report/bench/converge-*.json; do not edit by hand -->"
README_END = "<!-- end of converge -->"


def _minutes(value: float | None) -> str:
    return "not reached" if value is None else f"{value:.1f}"


def _machine(record: dict) -> str:
    """The CPU and the precision a record trained in (older records name the CPU under "cpu" and
    trained in their config's precision)."""
    hardware = record["machine"].get("hardware") or record["machine"]["cpu"]
    precision = record["training"].get("precision") or record["config"]["train"]["precision"]
    return f"{hardware.split(',')[0]}, {PRECISION_WORDS[precision]}"


def converge_table(records: list[dict]) -> str:
    """A Markdown table of the recorded recipes: shape, batch, steps, minutes to the targets, test value."""
    lines = [
        "| recipe | width/layers/heads | parameters | batch | schedule | steps | training min | "
        + " | ".join(f"min to {t} (validation, else the final test)" for t in TARGETS) + " | test nats/px (final model) | machine, training precision | load average before |",
        "|---|---|---|---|---|---|---|" + "---|" * len(TARGETS) + "---|---|---|",
    ]
    for r in records:
        m, d, o = r["config"]["model"], r["config"]["data"], r["config"]["optim"]
        lines.append(" | ".join([
            f"| `{r['name']}`" + (f" (`{r['branch']['parent']}` to step {r['branch']['at_step']}, then its own decay)"
                                  if "branch" in r else ""),
            f"{m['n_embd']}/{m['n_layer']}/{m['n_head']}", f"{r['training']['parameters'] / 1e6:.2f}M",
            str(d["batch_size"]), f"{o['schedule']}, lr {o['lr']:g}", str(r["training"]["steps"]),
            f"{r['training']['minutes']:.1f}", *map(_minutes, minutes_to_targets(r).values()),
            f"{r['test']['nats_per_pixel']:.4f}", _machine(r), f"{r['machine']['load_average_before'][0]:.1f} |",
        ]))
    return "\n".join(lines)


def write_readme_section(records: list[dict], readme: Path) -> bool:
    """Rewrite the README's block between the converge markers; False when it has no such block."""
    text = readme.read_text()
    start, end = text.find(README_START), text.find(README_END)
    if start < 0 or end < start:
        return False
    block = f"{README_START}\n{converge_table(records)}\n"
    readme.write_text(text[:start] + block + text[end:])
    return True


def redraw(out: Path, readme: Path) -> Path:
    """The plot of every recorded recipe, and the README's table, from report/bench/converge-*.json."""
    from igptlib.plots import save_figure

    records = [json.loads(p.read_text()) for p in sorted(out.glob("converge-*.json"))]
    if not records:
        raise FileNotFoundError(f"no converge-*.json in {out}: run `igpt bench converge --name NAME` first")
    figure = save_figure(plot_curves(records), "converge", out, close=True)
    if write_readme_section(records, readme):
        print(f"table: {readme}")
    return figure


def measure(name: str, out: Path, size: str, minutes: float, overrides: list[str], run_dir: Path | None = None,
            threads: int | None = None, branch_from: str | None = None, at_step: int | None = None,
            parent_run_dir: Path | None = None) -> tuple[dict, Path]:
    """Train one recipe (or branch it from the recorded run `branch_from`) and write its record as
    out/converge-NAME.json; return the record and its path."""
    run_dir = Path(run_dir or f"runs/converge-{name}")
    if branch_from:
        if overrides or at_step is None:
            raise ValueError("--branch-from takes --at-step and no --set: a branch keeps its parent's recipe")
        parent = read_json(out / f"converge-{branch_from}.json")
        parent_run_dir = Path(parent_run_dir or parent.get("run_dir") or f"runs/converge-{branch_from}")
        record = branch(name, parent, parent_run_dir, at_step, minutes, run_dir, threads)
    else:
        record = converge(name, size, minutes, overrides, run_dir, threads)
    return record, write_json(out / f"converge-{name}.json", record)
