"""The course on Google Colab: every notebook's "Open in Colab" badge and its first cell, made from
the course's address (REPOSITORY, set here and nowhere else), and what that cell calls once it has
cloned the course.

    badge(notebook)           the notebook's "Open in Colab" badge (Markdown)
    set_up_cell()             the notebooks' first cell: on Colab it clones REPOSITORY and calls set_up
    write_colab_cells(path)   put both into a notebook (scripts/colab_cells.py does it for the course)
    set_up(root, drive)       install what Colab lacks, then the project; work from the clone; with
                              drive=True keep runs/ on Google Drive
    missing_requirements(...) the project's requirements this environment does not satisfy, less
                              what Colab brings

Colab comes with its own torch, torchvision and numpy (built for its GPU) and its own Jupyter
(ipykernel, ipywidgets, the notebook front end); replacing any of them breaks its runtime, so they
are never installed here, whatever version the project asks for. Everything else is installed only
when missing or too old, so running the cell again costs seconds.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPOSITORY = "https://github.com/igpt-course/igpt"  # the course's home: badges and the set-up cell point here
BRANCH = "main"
BADGE_IMAGE = "https://colab.research.google.com/assets/colab-badge.svg"
COURSE_NOTEBOOKS = "0[1-8]_*.ipynb"  # the course (the report's notebooks, 09 on, need no Colab)
# The first cell of every course notebook. It cannot import igptlib (that is what it installs), so
# the address is written into it; IGPT_REPO names another clone (a fork, a local copy).
SET_UP_CELL = """\
# Set-up for Colab; anywhere else this cell does nothing. On Colab it clones the course (from
# $IGPT_REPO if set), installs what Colab lacks and, with IGPT_DRIVE=1, keeps runs/ on Google Drive.
# (Written by scripts/colab_cells.py from igptlib/colab.py: change it there.)
import os, subprocess, sys
if "google.colab" in sys.modules and not os.path.isdir("igptlib"):
    _repository = os.environ.get("IGPT_REPO") or "{repository}.git"
    if not os.path.isdir("igpt") and subprocess.run(["git", "clone", "--depth", "1", _repository, "igpt"]).returncode:
        raise SystemExit(f"git clone {{_repository}} failed (git says why above): check the network (or IGPT_REPO), then run this cell again")
    sys.path.insert(0, os.path.abspath("igpt"))
    from igptlib.colab import set_up
    set_up("igpt", drive=os.environ.get("IGPT_DRIVE") == "1")"""
COLAB_BRINGS = frozenset({"torch", "torchvision", "numpy", "ipykernel", "ipywidgets", "jupyterlab"})
DRIVE = Path("/content/drive")
DRIVE_RUNS = "MyDrive/igpt/runs"  # under the mounted Drive: where runs/ lives with drive=True


class SetUpError(RuntimeError):
    """Installing the course failed; the message says what to check."""


def _canonical(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def colab_url(notebook: str) -> str:
    """The address that opens the course's notebooks/<notebook>.ipynb in Colab."""
    return (f"https://colab.research.google.com/github/{REPOSITORY.removeprefix('https://github.com/')}"
            f"/blob/{BRANCH}/notebooks/{notebook}.ipynb")


def badge(notebook: str) -> str:
    return f"[![Open In Colab]({BADGE_IMAGE})]({colab_url(notebook)})"


def set_up_cell() -> str:
    return SET_UP_CELL.format(repository=REPOSITORY)


def write_colab_cells(path: str | os.PathLike) -> bool:
    """Make a notebook's first cell its badge and its first code cell the set-up cell; True if it changed."""
    import nbformat

    path = Path(path)
    notebook = nbformat.read(path, as_version=4)
    before = nbformat.writes(notebook)
    cells = notebook.cells
    if not (cells and cells[0].cell_type == "markdown" and cells[0].source.startswith("[![Open In Colab]")):
        cells.insert(0, nbformat.v4.new_markdown_cell())
    cells[0].source = badge(path.stem)
    code = [cell for cell in cells if cell.cell_type == "code"]
    if not (code and "google.colab" in code[0].source):
        raise ValueError(f"{path}: expected a first code cell that sets the course up on Colab")
    code[0].source = set_up_cell()
    after = nbformat.writes(notebook)
    if after != before:
        path.write_text(after + "\n")
    return after != before


def project_requirements(root: str | os.PathLike) -> list[str]:
    """What the library and the notebooks require, from the clone's pyproject.toml (the core and the
    course extra)."""
    import tomllib

    project = tomllib.loads((Path(root) / "pyproject.toml").read_text())["project"]
    return project["dependencies"] + project["optional-dependencies"]["course"]


def missing_requirements(requirements: list[str], brings=COLAB_BRINGS) -> list[str]:
    """The requirements not installed at a version they accept, less those named in `brings`."""
    from importlib.metadata import PackageNotFoundError, version

    from packaging.requirements import Requirement

    missing = []
    for spec in requirements:
        requirement = Requirement(spec)
        if _canonical(requirement.name) in brings:
            continue
        try:
            installed = version(requirement.name)
        except PackageNotFoundError:
            missing.append(spec)
            continue
        if not requirement.specifier.contains(installed, prereleases=True):
            missing.append(spec)
    return missing


def _pip_install(*arguments: str) -> None:
    command = [sys.executable, "-m", "pip", "install", "-q", *arguments]
    if subprocess.run(command).returncode != 0:
        raise SetUpError(f"`pip install {' '.join(arguments)}` failed (pip's message is above); "
                         "check the network, then run this cell again")


def set_up(root: str | os.PathLike, drive: bool = False) -> Path:
    """Install the course cloned at `root` into this Python and make `root` the working directory.

    The project itself is installed editable and without dependencies (they were seen to above),
    so `igpt` and the notebooks run from the clone. Returns the clone's absolute path.
    """
    root = Path(root).resolve()
    if not (root / "pyproject.toml").is_file() or not (root / "igptlib").is_dir():
        raise SetUpError(f"{root} is not a clone of the course (expected pyproject.toml and igptlib/ in it)")
    wanted = missing_requirements(project_requirements(root))
    if wanted:
        print(f"installing what this runtime lacks: {' '.join(wanted)}")
        _pip_install(*wanted)
    # setuptools is already here (Colab has it): no isolated build environment to download.
    _pip_install("--no-deps", "--no-build-isolation", "-e", str(root))
    os.chdir(root)
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    if drive:
        from google.colab import drive as google_drive

        google_drive.mount(str(DRIVE))
        link_runs(root, DRIVE / DRIVE_RUNS)
    print(f"the course is installed from {root}")
    return root


def link_runs(root: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Make root/runs a link to `target` (created if missing): runs then outlive the Colab session."""
    runs, target = Path(root) / "runs", Path(target)
    target.mkdir(parents=True, exist_ok=True)
    if runs.is_symlink() and runs.resolve() == target.resolve():
        return runs
    if runs.exists() or runs.is_symlink():
        raise SetUpError(f"{runs} already exists; move what it holds into {target} and delete it, then run this cell again")
    runs.symlink_to(target, target_is_directory=True)
    print(f"runs/ is kept on Google Drive: {target}")
    return runs
