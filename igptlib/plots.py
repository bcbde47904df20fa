"""Figures: every picture the notebooks and the report show is drawn here and saved through save_figure."""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt  # falls back to the Agg backend by itself on machines without a screen
import numpy as np
import torch

FIGURES = Path("figures")


def save_figure(fig, name: str, folder: str | Path = FIGURES) -> Path:
    """Save `fig` as folder/name.png (the one place figures are written), and return the path."""
    path = Path(folder) / (name if name.endswith(".png") else f"{name}.png")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return path


def image_grid(images, ncols: int, row_labels=None, title: str | None = None, scale: float = 0.6):
    """Show uint8 images [N, C, H, W] in a grid of `ncols` columns; optional label per row."""
    images = torch.as_tensor(images)
    nrows = -(-len(images) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * scale, nrows * scale), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.set_xticks([]), ax.set_yticks([])
        for side in ax.spines.values():
            side.set_visible(False)
        if i < len(images):
            picture = images[i].movedim(0, -1).numpy()
            ax.imshow(picture[..., 0] if picture.shape[-1] == 1 else picture, cmap="gray", vmin=0, vmax=255)
    if row_labels is not None:
        for row, label in enumerate(row_labels):
            axes[row, 0].set_ylabel(str(label), rotation=0, ha="right", va="center")
    if title:
        fig.suptitle(title)
    return fig


def palette_swatches(palette: np.ndarray, title: str | None = None):
    """The palette's colours as a strip of swatches, token index under each."""
    palette = np.asarray(palette, dtype=np.float32)
    colours = np.repeat(palette, 3, axis=1) if palette.shape[1] == 1 else palette
    fig, ax = plt.subplots(figsize=(max(4, 0.45 * len(palette)), 1.0))
    ax.imshow(colours[None].astype(np.uint8), aspect="auto")
    ax.set_yticks([])
    ax.set_xticks(range(len(palette)))
    ax.set_xlabel("token")
    if title:
        ax.set_title(title)
    return fig
