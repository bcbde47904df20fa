"""The committed records read back: what the report notebooks (notebooks/09 onwards) show and results.json holds.

    entries(report, models)      one results.json entry per record: what was trained, how long, on
                                 what, and what it measures (shipped models' files add their notes)
    LITERATURE                   the seed report's and the paper's headline numbers, with their sources
    *_table(entries)             the report's tables, every value escaped (igptlib.markdown)
    per_class(classification)    precision, recall and F1 per class from a recorded confusion matrix
    robustness_tables, finetune_sweeps, converge_records, classify_records
                                 the other records under report/runs/ and report/bench/

Only the seed report's and the paper's numbers are not measured here; they are literature
constants, kept in LITERATURE with their sources. Everything else is read from a record.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from igptlib import plots
from igptlib.config import PRECISION_WORDS, PRESETS, RunConfig, read_json
from igptlib.markdown import Markdown, code, escape, image, join, number, table
from igptlib.records import SHIPPED_PREFIX, machine_spans, made_by_finetuning, shipped_record, training_seconds

# The headline numbers of the seed report and of the paper that this project reproduces, with their
# sources. They are literature constants: nothing here measures them.
SEED = "an iGPT-on-MNIST project report (the project's seed document 000)"
PAPER = "Chen et al. 2020, \"Generative Pretraining from Pixels\" (as quoted in the seed document 001)"
SEED_KAPPA = 0.992
LITERATURE = [
    {"measure": "fine-tuned classifier, Cohen's kappa", "key": "kappa", "dataset": "mnist",
     "seed": f"{SEED_KAPPA} (iGPT-S fine-tuned on augmented MNIST; ch. 6.3)", "paper": "not reported (no MNIST)"},
    {"measure": "fine-tuned classifier, test accuracy", "key": "finetuned_accuracy", "dataset": "mnist",
     "seed": "not stated", "paper": "iGPT-L: 99.0% CIFAR-10, 88.5% CIFAR-100"},
    {"measure": "linear probe, best layer, test accuracy", "key": "probe_accuracy", "dataset": "mnist",
     "seed": "not measured", "paper": "iGPT-L 32x32: 96.3% CIFAR-10, 82.8% CIFAR-100, 95.5% STL-10"},
]
SEED_COMPUTE = "Google Colab Pro+ (ch. 3.5; hours not stated)"
PAPER_COMPUTE = "iGPT-L (1.4B parameters): about 2,500 V100-days; pre-training on 2048 TPU cores"
PAPER_PROBE_FINDING = "the best linear-probe features lie in the middle of the network, not at its end"

CAPTIONS = {  # the figures a record may hold, in the order they are shown
    "figures/completions.png": "completions of test images (first column the cut input, last the original)",
    "figures/linear_probes.png": "linear probe accuracy per layer",
    "figures/confusion_matrix.png": "confusion matrix",
    "figures/actual_vs_predicted.png": "actual vs predicted",
    "figures/predictions.png": "test images and their predicted labels (mistakes in red)",
    "finetune/figures/confusion_matrix.png": "fine-tuned: confusion matrix",
    "finetune/figures/actual_vs_predicted.png": "fine-tuned: actual vs predicted",
    "finetune/figures/predictions.png": "fine-tuned: test images and their predicted labels (mistakes in red)",
}


# -- one record -------------------------------------------------------------------------------------


def _read_json(path: Path, expected: type = dict):
    return read_json(path, expected=expected) if path.exists() else None


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def read_record(folder: str | Path) -> dict:
    """What the report needs from one record (or run folder); parts it lacks are None or empty."""
    folder, finetune = Path(folder), Path(folder) / "finetune"
    return {
        "name": folder.name, "folder": folder, "about": _read_json(folder / "record.json") or {},
        "config": RunConfig.load_yaml(folder / "config.yaml") if (folder / "config.yaml").exists() else None,
        "metrics": _read_json(folder / "metrics.json"),
        "machines": _read_json(folder / "machines.json", list) or [],
        "evaluation": _read_json(folder / "evaluation.json") or {},
        "commands": _lines(folder / "commands.txt") + _lines(finetune / "commands.txt"),
        "finetune_metrics": _read_json(finetune / "metrics.json"),
        "finetune_evaluation": _read_json(finetune / "evaluation.json") or {},
    }


def shipped_models_info(models_dir: str | Path | None = None) -> dict[str, dict]:
    """{model name: its file, dataset, config, notes, size and weights' digest} for every shipped model."""
    from safetensors import safe_open

    from igptlib.model_files import read_notes, weights_digest
    from igptlib.shipped import MODELS_DIR, load_model, shipped_models

    models_dir = Path(models_dir or MODELS_DIR)
    found = {}
    for name in shipped_models(models_dir):
        path = models_dir / f"{name}.safetensors"
        with safe_open(str(path), framework="pt") as handle:
            dataset = (handle.metadata() or {}).get("dataset")
        model = load_model(path).model
        found[name] = {"file": path, "dataset": dataset, "config": model.config, "notes": read_notes(path),
                       "parameters": model.num_parameters(), "megabytes": path.stat().st_size / 1e6,
                       "weights": weights_digest(model)}
    return found


def preset(config) -> str:
    """The presets of a model's shape: cpu-fast and cpu-s share one, and a reader of either name should find it."""
    shape = {"n_embd": config.n_embd, "n_layer": config.n_layer, "n_head": config.n_head}
    return " = ".join(name for name, values in PRESETS.items() if values == shape) or "custom"


def as_list(value) -> list:
    """A note's value as a list: `igpt export --note` makes a list of a repeated key, a string of one."""
    return [] if value is None else [value] if isinstance(value, str) else list(value)


def _minutes(folder: Path) -> float | None:
    seconds = training_seconds(folder)
    return None if seconds is None else round(seconds / 60, 1)


def span_words(span: dict) -> str:
    precision = PRECISION_WORDS.get(span["precision"], "precision not recorded")
    return f"steps {span['first_step']}-{span['last_step']}: {span['hardware'] or 'not recorded'} ({precision})"


def classification_of(record: dict) -> dict:
    """A record's fine-tuned classifier's measures: its fine-tuning run's evaluation, or its own if it
    evaluated a fine-tuned model (a shipped classifier); empty where it has none."""
    evaluation = record["evaluation"]
    return record["finetune_evaluation"].get("classification") or (
        evaluation.get("classification", {}) if evaluation.get("finetuned") else {})


def result(record: dict, model: dict | None = None) -> dict:
    """One results.json entry: a record's numbers (and, for a shipped model, its file's metadata)."""
    config, metrics, evaluation = record["config"], record["metrics"] or {}, record["evaluation"]
    model_config = config.model if config else model["config"]
    probes, completion, likelihood = evaluation.get("probes", {}), evaluation.get("completion", {}), evaluation.get("likelihood", {})
    classification = classification_of(record)
    notes = model["notes"] if model else {}
    # A run resumed on other machines: each span's hardware and precision, in the hardware column.
    spans = machine_spans(record["machines"], metrics.get("global_step", 0))
    mixed = len(spans) > 1
    commands = record["commands"] or as_list(notes.get("command"))
    commands = commands + [e["command"] for e in (evaluation, record["finetune_evaluation"]) if e.get("command")]
    return {
        "name": record["name"],
        "kind": "shipped model" if model else "run",
        "model_file": f"models/{model['file'].name}" if model else None,
        "record": f"runs/{record['name']}",
        "training_record": config is not None,
        "dataset": config.data.dataset if config else model["dataset"],
        "preset": preset(model_config),
        "width_layers_heads": [model_config.n_embd, model_config.n_layer, model_config.n_head],
        "parameters": metrics.get("parameters", model["parameters"] if model else None),
        "objective": model_config.objective,
        "augmentation": config.data.augment if config else None,
        "batch_size": config.data.batch_size if config else None,
        "steps": metrics.get("global_step"),
        "training_minutes": _minutes(record["folder"]),
        "training_precision": None if mixed else metrics.get("precision"),  # recorded since train() chooses it per CPU
        "finetune_steps": (record["finetune_metrics"] or {}).get("global_step"),
        "finetune_minutes": _minutes(record["folder"] / "finetune") if record["finetune_metrics"] else None,
        "hardware": "; ".join(map(span_words, spans)) if mixed else
                    record["about"].get("hardware") or metrics.get("hardware") or notes.get("hardware"),
        "evaluated": bool(evaluation),
        "test_images": evaluation.get("test_images"),
        "eval_precision": evaluation.get("precision"),
        "nats_per_pixel": likelihood.get("nats_per_pixel"),
        "bits_per_pixel": likelihood.get("bits_per_pixel"),
        "probe_layer": probes.get("best_layer"),
        "probe_layers": model_config.n_layer if probes else None,
        "probe_accuracy": probes.get("best_test_accuracy"),
        "probe_train": probes.get("train_examples"),
        # Records from before the strength was chosen on validation fitted every probe at C = 1.
        "probe_inverse_l2": probes.get("inverse_l2", {}).get(str(probes.get("best_layer")), 1.0) if probes else None,
        "probe_inverse_l2_chosen": "inverse_l2" in probes,
        "finetuned_accuracy": classification.get("accuracy"),
        "kappa": classification.get("kappa"),
        "completion_images": completion.get("images"),
        "completion_samples": completion.get("samples"),
        "completion_class_agreement": completion.get("class_agreement"),
        "completion_original_accuracy": completion.get("original_accuracy"),
        "completion_pixel_agreement": completion.get("pixel_agreement"),
        "classifier_model": model is not None and made_by_finetuning(model["notes"]),
        "commands": commands,
    }


def find_records(records: Path, models: dict) -> list[tuple[dict, dict | None]]:
    """(record, its shipped model) for every shipped model, whether its record holds results yet
    or not, then (record, None) for every other record that holds results; each part in name order."""
    records = Path(records)
    shipped = [(read_record(shipped_record(name, records)), model) for name, model in models.items()]
    others = sorted(p for p in records.iterdir() if p.is_dir() and not p.name.startswith(SHIPPED_PREFIX)) if records.is_dir() else []
    runs = [read_record(folder) for folder in others]
    return shipped + [(record, None) for record in runs if record["metrics"] or record["evaluation"]]


def entries(report: str | Path, models_dir: str | Path | None = None) -> list[dict]:
    """The results.json entries of a report folder's records (report/runs/), shipped models first."""
    return [result(record, model) for record, model in find_records(Path(report) / "runs", shipped_models_info(models_dir))]


def in_report(report: str | Path, path: str = "") -> str:
    """A link to report/<path> that resolves both from the report's own pages (report/README.md) and
    from a notebook in a sibling folder (notebooks/): ../<report folder>/<path>."""
    return f"../{Path(report).resolve().name}/{path}"


# -- the headline tables ----------------------------------------------------------------------------


def label(entry: dict) -> Markdown:
    return code(entry["name"])


def model_name(entry: dict) -> str:
    """A shipped model's name (its record is shipped-<name>)."""
    return Path(entry["model_file"]).stem


def trained(entry: dict) -> str:
    if not entry["training_record"]:
        return "training record not preserved"
    text = f"{entry['steps']} steps, {number(entry['training_minutes'], 1)} min"
    if entry["training_precision"]:
        text += f" ({PRECISION_WORDS.get(entry['training_precision'], entry['training_precision'])})"
    if entry["finetune_steps"] is not None:
        text += f"; fine-tuned {entry['finetune_steps']} steps, {number(entry['finetune_minutes'], 1)} min"
    return text


def probe_fit(entry: dict) -> str:
    """The images a record's best probe was fitted on, and its inverse L2 strength."""
    if entry["probe_train"] is None:
        return "–"
    chosen = " (chosen on validation)" if entry["probe_inverse_l2_chosen"] else ""
    return f"{entry['probe_train']} images, C = {entry['probe_inverse_l2']:g}{chosen}"


def remeasure_command(name: str, finetuned: bool) -> str:
    """The command that re-measures a shipped model into its record (its card names it).

    It keeps evaluate's float32 default: bfloat16 autocast moves the shipped models' test values by
    about 1e-5 nats/px and is the slower of the two on CPUs without fast bfloat16 matmuls.
    """
    options = "--no-probes --completions 0" if finetuned else "--probe-train 10000 --completions 16"
    return f"igpt evaluate --model {name} {options} && igpt report"


def best(entries: list[dict], key: str, dataset: str) -> dict | None:
    """The entry with the highest value of `key` on `dataset`, or None where none measured it."""
    scored = [e for e in entries if e[key] is not None and e["dataset"] == dataset]
    return max(scored, key=lambda e: e[key]) if scored else None


def charged(entry: dict, key: str) -> str:
    """The training a measure took: a probe only its model's pre-training; a fine-tuned measure a
    run's pre-training and fine-tuning, or a shipped classifier's own fine-tuning."""
    if key == "probe_accuracy":
        minutes, what = [entry["training_minutes"]], "pre-training"
    elif entry["classifier_model"]:
        minutes, what = [entry["training_minutes"]], "fine-tuning (the model it started from not counted)"
    else:
        minutes, what = [entry["training_minutes"], entry["finetune_minutes"]], "training"
    minutes = [m for m in minutes if m is not None]
    time = f"{sum(minutes):.0f} min of {what}" if minutes else "training time not preserved"
    return f"{time} on {entry['hardware'] or 'unrecorded hardware'}"


def literature_table(entries: list[dict]) -> Markdown:
    """Each headline number of the seed report and the paper beside the project's best record of it
    on MNIST, with the training that record took."""
    rows = []
    for item in LITERATURE:
        top = best(entries, item["key"], item["dataset"])
        ours = "not measured yet" if top is None else \
            Markdown(f"{number(top[item['key']])} ({label(top)}, {escape(top['dataset'])})")
        rows.append([item["measure"], item["seed"], item["paper"], ours, "–" if top is None else charged(top, item["key"])])
    probed = [e for e in entries if e["probe_layer"] is not None]
    layers = Markdown("; ".join(f"{label(e)}: layer {e['probe_layer']} of {e['probe_layers']}" for e in probed)) \
        if probed else "no probes measured yet"
    rows.append(["best linear-probe layer", "not measured", PAPER_PROBE_FINDING, layers, "–"])
    return table(["measure", "seed report", "paper", "this project", "this project's compute"], rows)


def headline_table(entries: list[dict]) -> Markdown:
    """One line per record: training, likelihood, best probe and fine-tuned classifier (README.md shows it too)."""
    rows = []
    for e in entries:
        name = code(model_name(e) if e["model_file"] else e["name"])
        if not e["evaluated"]:
            measured = "awaiting re-measurement" if e["model_file"] else "not evaluated yet"
            rows.append([name, e["dataset"] or "–", trained(e), measured, measured, measured])
            continue
        probe = "–" if e["probe_accuracy"] is None else f"{number(e['probe_accuracy'])} (layer {e['probe_layer']})"
        classifier = "–" if e["kappa"] is None else f"{number(e['finetuned_accuracy'])}, kappa {number(e['kappa'])}"
        rows.append([name, e["dataset"], trained(e), f"{number(e['nats_per_pixel'])} on {e['test_images']} images", probe, classifier])
    return table(["model or run", "dataset", "training", "test nats per pixel", "best linear probe",
                  "fine-tuned accuracy, kappa"], rows)


def training_table(entries: list[dict]) -> Markdown:
    def shape(e):
        width, layers, heads = e["width_layers_heads"]
        return f"{e['preset']} ({width}/{layers}/{heads})"

    return table(["record", "dataset", "model (width/layers/heads)", "parameters", "objective", "augmentation",
                  "training (wall time, all processes)", "hardware"],
                 [[label(e), e["dataset"] or "–", shape(e), f"{e['parameters'] / 1e6:.2f}M" if e["parameters"] else "–",
                   e["objective"], "–" if e["augmentation"] is None else join(e["augmentation"]) or "none",
                   trained(e), e["hardware"] or "not recorded"] for e in entries])


def likelihood_table(entries: list[dict]) -> Markdown:
    return table(["record", "dataset", "test images", "evaluated in", "nats per pixel", "bits per pixel"],
                 [[label(e), e["dataset"], e["test_images"], "bfloat16" if e["eval_precision"] == "bf16" else "float32",
                   number(e["nats_per_pixel"]), number(e["bits_per_pixel"])] for e in entries if e["evaluated"]])


def classification_table(entries: list[dict]) -> Markdown:
    return table(["record", "dataset", "best probe layer (picked on validation)", "probe test accuracy",
                  "probe fitted on", "fine-tuned test accuracy", "fine-tuned Cohen's kappa"],
                 [[label(e), e["dataset"], "–" if e["probe_layer"] is None else f"{e['probe_layer']} of {e['probe_layers']}",
                   number(e["probe_accuracy"]), probe_fit(e), number(e["finetuned_accuracy"]), number(e["kappa"])]
                  for e in entries if e["evaluated"]])


def completion_table(entries: list[dict]) -> Markdown:
    return table(["record", "dataset", "images x samples", "classifier agrees with the original's class",
                  "classifier's accuracy on the originals", "completed pixels equal to the original's"],
                 [[label(e), e["dataset"], f"{e['completion_images']} x {e['completion_samples']}",
                   number(e["completion_class_agreement"], 3), number(e["completion_original_accuracy"], 3),
                   number(e["completion_pixel_agreement"], 3)] for e in entries if e["evaluated"] and e["completion_images"]])


def unevaluated(entries: list[dict]) -> list[Markdown]:
    """The records with no evaluation yet, each with the command that measures it (shipped models)."""
    return [Markdown(f"{label(e)}: {code(remeasure_command(model_name(e), e['classifier_model']))}") if e["model_file"]
            else label(e) for e in entries if not e["evaluated"]]


def config_table(config: RunConfig, trained_in: str | None = None) -> Markdown:
    """A run's config in four rows; `trained_in`, the precision train() chose, is said where it differs
    from the config's (bfloat16 asked on a CPU where it is the slower)."""
    d, m, o, t = config.data, config.model, config.optim, config.train
    precision = t.precision if trained_in in (None, t.precision) else f"{t.precision} asked, trained in {trained_in} (the faster there)"
    return table(["part", "settings"], [
        ["data", f"{d.dataset}, {d.n_px}x{d.n_px}, {d.clusters} colours, augment {d.augment}, batch {d.batch_size}, seed {d.seed}"],
        ["model", f"width {m.n_embd}, {m.n_layer} layers, {m.n_head} heads, objective {m.objective}"],
        ["optim", f"lr {o.lr}, warm-up {o.warmup_steps}, {o.schedule} decay"],
        ["train", f"{t.steps} steps, precision {precision}"],
    ])


def stage_folder(record: dict, stage: str) -> Path | None:
    """The folder of a record's pre-training ("") or fine-tuning ("finetune") run: a record of a
    fine-tuning run alone (`igpt classifier`) holds its fine-tuning at the top and no pre-training."""
    if record["config"] is not None and record["config"].optim.finetune:
        return record["folder"] if stage == "finetune" else None
    return record["folder"] / stage


def logged(folder: Path | None) -> bool:
    return folder is not None and any(folder.glob("logs/csv/version_*/metrics.csv"))


def record_images(record: dict, base: str, only: tuple[str, ...] | None = None) -> list[Markdown]:
    """The figures kept in a record (the evaluation's, and figures preserved from lost run folders),
    as Markdown images, or only those of the paths in `only`; `base` is the link to the report folder
    from where they are shown (in_report, or "../" from report/models/)."""
    prefix = f"{base}runs/{record['name']}"
    shown = [image(f"{prefix}/{path}", caption) for path, caption in CAPTIONS.items()
             if (record["folder"] / path).exists() and (only is None or path in only)]
    for path, caption in sorted(record["about"].get("preserved", {}).items()):
        if (record["folder"] / path).exists() and only is None:
            shown.append(image(f"{prefix}/{path}", caption))
    return shown


def executed_notebooks(record: dict, base: str) -> Markdown | None:
    """Links to the course notebooks as papermill executed them for this record's run (outputs kept),
    or None where the record keeps none; `base` as for record_images."""
    notebooks = sorted((record["folder"] / "notebooks").glob("*.ipynb"))
    if not notebooks:
        return None
    minutes = {path: _read_json(path).get("metadata", {}).get("papermill", {}).get("duration") for path in notebooks}
    links = ", ".join(f"[{path.stem}]({base}runs/{record['name']}/notebooks/{path.name})"
                      + (f" ({number(seconds / 60, 1)} min)" if isinstance(seconds, (int, float)) else "")
                      for path, seconds in minutes.items())
    timed = [seconds for seconds in minutes.values() if isinstance(seconds, (int, float))]
    total = f" Papermill's clock: {number(sum(timed) / 60, 1)} minutes in all." if len(timed) == len(notebooks) else ""
    return Markdown(f"The course notebooks as this run executed them, with their outputs: {links}.{total}")


def comparison_runs(records: list[dict], dataset: str, stage: str, metric: str, ar_only: bool) -> dict[str, Path]:
    """{record name: folder} of the records on `dataset` whose `stage` logged `metric`. A BERT run's
    nats per pixel are over its masked pixels only, no likelihood: ar_only leaves those out."""
    runs = {}
    for record in records:
        config = record["config"]
        if config is None or config.data.dataset != dataset or (ar_only and config.model.objective != "ar"):
            continue
        folder = stage_folder(record, stage)
        if logged(folder) and metric in plots.read_metrics_csv(folder):
            runs[record["name"]] = folder
    return runs


# -- classification in detail -----------------------------------------------------------------------


def class_names(dataset: str | None, count: int) -> list[str]:
    from igptlib.datasets import DATASETS

    spec = DATASETS.get(dataset)
    return list(spec.classes) if spec is not None and len(spec.classes) == count else [str(i) for i in range(count)]


def per_class(classification: dict) -> dict:
    """Precision, recall, F1 and support per class, computed from the recorded confusion matrix
    (rows actual, columns predicted), and their unweighted means."""
    matrix = np.asarray(classification["confusion_matrix"], dtype=float)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or not matrix.size:
        raise ValueError(f"expected a square confusion matrix, got shape {matrix.shape}")
    right, predicted, support = np.diag(matrix), matrix.sum(axis=0), matrix.sum(axis=1)
    precision = np.divide(right, predicted, out=np.zeros_like(right), where=predicted > 0)
    recall = np.divide(right, support, out=np.zeros_like(right), where=support > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(right), where=precision + recall > 0)
    return {"precision": precision.tolist(), "recall": recall.tolist(), "f1": f1.tolist(),
            "support": support.astype(int).tolist(), "accuracy": float(right.sum() / matrix.sum()),
            "macro": {"precision": float(precision.mean()), "recall": float(recall.mean()), "f1": float(f1.mean())}}


def per_class_table(classification: dict, dataset: str | None = None) -> Markdown:
    scores = per_class(classification)
    names = class_names(dataset, len(scores["support"]))
    rows = [[name, number(p), number(r), number(f), s] for name, p, r, f, s in
            zip(names, scores["precision"], scores["recall"], scores["f1"], scores["support"])]
    macro = scores["macro"]
    rows.append(["mean over classes", number(macro["precision"]), number(macro["recall"]), number(macro["f1"]),
                 sum(scores["support"])])
    return table(["class", "precision", "recall", "F1", "test images (support)"], rows)


def label_counts_plot(counts: list[int], names: list[str], title: str = "images per label"):
    """A bar per class: how many images carry each label (the seed's figure 6.2)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3))
    bars = ax.bar(names, counts, color="tab:blue")
    ax.bar_label(bars, fontsize=7)
    ax.set(xlabel="label", ylabel="images", title=title)
    ax.grid(alpha=0.3, axis="y")
    return fig


def per_class_plot(scores: dict, names: list[str], title: str = "precision, recall and F1 per class"):
    """per_class's precision, recall and F1 as grouped bars, one group per class."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    positions = np.arange(len(names))
    for offset, measure in zip((-0.27, 0, 0.27), ("precision", "recall", "f1")):
        ax.bar(positions + offset, scores[measure], width=0.27, label=measure if measure != "f1" else "F1")
    low = min(min(scores[measure]) for measure in ("precision", "recall", "f1"))
    ax.set_xticks(positions, names)
    ax.set_ylim(max(0.0, low - 0.05), 1.0)
    ax.set(xlabel="class", title=title)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8, loc="lower right")
    return fig


