"""`igpt report`: the report notebooks (notebooks/09 onwards) executed on the committed records, and exported.

`igpt report` first records every finished run folder under runs/ (a local run folder refreshes
the record of its name), then, from the records under report/runs/ and report/bench/ alone:

    notebooks/09_*.ipynb ...   executed in place (nbclient), committed with their outputs: nbval
                               executes them again in `make test` and compares their text
    report/README.md           the notebooks exported as Markdown (nbconvert), their figures in report/figures/
    report/index.html          the same as one page (nbconvert HTML)
    report/results.json        one entry per record (igptlib.results)
    report/models/<m>.md       a card per shipped model (models/<m>.safetensors)
    README.md                  its results section, between the RESULTS_BEGIN and RESULTS_END markers:
                               the output of notebook 09's cell tagged `readme`

The build writes everything into a fresh folder inside the report folder and swaps it in only once
all of it succeeded: a failed build leaves the previous report as it was. It writes only into a
folder it owns (empty, or marked by a previous build) and never records report/runs/ onto itself.
Nothing depends on the time or the machine, so the same records give the same report.
"""
from __future__ import annotations

import copy
import re
import shutil
import tempfile
from pathlib import Path

from igptlib import plots
from igptlib.config import RunConfig, write_atomically, write_json
from igptlib.extras import require
from igptlib.markdown import Markdown, code, escape, fenced, image, link, number, table
from igptlib.records import RECORDS, SHIPPED_PREFIX, record_run
from igptlib.results import (as_list, find_records, logged, probe_fit, record_images, remeasure_command,
                             result, shipped_models_info, stage_folder, trained)

NOTEBOOKS = Path("notebooks")  # in the clone the command runs in, as runs/ and report/ are
FIRST_REPORT_NOTEBOOK = 9  # notebooks 01-08 are the course; 09 onwards draw the report
MARKER = ".igpt-report"  # in a report folder: igpt report built it and may rebuild it
REBUILT = ("README.md", "index.html", "results.json", "figures", "models", MARKER)  # replaced whole by each build
OWNED = (*REBUILT, "runs", "bench")  # runs/ and bench/ hold the records it reads
STAGING = ".igpt-build-"  # the prefix of a build's own folder inside the report folder
RESULTS_BEGIN = "<!-- results: written by `igpt report` from report/results.json; do not edit by hand -->"
RESULTS_END = "<!-- end of results -->"
README_CELL = "readme"  # the tag of notebook 09's cell whose output README.md shows


class ReportError(ValueError):
    """The report cannot be built as asked; the message says why and what was expected."""


def report_notebooks(folder: str | Path = NOTEBOOKS) -> list[Path]:
    """The report's notebooks (NN_name.ipynb with NN of 09 or more), in order."""
    found = [p for p in Path(folder).glob("*.ipynb") if re.match(r"\d\d_", p.name) and int(p.name[:2]) >= FIRST_REPORT_NOTEBOOK]
    return sorted(found)


# -- where the report may write ---------------------------------------------------------------------


def check_out(out: Path) -> None:
    """Refuse a report folder that is not the report's own: the repository root, a folder holding
    anything but the report's parts (models/ with weights, files of its own), or README.md and the
    rest not written by an earlier build."""
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise ReportError(f"--out {out}: expected a report folder, found a {'link' if out.is_symlink() else 'file'}")
    if not out.exists():
        return
    if (out / ".git").exists() or (out / "pyproject.toml").exists():
        raise ReportError(f"--out {out}: a repository root, not a report folder; the report goes into its own folder (default: report)")
    entries = {p.name for p in out.iterdir() if not p.name.startswith(STAGING)}
    foreign = sorted(entries - set(OWNED))
    if foreign:
        raise ReportError(f"--out {out}: holds {', '.join(foreign[:5])}{' ...' if len(foreign) > 5 else ''}, which igpt report "
                          f"does not own; expected a new or empty folder, or a report folder ({', '.join(OWNED)})")
    linked = sorted(name for name in entries if (out / name).is_symlink())
    if linked:
        raise ReportError(f"--out {out}: {', '.join(linked)} is a link; the report replaces only folders and files of its own")
    if (out / "models").is_dir() and any(p.suffix != ".md" and not p.is_dir() for p in (out / "models").iterdir()):
        raise ReportError(f"--out {out}: its models/ holds more than model cards (shipped models?); choose another --out")
    built = sorted(entries & set(REBUILT))
    if built and not (out / MARKER).is_file():
        raise ReportError(f"--out {out}: holds {', '.join(built)} that igpt report did not write (no {MARKER} in it); "
                          "choose a new or empty folder")


