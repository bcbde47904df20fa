"""Figures: every picture the notebooks and the report show is drawn here and saved through save_figure."""
from __future__ import annotations

import csv
import io
from pathlib import Path

import matplotlib.pyplot as plt  # falls back to the Agg backend by itself on machines without a screen
import numpy as np
import torch
from sklearn.metrics import ConfusionMatrixDisplay

from igptlib.config import write_atomically

FIGURES = Path("figures")


def save_figure(fig, name: str, folder: str | Path = FIGURES, close: bool = False) -> Path:
    """Save `fig` as folder/name.png (the one place figures are written), and return the path.

    close=True also frees the figure: scripts that draw many figures otherwise keep them all open.
    """
    path = Path(folder) / (name if name.endswith(".png") else f"{name}.png")
    # No "Software" stamp (matplotlib's version): the same figure then gives the same bytes on any
    # install, so a rebuilt report equals the committed one. PNGs carry no date unless asked.
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=120, bbox_inches="tight", metadata={"Software": None})
    write_atomically(path, png.getvalue())  # whole or not at all, and never through a link at `path`
    if close:
        plt.close(fig)
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


COMPLETION_ROWS = 16  # images a completion figure shows at most: 64 rows made a figure 4,775 px tall


def completion_figure(originals, completions, keep_rows: int, title: str | None = None, scale: float = 0.8,
                      max_rows: int = COMPLETION_ROWS):
    """The paper's completion figure: per image a row of the cut input, the samples, the original.

    originals: uint8 images [N, C, H, W]; completions: uint8 [N, samples, C, H, W]; the top
    `keep_rows` rows were given to the model. The cut input shows the rest in mid grey, which
    stands apart from both the black background and the white strokes of a digit. Only the first
    `max_rows` images are drawn, so that the figure stays readable however many were measured.
    """
    originals, completions = torch.as_tensor(originals), torch.as_tensor(completions)
    if originals.ndim != 4 or completions.ndim != 5 or completions.shape[0] != originals.shape[0] \
            or completions.shape[2:] != originals.shape[1:]:
        raise ValueError(f"expected originals [N, C, H, W] and completions [N, samples, C, H, W] of the same images, "
                         f"got shapes {tuple(originals.shape)} and {tuple(completions.shape)}")
    if not 0 <= keep_rows <= originals.shape[-2]:
        raise ValueError(f"keep_rows must lie in 0..{originals.shape[-2]}, got {keep_rows}")
    originals, completions = originals[:max_rows], completions[:max_rows]
    cut = originals.clone()
    cut[..., keep_rows:, :] = 128
    rows = torch.cat([cut[:, None], completions, originals[:, None]], dim=1)  # [N, samples + 2, C, H, W]
    ncols = rows.shape[1]
    fig = image_grid(rows.flatten(0, 1), ncols=ncols, title=title, scale=scale)
    headings = ["input"] + [f"sample {i + 1}" for i in range(ncols - 2)] + ["original"]
    for ax, heading in zip(fig.axes, headings):
        ax.set_title(heading, fontsize=8)
    return fig


def metrics_files(path: str | Path) -> list[Path]:
    """The metrics.csv files of a run: `path` itself if it is a file, else a run folder's
    logs/csv/version_*/metrics.csv in version order (a resumed run starts a new version)."""
    path = Path(path)
    if path.is_file():
        return [path]
    files = sorted(path.glob("logs/csv/version_*/metrics.csv"), key=lambda file: int(file.parent.name.split("_")[-1]))
    if not files and (path / "metrics.csv").is_file():
        files = [path / "metrics.csv"]
    if not files:
        raise FileNotFoundError(f"{path}: no metrics.csv (expected a file, or a run folder with logs/csv/version_*/metrics.csv)")
    return files


def read_metrics_csv(path: str | Path) -> dict[str, tuple[list[int], list[float]]]:
    """A run's Lightning CSV logs as {column: (steps, values)}, empty cells skipped.

    path: a metrics.csv, or a run folder (its versions are read in order and joined). Lightning
    writes one row per logging call with a `step` column (and `epoch`); a row fills only the
    columns logged at that moment (training metrics every few steps, validation metrics once per
    validation), so each column keeps only the steps where it has a value.
    """
    columns: dict[str, tuple[list[int], list[float]]] = {}
    for file in metrics_files(path):
        with file.open(newline="") as handle:
            reader = csv.DictReader(handle)
            if not reader.fieldnames or "step" not in reader.fieldnames:
                raise ValueError(f"{file}: expected a Lightning metrics.csv with a 'step' column, got columns {reader.fieldnames}")
            for row in reader:
                for name, value in row.items():
                    if name not in ("step", "epoch") and value not in ("", None):
                        steps, values = columns.setdefault(name, ([], []))
                        steps.append(int(float(row["step"])))
                        values.append(float(value))
    return columns


