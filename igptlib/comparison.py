"""The report's "Model comparison" section: the CPU ladder's S, M and L, side by side (issues 15, 16).

It mirrors the seed report's section 6.4 with the project's own runs: validation nats per pixel
over the pre-training steps per size; classification training and validation loss and accuracy
over the fine-tuning steps per size; a table per size and named checkpoint; the completions of
each size on the same test images; the augmentation ablation and AR against BERT at size S; and
the conclusions the numbers support. Everything is read from the ladder's committed records
(report/runs/ladder-*), so the section is rebuilt by `igpt report` on a fresh clone.
"""
from __future__ import annotations

from pathlib import Path

import yaml

from igptlib import plots
from igptlib.config import read_json
from igptlib.records import minutes_at_step

SIZES = {"ladder-cpu-s": "S", "ladder-cpu-m": "M", "ladder-cpu-l": "L"}
AUGMENTATION_TWINS = ("ladder-cpu-s-noaug", "ladder-cpu-s-rotate")  # S with other augmentation
BERT = "ladder-cpu-s-bert"
SEED_CONCLUSION = "the large model is best (seed report, section 6.4)"
LOAD = "machine/load_average"  # logged by train.MachineLoad
CURVES = [  # (caption, stage folder, logged metric): the seed's figures 6.7 to 6.11
    ("completion loss: validation nats per pixel over pre-training", "", "val/nats_per_pixel"),
    ("classification training loss over fine-tuning", "finetune", "train/clf_loss"),
    ("classification validation loss over fine-tuning", "finetune", "val/clf_loss"),
    ("classification training accuracy over fine-tuning", "finetune", "train/acc"),
    ("classification validation accuracy over fine-tuning", "finetune", "val/acc"),
]


def _logged(folder: Path) -> bool:
    return any(folder.glob("logs/csv/version_*/metrics.csv"))


def _json(path: Path) -> dict:
    return read_json(path) if path.exists() else {}


def mean_load(folder: Path, step: int) -> float | None:
    """The machine's mean load average over a run's training up to `step`, from its logs
    (train.MachineLoad); None where it was not logged (runs from before it was)."""
    if not _logged(folder):
        return None
    steps, loads = plots.read_metrics_csv(folder).get(LOAD, ([], []))
    kept = [load for logged, load in zip(steps, loads) if logged < step]
    return sum(kept) / len(kept) if kept else None


def checkpoints(folder: Path) -> list[dict]:
    """One row per evaluated named checkpoint of a ladder record, in step order."""
    rows = []
    for path in sorted(folder.glob("evaluation*.json"), key=lambda p: _step(p, folder)):
        evaluation = read_json(path)
        step = _step(path, folder)
        probes = evaluation.get("probes", {})
        rows.append({"step": step, "minutes": minutes_at_step(folder, step), "load": mean_load(folder, step),
                     "nats_per_pixel": evaluation.get("likelihood", {}).get("nats_per_pixel"),
                     "probe_layer": probes.get("best_layer"), "probe_accuracy": probes.get("best_test_accuracy"),
                     "probe_by_layer": probes.get("test_accuracy", {})})
    return rows


def _step(path: Path, folder: Path) -> int:
    """evaluation-step-N.json is step N; evaluation.json is the run's last step."""
    if path.stem.startswith("evaluation-step-"):
        return int(path.stem.removeprefix("evaluation-step-"))
    return _json(folder / "metrics.json").get("global_step", 0)


def summary(folder: Path) -> dict:
    """A ladder record's headline numbers: size, cost, its checkpoints' rows and the fine-tuned classifier's."""
    metrics, tuned = _json(folder / "metrics.json"), _json(folder / "finetune" / "evaluation.json")
    config = yaml.safe_load((folder / "config.yaml").read_text()) if (folder / "config.yaml").exists() else {}
    classification = tuned.get("classification", {})
    return {"name": folder.name, "parameters": metrics.get("parameters"), "steps": metrics.get("global_step"),
            "augment": config.get("data", {}).get("augment", []),
            "checkpoints": checkpoints(folder), "finetuned_accuracy": classification.get("accuracy"),
            "kappa": classification.get("kappa"), "finetune_steps": _json(folder / "finetune" / "metrics.json").get("global_step"),
            "minutes": minutes_at_step(folder, metrics.get("global_step", 0)),
            "finetune_minutes": minutes_at_step(folder / "finetune", _json(folder / "finetune" / "metrics.json").get("global_step", 0))}