# -- inverted and rotated digits ------------------------------------------------------------------


def robustness_tables(records: str | Path) -> list[dict]:
    """The finished tables of `igpt robustness` (records/robustness-*/robustness.json); a table still
    being measured waits."""
    tables = [read_json(path, expected=dict) for path in sorted(Path(records).glob("robustness-*/robustness.json"))]
    return [t for t in tables if t.get("complete", True)]


def robustness_table(measured: dict) -> Markdown:
    return table(["transform", "handling", "completion class agreement", "pixel agreement", "classifier accuracy",
                  "handling undid the inversion", "handling undid the rotation"],
                 [[row["transform"], "on" if row["handling"] else "off", number(row["class_agreement"], 3),
                   number(row["pixel_agreement"], 3), number(row["classification_accuracy"], 3),
                   number(row.get("inversion_detected_right"), 3), number(row.get("rotation_chosen_right"), 3)]
                  for row in measured["rows"]])


def replaced_since(measured: dict, shipped_weights: dict[str, str]) -> list[Markdown]:
    """A warning for each shipped model the table names that has been replaced since it was measured:
    the name stays when a better model is shipped, the weights' digests tell the two apart."""
    warnings = []
    for role in ("model", "classifier"):
        name, digest = measured[role], measured.get(f"{role}_weights")
        if digest and name in shipped_weights and shipped_weights[name] != digest:
            warnings.append(Markdown(f"Measured with an earlier {code(name)} (weights {escape(digest[:12])}), not the one "
                                     f"shipped now ({escape(shipped_weights[name][:12])}): move this record away and run "
                                     f"{code(measured['command'])} to measure the shipped one."))
    return warnings


