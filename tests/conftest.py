"""Shared fixtures: the real MNIST files, fetched once per machine into the repository's data root."""
from pathlib import Path

import pytest

from igptlib.data import fetch

REPO = Path(__file__).resolve().parents[1]
DATA_ROOT = REPO / "data"


@pytest.fixture(scope="session")
def mnist_root() -> Path:
    """A data root holding verified MNIST files (fetched from an offline-capable source if absent)."""
    fetch("mnist", DATA_ROOT)
    return DATA_ROOT


@pytest.fixture()
def mnist_copy(mnist_root, tmp_path) -> Path:
    """A private copy of the MNIST raw files, for tests that damage them."""
    import shutil

    raw = tmp_path / "MNIST" / "raw"
    shutil.copytree(mnist_root / "MNIST" / "raw", raw, ignore=shutil.ignore_patterns("*.bad", "*.gz"))
    return tmp_path
