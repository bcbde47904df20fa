"""The report: committed records in, the report notebooks executed on them, exported as the report.

The runs here are the tiny fixture's (two real training steps on real MNIST), fine-tuned for two
more steps and evaluated on 32 test images through the `igpt` command itself. A build executes real
notebooks (nbclient) and exports them (nbconvert); most builds here run notebook 09 alone, the one
that shows every record, to keep the tests quick. nbval executes all the committed report notebooks
(notebooks/09 onwards) against their committed outputs in the same pytest run.
"""
import json
import re
import shutil
from pathlib import Path
from urllib.parse import unquote

import nbformat
import pytest

from igptlib.cli import main
from igptlib.config import RunConfig
from igptlib.report import MARKER, build_report, export, report_notebooks, write_model_cards
from igptlib.results import comparison_runs, entries, find_records, literature_table, read_record, shipped_models_info

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
SMALL = ["--limit-test", "32", "--batch-size", "16"]
SCRIPT = "<script>alert(1)</script>"
FOLDER = "<img src=x onerror=alert(1)>"


def files(folder: Path) -> dict[str, bytes]:
    """Every file under a folder, by its relative path, with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def clone(root: Path, notebooks=("09_results",)) -> Path:
    """A clone's layout in `root`: the report (a copy), some report notebooks (copies), the library and
    the shipped models (links); the notebooks' defaults (report/, models/) point into it."""
    (root / "notebooks").mkdir(parents=True)
    for name in notebooks:
        shutil.copyfile(REPO / "notebooks" / f"{name}.ipynb", root / "notebooks" / f"{name}.ipynb")
    for name in ("igptlib", "models", "figures"):  # course.go_to_root finds the root by igptlib/ and notebooks/
        (root / name).symlink_to(REPO / name)
    shutil.copytree(REPO / "report", root / "report")
    return root


@pytest.fixture(scope="module")
def evaluated_run(tiny_checkpoint, mnist_root, tmp_path_factory) -> Path:
    """A run folder with a fine-tuning run in finetune/, both evaluated with `igpt evaluate`."""
    run = tmp_path_factory.mktemp("runs") / "tiny"
    shutil.copytree(tiny_checkpoint.parent.parent, run)
    assert main(["train", "--size", "xs", "--model", str(run / "checkpoints" / "last.ckpt"),
                 "--run-dir", str(run / "finetune"), "--root", str(mnist_root), "--limit-train", "64",
                 "--limit-val", "32", "--batch-size", "16", "--steps", "2", "--val-every", "2", "--save-every", "2",
                 "--checkpoint-steps", "--no-test", "--no-progress-bar"]) == 0
    # No completions: their judge, a CNN trained on all of MNIST, would cost more than everything else here.
    assert main(["evaluate", "--model", str(run / "checkpoints" / "last.ckpt"), *SMALL, "--probe-train", "64",
                 "--completions", "0"]) == 0
    assert main(["evaluate", "--model", str(run / "finetune" / "checkpoints" / "last.ckpt"), *SMALL,
                 "--no-probes", "--completions", "0"]) == 0
    return run