def wrong_turns_table(measured: dict) -> Markdown | None:
    """How many images the orientation handling turned wrongly, per transform and true digit (None for
    tables measured before this was counted)."""
    handled = [row for row in measured["rows"] if row["handling"] and "turned_wrongly_by_digit" in row]
    if not handled:
        return None
    digits = [str(digit) for digit in range(len(handled[0]["turned_wrongly_by_digit"]))]
    return table(["transform", *digits, "all"],
                 [[row["transform"], *row["turned_wrongly_by_digit"], sum(row["turned_wrongly_by_digit"])] for row in handled])


def side_by_side(tables: list[dict]) -> list[dict]:
    """The models measured on the same images (dataset, image count and samples), grouped: each group's
    tables, and a table of completion class agreement and classifier accuracy, a column pair per model."""
    groups: dict[tuple, list[dict]] = {}
    for measured in tables:
        first = measured["rows"][0]
        groups.setdefault((measured["dataset"], first["images"], first["samples"]), []).append(measured)
    found = []
    for (dataset, images, samples), group in groups.items():
        if len(group) < 2:
            continue
        by_row = [{(row["transform"], row["handling"]): row for row in measured["rows"]} for measured in group]
        keys = [key for key in by_row[0] if all(key in rows for rows in by_row)]
        header = ["transform", "handling"]
        for measured in group:
            header += [Markdown(f"{code(measured['model'])}: completion class agreement"),
                       Markdown(f"{code(measured['classifier'])}: accuracy")]
        rows = [[transform, "on" if handling else "off",
                 *(number(rows[(transform, handling)][metric], 3) for rows in by_row
                   for metric in ("class_agreement", "classification_accuracy"))] for transform, handling in keys]
        found.append({"dataset": dataset, "images": images, "samples": samples, "tables": group,
                      "table": table(header, rows)})
    return found


