"""From a dataset's images to token sequences: the training/validation split, augmentation, the
palette, and the Lightning data module (igptlib.datasets fetches and verifies the files)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset
from torchvision.transforms import v2

import lightning as L

from igptlib.config import DataConfig, atomic_file
from igptlib.datasets import DataError, dataset_spec, fetch, load_split
from igptlib.quantize import encode, fit_palette, load_palette, reduce_context, save_palette


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
    # Every copy is held in memory before it is written: refuse what could never fit, before any work.
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    most = max(1, memory // 2 // images.numel())
    if copies > most:
        raise ValueError(f"--copies {copies}: {copies:,} augmented copies of {len(images):,} images need "
                         f"{copies * images.numel() / 1e9:,.1f} GB in memory, over half of this machine's "
                         f"{memory / 1e9:.0f} GB; expected at most {most} copies")
    augmented = torch.cat([augment_images(images, config, config.seed + copy) for copy in range(copies)])
    out = Path(out)
    with atomic_file(out) as file:  # whole or not at all, and never through a link
        np.savez_compressed(file, images=augmented.numpy(), labels=labels.repeat(copies).numpy())
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
    """Images turned into token sequences: augment, reduce context, nearest centroid. Augmented
    images are encoded on the fly; without augmentation every image is encoded once, up front (one
    image at a time in the training loop costs a step up to a third of its time)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, palette: np.ndarray, n_px: int, transform=None):
        self.images, self.labels, self.palette, self.n_px, self.transform = images, labels, palette, n_px, transform
        self.tokens = None if transform is not None else encode(reduce_context(images, n_px), palette)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        if self.tokens is not None:
            return self.tokens[index], self.labels[index]
        return encode(reduce_context(self.transform(self.images[index]), self.n_px), self.palette), self.labels[index]


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