def check_runs(runs: Path, records: Path) -> None:
    """Refuse run folders that are the records themselves: recorded again, a record would lose what only
    a record keeps (its timing.json) and be copied onto itself."""
    where, kept = runs.resolve(), records.resolve()
    if where == kept or kept in where.parents or where in kept.parents:
        raise ReportError(f"--runs {runs}: the report's records ({records}) are there; --runs names the run folders "
                          "training writes (default: runs), which are recorded into them")


# -- executing and exporting the notebooks ----------------------------------------------------------


def _defaults_point_at(notebooks: Path, out: Path, models: Path) -> bool:
    """Whether the notebooks' default parameters (../report and ../models beside notebooks/) are `out`
    and `models`: then they run as committed and are rewritten in place."""
    return (notebooks / ".." / "report").resolve() == out.resolve() and (notebooks / ".." / "models").resolve() == models.resolve()


def execute(path: Path, parameters: dict | None, timeout: int = 600):
    """A report notebook executed top to bottom (nbclient, kernel python3, in the notebook's folder),
    with `parameters` (plain values) injected after its parameters cell as papermill does; the
    executed notebook."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

    notebook = nbformat.read(path, as_version=4)
    if parameters:  # as papermill injects them: a cell after the one tagged `parameters`
        tagged = [i for i, cell in enumerate(notebook.cells) if "parameters" in cell.metadata.get("tags", [])]
        if not tagged:
            raise ReportError(f"{path}: no cell tagged 'parameters' to give it {', '.join(parameters)}")
        injected = nbformat.v4.new_code_cell("\n".join(f"{name} = {value!r}" for name, value in parameters.items()))
        injected.metadata["tags"] = ["injected-parameters"]
        notebook.cells.insert(tagged[0] + 1, injected)
    client = NotebookClient(notebook, kernel_name="python3", timeout=timeout, record_timing=False,
                            resources={"metadata": {"path": str(path.parent)}})
    try:
        client.execute()
    except CellExecutionError as error:
        reason = " ".join(f"{error.ename}: {error.evalue}".split())[:300]
        raise ReportError(f"{path.name}: a cell failed ({reason}); the previous report is kept") from None
    except (CellTimeoutError, DeadKernelError) as error:
        raise ReportError(f"{path.name}: {' '.join(str(error).split())[:300]}; the previous report is kept") from None
    notebook.metadata["language_info"] = {"name": "python"}  # not the interpreter's version: the same on every machine
    return notebook


def export(executed: dict[str, object], folder: Path) -> None:
    """The executed notebooks as folder/README.md (Markdown) and folder/index.html (one page), without
    their code; their figures as folder/figures/<notebook>_<cell>_<output>.png, which both link to."""
    import nbformat
    from nbconvert import HTMLExporter, MarkdownExporter
    from nbconvert.preprocessors import ExtractOutputPreprocessor
    from traitlets.config import Config

    merged = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                                                "language_info": {"name": "python"}})
    for name, notebook in executed.items():
        notebook = copy.deepcopy(notebook)
        notebook, resources = ExtractOutputPreprocessor().preprocess(
            notebook, {"unique_key": name, "output_files_dir": "figures", "outputs": {}})
        for relative, data in resources["outputs"].items():
            (folder / relative).parent.mkdir(parents=True, exist_ok=True)
            (folder / relative).write_bytes(data)
        merged.cells += notebook.cells
    for cell in merged.cells:
        cell.pop("id", None)  # ids are unique within a notebook only
    merged.nbformat_minor = 4
    # Figures are already extracted: the exporters link to them by the file names set above.
    config = Config({"ExtractOutputPreprocessor": {"enabled": False}})
    markdown, _ = MarkdownExporter(config=config, exclude_input=True).from_notebook_node(merged)
    (folder / "README.md").write_text(markdown.strip() + "\n")
    page, _ = HTMLExporter(config=config, template_name="lab", exclude_input=True, exclude_input_prompt=True,
                           exclude_output_prompt=True, embed_images=False).from_notebook_node(
        merged, resources={"metadata": {"name": "igpt report"}})
    (folder / "index.html").write_text(page)


def readme_cell(notebook) -> str | None:
    """The Markdown that a notebook's cell tagged `readme` displayed, if it has one."""
    for cell in notebook.cells:
        if README_CELL in cell.get("metadata", {}).get("tags", []):
            return "\n".join(output.get("data", {}).get("text/markdown", "") for output in cell.get("outputs", [])).strip()
    return None


