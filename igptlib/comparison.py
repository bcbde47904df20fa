"""The model comparison: the CPU ladder's S, M and L side by side, read from their records.

It mirrors the seed report's section 6.4 with the project's own runs (notebook 10 shows it):
validation nats per pixel over the pre-training steps per size; classification loss and accuracy
over the fine-tuning steps per size, training and validation apart and together; a table per size
and named checkpoint; the augmentation ablation and AR against BERT at size S; and the conclusions
the numbers support. Everything is read from the ladder's committed records (report/runs/ladder-*).
"""
from __future__ import annotations

from pathlib import Path

from igptlib import plots
from igptlib.config import RunConfig, read_json
from igptlib.markdown import Markdown, code, join, number, table
from igptlib.records import minutes_at_step

SIZES = {"ladder-cpu-s": "S", "ladder-cpu-m": "M", "ladder-cpu-l": "L"}
AUGMENTATION_TWINS = ("ladder-cpu-s-noaug", "ladder-cpu-s-rotate")  # S with other augmentation
BERT = "ladder-cpu-s-bert"
SEED_CONCLUSION = "the large model is best (seed report, section 6.4)"
LOAD = "machine/load_average"  # logged by train.MachineLoad
# The seed's figures 6.7 to 6.11: (figure, caption, stage folder, logged metrics). One metric makes
# a line per size; two (training and validation) make a pair of lines per size, the seed's "overall".
CURVES = [
    ("6.7", "completion loss: validation nats per pixel over pre-training", "", ["val/nats_per_pixel"]),
    ("6.8", "classification loss over fine-tuning, training (dashed) and validation (solid)", "finetune",
     ["train/clf_loss", "val/clf_loss"]),
    ("6.9a", "classification training loss over fine-tuning", "finetune", ["train/clf_loss"]),
    ("6.9b", "classification validation loss over fine-tuning", "finetune", ["val/clf_loss"]),
    ("6.10", "classification accuracy over fine-tuning, training (dashed) and validation (solid)", "finetune",
     ["train/acc", "val/acc"]),
    ("6.11a", "classification training accuracy over fine-tuning", "finetune", ["train/acc"]),
    ("6.11b", "classification validation accuracy over fine-tuning", "finetune", ["val/acc"]),
]


def _logged(folder: Path) -> bool:
    return any(folder.glob("logs/csv/version_*/metrics.csv"))


def _json(path: Path) -> dict:
    return read_json(path, expected=dict) if path.exists() else {}


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
        evaluation = read_json(path, expected=dict)
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
    folder = Path(folder)
    metrics, tuned = _json(folder / "metrics.json"), _json(folder / "finetune" / "evaluation.json")
    config = RunConfig.load_yaml(folder / "config.yaml") if (folder / "config.yaml").exists() else None
    classification = tuned.get("classification", {})
    finetune_steps = _json(folder / "finetune" / "metrics.json").get("global_step")
    return {"name": folder.name, "folder": folder, "parameters": metrics.get("parameters"), "steps": metrics.get("global_step"),
            "augment": list(config.data.augment) if config else [],
            "checkpoints": checkpoints(folder), "finetuned_accuracy": classification.get("accuracy"),
            "kappa": classification.get("kappa"), "classification": classification, "finetune_steps": finetune_steps,
            "minutes": minutes_at_step(folder, metrics.get("global_step", 0)),
            "finetune_minutes": minutes_at_step(folder / "finetune", finetune_steps or 0)}


def ladder(records: str | Path) -> dict[str, dict]:
    """{record name: summary} of the ladder's sizes that have a record, S, M, L in that order."""
    return {name: summary(Path(records) / name) for name in SIZES if (Path(records) / name / "metrics.json").exists()}


def size_table(runs: dict[str, dict]) -> Markdown:
    rows = []
    for name, run in runs.items():
        for row in run["checkpoints"]:
            last = row["step"] == run["steps"]
            layers = len(row["probe_by_layer"]) - 1
            rows.append([Markdown(f"{SIZES.get(name, name)} ({code(name)})"),
                         f"{run['parameters'] / 1e6:.2f}M" if run["parameters"] else "–",
                         row["step"], number(row["minutes"], 1), number(row["load"], 1), number(row["nats_per_pixel"]),
                         "–" if row["probe_layer"] is None else f"{row['probe_layer']} of {layers}",
                         number(row["probe_accuracy"]),
                         number(run["finetuned_accuracy"]) if last else "", number(run["kappa"]) if last else ""])
    return table(["size", "parameters", "step", "training minutes to this step (on the machine the Training table names)",
                  "mean load average while training (the run alone: about 2)", "test nats/px",
                  "best probe layer", "probe test accuracy", "fine-tuned test accuracy", "fine-tuned kappa"], rows)