def _metric_column(columns: dict, metric: str, path) -> tuple[list[int], list[float]]:
    if metric not in columns:
        raise ValueError(f"{path}: no values of {metric!r}; logged metrics are {sorted(columns)}")
    return columns[metric]


LINE_STYLES = ["-", "--", ":", "-."]
MARKERS = ["o", "s", "^", "D", "v", "x"]


def _line_style(index: int, points: int) -> dict:
    """A style per curve that tells it apart even where curves coincide (train/loss and
    train/nats_per_pixel are the same numbers): its own dash and marker, half see-through."""
    return {"linestyle": LINE_STYLES[index % len(LINE_STYLES)], "marker": MARKERS[index % len(MARKERS)],
            "markevery": max(1, points // 12), "markersize": 4, "alpha": 0.8, "linewidth": 1.5}


def loss_curves(path: str | Path, metrics: list[str] | None = None, title: str | None = None):
    """Curves of a run's metrics against the optimizer step, from its CSV logs (see read_metrics_csv).

    metrics: column names, e.g. "train/nats_per_pixel"; by default every column with "loss" in its name.
    """
    columns = read_metrics_csv(path)
    if metrics is None:
        metrics = sorted(name for name in columns if "loss" in name)
        if not metrics:
            raise ValueError(f"{path}: no loss columns; logged columns are {sorted(columns)}")
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for index, metric in enumerate(metrics):
        steps, values = _metric_column(columns, metric, path)
        ax.plot(steps, values, label=metric, **_line_style(index, len(steps)))
    ax.set_xlabel("step")
    ax.set_ylabel("value")
    ax.grid(alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title)
    return fig


def comparison_curves(runs: dict[str, str | Path], metric: str, title: str | None = None, ylabel: str | None = None):
    """One metric of several runs against the step, one line per run (the S/M/L comparisons).

    runs: {label: metrics.csv or run folder}, e.g. {"iGPT-S": "runs/mnist-s", "iGPT-M": ..., "iGPT-L": ...}.
    """
    if not runs:
        raise ValueError("no runs to compare")
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for index, (label, path) in enumerate(runs.items()):
        steps, values = _metric_column(read_metrics_csv(path), metric, path)
        ax.plot(steps, values, label=label, **_line_style(index, len(steps)))
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel or metric)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title or metric)
    return fig