def replace_results(readme: Path, text: str) -> None:
    """README.md's results section, between its markers, replaced by `text` (nothing else changes)."""
    content = readme.read_text()
    if RESULTS_BEGIN not in content or RESULTS_END not in content:
        return
    head, rest = content.split(RESULTS_BEGIN, 1)
    tail = rest.split(RESULTS_END, 1)[1]
    write_atomically(readme, head + RESULTS_BEGIN + "\n" + text + "\n" + RESULTS_END + tail)


# -- the build --------------------------------------------------------------------------------------


def build_report(runs: str | Path | None = "runs", out: str | Path = "report", models_dir=None,
                 readme: str | Path | None = None, notebooks: str | Path = NOTEBOOKS) -> Path:
    """Record the finished run folders under `runs` (None: none), then build the report in `out`
    from out/runs/ and out/bench/ alone, and return out/README.md.

    models_dir: the shipped models (default: models/ beside `notebooks`, the notebooks' own default).
    readme: the README.md whose results section is rewritten (default: the one beside `out`, when the
    notebooks' own report is `out`).
    """
    require("nbclient", "course", "igpt report")
    require("nbconvert", "course", "igpt report")
    out, notebooks = Path(out), Path(notebooks)
    models = Path(models_dir) if models_dir else notebooks / ".." / "models"
    records = out / RECORDS.name
    check_out(out)
    if runs is not None:
        check_runs(Path(runs), records)
    paths = report_notebooks(notebooks)
    if not paths:
        raise ReportError(f"{notebooks}: no report notebooks (09_*.ipynb onwards) to execute")
    local = sorted(p for p in Path(runs).iterdir() if p.is_dir() and p.name != "smoke") if runs and Path(runs).is_dir() else []
    for folder in local:
        if (folder / "metrics.json").exists() and (folder / "config.yaml").exists():
            record_run(folder, records=records)

    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob(f"{STAGING}*"):  # left by a build that was killed
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale)
    staging = Path(tempfile.mkdtemp(prefix=STAGING, dir=out))
    try:
        in_place = _defaults_point_at(notebooks, out, models)
        parameters = None if in_place else {"report": str(out.resolve()), "models": str(models.resolve())}
        executed = {path.stem: execute(path, parameters) for path in paths}
        pairs = find_records(records, shipped_models_info(models))
        entries = [result(record, model) for record, model in pairs]
        write_json(staging / "results.json", entries)
        write_model_cards(entries, pairs, staging)
        export(executed, staging)
        (staging / MARKER).write_text("Built by `igpt report`, which replaces README.md, index.html, results.json, "
                                      "figures/ and models/ here; runs/ and bench/ hold the records it reads.\n")
        _swap(staging, out)
        if in_place:
            import nbformat

            for path in paths:
                write_atomically(path, nbformat.writes(executed[path.stem]) + "\n")
        readme = Path(readme) if readme else (out.resolve().parent / "README.md" if in_place else None)
        summary = readme_cell(executed[paths[0].stem])
        if readme is not None and readme.is_file() and summary:
            replace_results(readme, summary)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out / "README.md"


