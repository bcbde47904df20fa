"""The notebooks as files: committed clean, parameters validated when papermill runs them.

(nbval executes each of them in smoke mode as part of the same pytest run: see pyproject.toml.)
"""
import json
from pathlib import Path

import papermill
import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("0[1-8]_*.ipynb"))  # the course (the report's, 09 on: test_report.py)


def test_the_course_notebooks_are_there():
    names = [p.stem for p in NOTEBOOKS]
    assert names[:3] == ["01_data", "02_augmentation", "03_centroids"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_notebooks_carry_no_outputs_and_follow_the_conventions(path):
    notebook = json.loads(path.read_text())
    code = [cell for cell in notebook["cells"] if cell["cell_type"] == "code"]
    dirty = [i for i, cell in enumerate(code) if cell.get("outputs") or cell.get("execution_count")]
    assert not dirty, f"{path.name}: code cells {dirty} carry outputs; strip them before committing"
    assert notebook["metadata"]["kernelspec"]["name"] == "python3"
    tagged = [cell for cell in code if "parameters" in cell.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, f"{path.name}: expected one cell tagged 'parameters', found {len(tagged)}"
    assert "google.colab" in "".join(code[0]["source"]), "the first cell installs the project on Colab"


@pytest.mark.parametrize(
    "parameters, message",
    [({"sede": 1}, r"unknown notebook parameter\(s\) \['sede'\]"), ({"seed": "zero"}, "seed: expected an integer")],
)
def test_papermill_parameters_are_validated(tmp_path, parameters, message):
    with pytest.raises(papermill.PapermillExecutionError, match=message):
        papermill.execute_notebook(
            str(REPO / "notebooks" / "01_data.ipynb"), str(tmp_path / "out.ipynb"),
            parameters=parameters, kernel_name="python3", cwd=str(REPO / "notebooks"), progress_bar=False,
        )
