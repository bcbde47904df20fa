"""The report, built only from committed run records (report/runs/, see igptlib.records).

`igpt report` first records every finished run folder under runs/ (a local run folder refreshes
the record of its name), then writes from the records alone:

    report/results.json     one entry per record: what was trained, how long, on what, and what it measures
    report/README.md        the results beside the seed report and the paper, the results tables,
                            comparisons per dataset, and each record's figures
    report/index.html       the same as one page
    report/models/<m>.md    a card per shipped model (models/<m>.safetensors)
    README.md               its results section, between the RESULTS_BEGIN and RESULTS_END markers

Nothing depends on the time or on files outside the records and models/, so the same records
give the same bytes: a fresh clone rebuilds the committed report exactly. The only numbers not
measured here are the seed report's and the paper's, kept in LITERATURE with their sources.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from igptlib import plots
from igptlib.comparison import comparison_section
from igptlib.config import PRECISION_WORDS, PRESETS, RunConfig, read_json
from igptlib.records import (RECORDS, SHIPPED_PREFIX, machine_spans, made_by_finetuning, record_run, shipped_record,
                              training_seconds)

RESULTS_BEGIN = "<!-- results: written by `igpt report` from report/results.json; do not edit by hand -->"
RESULTS_END = "<!-- end of results -->"

# The headline numbers of the seed report and of the paper that this project reproduces, with their
# sources. They are literature constants: nothing here measures them.
SEED = "an iGPT-on-MNIST project report (the project's seed document 000)"
PAPER = "Chen et al. 2020, \"Generative Pretraining from Pixels\" (as quoted in the seed document 001)"
LITERATURE = [
    {"measure": "fine-tuned classifier, Cohen's kappa", "key": "kappa", "dataset": "mnist",
     "seed": "0.992 (iGPT-S fine-tuned on augmented MNIST; ch. 6.3)", "paper": "not reported (no MNIST)"},
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


def _read_json(path: Path) -> dict | None:
    return read_json(path) if path.exists() else None


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def _config(path: Path) -> RunConfig | None:
    return RunConfig.load_yaml(path) if path.exists() else None


def read_record(folder: str | Path) -> dict:
    """What the report needs from one record (or run folder); parts it lacks are None or empty."""
    folder, finetune = Path(folder), Path(folder) / "finetune"
    return {
        "name": folder.name, "folder": folder, "about": _read_json(folder / "record.json") or {},
        "config": _config(folder / "config.yaml"), "metrics": _read_json(folder / "metrics.json"),
        "machines": _read_json(folder / "machines.json") or [],
        "evaluation": _read_json(folder / "evaluation.json") or {},
        "commands": _lines(folder / "commands.txt") + _lines(finetune / "commands.txt"),
        "finetune_metrics": _read_json(finetune / "metrics.json"),
        "finetune_evaluation": _read_json(finetune / "evaluation.json") or {},
    }


def _shipped(models_dir) -> dict[str, dict]:
    """{model name: its file, dataset, config and notes} for every shipped model."""
    from safetensors import safe_open

    from igptlib.model_files import read_notes
    from igptlib.model_files import weights_digest
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


def _preset(config) -> str:
    """The presets of the model's shape: cpu-fast and cpu-s share one, and a reader of either name should find it."""
    shape = {"n_embd": config.n_embd, "n_layer": config.n_layer, "n_head": config.n_head}
    return " = ".join(name for name, preset in PRESETS.items() if preset == shape) or "custom"


def _as_list(value) -> list:
    """A note's value as a list: `igpt export --note` makes a list of a repeated key, a string of one."""
    return [] if value is None else [value] if isinstance(value, str) else list(value)


def _minutes(folder: Path) -> float | None:
    seconds = training_seconds(folder)
    return None if seconds is None else round(seconds / 60, 1)


