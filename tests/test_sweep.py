"""The papermill sweep and the report built from its run folders (smoke mode: tiny data and steps)."""
import json

import pytest

from igptlib.report import build_report
from igptlib.sweep import execute, sweep


def test_sweep_runs_the_notebooks_into_run_folders_and_the_report_reads_them(mnist_root, tmp_path):
    runs = tmp_path / "runs"
    folders = sweep(sizes=["xs"], notebooks=["05_training", "07_evaluation"], runs=runs, smoke=True)
    folder = folders[0]
    assert folder == runs / "mnist-xs"
    for notebook in ("05_training", "07_evaluation"):
        assert (folder / "notebooks" / f"{notebook}.ipynb").exists(), "executed notebooks are kept"
    metrics = json.loads((folder / "metrics.json").read_text())
    evaluation = json.loads((folder / "evaluation.json").read_text())

    report = build_report(runs, tmp_path / "report")
    text = report.read_text()
    row = next(line for line in text.splitlines() if line.startswith(f"| `{folder}`"))
    # The numbers in the row are the run folder's own.
    assert f"{evaluation['likelihood']['nats_per_pixel']:.4f}" in row
    assert f"| {metrics['global_step']} |" in row
    assert evaluation["precision"] == "bf16" and "| bf16 |" in row  # 07 evaluates under bfloat16 autocast
    finetuned = json.loads((folder / "finetune" / "evaluation.json").read_text())
    assert f"{finetuned['classification']['kappa']:.4f}" in row
    assert (tmp_path / "report" / "index.html").read_text().count("<img") >= 4
    for image in (tmp_path / "report" / "figures").iterdir():
        assert image.stat().st_size > 0 and f"figures/{image.name}" in text


def test_an_empty_runs_folder_gives_a_report_that_says_so(tmp_path):
    text = build_report(tmp_path / "none", tmp_path / "report").read_text()
    assert "No finished runs yet" in text


def test_an_unknown_notebook_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no notebook '09_magic'"):
        execute("09_magic", tmp_path / "out.ipynb", {})
