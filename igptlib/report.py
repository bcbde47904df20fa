"""The report: report/README.md (and report/index.html), built only from run folders' files.

Every number in it is read from a run folder (config.yaml, metrics.json, evaluation.json and the
fine-tuning run beside them), and every table row names the folder it came from, so each figure
can be traced to the run, and the command, that produced it.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from igptlib import plots
from igptlib.train import RunConfig


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def read_run(folder: Path) -> dict | None:
    """What the report needs from one run folder, or None if the folder holds no finished run."""
    metrics = _read_json(folder / "metrics.json")
    if metrics is None or not (folder / "config.yaml").exists():
        return None
    finetune = folder / "finetune"
    return {
        "folder": folder,
        "config": RunConfig.load_yaml(folder / "config.yaml"),
        "metrics": metrics,
        "evaluation": _read_json(folder / "evaluation.json") or {},
        "finetune_metrics": _read_json(finetune / "metrics.json"),
        "finetune_evaluation": _read_json(finetune / "evaluation.json") or {},
    }


def find_runs(runs: str | Path = "runs") -> list[dict]:
    """Finished runs directly under `runs` (smoke runs excluded), in name order."""
    folders = sorted(p for p in Path(runs).iterdir() if p.is_dir() and p.name != "smoke") if Path(runs).is_dir() else []
    return [run for run in map(read_run, folders) if run is not None]


def _number(value, digits: int = 4) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _row(run: dict) -> str:
    config, metrics, evaluation = run["config"], run["metrics"], run["evaluation"]
    nll = evaluation.get("likelihood", {})
    probes = evaluation.get("probes", {})
    completion = evaluation.get("completion", {})
    classification = run["finetune_evaluation"].get("classification", {})
    probe = f"{_number(probes.get('best_test_accuracy'))} (layer {probes['best_layer']})" if probes else "–"
    return " | ".join([
        f"`{run['folder']}`", config.data.dataset, f"{config.model.n_embd}/{config.model.n_layer}/{config.model.n_head}",
        f"{metrics['parameters'] / 1e6:.2f}M", str(metrics["global_step"]), f"{training_seconds(run['folder']) / 60:.1f}",
        _number(nll.get("nats_per_pixel")), _number(nll.get("bits_per_pixel")),
        f"{nll.get('test_images', evaluation.get('test_images', '–'))}", evaluation.get("precision", "32"), probe,
        _number(classification.get("accuracy")), _number(classification.get("kappa")),
        _number(completion.get("class_agreement"), 3), _number(completion.get("pixel_agreement"), 3),
    ])


def _copy_figures(run: dict, figures: Path) -> list[tuple[str, str]]:
    """Copy the run's figures into the report's folder; return (caption, relative path) pairs."""
    name = run["folder"].name
    sources = [
        ("completions (first column the cut input, last the original)", run["folder"] / "figures" / "completions.png"),
        ("linear probe accuracy per layer", run["folder"] / "figures" / "linear_probes.png"),
        ("fine-tuned confusion matrix", run["folder"] / "finetune" / "figures" / "confusion_matrix.png"),
        ("fine-tuned: actual vs predicted", run["folder"] / "finetune" / "figures" / "actual_vs_predicted.png"),
    ]
    shown = []
    for caption, source in sources:
        if source.exists():
            target = figures / f"{name}_{source.stem}.png"
            shutil.copyfile(source, target)
            shown.append((caption, f"figures/{target.name}"))
    fig = plots.loss_curves(run["folder"], title=f"{name}: pre-training")
    shown.insert(0, ("pre-training loss", f"figures/{plots.save_figure(fig, f'{name}_pretraining_loss', figures, close=True).name}"))
    return shown


def _comparisons(runs: list[dict], figures: Path) -> list[tuple[str, str]]:
    """S/M/L comparison curves across the runs (only metrics every run logged)."""
    shown = []
    pretrain = {run["folder"].name: run["folder"] for run in runs}
    finetune = {run["folder"].name: run["folder"] / "finetune" for run in runs if run["finetune_metrics"]}
    for caption, folders, metric in [
        ("completion loss (validation nats per pixel)", pretrain, "val/nats_per_pixel"),
        ("classification training loss", finetune, "train/clf_loss"),
        ("classification validation loss", finetune, "val/clf_loss"),
        ("classification validation accuracy", finetune, "val/acc"),
    ]:
        if len(folders) < 1:
            continue
        try:
            fig = plots.comparison_curves(folders, metric, title=caption)
        except (KeyError, ValueError):  # a metric some run did not log
            continue
        name = "compare_" + metric.replace("/", "_")
        shown.append((caption, f"figures/{plots.save_figure(fig, name, figures, close=True).name}"))
    return shown


HEADER = [
    "run folder", "dataset", "width/layers/heads", "parameters", "steps", "train min",
    "test nats/px", "test bits/px", "test images", "eval precision", "best linear probe", "fine-tuned acc", "kappa",
    "completion class agreement", "completion pixel agreement",
]


def build_report(runs: str | Path = "runs", out: str | Path = "report") -> Path:
    """Write out/README.md and out/index.html from the finished runs under `runs`."""
    found = find_runs(runs)
    out = Path(out)
    figures = out / "figures"
    if figures.exists():
        shutil.rmtree(figures)  # figures of runs that are gone must not linger
    figures.mkdir(parents=True)
    lines = [
        "# igpt report",
        "",
        "Built by `igpt report` from the run folders named in each row; every number below is read from",
        "those folders' `metrics.json` (training) and `evaluation.json` (evaluation), written by the",
        "notebooks `05_training`, `07_evaluation` (run by `make` or `igpt sweep`). Fine-tuned figures come",
        "from each run's `finetune/` folder. Likelihood is the mean next-pixel cross-entropy on the test",
        "images counted in the table; completion agreement is measured on the first test images with a",
        "separately trained digit classifier.",
        "",
    ]
    if not found:
        lines += ["No finished runs yet: run `make` (the xs pipeline) or `igpt sweep --sizes s m l`."]
    else:
        lines += ["## Results", "", "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
        lines += [f"| {_row(run)} |" for run in found]
        lines += ["", "Hardware and time: `train min` is the wall time of pre-training, summed over every process of a run that was resumed (from its TensorBoard logs)."]
        comparisons = _comparisons(found, figures)
        if comparisons:
            lines += ["", "## Comparisons across runs", ""]
            lines += [f"![{caption}]({path})" for caption, path in comparisons]
        for run in found:
            lines += ["", f"## `{run['folder']}`", "", "```yaml", _config_summary(run["config"]), "```", ""]
            lines += [f"**{caption}**\n\n![{caption}]({path})\n" for caption, path in _copy_figures(run, figures)]
    cards = sorted((out / "models").glob("*.md"))
    if cards:
        lines += ["", "## Shipped models", "", "Each model card states how its model was trained and what it measures:", ""]
        lines += [f"- [`models/{card.stem}.safetensors`](models/{card.name})" for card in cards]
    lines += [
        "",
        "## For comparison (not measured here)",
        "",
        "- The seed report (iGPT-S on MNIST, Colab) states Cohen's kappa 0.992 for its classifier.",
        "- The paper (Chen et al. 2020) reports linear-probe and fine-tuning accuracy on CIFAR-10/100",
        "  and STL-10, not MNIST, from models pre-trained with 2048 TPU cores (as the seed report quotes it).",
    ]
    text = "\n".join(lines) + "\n"
    (out / "README.md").write_text(text)
    import mistune

    (out / "index.html").write_text(
        "<!doctype html><meta charset='utf-8'><title>igpt report</title>"
        "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:3px 6px}img{max-width:100%}</style>\n"
        + mistune.html(text)
    )
    return out / "README.md"


# -- model cards for the shipped models -------------------------------------------------------------

# Issue 7's targets for the shipped MNIST model: (what, the key in the card's numbers, target, direction)
MNIST_TARGETS = [
    ("test likelihood (nats/px)", "nats_per_pixel", 0.31, "at most"),
    ("fine-tuned test accuracy", "accuracy", 0.993, "at least"),
    ("fine-tuned Cohen's kappa", "kappa", 0.992, "at least"),
    ("linear probe, best layer", "probe", 0.97, "at least"),
]


def training_seconds(run_dir: str | Path) -> float:
    """Wall time of a run's training, resumptions included: for each process (a TensorBoard
    version folder), the time from its first to its last logged value, summed."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    total = 0.0
    for version in sorted((Path(run_dir) / "logs" / "tensorboard").glob("version_*")):
        events = EventAccumulator(str(version), size_guidance={"scalars": 0})
        events.Reload()
        times = [event.wall_time for tag in events.Tags()["scalars"] for event in events.Scalars(tag)]
        if times:
            total += max(times) - min(times)
    return total