def result(record: dict, model: dict | None = None) -> dict:
    """One results.json entry: a record's numbers (and, for a shipped model, its file's metadata)."""
    config, metrics, evaluation = record["config"], record["metrics"] or {}, record["evaluation"]
    model_config = config.model if config else model["config"]
    probes, completion, likelihood = evaluation.get("probes", {}), evaluation.get("completion", {}), evaluation.get("likelihood", {})
    # The classifier's numbers: the fine-tuning run's evaluation, or the record's own if it evaluated a fine-tuned model.
    classification = record["finetune_evaluation"].get("classification") or (
        evaluation.get("classification", {}) if evaluation.get("finetuned") else {})
    notes = model["notes"] if model else {}
    # A run resumed on other machines: each span's hardware and precision, in the hardware column.
    spans = machine_spans(record["machines"], metrics.get("global_step", 0))
    mixed = len(spans) > 1
    commands = record["commands"] or _as_list(notes.get("command"))
    commands = commands + [e["command"] for e in (evaluation, record["finetune_evaluation"]) if e.get("command")]
    return {
        "name": record["name"],
        "kind": "shipped model" if model else "run",
        "model_file": f"models/{model['file'].name}" if model else None,
        "record": f"runs/{record['name']}",
        "training_record": config is not None,
        "dataset": config.data.dataset if config else model["dataset"],
        "preset": _preset(model_config),
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
        "hardware": "; ".join(map(_span_words, spans)) if mixed else
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


def _span_words(span: dict) -> str:
    precision = PRECISION_WORDS.get(span["precision"], "precision not recorded")
    return f"steps {span['first_step']}-{span['last_step']}: {span['hardware'] or 'not recorded'} ({precision})"


def find_records(records: Path, models: dict) -> list[tuple[dict, dict | None]]:
    """(record, its shipped model) for every shipped model, whether its record holds results yet
    or not, then (record, None) for every other record that holds results; each part in name order."""
    shipped = [(read_record(shipped_record(name, records)), model) for name, model in models.items()]
    others = sorted(p for p in records.iterdir() if p.is_dir() and not p.name.startswith(SHIPPED_PREFIX)) if records.is_dir() else []
    runs = [read_record(folder) for folder in others]
    return shipped + [(record, None) for record in runs if record["metrics"] or record["evaluation"]]


# -- text -------------------------------------------------------------------------------------------


def _number(value, digits: int = 4) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _label(entry: dict) -> str:
    return f"`{entry['name']}`"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    if not rows:
        return ["None measured yet."]
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(row) + " |" for row in rows)]


def _trained(entry: dict) -> str:
    if not entry["training_record"]:
        return "training record not preserved"
    text = f"{entry['steps']} steps, {_number(entry['training_minutes'], 1)} min"
    if entry["training_precision"]:
        text += f" ({PRECISION_WORDS[entry['training_precision']]})"
    if entry["finetune_steps"] is not None:
        text += f"; fine-tuned {entry['finetune_steps']} steps, {_number(entry['finetune_minutes'], 1)} min"
    return text


def _probe_fit(entry: dict) -> str:
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


def result_tables(entries: list[dict]) -> list[str]:
    """The training, generative, classification and completion tables of the report."""
    def model(e):
        width, layers, heads = e["width_layers_heads"]
        return f"{e['preset']} ({width}/{layers}/{heads})"

    lines = ["### Training", ""]
    lines += _table(["record", "dataset", "model (width/layers/heads)", "parameters", "objective", "augmentation",
                     "training (wall time, all processes)", "hardware"],
                    [[_label(e), e["dataset"] or "–", model(e), f"{e['parameters'] / 1e6:.2f}M" if e["parameters"] else "–",
                      e["objective"], "–" if e["augmentation"] is None else ", ".join(e["augmentation"]) or "none",
                      _trained(e), e["hardware"] or "not recorded"] for e in entries])
    measured = [e for e in entries if e["evaluated"]]
    waiting = [e for e in entries if not e["evaluated"]]
    lines += ["", "### Generative: test likelihood", ""]
    lines += _table(["record", "dataset", "test images", "evaluated in", "nats per pixel", "bits per pixel"],
                    [[_label(e), e["dataset"], str(e["test_images"]), "bfloat16" if e["eval_precision"] == "bf16" else "float32",
                      _number(e["nats_per_pixel"]), _number(e["bits_per_pixel"])] for e in measured])
    lines += ["", "### Classification: linear probes and fine-tuning", ""]
    lines += _table(["record", "dataset", "best probe layer (picked on validation)", "probe test accuracy",
                     "probe fitted on", "fine-tuned test accuracy", "fine-tuned Cohen's kappa"],
                    [[_label(e), e["dataset"],
                      "–" if e["probe_layer"] is None else f"{e['probe_layer']} of {e['probe_layers']}",
                      _number(e["probe_accuracy"]), _probe_fit(e),
                      _number(e["finetuned_accuracy"]), _number(e["kappa"])] for e in measured])
    lines += ["", "### Completion: the bottom half of test images", ""]
    lines += _table(["record", "dataset", "images x samples", "classifier agrees with the original's class",
                     "classifier's accuracy on the originals", "completed pixels equal to the original's"],
                    [[_label(e), e["dataset"], f"{e['completion_images']} x {e['completion_samples']}",
                      _number(e["completion_class_agreement"], 3), _number(e["completion_original_accuracy"], 3),
                      _number(e["completion_pixel_agreement"], 3)] for e in measured if e["completion_images"]])
    if waiting:
        lines += ["", "Not evaluated yet (their records hold no evaluation: a run still under way, or a shipped model "
                      "to re-measure with the command beside it):", ""]
        lines += [f"- {_label(e)}: `{remeasure_command(_model_name(e), e['classifier_model'])}`" if e["model_file"]
                  else f"- {_label(e)}" for e in waiting]
    return lines