def _swap(staging: Path, out: Path) -> None:
    """Each rebuilt part of `out` replaced by the one built in `staging`; the old ones are moved aside
    first and put back if any replacement fails, so `out` ends whole, old or new."""
    aside = staging / "previous"
    aside.mkdir()
    moved, placed = [], []
    try:
        for name in REBUILT:
            if (out / name).exists() or (out / name).is_symlink():
                (out / name).replace(aside / name)
                moved.append(name)
            if (staging / name).exists():
                (staging / name).replace(out / name)
                placed.append(name)
    except OSError:
        for name in placed:
            shutil.rmtree(out / name) if (out / name).is_dir() else (out / name).unlink()
        for name in moved:
            (aside / name).replace(out / name)
        raise


# -- model cards for the shipped models -------------------------------------------------------------

# Issue 7's targets for the shipped MNIST model: (what, the key in results.json, target, direction)
MNIST_TARGETS = [
    ("test likelihood (nats/px)", "nats_per_pixel", 0.31, "at most"),
    ("fine-tuned test accuracy", "finetuned_accuracy", 0.993, "at least"),
    ("fine-tuned Cohen's kappa", "kappa", 0.992, "at least"),
    ("linear probe, best layer", "probe_accuracy", 0.97, "at least"),
]


def _target_rows(entry: dict) -> list[list]:
    rows = []
    for what, key, target, direction in MNIST_TARGETS:
        value = entry.get(key)
        if value is None:
            rows.append([f"{what} {direction} {target}", "not measured", "–"])
            continue
        met = value <= target if direction == "at most" else value >= target
        rows.append([f"{what} {direction} {target}", number(value), "met" if met else f"missed by {abs(value - target):.4f}"])
    return rows


def _measures(entry: dict) -> list[str]:
    if not entry["evaluated"]:
        return ["Awaiting re-measurement: this model's record holds no evaluation yet."]
    rows = []
    if entry["nats_per_pixel"] is not None:
        rows += [["test likelihood, nats per pixel", number(entry["nats_per_pixel"])],
                 ["test likelihood, bits per pixel", number(entry["bits_per_pixel"])]]
    if entry["probe_accuracy"] is not None:
        rows.append([f"linear probe, best layer (picked on validation; fitted on {probe_fit(entry)})",
                     f"{number(entry['probe_accuracy'])} (layer {entry['probe_layer']} of {entry['probe_layers']})"])
    if entry["kappa"] is not None:
        rows += [["fine-tuned test accuracy", number(entry["finetuned_accuracy"])],
                 ["fine-tuned Cohen's kappa", number(entry["kappa"])]]
    if entry["completion_images"]:
        rows += [[f"completions a separately trained {entry['dataset']} classifier labels as the original's class "
                  f"({entry['completion_images']} images x {entry['completion_samples']})", number(entry["completion_class_agreement"], 3)],
                 ["pixel agreement with the original in the completed half", number(entry["completion_pixel_agreement"], 3)]]
    precision = "bfloat16 autocast" if entry["eval_precision"] == "bf16" else "float32"
    return [f"Evaluated with {code('igpt evaluate')} ({precision}) on {escape(entry['test_images'])} test images.", "",
            table(["measure", "value"], rows)]


def _config_lines(config: RunConfig, trained_in: str | None) -> list[str]:
    d, m, o, t = config.data, config.model, config.optim, config.train
    precision = t.precision if trained_in in (None, t.precision) else f"{t.precision} asked, trained in {trained_in} (the faster there)"
    return [f"data: {d.dataset}, {d.n_px}x{d.n_px}, {d.clusters} colours, augment {d.augment}, batch {d.batch_size}, seed {d.seed}",
            f"model: width {m.n_embd}, {m.n_layer} layers, {m.n_head} heads, objective {m.objective}",
            f"optim: lr {o.lr}, warm-up {o.warmup_steps}, {o.schedule} decay",
            f"train: {t.steps} steps, precision {precision}"]


