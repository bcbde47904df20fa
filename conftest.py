"""pytest runs the tests in tests/ and, through nbval, every notebook in notebooks/.

The course's notebooks (01-08) run in smoke mode (tiny data and steps; their kernels inherit
IGPT_SMOKE) under --nbval-lax: they must run, their outputs are not compared. The report's notebooks
(09 onwards) only read the committed records: nbval runs them in full and compares every text output
with the committed one, so a record changed without `igpt report` fails the suite.
"""
import os
import re
import shutil
from pathlib import Path

os.environ["IGPT_SMOKE"] = "1"


def pytest_sessionstart(session):
    # The smoke notebooks share runs/smoke (05 trains what 06 and 07 read). A folder left by an
    # older version of the code holds another config, which training rightly refuses to overwrite.
    shutil.rmtree(Path(__file__).parent / "runs" / "smoke", ignore_errors=True)


def pytest_collectstart(collector):
    # nbval reads compare_outputs when it collects a notebook's cells, just after this hook.
    if type(collector).__name__ == "IPyNbFile" and is_report_notebook(Path(str(collector.path))):
        collector.compare_outputs = True


def is_report_notebook(path: Path) -> bool:
    """notebooks/NN_*.ipynb with NN of 09 or more (igptlib.report.report_notebooks, without importing igptlib here)."""
    found = re.match(r"(\d\d)_", path.name)
    return path.suffix == ".ipynb" and found is not None and int(found.group(1)) >= 9