def test_a_run_is_recorded_and_the_report_notebook_reads_only_the_record(evaluated_run, tmp_path):
    runs = tmp_path / "runs"
    shutil.copytree(evaluated_run, runs / "tiny")
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    shutil.copyfile(REPO / "notebooks" / "09_results.ipynb", notebooks / "09_results.ipynb")
    committed = (notebooks / "09_results.ipynb").read_bytes()
    report = tmp_path / "report"
    build_report(runs, report, models_dir=tmp_path / "no-models", notebooks=notebooks)

    record = report / "runs" / "tiny"
    assert not list(record.rglob("*.ckpt")) and not list(record.rglob("events.out.*")), "records hold no checkpoints or event files"
    for kept in ("config.yaml", "metrics.json", "evaluation.json", "finetune/commands.txt", "timing.json", "figures/linear_probes.png",
                 "finetune/evaluation.json", "finetune/figures/confusion_matrix.png", "logs/csv/version_0/metrics.csv"):
        assert (record / kept).exists(), kept
    entry = json.loads((report / "results.json").read_text())[0]
    evaluation = json.loads((evaluated_run / "evaluation.json").read_text())
    finetuned = json.loads((evaluated_run / "finetune" / "evaluation.json").read_text())
    metrics = json.loads((evaluated_run / "metrics.json").read_text())
    assert entry["name"] == "tiny" and entry["kind"] == "run" and entry["dataset"] == "mnist" and entry["preset"] == "xs"
    assert entry["nats_per_pixel"] == evaluation["likelihood"]["nats_per_pixel"]
    assert entry["probe_layer"] == evaluation["probes"]["best_layer"]
    assert entry["kappa"] == finetuned["classification"]["kappa"]
    assert entry["steps"] == metrics["global_step"] and entry["finetune_steps"] == 2
    assert entry["hardware"] == metrics["hardware"] and "torch threads" in entry["hardware"]
    assert any(c.startswith("igpt train --size xs --model") for c in entry["commands"])
    assert any(c.startswith("igpt evaluate --model") for c in entry["commands"])

    # The notebook's tables, exported, carry the record's numbers; the per-class table is computed
    # from the recorded confusion matrix.
    text = (report / "README.md").read_text()
    assert text.startswith("# 09 · Results")
    assert f"| <code>tiny</code> | mnist | 32 | float32 | {evaluation['likelihood']['nats_per_pixel']:.4f} |" in text
    assert f"| {finetuned['classification']['kappa']:.4f} |" in text
    recall = finetuned["classification"]["recall"]
    assert "| class | precision | recall | F1 | test images (support) |" in text and f"{recall[0]:.4f}" in text
    assert "![linear probe accuracy per layer](../report/runs/tiny/figures/linear_probes.png)" in text
    # The config table says the precision train() chose where it is not the config's (bfloat16 on a CPU where it is slower).
    asked = RunConfig.load_yaml(evaluated_run / "config.yaml").train.precision
    said = asked if metrics["precision"] == asked else f"{asked} asked, trained in {metrics['precision']} (the faster there)"
    assert f"| train | {metrics['global_step']} steps, precision {said} |" in text
    # A report elsewhere than the notebooks' own runs them with its folders as parameters, and leaves them as they were.
    assert (notebooks / "09_results.ipynb").read_bytes() == committed

    # Without the run folder, the records alone give the same results.
    shutil.rmtree(runs)
    assert entries(report, tmp_path / "no-models") == json.loads((report / "results.json").read_text())


def test_a_local_run_refreshes_its_own_record_and_leaves_the_others(evaluated_run, tmp_path):
    from igptlib.records import record_run

    runs, records = tmp_path / "runs", tmp_path / "report" / "runs"
    shutil.copytree(evaluated_run, runs / "tiny")
    record_run(runs / "tiny", records=records)
    shutil.copytree(records / "tiny", records / "kept")  # a committed record with no local run
    (records / "kept" / "record.json").write_text('{"source": "elsewhere"}\n')
    kept = files(records / "kept")
    shutil.rmtree(runs / "tiny" / "finetune")
    record_run(runs / "tiny", records=records)
    assert not (records / "tiny" / "finetune").exists(), "the refreshed record is the run folder's, whole"
    assert files(records / "kept") == kept
    assert [e["name"] for e in entries(tmp_path / "report", tmp_path / "no-models")] == ["kept", "tiny"]


def test_igpt_record_copies_a_run_folder_under_the_name_given(evaluated_run, tmp_path, capsys):
    assert main(["record", "--model", str(evaluated_run), "--name", "renamed", "--records", str(tmp_path)]) == 0
    assert (tmp_path / "renamed" / "finetune" / "metrics.json").exists()
    assert json.loads((tmp_path / "renamed" / "record.json").read_text())["source"] == str(evaluated_run)
    assert main(["record", "--model", str(tmp_path / "nothing"), "--records", str(tmp_path)]) == 2
    assert "not a finished run folder" in capsys.readouterr().err


