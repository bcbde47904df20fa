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
        f"{metrics['parameters'] / 1e6:.2f}M", str(metrics["global_step"]), f"{metrics['wall_seconds'] / 60:.1f}",
        _number(nll.get("nats_per_pixel")), _number(nll.get("bits_per_pixel")),
        f"{nll.get('test_images', evaluation.get('test_images', '–'))}", probe,
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
    "test nats/px", "test bits/px", "test images", "best linear probe", "fine-tuned acc", "kappa",
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
        lines += ["", "Hardware and time: `train min` is the wall time of pre-training as metrics.json records it."]
        comparisons = _comparisons(found, figures)
        if comparisons:
            lines += ["", "## Comparisons across runs", ""]
            lines += [f"![{caption}]({path})" for caption, path in comparisons]
        for run in found:
            lines += ["", f"## `{run['folder']}`", "", "```yaml", _config_summary(run["config"]), "```", ""]
            lines += [f"**{caption}**\n\n![{caption}]({path})\n" for caption, path in _copy_figures(run, figures)]
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
