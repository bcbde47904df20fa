"""Loading a user's image: formats, sizes, modes, inverted backgrounds, and files that are not images."""
import numpy as np
import pytest
from PIL import Image

from igptlib.datasets import load_split
from igptlib.images import ImageLoadError, load_image


@pytest.fixture(scope="module")
def digit(mnist_root):
    return load_split("mnist", mnist_root, train=False)[0][0, 0].numpy()  # a 7, white on black


def test_an_mnist_png_comes_back_unchanged(tmp_path, digit):
    Image.fromarray(digit).save(tmp_path / "seven.png")
    image, notes = load_image(tmp_path / "seven.png")
    assert image.shape == (1, 28, 28)
    np.testing.assert_array_equal(image[0].numpy(), digit)
    assert len(notes) == 1 and "PNG 28x28, mode L" in notes[0]


@pytest.mark.parametrize("suffix, fmt", [(".jpg", "JPEG"), (".jpeg", "JPEG"), (".png", "PNG")])
def test_large_rgb_dark_on_white_is_converted_and_inverted(tmp_path, digit, suffix, fmt):
    paper = 255 - np.kron(digit, np.ones((4, 4), np.uint8))  # 112x112, black ink on white
    rgb = np.stack([paper] * 3, axis=-1)
    Image.fromarray(rgb).save(tmp_path / f"seven{suffix}", format=fmt)
    image, notes = load_image(tmp_path / f"seven{suffix}")
    assert image.shape == (1, 28, 28)
    text = " ".join(notes)
    assert "converted mode RGB to grayscale" in text and "resized 112x112 to 28x28" in text
    assert "white background detected" in text
    # Back to white on black and close to the original digit.
    assert np.abs(image[0].numpy().astype(int) - digit.astype(int)).mean() < 12


def test_inversion_can_be_forced_either_way(tmp_path, digit):
    Image.fromarray(digit).save(tmp_path / "seven.png")
    forced, notes = load_image(tmp_path / "seven.png", invert=True)
    np.testing.assert_array_equal(forced[0].numpy(), 255 - digit)
    assert "inverted, as asked" in notes
    Image.fromarray(255 - digit).save(tmp_path / "paper.png")
    kept, _ = load_image(tmp_path / "paper.png", invert=False)
    np.testing.assert_array_equal(kept[0].numpy(), 255 - digit)


def test_wide_transparent_and_palette_images(tmp_path, digit):
    rgba = np.zeros((28, 56, 4), np.uint8)
    rgba[:, 14:42, 3] = digit  # ink only where the digit is, transparent elsewhere
    Image.fromarray(rgba, "RGBA").save(tmp_path / "wide.png")
    image, notes = load_image(tmp_path / "wide.png")
    assert image.shape == (1, 28, 28)
    assert any("transparency" in n for n in notes) and any("padded" in n for n in notes)
    Image.fromarray(digit).convert("P").save(tmp_path / "palette.png")
    assert load_image(tmp_path / "palette.png")[0].shape == (1, 28, 28)
    assert load_image(tmp_path / "palette.png", n_px=16, channels=3)[0].shape == (3, 16, 16)


def test_files_that_are_not_usable_images(tmp_path, digit):
    (tmp_path / "notes.png").write_text("this is text, not a picture")
    with pytest.raises(ImageLoadError, match="not an image"):
        load_image(tmp_path / "notes.png")
    Image.fromarray(digit).save(tmp_path / "seven.png")
    (tmp_path / "broken.png").write_bytes((tmp_path / "seven.png").read_bytes()[:120])
    with pytest.raises(ImageLoadError, match="unreadable or damaged"):
        load_image(tmp_path / "broken.png")
    Image.fromarray(digit).save(tmp_path / "seven.gif")
    with pytest.raises(ImageLoadError, match="a GIF image; expected PNG, JPG or JPEG"):
        load_image(tmp_path / "seven.gif")
    with pytest.raises(ImageLoadError, match="no such file"):
        load_image(tmp_path / "absent.png")