def card_numbers(run_dir: str | Path) -> dict:
    """The headline test numbers of a shipped model's run folder (and its finetune/ folder)."""
    run = read_run(Path(run_dir))
    if run is None or not run["evaluation"]:
        raise FileNotFoundError(f"{run_dir}: no finished, evaluated run (metrics.json and evaluation.json)")
    evaluation, finetuned = run["evaluation"], run["finetune_evaluation"]
    probes = evaluation.get("probes", {})
    return {
        "nats_per_pixel": evaluation["likelihood"]["nats_per_pixel"],
        "bits_per_pixel": evaluation["likelihood"]["bits_per_pixel"],
        "test_images": evaluation["test_images"], "precision": evaluation.get("precision", "32"),
        "probe": probes.get("best_test_accuracy"), "probe_layer": probes.get("best_layer"),
        "probe_train": probes.get("train_examples"),
        "accuracy": finetuned.get("classification", {}).get("accuracy"),
        "kappa": finetuned.get("classification", {}).get("kappa"),
        "class_agreement": evaluation.get("completion", {}).get("class_agreement"),
        "pixel_agreement": evaluation.get("completion", {}).get("pixel_agreement"),
    }


def _target_lines(numbers: dict) -> list[str]:
    lines = ["| target | measured | status |", "|---|---|---|"]
    for what, key, target, direction in MNIST_TARGETS:
        value = numbers.get(key)
        if value is None:
            lines.append(f"| {what} {direction} {target} | not measured | – |")
            continue
        met = value <= target if direction == "at most" else value >= target
        gap = "met" if met else f"missed by {abs(value - target):.4f}"
        lines.append(f"| {what} {direction} {target} | {value:.4f} | {gap} |")
    return lines