# -- fine-tuning learning rates ---------------------------------------------------------------------


def finetune_sweeps(records: str | Path) -> list[dict]:
    """The learning-rate sweeps of `igpt finetune-sweep` (records/finetune-sweep-*/), each with its record's name."""
    found = []
    for path in sorted(Path(records).glob("finetune-sweep-*/finetune_sweep.json")):
        found.append({**read_json(path, expected=dict), "record": path.parent.name,
                      "figure": path.parent / "finetune_sweep.png"})
    return found


def finetune_sweep_table(sweep: dict) -> Markdown:
    return table(["learning rate", "best validation accuracy", "steps", "training minutes", "stopped early"],
                 [[f"{row['lr']:g}", number(row["best_val_acc"]), row["steps"], number(row["minutes"], 1),
                   "yes" if row["stopped_early"] else "no"] for row in sweep["rows"]])


# -- benchmarks (report/bench/) -------------------------------------------------------------------


def bench_records(bench: str | Path, kind: str) -> list[dict]:
    """report/bench/<kind>-*.json, in name order."""
    return [read_json(path, expected=dict) for path in sorted(Path(bench).glob(f"{kind}-*.json"))]


def machine_words(record: dict) -> str:
    """The CPU (or GPU) a benchmark ran on, and the precision it trained in, where recorded."""
    machine = record.get("machine") or {}
    hardware = machine.get("hardware") or machine.get("cpu") or "machine not recorded"
    stages = record.get("stages") or {}
    precision = ((record.get("training") or {}).get("precision") or (stages.get("finetune") or {}).get("precision")
                 or ((record.get("config") or {}).get("train") or {}).get("precision"))
    return f"{hardware}, {PRECISION_WORDS.get(precision, precision)}" if precision else hardware


