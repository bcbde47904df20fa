"""pytest runs the tests in tests/ and, through nbval, every notebook in notebooks/.

The notebooks run in smoke mode (tiny data and steps): their kernels inherit this variable.
"""
import os

os.environ["IGPT_SMOKE"] = "1"