def test_a_shipped_model_is_measured_into_its_record_and_its_card_names_the_command(tiny_checkpoint, mnist_root, tmp_path, capsys):
    from igptlib.config import DataConfig
    from igptlib.shipped import export_model

    models = tmp_path / "models"
    export_model(tiny_checkpoint, models / "tiny.safetensors",
                 {"hardware": "2 test cores", "command": ["igpt train --size xs", "igpt export"], "note": "stopped for 20 min",
                  "checkpoint": "runs/tiny/checkpoints/last.ckpt"})
    export_model(tiny_checkpoint, models / "unmeasured.safetensors", {"checkpoint": "runs/tiny/finetune/checkpoints/last.ckpt"})
    # The tiny model's palette was fitted on its 64 training images; a data root whose default
    # palette is that one stands for the full-data palette a shipped model is checked against.
    root = tmp_path / "data"
    root.mkdir()
    (root / "MNIST").symlink_to(mnist_root / "MNIST")
    palette = DataConfig(dataset="mnist", root=str(root)).palette_path
    palette.parent.mkdir(parents=True)
    shutil.copyfile(RunConfig.load_yaml(tiny_checkpoint.parent.parent / "config.yaml").data.palette_path, palette)
    report = tmp_path / "report"
    out = report / "runs" / "shipped-tiny" / "evaluation.json"
    assert main(["evaluate", "--model", str(models / "tiny.safetensors"), "--root", str(root), *SMALL,
                 "--probe-train", "64", "--completions", "0", "--out", str(out)]) == 0
    evaluation = json.loads(out.read_text())
    assert evaluation["model_file"] == str(models / "tiny.safetensors") and evaluation["finetuned"] is False
    assert evaluation["command"].startswith("igpt evaluate --model") and (out.parent / "figures" / "linear_probes.png").exists()

    pairs = find_records(report / "runs", shipped_models_info(models))
    results = [entry for entry in entries(report, models)]
    write_model_cards(results, pairs, report)
    card = (report / "models" / "tiny.md").read_text()
    nats = evaluation["likelihood"]["nats_per_pixel"]
    assert f"| test likelihood, nats per pixel | {nats:.4f} |" in card
    assert f"| test likelihood (nats/px) at most 0.31 | {nats:.4f} | missed by {nats - 0.31:.4f} |" in card
    assert "| fine-tuned test accuracy at least 0.993 | not measured | – |" in card
    assert "igpt evaluate --model tiny --probe-train 10000" in card and "2 test cores" in card
    assert "igpt train --size xs\nigpt export\n" in card and "- **Note**: stopped for 20 min" in card
    assert "**Training**: training record not preserved" in card
    assert "![linear probe accuracy per layer](../runs/shipped-tiny/figures/linear_probes.png)" in card
    unmeasured = (report / "models" / "unmeasured.md").read_text()
    assert "Awaiting re-measurement" in unmeasured and "igpt evaluate --model unmeasured --no-probes --completions 0" in unmeasured
    by_name = {e["name"]: e for e in results}
    assert by_name["shipped-tiny"]["nats_per_pixel"] == nats and by_name["shipped-unmeasured"]["evaluated"] is False

    with pytest.raises(SystemExit):  # --checkpoint or --model, one of them
        main(["evaluate"])
    assert main(["evaluate", "--model", "no-such-model"]) == 2
    assert "neither a shipped model" in capsys.readouterr().err


def test_igpt_card_refuses_a_model_that_is_not_shipped(evaluated_run, capsys):
    assert main(["card", "--model", "absent", "--run-dir", str(evaluated_run)]) == 2
    assert "absent.safetensors: no such shipped model" in capsys.readouterr().err


# -- the committed report ---------------------------------------------------------------------------


def test_the_committed_report_is_the_export_of_the_committed_report_notebooks(tmp_path):
    # nbval checks that the notebooks' outputs are those of the records; this, that README.md,
    # index.html and figures/ are those notebooks exported, byte for byte.
    executed = {path.stem: nbformat.read(path, as_version=4) for path in report_notebooks(REPO / "notebooks")}
    assert list(executed) == ["09_results", "10_model_comparison", "11_inverted_and_rotated", "12_benchmarks"]
    export(executed, tmp_path)
    assert files(tmp_path) == {**{name: data for name, data in files(REPO / "report").items()
                                  if name in ("README.md", "index.html") or name.startswith("figures/")}}
    text = (tmp_path / "README.md").read_text()
    for notebook in executed.values():
        for cell in notebook.cells:
            if cell.cell_type == "markdown":
                assert cell.source.splitlines()[0] in text
            shown = [output["data"]["text/markdown"] for output in cell.get("outputs", []) if "text/markdown" in output.get("data", {})]
            assert all(markdown in text for markdown in shown)
    pictures = sum("image/png" in output.get("data", {}) for notebook in executed.values()
                   for cell in notebook.cells for output in cell.get("outputs", []))
    assert pictures == len(list((tmp_path / "figures").iterdir())) == text.count("](figures/")
    assert (tmp_path / "index.html").read_text().count('src="figures/') == pictures


