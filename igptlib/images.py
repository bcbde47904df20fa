"""Images from files: PNG, JPG or JPEG of any size or mode, made to look like the training data.

A user's picture is rarely a 28x28 white-on-black digit: it may be RGB, transparent, any size,
drawn dark on a white page, 16-bit, or stored sideways with an EXIF orientation. load_image
converts it to the model's n_px x n_px grayscale (or RGB) and says, in notes, everything it did,
so nothing happens behind the user's back.

A picture is made square before it is resized, which costs side x side pixels: a 1x40000 strip of a
few bytes would need 1.6 gigapixels. So the size is checked from the header, before any pixel is
decoded, against max_pixels (that square's pixel count), which bounds both size and aspect.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from igptlib.config import MAX_PIXELS

FORMATS = {"PNG", "JPEG"}  # what PIL calls .png and .jpg/.jpeg files
# Modes deeper than 8 bits (16-bit grayscale PNGs) and the top of their range: Pillow's own
# conversion to "L" clips at 255 instead of rescaling, which turns light paper and dark ink alike white.
HIGH_DEPTH = {"I;16": 65535, "I;16B": 65535, "I;16L": 65535, "I;16N": 65535, "I": 65535}


class ImageLoadError(ValueError):
    """A file that is not a readable PNG or JPEG image."""


def _unreadable(path: Path, error: Exception) -> ImageLoadError:
    if isinstance(error, FileNotFoundError):
        return ImageLoadError(f"{path}: no such file")
    if isinstance(error, IsADirectoryError):
        return ImageLoadError(f"{path}: a directory; expected a PNG, JPG or JPEG file")
    if isinstance(error, UnidentifiedImageError):
        return ImageLoadError(f"{path}: not an image (expected a PNG, JPG or JPEG file)")
    if isinstance(error, Image.DecompressionBombError):
        return ImageLoadError(f"{path}: refused as a possible decompression bomb ({error})")
    # ValueError: Pillow's limit on compressed text chunks, among damaged files
    return ImageLoadError(f"{path}: unreadable or damaged image ({error})")


def _open(path: Path, max_pixels: int) -> Image.Image:
    if path.exists() and not path.is_dir() and not path.is_file():  # opening a FIFO would wait for a writer
        raise ImageLoadError(f"{path}: not a regular file (a FIFO, socket or device); expected a PNG, JPG or JPEG file")
    try:
        image = Image.open(path)  # reads the header only
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise _unreadable(path, error) from None
    if image.format not in FORMATS:
        raise ImageLoadError(f"{path}: a {image.format} image; expected PNG, JPG or JPEG")
    side = max(image.size)
    if side * side > max_pixels:
        raise ImageLoadError(
            f"{path}: a {image.width}x{image.height} image is too large: made square it needs {side * side:,} "
            f"pixels, over the limit of {max_pixels:,} (expected a smaller or less elongated picture; "
            f"--max-pixels raises the limit)")
    try:
        image.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise _unreadable(path, error) from None
    return image


def _to_8_bits(image: Image.Image, notes: list[str]) -> Image.Image:
    """A 16-bit image rescaled from its whole range to 0..255, rather than clipped at 255."""
    top = HIGH_DEPTH[image.mode]
    pixels = np.asarray(image).astype(np.float64).clip(0, top)
    notes.append(f"rescaled mode {image.mode} (0..{top}) to 8-bit grayscale (0..255)")
    return Image.fromarray(np.rint(pixels * (255 / top)).astype(np.uint8), mode="L")


def has_white_background(image: np.ndarray) -> bool:
    """True when the border is mostly bright: dark ink on white paper, the inverse of MNIST."""
    border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])
    return float(np.median(border)) > 127


def load_image(path: str | Path, n_px: int = 28, channels: int = 1, invert: bool | None = None,
               max_pixels: int = MAX_PIXELS) -> tuple[torch.Tensor, list[str]]:
    """A uint8 image [channels, n_px, n_px] like the training data, and notes on what was done.

    invert: None detects a white background and inverts it (grayscale only: RGB models such as
    OpenAI's iGPT read natural images as they are); True or False forces the choice.
    max_pixels: the largest square (side x side) the picture may need once padded; larger ones
    raise ImageLoadError before their pixels are decoded.
    """
    path = Path(path)
    image = _open(path, max_pixels)
    notes = [f"read {path.name}: {image.format} {image.width}x{image.height}, mode {image.mode}"]
    orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
    if orientation in range(2, 9):  # 1 is upright; other values are not orientations
        image = ImageOps.exif_transpose(image)
        notes.append(f"turned upright as its EXIF orientation ({orientation}) says")
    if image.mode in HIGH_DEPTH:
        image = _to_8_bits(image, notes)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # Transparent pixels become paper that the drawing stands out from: white under dark ink, black
        # under light ink (white ink on white paper would leave nothing to see); the background check
        # below then decides whether to invert.
        image = image.convert("RGBA")
        pixels = np.asarray(image)
        drawn = pixels[..., 3] > 127
        light_ink = drawn.any() and float(np.median(pixels[..., :3][drawn].mean(axis=-1))) > 127
        paper = (0, 0, 0, 255) if light_ink else (255, 255, 255, 255)
        image = Image.alpha_composite(Image.new("RGBA", image.size, paper), image)
        notes.append(f"flattened transparency onto {'black (the drawing is light)' if light_ink else 'white'}")
    target_mode = "L" if channels == 1 else "RGB"
    if image.mode != target_mode:
        notes.append(f"converted mode {image.mode} to {'grayscale' if channels == 1 else 'RGB'}")
        image = image.convert(target_mode)
    if image.width != image.height:
        side = max(image.size)
        corner = np.asarray(image)[0, 0]
        fill = int(corner) if channels == 1 else tuple(int(c) for c in corner)
        image = ImageOps.pad(image, (side, side), color=fill)
        notes.append(f"padded to a {side}x{side} square with the corner colour")
    if image.size != (n_px, n_px):
        notes.append(f"resized {image.width}x{image.height} to {n_px}x{n_px}")
        image = image.resize((n_px, n_px), Image.Resampling.LANCZOS)
    pixels = np.asarray(image)
    brightness = pixels if channels == 1 else pixels.mean(axis=-1)
    if invert is None:
        invert = channels == 1 and has_white_background(brightness)
        if invert:
            notes.append("inverted: white background detected (MNIST digits are white on black)")
    elif invert:
        notes.append("inverted, as asked")
    if invert:
        pixels = 255 - pixels
    tensor = torch.from_numpy(np.array(pixels))  # a writable copy: PIL's buffer is read-only
    tensor = tensor[None] if channels == 1 else tensor.permute(2, 0, 1)
    return tensor.contiguous(), notes