def converge_table(records: list[dict]) -> Markdown:
    """The recorded likelihood recipes: shape, batch, steps, minutes to the targets, the final test value."""
    from igptlib.bench_converge import TARGETS, minutes_to_targets

    rows = []
    for r in records:
        m, d, o = r["config"]["model"], r["config"]["data"], r["config"]["optim"]
        name = Markdown(code(r["name"]) + (f" ({code(r['branch']['parent'])} to step {r['branch']['at_step']}, then its own decay)"
                                           if "branch" in r else ""))
        reached = ["not reached" if minutes is None else number(minutes, 1) for minutes in minutes_to_targets(r).values()]
        rows.append([name, f"{m['n_embd']}/{m['n_layer']}/{m['n_head']}", f"{r['training']['parameters'] / 1e6:.2f}M",
                     d["batch_size"], f"{o['schedule']}, lr {o['lr']:g}", r["training"]["steps"],
                     number(r["training"]["minutes"], 1), *reached, number(r["test"]["nats_per_pixel"]),
                     machine_words(r), number(r["machine"]["load_average_before"][0], 1)])
    return table(["recipe", "width/layers/heads", "parameters", "batch", "schedule", "steps", "training min",
                  *(f"min to {t} (validation, else the final test)" for t in TARGETS),
                  "test nats/px (final model)", "machine, training precision", "load average before"], rows)