def _as_list(value) -> list:
    """A note's value as a list: `igpt export --note` makes a list of a repeated key, a string of one."""
    return [value] if isinstance(value, str) else list(value)


def write_model_card(name: str, run_dir: str | Path, out: str | Path = "report/models", models_dir=None) -> Path:
    """report/models/<name>.md: what a shipped model is, how it was made, and what it measures.

    Every number is read from the model file and its run folder: config, metrics.json and
    evaluation.json of pre-training and fine-tuning, and the TensorBoard logs' timestamps.
    """
    from igptlib.shipped import MODELS_DIR, read_notes

    model_path = Path(models_dir or MODELS_DIR) / f"{name}.safetensors"
    if not model_path.exists():
        raise FileNotFoundError(f"{model_path}: no such shipped model; ship one with `igpt export` first")
    notes = read_notes(model_path)
    run_dir, out = Path(run_dir), Path(out)
    run = read_run(run_dir)
    numbers = card_numbers(run_dir)
    config, metrics = run["config"], run["metrics"]
    d, m, o, t = config.data, config.model, config.optim, config.train
    figures = out / name
    figures.mkdir(parents=True, exist_ok=True)
    shown = []
    for caption, source in [
        ("completions of test images (first column the cut input, last the original)", run_dir / "figures" / "completions.png"),
        ("linear probe accuracy per layer", run_dir / "figures" / "linear_probes.png"),
        ("fine-tuned confusion matrix", run_dir / "finetune" / "figures" / "confusion_matrix.png"),
    ]:
        if source.exists():
            shutil.copyfile(source, figures / source.name)
            shown.append(f"**{caption}**\n\n![{caption}]({name}/{source.name})\n")
    loss = plots.save_figure(plots.loss_curves(run_dir, title=f"{name}: pre-training"), "pretraining_loss", figures, close=True)
    shown.insert(0, f"**pre-training loss**\n\n![pre-training loss]({name}/{loss.name})\n")
    finetune_line = "not fine-tuned"
    if run["finetune_metrics"]:
        finetune_line = (f"{run['finetune_metrics']['global_step']} steps of L_GEN + L_CLF from the best pre-training "
                         f"checkpoint, {training_seconds(run_dir / 'finetune') / 60:.0f} min")

    def number(key, digits=4):
        return _number(numbers.get(key), digits)

    lines = [
        f"# Model card: `models/{name}.safetensors`",
        "",
        f"- **File**: {model_path.stat().st_size / 1e6:.1f} MB of float32 weights, with the palette and the model config in the same file; "
        f"load it with `igptlib.load_model({name!r})`.",
        f"- **Model**: GPT-2 over pixel tokens, width {m.n_embd}, {m.n_layer} layers, {m.n_head} heads, "
        f"{metrics['parameters'] / 1e6:.2f}M parameters, objective {m.objective}.",
        f"- **Data**: {d.dataset}, {d.n_px}x{d.n_px}, a {d.clusters}-colour k-means palette; the seeded 90/10 split of the "
        f"training images, augmentation {d.augment or 'none'}, batch {d.batch_size}.",
        f"- **Pre-training**: {metrics['global_step']} steps, lr {o.lr} with {o.warmup_steps} warm-up steps then {o.schedule} decay, "
        f"{t.precision}; {training_seconds(run_dir) / 60:.0f} min of training wall time (all processes of the run, from its logs).",
        f"- **Fine-tuning**: {finetune_line}.",
        f"- **Hardware**: {notes.get('hardware', 'not recorded')}.",
        *(f"- **Note**: {note}" for note in _as_list(notes.get("note", []))),
        f"- **Run folder**: `{run_dir}` (not committed; the commands below rebuild it).",
        "",
        "## How it was made",
        "",
        "```sh",
        *_as_list(notes.get("command", "not recorded")),
        "```",
        "",
        "## Test results",
        "",
        f"Evaluated with `igpt evaluate` ({'bfloat16 autocast' if numbers['precision'] == 'bf16' else 'float32'}).",
        "",
        f"| measure | value |",
        "|---|---|",
        f"| test likelihood, nats per pixel ({numbers['test_images']} test images) | {number('nats_per_pixel')} |",
        f"| test likelihood, bits per pixel | {number('bits_per_pixel')} |",
        f"| linear probe, best layer (picked on validation; fitted on {numbers['probe_train']} training images) | "
        f"{number('probe')} (layer {numbers['probe_layer']}) |",
        f"| fine-tuned test accuracy | {number('accuracy')} |",
        f"| fine-tuned Cohen's kappa | {number('kappa')} |",
        f"| completions a separately trained {d.dataset} classifier labels as the original's class | {number('class_agreement', 3)} |",
        f"| pixel agreement with the original in the completed half | {number('pixel_agreement', 3)} |",
        "",
    ]
    if d.dataset == "mnist":
        lines += ["## Against the targets", "", *_target_lines(numbers), ""]
    seed_report = ("fine-tuned iGPT-S on MNIST on Colab and states Cohen's kappa 0.992." if d.dataset == "mnist"
                   else f"worked on MNIST only; it has no {d.dataset} figures.")
    lines += [
        "## Beside the seed report and the paper (not measured here)",
        "",
        f"- The seed report {seed_report}",
        "- The paper (Chen et al. 2020) trained iGPT-S/M/L (76M to 1.4B parameters) for up to 1M steps of",
        f"  batch 128 on 2048 TPU cores and reports CIFAR-10/100 and STL-10, not {d.dataset}.",
        "",
        *shown,
    ]
    out.mkdir(parents=True, exist_ok=True)
    card = out / f"{name}.md"
    card.write_text("\n".join(lines) + "\n")
    return card