def _model_name(entry: dict) -> str:
    """A shipped model's name (its record is shipped-<name>)."""
    return Path(entry["model_file"]).stem


def _best(entries: list[dict], key: str, dataset: str) -> dict | None:
    scored = [e for e in entries if e[key] is not None and e["dataset"] == dataset]
    return max(scored, key=lambda e: e[key]) if scored else None


def _compute(entry: dict, key: str) -> str:
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


def literature_section(entries: list[dict]) -> list[str]:
    """Each headline number of the seed report and the paper beside the project's best, with the
    compute each took, and a commentary generated from the numbers."""
    rows = []
    for item in LITERATURE:
        best = _best(entries, item["key"], item["dataset"])
        ours = "not measured yet" if best is None else f"{best[item['key']]:.4f} ({_label(best)}, {best['dataset']})"
        rows.append([item["measure"], item["seed"], item["paper"], ours, "–" if best is None else _compute(best, item["key"])])
    probed = [e for e in entries if e["probe_layer"] is not None]
    layers = "; ".join(f"{_label(e)}: layer {e['probe_layer']} of {e['probe_layers']}" for e in probed) or "no probes measured yet"
    rows.append(["best linear-probe layer", "not measured", PAPER_PROBE_FINDING, layers, "–"])
    lines = ["## Results beside the seed report and the paper", "",
             f"The seed report is {SEED}; its compute: {SEED_COMPUTE}. The paper is {PAPER}; its compute: {PAPER_COMPUTE}. "
             "Their numbers are quoted, not measured here; the project's column is read from `results.json` "
             "(the best record of each measure on MNIST).", ""]
    lines += _table(["measure", "seed report", "paper", "this project", "this project's compute"], rows)
    lines += ["", *commentary(entries)]
    return lines


def commentary(entries: list[dict]) -> list[str]:
    """Sentences that follow from the numbers: the gap to the seed's kappa, where the probes peak."""
    said = []
    best = _best(entries, "kappa", "mnist")
    if best is not None:
        gap = best["kappa"] - 0.992
        said.append(f"- The best MNIST kappa here, {best['kappa']:.4f} ({_label(best)}), is {abs(gap):.4f} "
                    f"{'below' if gap < 0 else 'above'} the seed report's 0.992.")
    probed = [e for e in entries if e["probe_layer"] is not None]
    if probed:
        last = [e for e in probed if e["probe_layer"] == e["probe_layers"]]
        middle = [e for e in probed if 0 < e["probe_layer"] < e["probe_layers"]]
        said.append(f"- The paper found that {PAPER_PROBE_FINDING}. Here the best layer is the last block in "
                    f"{len(last)} of {len(probed)} probed records and a middle layer in {len(middle)}.")
    return said or ["- No record is evaluated yet, so there is nothing to compare."]


def readme_results(entries: list[dict]) -> list[str]:
    """The compact table README.md shows between its results markers."""
    rows = []
    for e in entries:
        name = f"`{_model_name(e)}` ([card](report/models/{_model_name(e)}.md))" if e["model_file"] else f"`{e['name']}`"
        if not e["evaluated"]:
            measured = "awaiting re-measurement" if e["model_file"] else "not evaluated yet"
            rows.append([name, e["dataset"] or "–", _trained(e), measured, measured, measured])
            continue
        probe = "–" if e["probe_accuracy"] is None else f"{e['probe_accuracy']:.4f} (layer {e['probe_layer']})"
        classifier = "–" if e["kappa"] is None else f"{e['finetuned_accuracy']:.4f}, kappa {e['kappa']:.4f}"
        rows.append([name, e["dataset"], _trained(e), f"{_number(e['nats_per_pixel'])} on {e['test_images']} images", probe, classifier])
    lines = ["Generated by `igpt report` from [report/results.json](report/results.json) (the full tables: "
             "[report/README.md](report/README.md)):", ""]
    return lines + _table(["model or run", "dataset", "training", "test nats per pixel", "best linear probe",
                           "fine-tuned accuracy, kappa"], rows)


