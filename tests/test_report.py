"""The report: committed records in, the same report out, every number traceable to a record.

The runs here are the tiny fixture's (two real training steps on real MNIST), fine-tuned for two
more steps and evaluated on 32 test images through the `igpt` command itself.
"""
import json
import re
import shutil
from pathlib import Path

import pytest

from igptlib.cli import main
from igptlib.config import RunConfig
from igptlib.records import training_seconds
from igptlib.report import build_report
from igptlib.shipped import export_model

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
SMALL = ["--limit-test", "32", "--batch-size", "16"]


def files(folder: Path) -> dict[str, bytes]:
    """Every file under a folder, by its relative path, with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def evaluated_run(tiny_checkpoint, mnist_root, tmp_path_factory) -> Path:
    """A run folder with a fine-tuning run in finetune/, both evaluated with `igpt evaluate`."""
    run = tmp_path_factory.mktemp("runs") / "tiny"
    shutil.copytree(tiny_checkpoint.parent.parent, run)
    assert main(["train", "--size", "xs", "--finetune-from", str(run / "checkpoints" / "last.ckpt"),
                 "--run-dir", str(run / "finetune"), "--root", str(mnist_root), "--limit-train", "64",
                 "--limit-val", "32", "--batch-size", "16", "--steps", "2", "--val-every", "2", "--save-every", "2",
                 "--checkpoint-steps", "--no-test", "--no-progress-bar"]) == 0
    # No completions: their judge, a CNN trained on all of MNIST, would cost more than everything else here.
    assert main(["evaluate", "--checkpoint", str(run / "checkpoints" / "last.ckpt"), *SMALL, "--probe-train", "64",
                 "--completions", "0"]) == 0
    assert main(["evaluate", "--checkpoint", str(run / "finetune" / "checkpoints" / "last.ckpt"), *SMALL,
                 "--no-probes", "--completions", "0"]) == 0
    return run


def test_a_run_is_recorded_and_the_report_reads_only_the_record(evaluated_run, tmp_path):
    runs = tmp_path / "runs"
    shutil.copytree(evaluated_run, runs / "tiny")
    report = tmp_path / "report"
    build_report(runs, report, models_dir=tmp_path / "no-models")

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
    # Training minutes from the record's timing.json equal those of the run folder's TensorBoard logs.
    assert entry["training_minutes"] == round(training_seconds(evaluated_run) / 60, 1)
    assert any(c.startswith("igpt train --size xs --finetune-from") for c in entry["commands"])
    assert any(c.startswith("igpt evaluate --checkpoint") for c in entry["commands"])
    text = (report / "README.md").read_text()
    assert f"| `tiny` | mnist | 32 | float32 | {evaluation['likelihood']['nats_per_pixel']:.4f} |" in text
    assert f"| {finetuned['classification']['kappa']:.4f} |" in text
    assert "![linear probe accuracy per layer](runs/tiny/figures/linear_probes.png)" in text
    # The config block says the precision train() chose where it is not the config's (bfloat16 on a CPU where it is slower).
    asked = RunConfig.load_yaml(evaluated_run / "config.yaml").train.precision
    said = asked if metrics["precision"] == asked else f"{asked} asked, trained in {metrics['precision']} (the faster there)"
    assert f"train: {metrics['global_step']} steps, precision {said}\n" in text

    # Without the run folder, the records alone give the same report, byte for byte.
    built = files(report)
    shutil.rmtree(runs)
    build_report(runs, report, models_dir=tmp_path / "no-models")
    assert files(report) == built


def test_a_local_run_refreshes_its_own_record_and_leaves_the_others(evaluated_run, tmp_path):
    runs, report = tmp_path / "runs", tmp_path / "report"
    shutil.copytree(evaluated_run, runs / "tiny")
    build_report(runs, report, models_dir=tmp_path / "no-models")
    shutil.copytree(report / "runs" / "tiny", report / "runs" / "kept")  # a committed record with no local run
    kept = files(report / "runs" / "kept")
    shutil.rmtree(runs / "tiny" / "finetune")
    build_report(runs, report, models_dir=tmp_path / "no-models")
    assert not (report / "runs" / "tiny" / "finetune").exists(), "the refreshed record is the run folder's, whole"
    assert files(report / "runs" / "kept") == kept
    names = [entry["name"] for entry in json.loads((report / "results.json").read_text())]
    assert names == ["kept", "tiny"]


def test_igpt_record_copies_a_run_folder_under_the_name_given(evaluated_run, tmp_path, capsys):
    assert main(["record", str(evaluated_run), "--name", "renamed", "--records", str(tmp_path)]) == 0
    assert (tmp_path / "renamed" / "finetune" / "metrics.json").exists()
    assert json.loads((tmp_path / "renamed" / "record.json").read_text())["source"] == str(evaluated_run)
    assert main(["record", str(tmp_path / "nothing"), "--records", str(tmp_path)]) == 2
    assert "not a finished run folder" in capsys.readouterr().err


def test_a_shipped_model_is_measured_into_its_record_and_its_card_names_the_command(tiny_checkpoint, mnist_root, tmp_path, capsys):
    models = tmp_path / "models"
    export_model(tiny_checkpoint, models / "tiny.safetensors",
                 {"hardware": "2 test cores", "command": ["igpt train --size xs", "igpt export"], "note": "stopped for 20 min",
                  "checkpoint": "runs/tiny/checkpoints/last.ckpt"})
    export_model(tiny_checkpoint, models / "unmeasured.safetensors", {"checkpoint": "runs/tiny/finetune/checkpoints/last.ckpt"})
    # The tiny model's palette was fitted on its 64 training images; a data root whose default
    # palette is that one stands for the full-data palette a shipped model is checked against.
    from igptlib.config import DataConfig, RunConfig

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
    build_report(None, report, models_dir=models)

    card = (report / "models" / "tiny.md").read_text()
    nats = evaluation["likelihood"]["nats_per_pixel"]
    assert f"| test likelihood, nats per pixel | {nats:.4f} |" in card
    assert f"| test likelihood (nats/px) at most 0.31 | {nats:.4f} | missed by {nats - 0.31:.4f} |" in card
    assert "| fine-tuned test accuracy at least 0.993 | not measured | – |" in card
    assert "igpt evaluate --model tiny --probe-train 10000" in card and "2 test cores" in card
    assert "igpt train --size xs\nigpt export\n" in card and "- **Note**: stopped for 20 min" in card
    assert "**Training**: training record not preserved" in card
    unmeasured = (report / "models" / "unmeasured.md").read_text()
    assert "Awaiting re-measurement" in unmeasured and "igpt evaluate --model unmeasured --no-probes --completions 0" in unmeasured
    entries = {e["name"]: e for e in json.loads((report / "results.json").read_text())}
    assert entries["shipped-tiny"]["nats_per_pixel"] == nats and entries["shipped-unmeasured"]["evaluated"] is False
    text = (report / "README.md").read_text()
    assert "[`models/tiny.safetensors`](models/tiny.md)" in text and "[`models/unmeasured.safetensors`](models/unmeasured.md)" in text

    with pytest.raises(SystemExit):  # --checkpoint or --model, one of them
        main(["evaluate"])
    assert main(["evaluate", "--model", "no-such-model"]) == 2
    assert "neither a shipped model" in capsys.readouterr().err


def test_igpt_card_refuses_a_model_that_is_not_shipped(evaluated_run, capsys):
    assert main(["card", "--name", "absent", "--run", str(evaluated_run)]) == 2
    assert "absent.safetensors: no such shipped model" in capsys.readouterr().err


def test_the_committed_report_is_rebuilt_byte_for_byte_without_run_folders(tmp_path):
    shutil.copytree(REPO / "report", tmp_path / "report")
    shutil.copyfile(REPO / "README.md", tmp_path / "README.md")
    build_report(tmp_path / "runs", tmp_path / "report", models_dir=REPO / "models", readme=tmp_path / "README.md")
    assert files(tmp_path / "report") == files(REPO / "report"), "`igpt report` would change the committed report"
    assert (tmp_path / "README.md").read_text() == (REPO / "README.md").read_text()
    shipped = {e["model_file"] for e in json.loads((REPO / "report" / "results.json").read_text()) if e["model_file"]}
    assert shipped == {f"models/{p.name}" for p in (REPO / "models").glob("*.safetensors")}, "every shipped model has a row"


def test_the_likelihood_comparison_leaves_out_bert_runs_and_fine_tuning_runs(tmp_path, monkeypatch):
    # A BERT run logs val/nats_per_pixel over its masked pixels only, which is no likelihood.
    from igptlib import plots, report

    drawn, draw = {}, plots.comparison_curves

    def drawing(runs, metric, **options):  # draws as before, noting which runs each figure shows
        drawn[metric] = runs
        return draw(runs, metric, **options)

    monkeypatch.setattr(plots, "comparison_curves", drawing)
    names = ("ladder-cpu-s", "ladder-cpu-s-noaug", "ladder-cpu-s-bert", "shipped-mnist-classifier")
    records = [report.read_record(REPO / "report" / "runs" / name) for name in names]
    assert records[2]["config"].model.objective == "bert"
    report.comparisons(records, tmp_path)
    # Nor does a fine-tuning run recorded alone (`igpt classifier`), whose logs are its fine-tuning's.
    assert records[3]["config"].optim.finetune
    assert set(drawn["val/nats_per_pixel"]) == {"ladder-cpu-s", "ladder-cpu-s-noaug"}
    assert set(drawn["val/acc"]) == set(names)
    assert drawn["val/acc"]["shipped-mnist-classifier"] == records[3]["folder"]


def test_each_headline_number_is_charged_the_training_it_took():
    # A probe needs only the pre-training; a run's fine-tuned classifier both; a shipped classifier
    # records its own fine-tuning (the model it started from has its own record).
    from igptlib.report import literature_section

    run = {"name": "l", "dataset": "mnist", "training_minutes": 159.2, "finetune_minutes": 28.6, "hardware": "a CPU",
           "classifier_model": False, "probe_accuracy": 0.95, "probe_layer": 6, "probe_layers": 6,
           "kappa": None, "finetuned_accuracy": None}
    classifier = {**run, "name": "c", "training_minutes": 240.9, "finetune_minutes": None, "classifier_model": True,
                  "probe_accuracy": None, "probe_layer": None, "kappa": 0.99, "finetuned_accuracy": 0.99}
    rows = {line.split(" | ")[0]: line for line in literature_section([run, classifier]) if line.startswith("| ")}
    assert rows["| linear probe, best layer, test accuracy"].endswith("| 159 min of pre-training on a CPU |")
    assert rows["| fine-tuned classifier, Cohen's kappa"].endswith(
        "| 241 min of fine-tuning (the model it started from not counted) on a CPU |")
    run["kappa"] = 0.999
    rows = {line.split(" | ")[0]: line for line in literature_section([run, classifier]) if line.startswith("| ")}
    assert rows["| fine-tuned classifier, Cohen's kappa"].endswith("| 188 min of training on a CPU |")


LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def test_every_relative_link_and_image_in_the_readme_and_the_report_resolves():
    pages = [REPO / "README.md", *sorted((REPO / "report").glob("*.md")), *sorted((REPO / "report" / "models").glob("*.md"))]
    broken = []
    for page in pages:
        for target in LINK.findall(page.read_text()):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue
            if not (page.parent / target.split("#")[0]).exists():
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
    assert images, "the report shows no images"
    assert [src for src, shown in images if not shown] == []


def test_a_broken_metrics_json_is_named_in_the_error(tmp_path):
    from igptlib.config import ConfigError
    from igptlib.records import record_run

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("{}\n")
    (run / "metrics.json").write_text('{"global_step": 3,')  # cut off mid-write
    with pytest.raises(ConfigError, match=r"run/metrics.json: not valid JSON"):
        record_run(run, records=tmp_path / "records")