def classify_table(records: list[dict]) -> Markdown:
    """The recorded classification recipes: what they are, their wall and CPU minutes, the best validation
    accuracy on the way, and the one read of the test set at the end."""
    rows = []
    for r in records:
        accuracies = [p["val_acc"] for p in r["curve"] if p.get("val_acc") is not None]
        training = r.get("training") or {}
        rows.append([code(r["name"]), recipe_words(r), number(training.get("minutes"), 1), number(training.get("cpu_minutes"), 1),
                     number(max(accuracies) if accuracies else None), number(r["test"].get("accuracy")),
                     number(r["test"].get("kappa")), machine_words(r),
                     number(((r.get("machine") or {}).get("load_average_before") or [None])[0], 1)])
    return table(["recipe", "what it trains", "training minutes (wall)", "CPU minutes", "best validation accuracy", "test accuracy",
                  "test kappa", "machine, training precision", "load average before"], rows)


def classifier_family(record: dict) -> str:
    """Which of the benchmark's three kinds of classifier a record trained: the CNN control, the
    transformer on labels alone (no pre-training, no generative loss), or the pre-trained transformer."""
    if record.get("kind") == "cnn":
        return "the convolutional control"
    stages = record.get("stages") or {}
    gen_weight = ((record.get("settings") or {}).get("finetune") or {}).get("optim", {}).get("gen_weight", 1.0)
    if not (stages.get("pretrain") or {}).get("steps") and gen_weight == 0:
        return "the transformer on labels alone"
    return "the pre-trained transformer"


