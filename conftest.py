"""pytest runs the tests in tests/ and, through nbval, every notebook in notebooks/.

The notebooks run in smoke mode (tiny data and steps): their kernels inherit this variable.
"""
import os
import shutil
from pathlib import Path

os.environ["IGPT_SMOKE"] = "1"


def pytest_sessionstart(session):
    # The smoke notebooks share runs/smoke (05 trains what 06 and 07 read). A folder left by an
    # older version of the code holds another config, which training rightly refuses to overwrite.
    shutil.rmtree(Path(__file__).parent / "runs" / "smoke", ignore_errors=True)