def _number(value, digits: int = 4) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(row) + " |" for row in rows)]


def size_table(runs: dict[str, dict]) -> list[str]:
    rows = []
    for name, run in runs.items():
        for row in run["checkpoints"]:
            last = row["step"] == run["steps"]
            layers = len(row["probe_by_layer"]) - 1
            rows.append([f"{SIZES.get(name, name)} (`{name}`)", f"{run['parameters'] / 1e6:.2f}M" if run["parameters"] else "–",
                         str(row["step"]), _number(row["minutes"], 1), _number(row["load"], 1), _number(row["nats_per_pixel"]),
                         "–" if row["probe_layer"] is None else f"{row['probe_layer']} of {layers}",
                         _number(row["probe_accuracy"]),
                         _number(run["finetuned_accuracy"]) if last else "", _number(run["kappa"]) if last else ""])
    return _table(["size", "parameters", "step", "training minutes to this step (on the machine the Training table names)",
                   "mean load average while training (the run alone: about 2)", "test nats/px",
                   "best probe layer", "probe test accuracy", "fine-tuned test accuracy", "fine-tuned kappa"], rows)


def _best(runs: dict[str, dict], key, higher: bool) -> tuple[str, float] | None:
    scored = [(name, key(run)) for name, run in runs.items() if key(run) is not None]
    return (max if higher else min)(scored, key=lambda item: item[1]) if scored else None


def _last(run: dict, field: str):
    return run["checkpoints"][-1][field] if run["checkpoints"] else None


MEASURES = [  # (what the best has, the value of a run, higher is better)
    ("the lowest test nats per pixel", lambda run: _last(run, "nats_per_pixel"), False),
    ("the best linear probe", lambda run: _last(run, "probe_accuracy"), True),
    ("the best fine-tuned accuracy", lambda run: run["finetuned_accuracy"], True),
]


def _in_progress(name: str, run: dict) -> str:
    done = run["checkpoints"]
    evaluated = f"evaluated to step {done[-1]['step']}" if done else "no checkpoint evaluated yet"
    return f"- {SIZES[name]} is not finished ({evaluated}, not yet fine-tuned): it joins these comparisons once it is."


def conclusions(runs: dict[str, dict]) -> list[str]:
    """What the numbers support, in plain sentences, each naming its measure and the values. Only
    finished runs (fine-tuned and classified) are compared: a run part way through its named steps
    would be set against the others' last ones."""
    finished = {name: run for name, run in runs.items() if run["finetuned_accuracy"] is not None}
    pending = [_in_progress(name, run) for name, run in runs.items() if name not in finished]
    said, leaders = [], []
    for label, value, higher in MEASURES:
        best = _best(finished, value, higher)
        if best is None:
            continue
        leaders.append(best[0])
        others = ", ".join(f"{SIZES[n]} {value(r):.4f}" for n, r in finished.items() if n != best[0] and value(r) is not None)
        said.append(f"- {SIZES[best[0]]} has {label}: {best[1]:.4f}" + (f" (against {others})." if others else "."))
    if not said:
        return ["- No ladder run is finished yet.", *pending]
    if len(finished) < len(SIZES):
        return said + pending + [f"- Only {' and '.join(SIZES[n] for n in finished)} finished so far: no conclusion about size yet."]
    led_by_l = leaders.count("ladder-cpu-l")
    verdict = ("agrees with" if led_by_l == len(leaders) else "differs in part from" if led_by_l else "differs from")
    return said + [f"- The seed concluded that {SEED_CONCLUSION}. Here L leads on {led_by_l} of {len(leaders)} "
                   f"measures: this {verdict} the seed, at these step counts and this CPU budget."]


def ablation_table(runs: list[dict]) -> list[str]:
    """S pre-trained with each augmentation: likelihood, best probe and the fine-tuned classifier."""
    rows = [[f"with augmentation ({', '.join(run['augment'])})" if run["augment"] else "without augmentation",
             _number(_last(run, "nats_per_pixel")), _number(_last(run, "probe_accuracy")),
             _number(run["finetuned_accuracy"]), _number(run["kappa"])] for run in runs]
    return _table(["S pre-trained", "test nats/px", "best probe accuracy", "fine-tuned accuracy", "kappa"], rows)