def _loss_curves(record: dict, folder: Path) -> list[tuple[str, str]]:
    """Loss curves of a record's pre-training and fine-tuning, drawn from its CSV logs into `folder`."""
    drawn = []
    for stage, caption in (("", "pre-training loss"), ("finetune", "fine-tuning loss (L_GEN + L_CLF)")):
        source = stage_folder(record, stage)
        if logged(source):
            fig = plots.loss_curves(source, title=f"{record['name']}: {caption}")
            name = f"{record['name']}_{'finetuning' if stage else 'pretraining'}_loss"
            drawn.append((caption, plots.save_figure(fig, name, folder, close=True).name))
    return drawn


def model_card(entry: dict, record: dict, model: dict, figures: list[Markdown], has_record: bool) -> str:
    """A shipped model's card: the file, how it was made, and what its record measures."""
    name = model["file"].stem
    config, notes = model["config"], model["notes"]
    record_link = (link(f"../runs/{record['name']}/", code(f"report/runs/{record['name']}")) if has_record
                   else f"none yet ({code('report/runs/' + record['name'])})")
    if not entry["training_record"]:
        record_link += (f". Its training record was not preserved ({escape(record['about'].get('source', 'source not recorded'))}): "
                        "what follows about its training is what the model file's metadata says.")
    lines = [
        f"# Model card: {code(f'models/{name}.safetensors')}",
        "",
        f"- **File**: {model['megabytes']:.1f} MB of float32 weights, with the palette and the model config in the same file; "
        f"load it with {code(f'igptlib.load_model({name!r})')}.",
        f"- **Model**: GPT-2 over pixel tokens, width {config.n_embd}, {config.n_layer} layers, {config.n_head} heads, "
        f"{model['parameters'] / 1e6:.2f}M parameters, objective {escape(config.objective)}"
        f"{', fine-tuned with a classification head' if entry['classifier_model'] else ''}.",
        f"- **Data**: {escape(model['dataset'] or 'not recorded')}.",
        f"- **Training**: {escape(trained(entry))}.",
        f"- **Hardware**: {escape(entry['hardware'] or 'not recorded')}.",
        *(f"- **Note**: {escape(note)}" for note in as_list(notes.get("note"))),
        f"- **Record**: {record_link}",
    ]
    if record["config"]:
        lines += ["", fenced(_config_lines(record["config"], entry["training_precision"]), "yaml")]
    lines += ["", "## How it was made", "", fenced(entry["commands"] or ["not recorded"], "sh"), "",
              "## Test results", "", *_measures(entry), "",
              "Re-measure it from the committed model file (this rewrites its record, then the report and this card):", "",
              fenced([remeasure_command(name, entry["classifier_model"])], "sh"), ""]
    if model["dataset"] == "mnist":
        lines += ["## Against the targets", "", table(["target", "measured", "status"], _target_rows(entry)), ""]
    lines += ["The seed report's and the paper's numbers beside the project's: [the report](../README.md).", ""]
    lines += [f"{figure}\n" for figure in figures]
    return "\n".join(lines).rstrip("\n") + "\n"


def write_model_cards(entries: list[dict], pairs: list[tuple[dict, dict | None]], folder: Path) -> list[Path]:
    """folder/models/<name>.md for every shipped model (and folder/models/<name>/ for its drawn figures)."""
    cards = []
    for entry, (record, model) in zip(entries, pairs):
        if model is None:
            continue
        name = model["file"].stem
        cards_folder = folder / "models"
        cards_folder.mkdir(parents=True, exist_ok=True)
        figures = [image(f"{name}/{file}", caption) for caption, file in _loss_curves(record, cards_folder / name)]
        # The record's own pictures, linked from the card's folder (report/models/ -> report/runs/).
        figures += record_images(record, "../")
        card = cards_folder / f"{name}.md"
        card.write_text(model_card(entry, record, model, figures, record["folder"].is_dir()))
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