def test_the_committed_results_and_model_cards_are_those_of_the_records(tmp_path):
    pairs = find_records(REPO / "report" / "runs", shipped_models_info(REPO / "models"))
    results = entries(REPO / "report", REPO / "models")
    assert results == json.loads((REPO / "report" / "results.json").read_text())
    write_model_cards(results, pairs, tmp_path)
    assert files(tmp_path / "models") == files(REPO / "report" / "models")
    shipped = {e["model_file"] for e in results if e["model_file"]}
    assert shipped == {f"models/{p.name}" for p in (REPO / "models").glob("*.safetensors")}, "every shipped model has a row"
    # README.md's results section is the output of notebook 09's cell tagged `readme`.
    from igptlib.report import RESULTS_BEGIN, RESULTS_END, readme_cell

    section = (REPO / "README.md").read_text().split(RESULTS_BEGIN, 1)[1].split(RESULTS_END, 1)[0].strip()
    assert section == readme_cell(nbformat.read(REPO / "notebooks" / "09_results.ipynb", as_version=4))


def test_the_report_notebooks_are_committed_with_their_outputs_and_no_run_history():
    for path in report_notebooks(REPO / "notebooks"):
        notebook = json.loads(path.read_text())
        code = [cell for cell in notebook["cells"] if cell["cell_type"] == "code"]
        assert notebook["metadata"]["kernelspec"]["name"] == "python3"
        assert [cell["execution_count"] for cell in code] == list(range(1, len(code) + 1)), f"{path.name}: run top to bottom"
        assert sum("parameters" in cell["metadata"].get("tags", []) for cell in code) == 1
        outputs = [output for cell in code for output in cell["outputs"]]
        assert not [o for o in outputs if o["output_type"] in ("error", "stream")], f"{path.name}: errors or printed text"
        assert not any("execution" in cell["metadata"] or "papermill" in cell["metadata"] for cell in code), "no timings"


def test_every_relative_link_and_image_in_the_readme_the_docs_and_the_report_resolves():
    link = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)|(?:src|href)=\"([^\"#:]+)\"")
    pages = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), *sorted((REPO / "report").glob("*.md")),
             *sorted((REPO / "report" / "models").glob("*.md")),
             REPO / "report" / "index.html"]
    broken = []
    for page in pages:
        for found in link.findall(page.read_text()):
            target = next(part for part in found if part)
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue
            if not (page.parent / unquote(target.split("#")[0])).exists():
                broken.append(f"{page.relative_to(REPO)}: {target}")
    assert not broken


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium (`make setup` installs it)")
def test_the_report_page_shows_every_image_in_a_browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page()
        page.goto((REPO / "report" / "index.html").as_uri())
        page.wait_for_load_state("load")
        images = page.eval_on_selector_all("img", "images => images.map(i => [i.getAttribute('src'), i.complete && i.naturalWidth > 0])")
        browser.close()
    assert len(images) > 40, "the report shows its figures"
    assert [src for src, shown in images if not shown] == []


# -- what a report build may and may not do ---------------------------------------------------------