def pretraining_pays(records: list[dict]) -> Markdown:
    """Whether generative pre-training pays on this benchmark: per kind of classifier its best test
    accuracy and the minutes that bought it, and which kind is ahead."""
    best = {}
    for record in records:
        accuracy = record["test"].get("accuracy")
        family = classifier_family(record)
        if accuracy is not None and (family not in best or accuracy > best[family]["test"]["accuracy"]):
            best[family] = record
    if len(best) < 2:
        return Markdown("Pre-training against its controls: one kind of classifier recorded so far; "
                        "`igpt bench classify --cnn` and `--pretrain-steps 0 --finetune-set optim.gen_weight=0` record the controls.")
    ranked = sorted(best.items(), key=lambda item: -item[1]["test"]["accuracy"])
    said = [f"{family} ({code(r['name'])}): test accuracy {number(r['test']['accuracy'])} after "
            f"{number((r.get('training') or {}).get('minutes'), 1)} wall minutes" for family, r in ranked]
    return Markdown(f"Best of each kind, most accurate first: {'; '.join(said)}.")


def recipe_words(record: dict) -> str:
    """What a classification benchmark trained: its kind, and per stage the preset, image size, steps and minutes."""
    settings, words = record.get("settings") or {}, [record.get("kind", "kind not recorded")]
    if record.get("kind") == "cnn":  # one stage, counted in epochs
        pixels = settings.get("n_px")
        shape = [settings.get("network"), f"{pixels}x{pixels} pixels" if pixels else None,
                 f"{settings.get('epochs')} epochs in {number((record.get('training') or {}).get('minutes'), 1)} min"]
        words.append(", ".join(filter(None, shape)))
    for stage, name in (("pretrain", "pre-training"), ("finetune", "fine-tuning")):
        done = (record.get("stages") or {}).get(stage)
        if done:
            pixels = ((settings.get(stage) or {}).get("data") or {}).get("n_px")
            shape = [settings.get("size"), f"{pixels}x{pixels} pixels" if pixels else None]
            said = ", ".join([*filter(None, shape), f"{done.get('steps')} steps in {number(done.get('minutes'), 1)} min"])
            words.append(f"{name}: {said}")
    return "; ".join(words)