def _replace_between_markers(path: Path, lines: list[str]) -> None:
    text = path.read_text()
    if RESULTS_BEGIN not in text or RESULTS_END not in text:
        return
    head, rest = text.split(RESULTS_BEGIN, 1)
    tail = rest.split(RESULTS_END, 1)[1]
    path.write_text(head + RESULTS_BEGIN + "\n" + "\n".join(lines) + "\n" + RESULTS_END + tail)


# -- figures ----------------------------------------------------------------------------------------


def _logged(folder: Path) -> bool:
    return any(folder.glob("logs/csv/version_*/metrics.csv"))


def _stage_folder(record: dict, stage: str) -> Path | None:
    """The folder of a record's pre-training ("") or fine-tuning ("finetune") run: a record of a
    fine-tuning run alone (`igpt classifier`) holds its fine-tuning at the top and no pre-training."""
    if record["config"] is not None and record["config"].optim.finetune:
        return record["folder"] if stage == "finetune" else None
    return record["folder"] / stage


def _curves(record: dict, figures: Path, prefix: str) -> list[tuple[str, str]]:
    """Loss curves of a record's pre-training and fine-tuning, drawn from its CSV logs."""
    shown = []
    for stage, caption in (("", "pre-training loss"), ("finetune", "fine-tuning loss (L_GEN + L_CLF)")):
        folder = _stage_folder(record, stage)
        if folder is not None and _logged(folder):
            fig = plots.loss_curves(folder, title=f"{record['name']}: {caption}")
            name = f"{record['name']}_{'finetuning' if stage else 'pretraining'}_loss"
            shown.append((caption, prefix + plots.save_figure(fig, name, figures, close=True).name))
    return shown


def _record_figures(record: dict, link: str) -> list[tuple[str, str]]:
    """The figures kept in a record (the evaluation's, and figures preserved from lost run folders)."""
    shown = [(caption, f"{link}/{path}") for path, caption in CAPTIONS.items() if (record["folder"] / path).exists()]
    for path, caption in sorted(record["about"].get("preserved", {}).items()):
        if (record["folder"] / path).exists():
            shown.append((caption, f"{link}/{path}"))
    return shown


def comparisons(records: list[dict], figures: Path) -> list[tuple[str, str]]:
    """Curves of several records on one dataset, one figure per dataset and metric."""
    shown = []
    datasets = sorted({r["config"].data.dataset for r in records if r["config"]})
    for dataset in datasets:
        mine = [r for r in records if r["config"] and r["config"].data.dataset == dataset]
        for caption, stage, metric, ar_only in [
            # A BERT run's nats per pixel are over its masked pixels only: no likelihood to compare.
            ("validation nats per pixel (pre-training, AR runs)", "", "val/nats_per_pixel", True),
            ("classification training loss (fine-tuning)", "finetune", "train/clf_loss", False),
            ("classification validation loss (fine-tuning)", "finetune", "val/clf_loss", False),
            ("classification validation accuracy (fine-tuning)", "finetune", "val/acc", False),
        ]:
            folders = {r["name"]: _stage_folder(r, stage) for r in mine if not (ar_only and r["config"].model.objective != "ar")}
            runs = {name: folder for name, folder in folders.items()
                    if folder is not None and _logged(folder) and metric in plots.read_metrics_csv(folder)}
            if len(runs) < 2:  # a comparison needs two curves
                continue
            fig = plots.comparison_curves(runs, metric, title=f"{dataset}: {caption}")
            name = f"compare_{dataset}_{metric.replace('/', '_')}"
            shown.append((f"{dataset}: {caption}", f"figures/{plots.save_figure(fig, name, figures, close=True).name}"))
    return shown


