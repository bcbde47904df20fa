"""Shared fixtures: the real MNIST files, fetched once per machine into the repository's data root."""
from pathlib import Path

import pytest

from igptlib.datasets import fetch

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


@pytest.fixture(scope="session")
def tiny_checkpoint(mnist_root, tmp_path_factory) -> Path:
    """The last checkpoint of a 2-step xs run on real MNIST: hardly trained, but a real model and palette."""
    from igptlib.config import run_config
    from igptlib.train import train

    config = run_config("xs", root=str(mnist_root), limit_train=64, limit_val=32, limit_test=32, batch_size=16)
    config = config.replace(train={**config.train.to_dict(), "steps": 2, "val_every": 2, "save_every": 2,
                                   "checkpoint_steps": [], "test": False, "progress_bar": False})
    run = tmp_path_factory.mktemp("run")
    train(config, run)
    return run / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="session")
def upload():
    """What the browser's file dialog does to the completion explorer: its FileUpload's value becomes the chosen file."""
    import datetime

    def choose(explorer, name: str, content: bytes) -> None:
        explorer.upload.value = ({"name": name, "type": "image/png", "size": len(content),
                                  "content": memoryview(content), "last_modified": datetime.datetime.now()},)

    return choose