def classify_plot(records: list[dict], title: str = "Time to quality: classification"):
    """Validation accuracy against wall minutes, a line per record, its test accuracy as a star where its
    training ended; beside it, where a recipe pre-trained, the validation nats per pixel of its pre-training."""
    import matplotlib.pyplot as plt

    pretrained = any(p.get("val_nats_per_pixel") is not None for r in records for p in r["curve"])
    fig, axes = plt.subplots(1, 2 if pretrained else 1, figsize=(12 if pretrained else 8, 5), squeeze=False)
    accuracy_axis = axes[0][0]
    for index, record in enumerate(records):
        colour = f"C{index % 10}"
        points = [p for p in record["curve"] if p.get("val_acc") is not None]
        accuracy_axis.plot([p["minutes"] for p in points], [p["val_acc"] for p in points], marker=".", color=colour, label=record["name"])
        minutes, accuracy = (record.get("training") or {}).get("minutes"), record["test"].get("accuracy")
        if minutes is not None and accuracy is not None:
            accuracy_axis.plot([minutes], [accuracy], marker="*", markersize=12, color=colour, linestyle="none")
        if pretrained:
            nats = [p for p in record["curve"] if p.get("val_nats_per_pixel") is not None]
            axes[0][1].plot([p["minutes"] for p in nats], [p["val_nats_per_pixel"] for p in nats], marker=".", color=colour,
                            label=record["name"])
    accuracy_axis.set(xlabel="wall minutes since the recipe began", ylabel="validation accuracy (test: star)", title=title)
    if pretrained:
        axes[0][1].set(xlabel="wall minutes since the recipe began", ylabel="validation nats per pixel", title="its pre-training")
    for ax in axes[0]:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def throughput_table(bench: str | Path) -> Markdown:
    """Training step time per recorded size (report/bench/train-*.json): our step beside the reference."""
    rows = []
    for path in sorted(Path(bench).glob("train-*.json")):
        record = read_json(path, expected=dict)
        for variant, measured in record.items():
            if isinstance(measured, dict) and "seconds_per_step" in measured:
                rows.append([code(path.stem), record.get("size"), record.get("batch_size"), variant,
                             number(measured["seconds_per_step"], 2), f"{measured['tokens_per_second']:,.0f}",
                             number(measured.get("gflops"), 1), record.get("hardware") or "not recorded"])
    return table(["record", "size", "batch", "step", "seconds per step", "tokens per second", "GFLOP/s", "hardware"], rows)


def sampling_table(bench: str | Path) -> Markdown:
    """Completion speed per recorded preset (report/bench/sample-*.json): the KV cache against recomputing."""
    rows = []
    for path in sorted(Path(bench).glob("sample-*.json")):
        r = read_json(path, expected=dict)
        rows.append([code(path.stem), r.get("preset"), f"{r.get('images')} x {r.get('samples')}", r.get("pixels_sampled"),
                     number(r.get("cached_s"), 2), number(r.get("naive_s"), 2), number(r.get("speedup"), 1),
                     number(r.get("transformers_s"), 2), r.get("hardware") or "not recorded"])
    return table(["record", "preset", "images x samples", "pixels sampled", "KV cache (s)", "recomputing (s)", "speed-up",
                  "transformers' ImageGPT (s)", "hardware"], rows)