def robustness_section(records: Path, figures: Path, shipped_weights: dict[str, str] | None = None) -> list[str]:
    """The inverted and rotated digits (`igpt robustness`), a table per measured model, then the
    models measured on the same images side by side, as a table and a figure saved into `figures`.

    shipped_weights: {shipped model name: its weights' digest}, to say which tables were measured
    with an earlier model of a name that is shipped now."""
    lines = []
    tables = [read_json(path) for path in sorted(records.glob("robustness-*/robustness.json"))]
    tables = [table for table in tables if table.get("complete", True)]  # a table still being measured waits
    for table in tables:
        rows = [[row["transform"], "on" if row["handling"] else "off", _number(row["class_agreement"], 3),
                 _number(row["pixel_agreement"], 3), _number(row["classification_accuracy"], 3),
                 _number(row.get("inversion_detected_right"), 3), _number(row.get("rotation_chosen_right"), 3)]
                for row in table["rows"]]
        first = table["rows"][0]
        lines += [f"### `{table['model']}` completing, `{table['classifier']}` classifying", "",
                  f"The first {first['images']} {table['dataset']} test images, {first['samples']} completions of the "
                  f"bottom half each, judged by a CNN (test accuracy {table['judge']['test_accuracy']:.4f}) after the "
                  f"known transform is undone; `{table['command']}` ({table['seconds'] / 60:.0f} min).", ""]
        lines += replaced_since(table, shipped_weights or {})
        lines += _table(["transform", "handling", "completion class agreement", "pixel agreement", "classifier accuracy",
                         "handling undid the inversion", "handling undid the rotation"], rows) + [""]
        lines += wrong_turns(table)
    lines += robustness_side_by_side(tables, figures)
    if lines:
        lines = ["## Inverted and rotated digits", "",
                 "The seed asks that inverted or rotated half images still complete like the training digits. With "
                 "the handling on, a white background is inverted back and the model picks the orientation it finds "
                 "most likely (a quarter turn and a correction of up to 30 degrees) before completing; off, it sees "
                 "the image as it is.", "", *lines]
    return lines


def replaced_since(table: dict, shipped_weights: dict[str, str]) -> list[str]:
    """A warning for each shipped model the table names that has been replaced since it was measured:
    the name stays when a better model is shipped, the weights' digests tell the two apart."""
    lines = []
    for role in ("model", "classifier"):
        name, measured = table[role], table.get(f"{role}_weights")
        if measured and name in shipped_weights and shipped_weights[name] != measured:
            lines += [f"Measured with an earlier `{name}` (weights {measured[:12]}), not the one shipped now "
                      f"({shipped_weights[name][:12]}): move this record away and run `{table['command']}` "
                      "to measure the shipped one.", ""]
    return lines


def wrong_turns(table: dict) -> list[str]:
    """How many images the orientation handling turned wrongly, per transform and true digit (tables
    measured before this was counted have none)."""
    handled = [row for row in table["rows"] if row["handling"] and "turned_wrongly_by_digit" in row]
    if not handled:
        return []
    rows = [[row["transform"], *map(str, row["turned_wrongly_by_digit"]), str(sum(row["turned_wrongly_by_digit"]))]
            for row in handled]
    digits = [str(digit) for digit in range(len(handled[0]["turned_wrongly_by_digit"]))]
    return [f"Images the handling turned wrongly, by true digit (of {handled[0]['images']} per transform):", "",
            *_table(["transform", *digits, "all"], rows), ""]


def robustness_side_by_side(tables: list[dict], figures: Path) -> list[str]:
    """Completion class agreement and classifier accuracy of every model measured on the same images
    (dataset, image count and samples), a column pair per model: for instance a model pre-trained
    with turns beside its twin pre-trained without. The same as a figure, saved into `figures`."""
    groups: dict[tuple, list[dict]] = {}
    for table in tables:
        first = table["rows"][0]
        groups.setdefault((table["dataset"], first["images"], first["samples"]), []).append(table)
    lines = []
    for (dataset, images, samples), group in groups.items():
        if len(group) < 2:
            continue
        by_row = [{(row["transform"], row["handling"]): row for row in table["rows"]} for table in group]
        keys = [key for key in by_row[0] if all(key in rows for rows in by_row)]
        rows = [[transform, "on" if handling else "off",
                 *(_number(rows[(transform, handling)][metric], 3) for rows in by_row
                   for metric in ("class_agreement", "classification_accuracy"))]
                for transform, handling in keys]
        header = ["transform", "handling"]
        for table in group:
            header += [f"`{table['model']}`: completion class agreement", f"`{table['classifier']}`: accuracy"]
        names = ", ".join(f"`{table['model']}`" for table in group)
        lines += [f"### Side by side: {names}", ""]
        lines += [f"The same first {images} {dataset} test images and {samples} completions each, from the tables above.", ""]
        lines += _table(header, rows) + [""]
        fig = plots.robustness_plot({table["model"]: table["rows"] for table in group},
                                    title=f"the first {images} {dataset} test images, {samples} completions each")
        path = plots.save_figure(fig, f"robustness_{dataset}_{images}x{samples}", figures, close=True)
        caption = "completion class agreement and classifier accuracy per transform"
        lines += [f"**{caption}**", "", f"![{caption}](figures/{path.name})", ""]
    return lines


