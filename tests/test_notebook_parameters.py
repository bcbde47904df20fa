"""The course notebooks' parameter cells are typed, as CourseParameters types them, so that
`papermill --help-notebook` shows each parameter's type (without hints it says "Unknown type")."""
import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import papermill
import pytest

from igptlib.colab import COURSE_NOTEBOOKS
from igptlib.course import CourseParameters

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob(COURSE_NOTEBOOKS))
TYPES = {field.name: field.type for field in dataclasses.fields(CourseParameters)}


def as_written_in_the_cell(type_name: str) -> str:
    """CourseParameters' "int | None" is "Optional[int]" in a cell (the form papermill parses)."""
    return re.sub(r"^(.+) \| None$", r"Optional[\1]", type_name)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.name)
def test_every_parameter_carries_its_course_parameters_type(path):
    parameters = papermill.inspect_notebook(str(path))
    assert parameters, f"{path.name}: no parameters found"
    for name, parameter in parameters.items():
        assert parameter["inferred_type_name"] == as_written_in_the_cell(TYPES[name]), f"{path.name}: {name}"


def test_papermill_help_notebook_shows_a_type_for_every_parameter():
    shown = subprocess.run([str(Path(sys.executable).parent / "papermill"), "--help-notebook",
                            "notebooks/05_training.ipynb"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert "Unknown type" not in shown.stdout
    listed = dict(re.findall(r"^  (\w+): (\S+) \(default", shown.stdout, re.M))
    assert listed == {name: as_written_in_the_cell(TYPES[name]) for name in
                      ("dataset", "size", "objective", "augment", "steps", "finetune_steps", "batch_size", "overrides",
                       "finetune_overrides", "evaluate_steps", "finetune_from", "budget_minutes", "seed", "run_dir",
                       "figures_dir", "smoke", "device", "show_tensorboard")}
