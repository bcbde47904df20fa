"""One way to complete images, for every caller: images and what to keep of them in, what to draw out.

`igpt complete`, notebook 06, `igpt evaluate`, `igpt robustness` and the explorer all complete
through `complete_images` (or `complete_tokens`, for images already encoded), and draw from the
`Completions` it returns: the images as the model saw them, the cut input, the samples and the
figure. So every caller encodes, keeps and decodes the same way.

    keep_mask(n_px, part, rows)   the kept pixels: the top rows, or the top/bottom/left/right half
    complete_images(...)          encode images with the model's palette, complete them -> Completions
    complete_tokens(...)          the same from tokens
"""
from __future__ import annotations

import dataclasses
import time
from typing import Callable

import numpy as np
import torch

from igptlib import plots
from igptlib.quantize import decode, encode, reduce_context
from igptlib.sampling import complete_masked, keep_from_mask

MISSING_GREY = 128  # stands apart from both MNIST's black background and its white strokes
PARTS = ("rows", "top", "bottom", "left", "right")


def keep_mask(n_px: int, part: str, rows: int = 0) -> torch.Tensor:
    """The kept pixels as a bool mask [n_px, n_px]: part is "rows" (the top `rows` rows), "top",
    "bottom", "left" or "right" (that half)."""
    mask = torch.zeros(n_px, n_px, dtype=torch.bool)
    half = n_px // 2
    if part == "rows":
        if not 0 <= rows <= n_px:
            raise ValueError(f"rows to keep must lie in 0..{n_px}, got {rows}")
        mask[:rows] = True
    elif part == "top":
        mask[:half] = True
    elif part == "bottom":
        mask[half:] = True
    elif part == "left":
        mask[:, :half] = True
    elif part == "right":
        mask[:, half:] = True
    else:
        raise ValueError(f"unknown part to keep {part!r}; expected one of {list(PARTS)}")
    return mask


@dataclasses.dataclass
class Completions:
    """Completed images and what to draw of them. The shapes follow `tokens`: [N, T] for N images
    (as complete_images returns them) or [T] for one (completions[i])."""

    tokens: torch.Tensor  # int64 [..., T]: the images as the model read them, before the cut
    mask: torch.Tensor  # bool [n_px, n_px]: True where a pixel was kept
    samples: torch.Tensor  # int64 [..., samples, T]: kept pixels copied, the others drawn
    palette: np.ndarray
    seconds: float  # the sampling's wall time

    def __getitem__(self, index: int) -> Completions:
        """The completions of one image."""
        return dataclasses.replace(self, tokens=self.tokens[index], samples=self.samples[index])

    @property
    def kept_tokens(self) -> int:
        """How many tokens were kept from the top (an error for a mask that is no raster-order prefix)."""
        return keep_from_mask(self.mask)

    @property
    def kept_rows(self) -> int:
        """How many whole rows were kept from the top (an error for any other mask)."""
        n_px = self.mask.shape[-1]
        kept = self.kept_tokens
        if kept % n_px:
            raise ValueError(f"{kept} pixels are kept, not a number of whole {n_px}-pixel rows")
        return kept // n_px

    @property
    def original(self) -> torch.Tensor:
        """The images in the palette's colours (what the model saw), uint8 [..., C, n_px, n_px]."""
        return decode(self.tokens, self.palette)

    @property
    def cut(self) -> torch.Tensor:
        """The input as the model had it: kept pixels, the rest grey, uint8 [..., C, n_px, n_px]."""
        return self.original.masked_fill(~self.mask, MISSING_GREY)

    @property
    def images(self) -> torch.Tensor:
        """The samples as uint8 images [..., samples, C, n_px, n_px]."""
        return decode(self.samples, self.palette)

    def figure(self, title: str | None = None):
        """The paper's completion figure: per image the cut input, the samples and the original
        (completions of whole top rows, over a batch of images)."""
        return plots.completion_figure(self.original, self.images, self.kept_rows, title=title)


def complete_images(model, palette: np.ndarray, images: torch.Tensor, rows: int | None = None,
                    mask: torch.Tensor | None = None, **sampling) -> Completions:
    """Complete uint8 images [N, C, H, W] (resized to the model's n_px if they differ), encoded with
    `palette`. See complete_tokens for what is kept and how the samples are drawn."""
    return complete_tokens(model, palette, encode(reduce_context(images, model.config.n_px), palette), rows, mask,
                           **sampling)


def complete_tokens(model, palette: np.ndarray, tokens: torch.Tensor, rows: int | None = None,
                    mask: torch.Tensor | None = None, samples: int = 8, temperature: float = 1.0,
                    top_k: int | None = None, seed: int = 0, progress: bool = False,
                    on_pixel: Callable[[int, torch.Tensor], None] | None = None) -> Completions:
    """Complete images given as tokens [N, T]: keep the top `rows` rows (default half) or the pixels
    of `mask` ([n_px, n_px], True = kept; see keep_mask), draw the others `samples` times
    (sampling.complete_masked: the same seed gives the same samples). progress shows a bar of the
    pixels drawn; on_pixel(drawn, sequences) runs after each one."""
    n_px = model.config.n_px
    if rows is not None and mask is not None:
        raise ValueError("give either the rows to keep or a mask of kept pixels, not both")
    if mask is None:
        mask = keep_mask(n_px, "rows", n_px // 2 if rows is None else rows)
    started = time.perf_counter()
    drawn = complete_masked(model, tokens, mask, samples=samples, temperature=temperature, top_k=top_k, seed=seed,
                            progress=progress, on_pixel=on_pixel)
    return Completions(tokens, mask, drawn, palette, time.perf_counter() - started)
