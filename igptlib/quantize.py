"""Context reduction and the colour palette: images <-> token sequences.

iGPT shrinks images (n_px x n_px) and replaces every pixel by the index of its nearest k-means
centroid, so an image becomes n_px*n_px tokens over a vocabulary of `clusters` colours, read in
raster order. Images here are uint8 tensors shaped [..., C, H, W] with C = 1 (grayscale) or 3 (RGB);
a palette is a float32 array [K, C] of centroids in 0..255, sorted from dark to bright.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torchvision.transforms.v2 import functional as TF

from igptlib.config import atomic_file, check_regular_file


class PaletteError(ValueError):
    """A palette file or array is not a [K, C] array of colours, or does not fit the images."""


def reduce_context(images: torch.Tensor, n_px: int) -> torch.Tensor:
    """Resize uint8 images [..., C, H, W] to n_px x n_px (antialiased); the same size is returned as is."""
    if images.shape[-2:] == (n_px, n_px):
        return images
    return TF.resize(images, [n_px, n_px], antialias=True)


def _as_pixels(images: torch.Tensor | np.ndarray) -> tuple[torch.Tensor, int]:
    images = torch.as_tensor(images)
    if images.dtype != torch.uint8:
        raise PaletteError(f"expected uint8 images [..., C, H, W] with values 0..255, got dtype {images.dtype}")
    if images.ndim < 3 or images.shape[-3] not in (1, 3):
        raise PaletteError(f"expected images shaped [..., C, H, W] with C = 1 or 3, got shape {tuple(images.shape)}")
    return images, images.shape[-3]


def fit_palette(
    images: torch.Tensor,
    clusters: int = 16,
    method: str = "minibatch",
    pixels: int | None = 200_000,
    seed: int = 0,
) -> np.ndarray:
    """k-means centroids of the images' pixel colours, as float32 [clusters, C], dark to bright.

    `pixels` draws a seeded random sample of pixels to cluster (None uses them all). k-means runs on
    the distinct colours weighted by how often they occur: the same objective as clustering every
    pixel, but MNIST's millions of pixels shrink to 256 grey levels, and identical points can no
    longer pull two centroids onto the same colour (which wastes palette entries).
    """
    from sklearn.cluster import KMeans, MiniBatchKMeans

    images, channels = _as_pixels(images)
    colours = images.movedim(-3, -1).reshape(-1, channels).numpy()
    rng = np.random.default_rng(seed)
    if pixels is not None and pixels < len(colours):
        colours = colours[rng.choice(len(colours), size=pixels, replace=False)]
    distinct, counts = _colour_counts(colours)
    if len(distinct) < clusters:
        raise PaletteError(f"{clusters} clusters asked for, but the sampled pixels hold only {len(distinct)} distinct colours")
    if method == "minibatch":
        # reassignment_ratio=0: the default re-seeds small clusters at points drawn by weight, which
        # on MNIST means black again, and leaves several centroids on the same colour.
        kmeans = MiniBatchKMeans(n_clusters=clusters, n_init=3, reassignment_ratio=0.0, random_state=seed)
    elif method == "kmeans":
        kmeans = KMeans(n_clusters=clusters, n_init=3, random_state=seed)
    else:
        raise PaletteError(f"unknown k-means method {method!r}; expected 'minibatch' or 'kmeans'")
    kmeans.fit(distinct, sample_weight=counts.astype(np.float32))
    centroids = np.clip(kmeans.cluster_centers_, 0, 255).astype(np.float32)
    # Sorting by brightness makes token 0 the darkest colour and palettes comparable across seeds.
    brightness = centroids @ (np.array([0.299, 0.587, 0.114], np.float32) if channels == 3 else np.ones(1, np.float32))
    return centroids[np.argsort(brightness, kind="stable")]


def _colour_counts(colours: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct colours [D, C] and their counts; colours packed into one integer so this stays fast."""
    channels = colours.shape[1]
    keys = colours.astype(np.int64) @ (256 ** np.arange(channels - 1, -1, -1))
    if channels == 1:
        counts = np.bincount(keys, minlength=256)
        distinct = np.flatnonzero(counts)
        counts = counts[distinct]
    else:
        distinct, counts = np.unique(keys, return_counts=True)
    unpacked = (distinct[:, None] // 256 ** np.arange(channels - 1, -1, -1)) % 256
    return unpacked.astype(np.float32), counts


def check_palette(palette, clusters: int | None = None, channels: int | None = None, where: str = "palette") -> np.ndarray:
    """The palette as float32 [K, C]; a clear PaletteError when it is not one, or not the one expected."""
    palette = np.asarray(palette)
    if palette.ndim != 2 or palette.shape[1] not in (1, 3) or palette.shape[0] < 2:
        raise PaletteError(f"{where}: expected centroids shaped [K, 1] or [K, 3] with K >= 2, got shape {palette.shape}")
    if not np.issubdtype(palette.dtype, np.number):
        raise PaletteError(f"{where}: expected numeric centroids, got dtype {palette.dtype}")
    palette = palette.astype(np.float32)
    if not np.isfinite(palette).all() or palette.min() < 0 or palette.max() > 255:
        raise PaletteError(f"{where}: centroids must be finite colours in 0..255")
    if clusters is not None and palette.shape[0] != clusters:
        raise PaletteError(f"{where}: {palette.shape[0]} centroids, but {clusters} were expected (the model's vocabulary)")
    if channels is not None and palette.shape[1] != channels:
        kind = {1: "grayscale", 3: "RGB"}
        raise PaletteError(f"{where}: {kind[palette.shape[1]]} centroids, but the images are {kind[channels]}")
    return palette


def save_palette(palette: np.ndarray, path: str | Path) -> Path:
    """Write the palette as .npy; written to a temporary name first so a crash leaves no half file."""
    palette = check_palette(palette)
    path = Path(path)
    if path.is_dir():  # checked first: the rename below would fail only after writing the .partial file
        raise IsADirectoryError(f"{path}: a directory; expected the path of a .npy file")
    with atomic_file(path) as file:  # whole or not at all, and never through a link
        np.save(file, palette)
    return path


def load_palette(path: str | Path, clusters: int | None = None, channels: int | None = None) -> np.ndarray:
    path = Path(path)
    if not path.exists():
        raise PaletteError(f"{path}: no such palette file; fit one with `igpt centroids`")
    try:
        with check_regular_file(path, "a .npy array of centroids").open("rb") as file:
            magic = file.read(6)
    except OSError as error:
        raise PaletteError(str(error)) from None
    if magic != b"\x93NUMPY":  # else numpy tries it as a pickle, and says only that pickles are not allowed
        raise PaletteError(f"{path}: not a .npy array (the file is not in numpy's .npy format); expected the "
                           "centroids `igpt centroids` writes")
    try:
        palette = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as error:
        raise PaletteError(f"{path}: not a .npy array of centroids ({error})") from None
    return check_palette(palette, clusters, channels, where=str(path))


def encode(images: torch.Tensor | np.ndarray, palette: np.ndarray) -> torch.Tensor:
    """Nearest-centroid token of every pixel, raster order: uint8 [..., C, H, W] -> int64 [..., H*W]."""
    images, channels = _as_pixels(images)
    palette = check_palette(palette, channels=channels)
    centroids = torch.from_numpy(palette)
    if channels == 1:
        # Only 256 grey levels exist: look each one's nearest centroid up once, then index.
        levels = torch.arange(256, dtype=torch.float32)[:, None]
        lookup = (levels - centroids[:, 0]).abs().argmin(dim=1)
        return lookup[images[..., 0, :, :].reshape(*images.shape[:-3], -1).long()]
    colours = images.movedim(-3, -1).reshape(-1, 3).float()
    # |x - c|^2 = |x|^2 - 2 x.c + |c|^2; |x|^2 is the same for every centroid, so it drops out.
    tokens = torch.cat([
        (centroids.square().sum(1) - 2 * chunk @ centroids.T).argmin(dim=1)
        for chunk in colours.split(65536)
    ])
    return tokens.reshape(*images.shape[:-3], -1)


def decode(tokens: torch.Tensor, palette: np.ndarray, n_px: int | None = None) -> torch.Tensor:
    """Tokens [..., n_px*n_px] -> uint8 images [..., C, n_px, n_px] coloured by the palette."""
    palette = check_palette(palette)
    tokens = torch.as_tensor(tokens)
    if tokens.dtype.is_floating_point or tokens.dtype == torch.bool:
        raise PaletteError(f"expected integer tokens, got dtype {tokens.dtype}")
    length = tokens.shape[-1]
    n_px = n_px or int(round(length ** 0.5))
    if n_px * n_px != length:
        raise PaletteError(f"{length} tokens do not form an {n_px} x {n_px} image")
    if tokens.numel() and (tokens.min() < 0 or tokens.max() >= len(palette)):
        raise PaletteError(f"tokens must lie in 0..{len(palette) - 1} for this {len(palette)}-colour palette")
    colours = torch.from_numpy(palette).round().to(torch.uint8)[tokens.long()]  # [..., L, C]
    return colours.movedim(-1, -2).reshape(*tokens.shape[:-1], palette.shape[1], n_px, n_px)