def objective_table(ar: dict, bert: dict) -> list[str]:
    """AR against BERT at size S: the probe accuracy of every layer, the best, the fine-tuned classifier, the cost."""
    layers = sorted(set(_last(ar, "probe_by_layer") or {}) | set(_last(bert, "probe_by_layer") or {}), key=int)
    rows = []
    for label, run in (("AR", ar), ("BERT (mask 0.15)", bert)):
        by_layer = _last(run, "probe_by_layer") or {}
        minutes = [m for m in (run["minutes"], run["finetune_minutes"]) if m is not None]
        rows.append([label, *(_number(by_layer.get(layer)) for layer in layers),
                     str(_last(run, "probe_layer")), _number(run["finetuned_accuracy"]), _number(run["kappa"]),
                     f"{sum(minutes):.0f}" if minutes else "–"])
    return _table(["pre-training", *(f"probe, layer {layer}" for layer in layers), "best probe layer",
                   "fine-tuned accuracy", "kappa", "training minutes (pre-training + fine-tuning)"], rows)


def probe_sentence(ar: dict, bert: dict) -> str:
    parts = []
    for label, run in (("AR", ar), ("BERT", bert)):
        layer, layers = _last(run, "probe_layer"), len(_last(run, "probe_by_layer") or {}) - 1
        if layer is not None:
            where = "the last block" if layer == layers else "the embeddings" if layer == 0 else "a middle layer"
            parts.append(f"{label} probes best at layer {layer} of {layers} ({where})")
    return ("- " + "; ".join(parts) + ". The paper found the best features in the middle layers.") if parts else ""


def comparison_section(records: Path, figures: Path) -> list[str]:
    """The section's Markdown lines, its figures saved into `figures`; none while no ladder record exists."""
    runs = {name: summary(records / name) for name in SIZES if (records / name / "metrics.json").exists()}
    if not runs:
        return []
    lines = ["## Model comparison: the CPU ladder", "",
             "S, M and L (presets `cpu-s`, `cpu-m`, `cpu-l`) were pre-trained alike by `igpt ladder`: the same MNIST "
             "data, palette, augmentation, batch, steps and schedule, so that size is the only difference; each was "
             "evaluated at its three named checkpoints (the seed's 131k/262k/524k steps at 1/200 scale), then "
             "fine-tuned with L_GEN + L_CLF by one recipe. Minutes are wall time on the machine each record names "
             "in the Training table (a run resumed on another machine names each machine's steps); "
             "the load average beside them is the mean logged while training (a run with two threads on two cores "
             "makes about 2 by itself; more means other work shared the cores), – for runs from before it was logged.", ""]
    lines += size_table(runs) + [""]
    for caption, stage, metric in CURVES:
        logged = {SIZES[name]: records / name / stage for name in runs
                  if _logged(records / name / stage) and metric in plots.read_metrics_csv(records / name / stage)}
        if logged:
            fig = plots.comparison_curves(logged, metric, title=caption)
            path = plots.save_figure(fig, f"ladder_{stage or 'pretrain'}_{metric.replace('/', '_')}", figures, close=True)
            lines += [f"**{caption}**", "", f"![{caption}](figures/{path.name})", ""]
    for name in runs:
        if (records / name / "figures" / "completions.png").exists():
            caption = f"{SIZES[name]}: completions of the bottom half of the same 8 test images"
            lines += [f"**{caption}**", "", f"![{caption}](runs/{name}/figures/completions.png)", ""]
    lines += ["### What the numbers say", "", *conclusions(runs), ""]
    s = runs.get("ladder-cpu-s")
    twins = [summary(records / name) for name in AUGMENTATION_TWINS if (records / name / "metrics.json").exists()]
    if s and twins:
        lines += ["### Augmentation at size S", ""] + ablation_table([s, *twins]) + [""]
    if s and (records / BERT / "metrics.json").exists():
        bert = summary(records / BERT)
        lines += ["### AR against BERT at size S", ""] + objective_table(s, bert) + ["", probe_sentence(s, bert), ""]
    return lines