def finetune_sweep_section(records: Path) -> list[str]:
    """The fine-tuning learning rates tried on validation (`igpt finetune-sweep`), a table per sweep."""
    lines = []
    for path in sorted(records.glob("finetune-sweep-*/finetune_sweep.json")):
        sweep = read_json(path)
        rows = [[f"{row['lr']:g}", _number(row["best_val_acc"]), str(row["steps"]), _number(row["minutes"], 1),
                 "yes" if row["stopped_early"] else "no"] for row in sweep["rows"]]
        lines += [f"### From `{sweep['checkpoint']}`", "",
                  f"Chosen: learning rate {sweep['chosen_lr']:g}, validation accuracy {sweep['chosen_best_val_acc']:.4f}. "
                  f"Measured by `{sweep['command'] or 'igpt finetune-sweep'}`.", ""]
        lines += _table(["learning rate", "best validation accuracy", "steps", "training minutes", "stopped early"], rows)
        lines += ["", f"![validation accuracy per learning rate](runs/{path.parent.name}/finetune_sweep.png)", ""]
    if lines:
        lines = ["## Fine-tuning learning rate, chosen on validation", "",
                 "Short fine-tunings from one pre-trained checkpoint, alike but for the learning rate; the best "
                 "validation accuracy picks the rate, and the test set is not read.", "", *lines]
    return lines


def _config_summary(config: RunConfig, trained_in: str | None = None) -> str:
    """The config in four lines; `trained_in`, the precision train() chose, is said where it differs
    from the config's (bfloat16 asked on a CPU where it is the slower)."""
    d, m, o, t = config.data, config.model, config.optim, config.train
    precision = t.precision if trained_in in (None, t.precision) else f"{t.precision} asked, trained in {trained_in} (the faster there)"
    return "\n".join([
        f"data: {d.dataset}, {d.n_px}x{d.n_px}, {d.clusters} colours, augment {d.augment}, batch {d.batch_size}, seed {d.seed}",
        f"model: width {m.n_embd}, {m.n_layer} layers, {m.n_head} heads, objective {m.objective}",
        f"optim: lr {o.lr}, warm-up {o.warmup_steps}, {o.schedule} decay",
        f"train: {t.steps} steps, precision {precision}",
    ])


def _figure_lines(shown: list[tuple[str, str]]) -> list[str]:
    return [f"**{caption}**\n\n![{caption}]({path})\n" for caption, path in shown]


# -- the report ---------------------------------------------------------------------------------------