def robustness_plot(models: dict[str, list[dict]], title: str | None = None):
    """Completion class agreement and classifier accuracy per transform, handling off and on, a line
    per model: the rows of `igpt robustness` tables measured on the same images.

    models: {label: rows}, each row with transform, handling, class_agreement and classification_accuracy.
    """
    if not models:
        raise ValueError("no robustness tables to plot")
    transforms = list(dict.fromkeys(row["transform"] for rows in models.values() for row in rows))
    fig, axes = plt.subplots(2, 2, figsize=(10, 6), sharex=True, sharey=True)
    for column, handling in enumerate((False, True)):
        for row_index, (metric, label) in enumerate((("class_agreement", "completion class agreement"),
                                                     ("classification_accuracy", "classifier accuracy"))):
            ax = axes[row_index][column]
            for index, (name, rows) in enumerate(models.items()):
                by_transform = {row["transform"]: row[metric] for row in rows if row["handling"] == handling}
                ax.plot(range(len(transforms)), [by_transform.get(t, np.nan) for t in transforms], label=name,
                        **_line_style(index, len(transforms)))
            ax.set_title(f"{label}, handling {'on' if handling else 'off'}", fontsize=10)
            ax.set_ylim(0, 1)
            ax.grid(alpha=0.3)
    for ax in axes[1]:
        ax.set_xticks(range(len(transforms)), transforms, rotation=30, ha="right")
    axes[0][0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def _square_matrix(matrix) -> np.ndarray:
    matrix = np.asarray(matrix)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or matrix.shape[0] == 0:
        raise ValueError(f"expected a square confusion matrix [classes, classes], got shape {matrix.shape}")
    return matrix


def _class_names(class_names, count: int) -> list[str]:
    names = [str(i) for i in range(count)] if class_names is None else [str(name) for name in class_names]
    if len(names) != count:
        raise ValueError(f"{len(names)} class names for a {count}-class matrix")
    return names


def confusion_matrix_plot(matrix, class_names=None, title: str = "Confusion matrix"):
    """A heat map of matrix[actual][predicted] with each cell's count written in it (scikit-learn's display)."""
    matrix = _square_matrix(matrix)
    names = _class_names(class_names, len(matrix))
    fig, ax = plt.subplots(figsize=(0.55 * len(names) + 2.5, 0.55 * len(names) + 2))
    display = ConfusionMatrixDisplay(matrix, display_labels=names).plot(ax=ax, cmap="Blues", values_format="d")
    for text in display.text_.flat:
        text.set_fontsize(7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    ax.set_title(title)
    return fig


def predictions_figure(images, actual, predicted, ncols: int = 8, title: str = "Test images and their predicted labels"):
    """uint8 images [N, C, H, W], each titled with its predicted label; a mistake in red, with the
    true label beside it (the seed's figure 6.4)."""
    actual, predicted = np.asarray(actual), np.asarray(predicted)
    if not len(images) == len(actual) == len(predicted):
        raise ValueError(f"{len(images)} images, {len(actual)} labels and {len(predicted)} predictions: expected one each")
    fig = image_grid(images, ncols, title=title, scale=1.0)
    for ax, truth, guess in zip(fig.axes, actual, predicted):
        wrong = truth != guess
        ax.set_title(f"{guess} (is {truth})" if wrong else f"{guess}", color="tab:red" if wrong else "black", fontsize=8)
    fig.tight_layout()
    return fig


def actual_vs_predicted(matrix, class_names=None, title: str = "Actual vs predicted"):
    """Actual against predicted label, one bubble per pair sized by its count (from the confusion matrix).

    Correct predictions fall on the diagonal; the off-diagonal bubbles are the confusions, e.g. 4
    read as 9. Bubble area grows with the square root of the count, so rare confusions stay visible
    beside the diagonal's thousands.
    """
    matrix = _square_matrix(matrix)
    names = _class_names(class_names, len(matrix))
    actual, predicted = np.nonzero(matrix)
    counts = matrix[actual, predicted]
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([-0.5, len(names) - 0.5], [-0.5, len(names) - 0.5], color="grey", lw=0.8, zorder=0)
    colours = np.where(actual == predicted, "tab:blue", "tab:red")  # right on the diagonal, wrong off it
    ax.scatter(actual, predicted, s=20 * np.sqrt(counts), c=colours, alpha=0.7, edgecolors="black", linewidths=0.4)
    ax.set_xticks(range(len(names)), names)
    ax.set_yticks(range(len(names)), names)
    ax.set_xlim(-0.5, len(names) - 0.5)
    ax.set_ylim(-0.5, len(names) - 0.5)
    ax.set_xlabel("actual label")
    ax.set_ylabel("predicted label")
    ax.grid(alpha=0.3)
    ax.set_title(f"{title} ({int(matrix.trace())} of {int(matrix.sum())} on the diagonal)")
    return fig


def probe_accuracy_plot(probes: dict, title: str = "Linear probe accuracy per layer"):
    """Validation and test accuracy of the linear probes against the layer (igptlib.metrics.linear_probes).

    Accepts the dict as evaluate returns it or as read back from JSON (layer keys as strings).
    """
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for split in ("val_accuracy", "test_accuracy"):
        if split not in probes:
            raise ValueError(f"expected linear_probes' result with {split!r}, got keys {sorted(probes)}")
        layers = sorted(int(layer) for layer in probes[split])
        values = {int(layer): value for layer, value in probes[split].items()}
        ax.plot(layers, [values[layer] for layer in layers], marker="o", label=split.replace("_", " "))
    ax.axvline(int(probes["best_layer"]), color="grey", ls="--", lw=0.8, label="best layer (validation)")
    ax.set_xlabel("layer (0: embeddings)")
    ax.set_ylabel("accuracy")
    ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title)
    return fig