def _config_summary(config: RunConfig) -> str:
    d, m, o, t = config.data, config.model, config.optim, config.train
    return "\n".join([
        f"data: {d.dataset}, {d.n_px}x{d.n_px}, {d.clusters} colours, augment {d.augment}, batch {d.batch_size}, seed {d.seed}",
        f"model: width {m.n_embd}, {m.n_layer} layers, {m.n_head} heads, objective {m.objective}",
        f"optim: lr {o.lr}, warm-up {o.warmup_steps}, {o.schedule} decay",
        f"train: {t.steps} steps, precision {t.precision}",
    ])


def add_report_arguments(parser) -> None:
    parser.add_argument("--runs", default="runs", help="folder holding the run folders (default: runs)")
    parser.add_argument("--out", default="report", help="where the report goes (default: report)")


def run_report(args) -> None:
    print(f"report: {build_report(args.runs, args.out)}")


def add_card_arguments(parser) -> None:
    parser.add_argument("--name", required=True, help="the shipped model: models/<name>.safetensors")
    parser.add_argument("--run", dest="run_dir", required=True, help="its run folder (with finetune/ and evaluation.json)")
    parser.add_argument("--out", default="report/models", help="where the card goes (default: report/models)")


def run_card(args) -> None:
    print(f"model card: {write_model_card(args.name, args.run_dir, args.out)}")