def build_report(runs: str | Path | None = "runs", out: str | Path = "report", models_dir=None, readme: str | Path | None = None) -> Path:
    """Record the finished run folders under `runs` (None: none), then write the report from out/runs/ alone.

    readme: the README.md whose results section is rewritten (default: the one beside `out`, if it
    has the markers).
    """
    out = Path(out)
    records = out / RECORDS.name
    local = sorted(p for p in Path(runs).iterdir() if p.is_dir() and p.name != "smoke") if runs and Path(runs).is_dir() else []
    for folder in local:
        if (folder / "metrics.json").exists() and (folder / "config.yaml").exists():
            record_run(folder, records=records)
    models = _shipped(models_dir)
    pairs = find_records(records, models)
    entries = [result(record, model) for record, model in pairs]
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(entries, indent=2) + "\n")

    figures = out / "figures"
    if figures.exists():
        shutil.rmtree(figures)  # figures of records that are gone must not linger
    figures.mkdir(parents=True)
    lines = [
        "# igpt report",
        "",
        "Built by `igpt report` from the committed records in [runs/](runs/) (one folder per run or shipped model: "
        "config, metrics, evaluation, logs and figures, never checkpoints), listed in [results.json](results.json). "
        "Every number below is read from those records; each row names its record. Rebuild with `igpt report`; "
        "record a run folder with `igpt record RUN_DIR`, re-measure a shipped model with `igpt evaluate --model NAME`.",
        "",
    ]
    if not entries:
        lines += ["No records yet: run `make` (the xs pipeline) or `igpt sweep --sizes s m l`, then `igpt report`.", ""]
    else:
        lines += literature_section(entries) + ["", "## Results", ""] + result_tables(entries)
        ladder = comparison_section(records, figures)
        if ladder:
            lines += ["", *ladder]
        robust = robustness_section(records, figures, {name: model["weights"] for name, model in models.items()})
        if robust:
            lines += ["", *robust]
        learning_rates = finetune_sweep_section(records)
        if learning_rates:
            lines += ["", *learning_rates]
        shown = comparisons([r for r, _ in pairs], figures)
        if shown:
            lines += ["", "## Comparisons (one figure per dataset)", "", *_figure_lines(shown)]
        for entry, (record, model) in zip(entries, pairs):
            lines += ["", f"## `{record['name']}`", ""]
            if model is not None:
                lines += [f"The shipped model `{entry['model_file']}`; its card: [models/{_model_name(entry)}.md](models/{_model_name(entry)}.md).", ""]
            if record["config"]:
                lines += ["```yaml", _config_summary(record["config"], entry["training_precision"]), "```", ""]
            lines += _figure_lines(_curves(record, figures, "figures/") + _record_figures(record, f"runs/{record['name']}"))
    cards = write_model_cards(entries, pairs, out)
    if cards:
        lines += ["", "## Shipped models", "", "Each model card states how its model was made and what it measures:", ""]
        lines += [f"- [`models/{card.stem}.safetensors`](models/{card.name})" for card in cards]
    text = "\n".join(lines).rstrip("\n") + "\n"
    (out / "README.md").write_text(text)
    _write_html(text, out / "index.html")
    readme = Path(readme) if readme else out.resolve().parent / "README.md"
    if readme.exists():
        _replace_between_markers(readme, readme_results(entries))
    return out / "README.md"


def _write_html(markdown: str, path: Path) -> None:
    """One page; its images are the report's own files, linked by relative paths."""
    import mistune

    path.write_text(
        "<!doctype html><meta charset='utf-8'><title>igpt report</title>"
        "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:3px 6px}img{max-width:100%}</style>\n"
        + mistune.html(markdown)
    )


# -- model cards for the shipped models -------------------------------------------------------------

# Issue 7's targets for the shipped MNIST model: (what, the key in results.json, target, direction)
MNIST_TARGETS = [
    ("test likelihood (nats/px)", "nats_per_pixel", 0.31, "at most"),
    ("fine-tuned test accuracy", "finetuned_accuracy", 0.993, "at least"),
    ("fine-tuned Cohen's kappa", "kappa", 0.992, "at least"),
    ("linear probe, best layer", "probe_accuracy", 0.97, "at least"),
]


def _target_lines(entry: dict) -> list[str]:
    lines = ["| target | measured | status |", "|---|---|---|"]
    for what, key, target, direction in MNIST_TARGETS:
        value = entry.get(key)
        if value is None:
            lines.append(f"| {what} {direction} {target} | not measured | – |")
            continue
        met = value <= target if direction == "at most" else value >= target
        gap = "met" if met else f"missed by {abs(value - target):.4f}"
        lines.append(f"| {what} {direction} {target} | {value:.4f} | {gap} |")
    return lines


def _measures(entry: dict) -> list[str]:
    if not entry["evaluated"]:
        return ["Awaiting re-measurement: this model's record holds no evaluation yet."]
    lines = [f"Evaluated with `igpt evaluate` ({'bfloat16 autocast' if entry['eval_precision'] == 'bf16' else 'float32'}) "
             f"on {entry['test_images']} test images.", "", "| measure | value |", "|---|---|"]
    if entry["nats_per_pixel"] is not None:
        lines += [f"| test likelihood, nats per pixel | {_number(entry['nats_per_pixel'])} |",
                  f"| test likelihood, bits per pixel | {_number(entry['bits_per_pixel'])} |"]
    if entry["probe_accuracy"] is not None:
        lines.append(f"| linear probe, best layer (picked on validation; fitted on {_probe_fit(entry)}) | "
                     f"{_number(entry['probe_accuracy'])} (layer {entry['probe_layer']} of {entry['probe_layers']}) |")
    if entry["kappa"] is not None:
        lines += [f"| fine-tuned test accuracy | {_number(entry['finetuned_accuracy'])} |",
                  f"| fine-tuned Cohen's kappa | {_number(entry['kappa'])} |"]
    if entry["completion_images"]:
        lines += [f"| completions a separately trained {entry['dataset']} classifier labels as the original's class "
                  f"({entry['completion_images']} images x {entry['completion_samples']}) | {_number(entry['completion_class_agreement'], 3)} |",
                  f"| pixel agreement with the original in the completed half | {_number(entry['completion_pixel_agreement'], 3)} |"]
    return lines


