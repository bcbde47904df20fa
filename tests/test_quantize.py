"""The palette and the tokens: k-means centroids, nearest-centroid encoding, decoding, bad input."""
import numpy as np
import pytest
import torch

from igptlib.datasets import load_split
from igptlib.quantize import (
    PaletteError,
    decode,
    encode,
    fit_palette,
    load_palette,
    reduce_context,
    save_palette,
)


def nearest_centroid_images(images: torch.Tensor, palette: np.ndarray) -> np.ndarray:
    """Brute force, pixel by pixel distance to every centroid: the reference for encode/decode."""
    pixels = images.movedim(-3, -1).numpy().astype(np.float64)  # [..., H, W, C]
    distances = ((pixels[..., None, :] - palette.astype(np.float64)) ** 2).sum(-1)  # [..., H, W, K]
    nearest = palette[distances.argmin(-1)]  # [..., H, W, C]
    return np.moveaxis(np.round(nearest), -1, -3).astype(np.uint8)


@pytest.fixture(scope="module")
def mnist_train(mnist_root):
    return load_split("mnist", mnist_root, train=True)


@pytest.fixture(scope="module")
def mnist_palette(mnist_train):
    return fit_palette(mnist_train[0][:20000], clusters=16, seed=0)


def test_mnist_palette_is_sorted_distinct_and_every_colour_is_used(mnist_palette, mnist_root):
    assert mnist_palette.shape == (16, 1) and mnist_palette.dtype == np.float32
    assert np.all(np.diff(mnist_palette[:, 0]) > 1.0), "centroids must be distinct and sorted dark to bright"
    assert mnist_palette[0, 0] < 1.0 and mnist_palette[-1, 0] > 240  # black background, white ink
    test_images = load_split("mnist", mnist_root, train=False)[0][:1000]
    usage = np.bincount(encode(test_images, mnist_palette).flatten().numpy(), minlength=16)
    assert (usage > 0).all(), f"every palette entry should be used, got counts {usage}"


def test_round_trip_is_the_nearest_centroid_grayscale(mnist_train, mnist_palette):
    images = mnist_train[0][:200]
    tokens = encode(images, mnist_palette)
    assert tokens.shape == (200, 784) and tokens.dtype == torch.int64
    np.testing.assert_array_equal(decode(tokens, mnist_palette).numpy(), nearest_centroid_images(images, mnist_palette))


def test_rgb_palette_on_cifar_shaped_data():
    generator = torch.Generator().manual_seed(0)
    # Eight colour blobs plus noise, the shape of CIFAR-10 batches.
    base = torch.randint(0, 256, (8, 3), generator=generator)
    picks = torch.randint(0, 8, (64, 32, 32), generator=generator)
    noise = torch.randint(-6, 7, (64, 3, 32, 32), generator=generator)
    images = (base[picks].permute(0, 3, 1, 2) + noise).clamp(0, 255).to(torch.uint8)
    palette = fit_palette(images, clusters=8, seed=0)
    assert palette.shape == (8, 3)
    # Every blob colour is found: each true colour has a centroid within the noise.
    distance = np.abs(palette[None, :, :] - base[:, None, :].numpy()).max(-1).min(-1)
    assert (distance < 4).all(), distance
    tokens = encode(images, palette)
    assert tokens.shape == (64, 1024)
    np.testing.assert_array_equal(decode(tokens, palette).numpy(), nearest_centroid_images(images, palette))


def test_fitting_is_seeded(mnist_train):
    images = mnist_train[0][:5000]
    np.testing.assert_array_equal(fit_palette(images, 8, seed=1), fit_palette(images, 8, seed=1))
    full = fit_palette(images, 8, method="kmeans", pixels=None, seed=0)
    assert full.shape == (8, 1)


def test_save_and_load_round_trip(tmp_path, mnist_palette):
    path = save_palette(mnist_palette, tmp_path / "palettes" / "mnist.npy")
    np.testing.assert_array_equal(load_palette(path, clusters=16, channels=1), mnist_palette)
    assert [p.name for p in path.parent.iterdir()] == ["mnist.npy"]


@pytest.mark.parametrize(
    "array, expected, message",
    [
        (np.zeros((16,)), {}, r"expected centroids shaped \[K, 1\] or \[K, 3\]"),
        (np.zeros((16, 2)), {}, r"shaped \[K, 1\] or \[K, 3\]"),
        (np.linspace(0, 255, 8)[:, None], {"clusters": 16}, "8 centroids, but 16 were expected"),
        (np.linspace(0, 255, 16)[:, None], {"channels": 3}, "grayscale centroids, but the images are RGB"),
        (np.full((16, 1), np.nan), {}, "finite colours in 0..255"),
        (np.linspace(0, 1000, 16)[:, None], {}, "finite colours in 0..255"),
    ],
)
def test_wrong_centroids_are_rejected_clearly(tmp_path, array, expected, message):
    path = tmp_path / "centroids.npy"
    np.save(path, array)
    with pytest.raises(PaletteError, match=message):
        load_palette(path, **expected)


def test_a_file_that_is_not_npy_or_missing(tmp_path):
    (tmp_path / "palette.npy").write_text("16 centroids, honest")
    with pytest.raises(PaletteError, match="not a .npy array"):
        load_palette(tmp_path / "palette.npy")
    with pytest.raises(PaletteError, match="no such palette file"):
        load_palette(tmp_path / "absent.npy")


def test_encode_and_decode_reject_bad_input(mnist_palette):
    with pytest.raises(PaletteError, match="expected uint8 images"):
        encode(torch.rand(2, 1, 28, 28), mnist_palette)
    with pytest.raises(PaletteError, match="C = 1 or 3"):
        encode(torch.zeros(2, 2, 28, 28, dtype=torch.uint8), mnist_palette)
    with pytest.raises(PaletteError, match="grayscale centroids, but the images are RGB"):
        encode(torch.zeros(2, 3, 28, 28, dtype=torch.uint8), mnist_palette)
    with pytest.raises(PaletteError, match=r"tokens must lie in 0..15"):
        decode(torch.full((1, 784), 16), mnist_palette)
    with pytest.raises(PaletteError, match="do not form"):
        decode(torch.zeros(1, 783, dtype=torch.long), mnist_palette)


def test_context_reduction(mnist_train):
    images = mnist_train[0][:4]
    assert reduce_context(images, 28) is images
    small = reduce_context(images, 14)
    assert small.shape == (4, 1, 14, 14) and small.dtype == torch.uint8
    # Downsampling keeps the ink where it was: the mean brightness barely moves.
    assert abs(small.float().mean() - images.float().mean()) < 3
