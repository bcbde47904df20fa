"""Images from files: PNG, JPG or JPEG of any size or mode, made to look like the training data.

A user's picture is rarely a 28x28 white-on-black digit: it may be RGB, transparent, any size,
drawn dark on a white page. load_image converts it to the model's n_px x n_px grayscale (or RGB)
and says, in notes, everything it did, so nothing happens behind the user's back.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

FORMATS = {"PNG", "JPEG"}  # what PIL calls .png and .jpg/.jpeg files


class ImageLoadError(ValueError):
    """A file that is not a readable PNG or JPEG image."""


def _open(path: Path) -> Image.Image:
    try:
        image = Image.open(path)
        image.load()
    except FileNotFoundError:
        raise ImageLoadError(f"{path}: no such file") from None
    except UnidentifiedImageError:
        raise ImageLoadError(f"{path}: not an image (expected a PNG, JPG or JPEG file)") from None
    except (OSError, SyntaxError) as error:
        raise ImageLoadError(f"{path}: unreadable or damaged image ({error})") from None
    if image.format not in FORMATS:
        raise ImageLoadError(f"{path}: a {image.format} image; expected PNG, JPG or JPEG")
    return image


def has_white_background(image: np.ndarray) -> bool:
    """True when the border is mostly bright: dark ink on white paper, the inverse of MNIST."""
    border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])
    return float(np.median(border)) > 127


def load_image(path: str | Path, n_px: int = 28, channels: int = 1, invert: bool | None = None) -> tuple[torch.Tensor, list[str]]:
    """A uint8 image [channels, n_px, n_px] like the training data, and notes on what was done.

    invert: None detects a white background and inverts it (grayscale only: RGB models such as
    OpenAI's iGPT read natural images as they are); True or False forces the choice.
    """
    path = Path(path)
    image = _open(path)
    notes = [f"read {path.name}: {image.format} {image.width}x{image.height}, mode {image.mode}"]
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # Transparent pixels become white paper; the background check below then decides.
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))
        notes.append("flattened transparency onto white")
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