def model_card(entry: dict, record: dict, model: dict, figures: list[tuple[str, str]]) -> str:
    """A shipped model's card: the file, how it was made, and what its record measures."""
    name = model["file"].stem
    config, notes = model["config"], model["notes"]
    lines = [
        f"# Model card: `models/{name}.safetensors`",
        "",
        f"- **File**: {model['megabytes']:.1f} MB of float32 weights, with the palette and the model config in the same file; "
        f"load it with `igptlib.load_model({name!r})`.",
        f"- **Model**: GPT-2 over pixel tokens, width {config.n_embd}, {config.n_layer} layers, {config.n_head} heads, "
        f"{model['parameters'] / 1e6:.2f}M parameters, objective {config.objective}"
        f"{', fine-tuned with a classification head' if entry['classifier_model'] else ''}.",
        f"- **Data**: {model['dataset'] or 'not recorded'}.",
        f"- **Training**: {_trained(entry)}.",
        f"- **Hardware**: {entry['hardware'] or 'not recorded'}.",
        *(f"- **Note**: {note}" for note in _as_list(notes.get("note"))),
        "- **Record**: " + (f"[`report/runs/{record['name']}`](../runs/{record['name']}/)" if record["folder"].is_dir()
                             else f"none yet (`report/runs/{record['name']}`)")
        + ("" if entry["training_record"] else f". Its training record was not preserved ({record['about'].get('source', 'source not recorded')}): "
           "what follows about its training is what the model file's metadata says."),
    ]
    if record["config"]:
        lines += ["", "```yaml", _config_summary(record["config"], entry["training_precision"]), "```"]
    lines += ["", "## How it was made", "", "```sh", *(entry["commands"] or ["not recorded"]), "```", "",
              "## Test results", "", *_measures(entry), "",
              "Re-measure it from the committed model file (this rewrites its record, then the report and this card):", "",
              "```sh", remeasure_command(name, entry["classifier_model"]), "```", ""]
    if model["dataset"] == "mnist":
        lines += ["## Against the targets", "", *_target_lines(entry), ""]
    lines += ["The seed report's and the paper's numbers beside the project's: [the report](../README.md).", "",
              *_figure_lines(figures)]
    return "\n".join(lines).rstrip("\n") + "\n"


def write_model_cards(entries: list[dict], pairs: list[tuple[dict, dict | None]], out: Path) -> list[Path]:
    """out/models/<name>.md for every shipped model (and out/models/<name>/ for its drawn figures)."""
    folder = out / "models"
    if folder.exists():
        shutil.rmtree(folder)  # cards of models no longer shipped must not linger
    cards = []
    for entry, (record, model) in zip(entries, pairs):
        if model is None:
            continue
        name = model["file"].stem
        folder.mkdir(parents=True, exist_ok=True)
        figures = _curves(record, folder / name, f"{name}/") + _record_figures(record, f"../runs/{record['name']}")
        card = folder / f"{name}.md"
        card.write_text(model_card(entry, record, model, figures))
        cards.append(card)
    return cards


def shipped_model_card(name: str, run_dir: str | Path, out: str | Path = "report") -> Path:
    """Record a shipped model's run folder as report/runs/shipped-<name>, then rebuild the report and
    the cards; return the model's card."""
    from igptlib.shipped import MODELS_DIR

    if not (MODELS_DIR / f"{name}.safetensors").exists():
        raise FileNotFoundError(f"{MODELS_DIR / name}.safetensors: no such shipped model; ship one with `igpt export` first")
    record_run(run_dir, f"{SHIPPED_PREFIX}{name}", Path(out) / RECORDS.name)
    build_report(runs=None, out=out)
    return Path(out) / "models" / f"{name}.md"