def test_a_record_is_text_in_the_report_never_markup_and_a_failed_build_keeps_the_report(tmp_path, monkeypatch, capsys):
    root = clone(tmp_path / "clone", notebooks=("09_results", "12_benchmarks"))
    records = root / "report" / "runs"
    # A classification benchmark as `igpt bench classify` writes it (its section waits for one), named with markup too.
    classify = {"name": SCRIPT, "kind": "transformer", "machine": {"hardware": "CPU A", "load_average_before": [2.0, 2.0, 2.0]},
                "stages": {"finetune": {"precision": "32-true", "steps": 400, "minutes": 2.0}}, "training": {"minutes": 3.0, "cpu_minutes": 5.5},
                "curve": [{"minutes": 1.0, "stage": "pretrain", "step": 10, "val_nats_per_pixel": 0.5},
                          {"minutes": 2.0, "stage": "finetune", "step": 10, "val_acc": 0.875}],
                "test": {"accuracy": 0.9125, "kappa": 0.9, "images": 10000}}
    (root / "report" / "bench" / "classify-crafted.json").write_text(json.dumps(classify))
    about = json.loads((records / "ladder-cpu-s" / "record.json").read_text())
    (records / "ladder-cpu-s" / "record.json").write_text(json.dumps({**about, "hardware": SCRIPT}))
    shipped = json.loads((records / "shipped-mnist" / "record.json").read_text())
    (records / "shipped-mnist" / "record.json").write_text(json.dumps({**shipped, "hardware": SCRIPT}))
    shutil.copytree(records / "ladder-cpu-s-noaug", records / FOLDER)
    monkeypatch.chdir(root)
    assert main(["report", "--records-only"]) == 0

    report = root / "report"
    for page in ("README.md", "index.html", "models/mnist.md"):
        text = (report / page).read_text()
        assert "<script>alert" not in text and "<img src=x" not in text, page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in (report / "README.md").read_text()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in (report / "models" / "mnist.md").read_text()
    html = (report / "index.html").read_text()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html, "the hardware is shown, as text"
    assert "&lt;img src=x onerror=alert(1)&gt;" in html, "the folder's name is shown, as text"
    assert "runs/%3Cimg%20src%3Dx%20onerror%3Dalert%281%29%3E/figures/completions.png" in html, "and its figures linked"
    assert FOLDER in [entry["name"] for entry in json.loads((report / "results.json").read_text())]
    text = (report / "README.md").read_text()
    assert ("| <code>&lt;script&gt;alert(1)&lt;/script&gt;</code> | transformer; fine-tuning: 400 steps in 2.0 min | 3.0 | 5.5 | "
            "0.8750 | 0.9125 | 0.9000 | CPU A, float32 | 2.0 |") in text
    assert "No classification benchmark" not in text and "figures/12_benchmarks_" in text

    # A build that fails (a damaged record) changes nothing: the report and the notebook stay as they were.
    built, notebook = files(report), (root / "notebooks" / "09_results.ipynb").read_bytes()
    (records / "ladder-cpu-m" / "metrics.json").write_text("[]\n")
    capsys.readouterr()
    assert main(["report", "--records-only"]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "09_results.ipynb: a cell failed" in error and "previous report is kept" in error
    (records / "ladder-cpu-m" / "metrics.json").write_text((REPO / "report/runs/ladder-cpu-m/metrics.json").read_text())
    assert files(report) == built and (root / "notebooks" / "09_results.ipynb").read_bytes() == notebook


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else b"") for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize("layout, expected", [
    ({"pyproject.toml": "", ".git/HEAD": "", "models/mnist.safetensors": "weights", "figures/a.png": "png", "README.md": "hi"},
     "a repository root, not a report folder"),
    ({"models/mnist.safetensors": "weights", "figures/a.png": "png", "README.md": "hi", "notes.txt": "mine"},
     "holds notes.txt, which igpt report does not own"),
    ({"README.md": "mine", "figures/a.png": "png"}, "holds README.md, figures that igpt report did not write"),
    ({MARKER: "", "models/mnist.safetensors": "weights"}, "its models/ holds more than model cards"),
])
def test_a_report_folder_that_is_not_the_reports_own_is_refused_and_left_alone(tmp_path, monkeypatch, capsys, layout, expected):
    out = tmp_path / "out"
    for name, content in layout.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text(content)
    before = snapshot(tmp_path)
    monkeypatch.chdir(REPO)
    assert main(["report", "--records-only", "--out", str(out)]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and expected in error, error
    assert snapshot(tmp_path) == before


def test_the_repository_root_is_refused_and_its_files_are_untouched(monkeypatch, capsys):
    kept = ("models", "figures", "report", "notebooks")
    before = {name: snapshot(REPO / name) for name in kept}
    readme = (REPO / "README.md").read_bytes()
    monkeypatch.chdir(REPO)
    assert main(["report", "--out", "."]) == 2
    assert "a repository root, not a report folder" in capsys.readouterr().err
    assert {name: snapshot(REPO / name) for name in kept} == before and (REPO / "README.md").read_bytes() == readme


def test_the_records_are_never_recorded_onto_themselves(tmp_path, monkeypatch, capsys):
    root = clone(tmp_path / "clone", notebooks=())
    before = snapshot(root / "report")
    monkeypatch.chdir(root)
    for runs in ("report/runs", "report", "report/runs/ladder-cpu-s"):
        assert main(["report", "--runs", runs]) == 2
        error = capsys.readouterr().err.strip()
        assert len(error.splitlines()) == 1 and "the report's records" in error, error
    assert snapshot(root / "report") == before


def test_the_likelihood_comparison_leaves_out_bert_runs_and_fine_tuning_runs():
    # A BERT run logs val/nats_per_pixel over its masked pixels only, which is no likelihood; a
    # fine-tuning run recorded alone (`igpt classifier`) logs its fine-tuning at the top.
    names = ("ladder-cpu-s", "ladder-cpu-s-noaug", "ladder-cpu-s-bert", "shipped-mnist-classifier")
    records = [read_record(REPO / "report" / "runs" / name) for name in names]
    assert records[2]["config"].model.objective == "bert" and records[3]["config"].optim.finetune
    assert set(comparison_runs(records, "mnist", "", "val/nats_per_pixel", ar_only=True)) == {"ladder-cpu-s", "ladder-cpu-s-noaug"}
    accuracy = comparison_runs(records, "mnist", "finetune", "val/acc", ar_only=False)
    assert set(accuracy) == set(names) and accuracy["shipped-mnist-classifier"] == records[3]["folder"]


def test_each_headline_number_is_charged_the_training_it_took():
    # A probe needs only the pre-training; a run's fine-tuned classifier both; a shipped classifier
    # records its own fine-tuning (the model it started from has its own record).
    run = {"name": "l", "dataset": "mnist", "training_minutes": 159.2, "finetune_minutes": 28.6, "hardware": "a CPU",
           "classifier_model": False, "probe_accuracy": 0.95, "probe_layer": 6, "probe_layers": 6,
           "kappa": None, "finetuned_accuracy": None}
    classifier = {**run, "name": "c", "training_minutes": 240.9, "finetune_minutes": None, "classifier_model": True,
                  "probe_accuracy": None, "probe_layer": None, "kappa": 0.99, "finetuned_accuracy": 0.99}

    def rows(entries):
        return {line.split(" | ")[0]: line for line in literature_table(entries).splitlines()}

    assert rows([run, classifier])["| linear probe, best layer, test accuracy"].endswith("| 159 min of pre-training on a CPU |")
    assert rows([run, classifier])["| fine-tuned classifier, Cohen's kappa"].endswith(
        "| 241 min of fine-tuning (the model it started from not counted) on a CPU |")
    run["kappa"] = 0.999
    assert rows([run, classifier])["| fine-tuned classifier, Cohen's kappa"].endswith("| 188 min of training on a CPU |")


def test_a_broken_metrics_json_is_named_in_the_error(tmp_path):
    from igptlib.config import ConfigError
    from igptlib.records import record_run

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("{}\n")
    (run / "metrics.json").write_text('{"global_step": 3,')  # cut off mid-write
    with pytest.raises(ConfigError, match=r"run/metrics.json: not valid JSON"):
        record_run(run, records=tmp_path / "records")


def test_a_record_links_its_executed_notebooks_with_papermills_minutes(tmp_path):
    from igptlib.results import executed_notebooks, read_record

    record = tmp_path / "runs" / "mnist-course"
    assert executed_notebooks(read_record(record), "") is None  # a record that keeps none says nothing
    (record / "notebooks").mkdir(parents=True)
    for name, seconds in (("05_training", 1332.8), ("07_evaluation", 423.4)):
        notebook = {"cells": [], "metadata": {"papermill": {"duration": seconds}}, "nbformat": 4, "nbformat_minor": 5}
        (record / "notebooks" / f"{name}.ipynb").write_text(json.dumps(notebook))
    said = str(executed_notebooks(read_record(record), "../"))
    assert "[05_training](../runs/mnist-course/notebooks/05_training.ipynb) (22.2 min)" in said
    assert "(7.1 min)" in said and "29.3 minutes in all" in said