def curve_figure(runs: dict[str, dict], stage: str, metrics: list[str], title: str):
    """The logged `metrics` of each size's `stage` against the step, one figure; None where no size
    logged them. Two metrics (training, validation) draw each size in one colour, dashed and solid."""
    import matplotlib.pyplot as plt

    drawn = {SIZES.get(name, name): Path(run["folder"]) / stage for name, run in runs.items()
             if _logged(Path(run["folder"]) / stage) and all(m in plots.read_metrics_csv(Path(run["folder"]) / stage) for m in metrics)}
    if not drawn:
        return None
    if len(metrics) == 1:
        return plots.comparison_curves(drawn, metrics[0], title=title)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for index, (size, folder) in enumerate(drawn.items()):
        columns = plots.read_metrics_csv(folder)
        for metric, style in zip(metrics, ("--", "-")):
            steps, values = columns[metric]
            ax.plot(steps, values, linestyle=style, color=f"C{index}", alpha=0.8, label=f"{size}: {metric}")
    ax.set(xlabel="step", ylabel=metrics[-1].split("/")[-1], title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return fig


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
    return f"{SIZES[name]} is not finished ({evaluated}, not yet fine-tuned): it joins these comparisons once it is."


def conclusions(runs: dict[str, dict]) -> list[str]:
    """What the numbers support, in plain sentences, each naming its measure and the values. Only
    finished runs (fine-tuned and classified) are compared: a run part way through its named steps
    would be set against the others' last ones."""
    finished = {name: run for name, run in runs.items() if run["finetuned_accuracy"] is not None}
    pending = [_in_progress(name, run) for name, run in runs.items() if name not in finished]
    said, leaders = [], []
    for measure, value, higher in MEASURES:
        top = _best(finished, value, higher)
        if top is None:
            continue
        leaders.append(top[0])
        others = ", ".join(f"{SIZES[n]} {value(r):.4f}" for n, r in finished.items() if n != top[0] and value(r) is not None)
        said.append(f"{SIZES[top[0]]} has {measure}: {top[1]:.4f}" + (f" (against {others})." if others else "."))
    if not said:
        return ["No ladder run is finished yet.", *pending]
    if len(finished) < len(SIZES):
        return said + pending + [f"Only {' and '.join(SIZES[n] for n in finished)} finished so far: no conclusion about size yet."]
    led_by_l = leaders.count("ladder-cpu-l")
    verdict = ("agrees with" if led_by_l == len(leaders) else "differs in part from" if led_by_l else "differs from")
    return said + [f"The seed concluded that {SEED_CONCLUSION}. Here L leads on {led_by_l} of {len(leaders)} "
                   f"measures: this {verdict} the seed, at these step counts and this CPU budget."]


def ablation(records: str | Path) -> list[dict]:
    """S and its twins pre-trained with other augmentation, where their records exist (S first)."""
    names = ["ladder-cpu-s", *AUGMENTATION_TWINS]
    return [summary(Path(records) / name) for name in names if (Path(records) / name / "metrics.json").exists()]


def ablation_table(runs: list[dict]) -> Markdown:
    """S pre-trained with each augmentation: likelihood, best probe and the fine-tuned classifier."""
    rows = [[Markdown(f"with augmentation ({join(run['augment'])})") if run["augment"] else "without augmentation",
             number(_last(run, "nats_per_pixel")), number(_last(run, "probe_accuracy")),
             number(run["finetuned_accuracy"]), number(run["kappa"])] for run in runs]
    return table(["S pre-trained", "test nats/px", "best probe accuracy", "fine-tuned accuracy", "kappa"], rows)


def objective_table(ar: dict, bert: dict) -> Markdown:
    """AR against BERT at size S: the probe accuracy of every layer, the best, the fine-tuned classifier, the cost."""
    layers = sorted(set(_last(ar, "probe_by_layer") or {}) | set(_last(bert, "probe_by_layer") or {}), key=int)
    rows = []
    for name, run in (("AR", ar), ("BERT (mask 0.15)", bert)):
        by_layer = _last(run, "probe_by_layer") or {}
        minutes = [m for m in (run["minutes"], run["finetune_minutes"]) if m is not None]
        rows.append([name, *(number(by_layer.get(layer)) for layer in layers),
                     _last(run, "probe_layer"), number(run["finetuned_accuracy"]), number(run["kappa"]),
                     f"{sum(minutes):.0f}" if minutes else "–"])
    return table(["pre-training", *(f"probe, layer {layer}" for layer in layers), "best probe layer",
                  "fine-tuned accuracy", "kappa", "training minutes (pre-training + fine-tuning)"], rows)


def probe_sentence(ar: dict, bert: dict) -> str:
    parts = []
    for name, run in (("AR", ar), ("BERT", bert)):
        layer, layers = _last(run, "probe_layer"), len(_last(run, "probe_by_layer") or {}) - 1
        if layer is not None:
            where = "the last block" if layer == layers else "the embeddings" if layer == 0 else "a middle layer"
            parts.append(f"{name} probes best at layer {layer} of {layers} ({where})")
    return ("; ".join(parts) + ". The paper found the best features in the middle layers.") if parts else ""


def probe_layers_figure(runs: dict[str, dict], title: str = "linear probe test accuracy per layer"):
    """Each run's probe test accuracy against the layer (its last evaluated checkpoint), a line per run."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, run in runs.items():
        by_layer = _last(run, "probe_by_layer") or {}
        layers = sorted(by_layer, key=int)
        ax.plot([int(layer) for layer in layers], [by_layer[layer] for layer in layers], marker="o", label=name)
    ax.set(xlabel="layer (0: embeddings)", ylabel="test accuracy", title=title)
    ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


def per_class_f1_table(runs: dict[str, dict], class_names: list[str] | None = None) -> Markdown:
    """F1 per class of each size's fine-tuned classifier, from its recorded confusion matrix, a column per size."""
    from igptlib.results import per_class

    scores = {name: per_class(run["classification"]) for name, run in runs.items() if run["classification"].get("confusion_matrix")}
    if not scores:
        return table([], [], empty="No fine-tuned classifier recorded yet.")
    count = len(next(iter(scores.values()))["f1"])
    names = class_names or [str(i) for i in range(count)]
    rows = [[names[i], *(number(score["f1"][i]) for score in scores.values())] for i in range(count)]
    rows.append(["mean over classes", *(number(score["macro"]["f1"]) for score in scores.values())])
    return table(["class", *(f"{SIZES.get(name, name)}: F1" for name in scores)], rows)
