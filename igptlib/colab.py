"""The course on Google Colab: what every notebook's first cell calls once it has cloned the repository.

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

COLAB_BRINGS = frozenset({"torch", "torchvision", "numpy", "ipykernel", "ipywidgets", "jupyterlab"})
DRIVE = Path("/content/drive")
DRIVE_RUNS = "MyDrive/igpt/runs"  # under the mounted Drive: where runs/ lives with drive=True


class SetUpError(RuntimeError):
    """Installing the course failed; the message says what to check."""


def _canonical(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def project_requirements(root: str | os.PathLike) -> list[str]:
    """The requirements of the library and the notebooks, from the clone's pyproject.toml (no extras)."""
    import tomllib

    return tomllib.loads((Path(root) / "pyproject.toml").read_text())["project"]["dependencies"]


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
