"""Give every course notebook its "Open in Colab" badge and Colab set-up cell, made from
igptlib.colab.REPOSITORY (run it after changing that address; tests/test_install.py checks the notebooks
agree): python scripts/colab_cells.py"""
from pathlib import Path

from igptlib.colab import COURSE_NOTEBOOKS, write_colab_cells

for path in sorted((Path(__file__).resolve().parents[1] / "notebooks").glob(COURSE_NOTEBOOKS)):
    print(f"{path.name}: {'written' if write_colab_cells(path) else 'already up to date'}")
