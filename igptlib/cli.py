"""The `igpt` command: one subcommand per stage of the data flow, each a thin call into igptlib."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from igptlib.config import ConfigError, DataConfig
from igptlib.data import DATASETS, DataError
from igptlib.quantize import PaletteError


def _add_data_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", default="mnist", choices=sorted(DATASETS))
    parser.add_argument("--root", default="data", help="data root (torchvision's layout); default: data")


def run_data(args) -> None:
    from igptlib.data import fetch, load_split, split_indices

    report = fetch(args.dataset, args.root, timeout=args.timeout, refetch=args.refetch)
    print(report)
    sizes = {}
    for split in ("train", "test"):
        images, labels = load_split(args.dataset, args.root, train=split == "train")
        sizes[split] = len(labels)
        print(f"  {split}: {len(labels)} images {tuple(images.shape[1:])}, per label {labels.bincount().tolist()}")
    train_idx, val_idx = split_indices(sizes["train"], 0.1, seed=0)
    print(f"  seeded 90/10 split (seed 0): {len(train_idx)} train, {len(val_idx)} validation")


def run_centroids(args) -> None:
    from igptlib.data import ensure_palette
    from igptlib.plots import palette_swatches, save_figure

    config = DataConfig(
        dataset=args.dataset, root=args.root, n_px=args.n_px, clusters=args.clusters, palette=args.out,
        palette_method=args.method, palette_pixels=args.pixels, seed=args.seed,
    )
    exists = config.palette_path.exists()
    if exists and not args.force:
        print(f"{config.palette_path} exists; loading it (use --force to fit again)")
    started = time.perf_counter()
    palette = ensure_palette(config, refit=args.force or not exists)
    print(f"{len(palette)} centroids in {config.palette_path} ({time.perf_counter() - started:.1f} s)")
    print("  " + " ".join(f"{c:.0f}" for c in palette[:, 0]) if palette.shape[1] == 1 else palette.round(0))
    if args.figure:
        swatches = palette_swatches(palette, f"{args.dataset}: {len(palette)}-colour palette")
        figure = save_figure(swatches, Path(args.figure).name, Path(args.figure).parent)
        print(f"  swatches: {figure}")


def run_augment(args) -> None:
    import torch

    from igptlib.data import augment_images, examples_per_label, training_split, write_augmented_set
    from igptlib.plots import image_grid, save_figure

    config = DataConfig(dataset=args.dataset, root=args.root, augment=args.augment, seed=args.seed)
    if args.out:
        started = time.perf_counter()
        out = write_augmented_set(config, args.out, copies=args.copies)
        print(f"augmented training set ({args.copies} cop{'y' if args.copies == 1 else 'ies'}) in {out} "
              f"({out.stat().st_size / 1e6:.1f} MB, {time.perf_counter() - started:.1f} s)")
    if args.grid:
        images, labels = training_split(config)[:2]
        originals = examples_per_label(images, labels, per_label=args.per_label)
        augmented = augment_images(originals, config, config.seed)
        # Each label's row: originals first, then their augmented versions.
        rows = torch.cat([originals.view(10, args.per_label, *originals.shape[1:]),
                          augmented.view(10, args.per_label, *augmented.shape[1:])], dim=1).flatten(0, 1)
        fig = image_grid(rows, ncols=2 * args.per_label, row_labels=range(10),
                         title=f"{args.dataset}: originals (left) and augmented ({', '.join(args.augment) or 'none'})")
        print(f"grid: {save_figure(fig, Path(args.grid).name, Path(args.grid).parent)}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="igpt", description="ImageGPT on MNIST-sized images: data, palette, tokens.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = commands.add_parser("data", help="fetch and verify a dataset (offline sources included)")
    _add_data_arguments(data)
    data.add_argument("--timeout", type=float, default=120.0, help="seconds allowed to each download source")
    data.add_argument("--refetch", action="store_true", help="fetch again, keeping damaged files as *.bad")
    data.set_defaults(run=run_data)

    centroids = commands.add_parser("centroids", help="fit the k-means colour palette and save it as .npy")
    _add_data_arguments(centroids)
    centroids.add_argument("--clusters", type=int, default=16)
    centroids.add_argument("--n-px", type=int, default=28, help="context reduction: resize to n_px x n_px first")
    centroids.add_argument("--method", choices=["minibatch", "kmeans"], default="minibatch")
    centroids.add_argument("--pixels", type=int, default=200_000, help="pixels sampled for k-means")
    centroids.add_argument("--seed", type=int, default=0)
    centroids.add_argument("--out", help="where to write the .npy (default: under the data root)")
    centroids.add_argument("--force", action="store_true", help="fit again even if the file exists")
    centroids.add_argument("--figure", help="also save the palette's swatches as this PNG")
    centroids.set_defaults(run=run_centroids)

    augment = commands.add_parser("augment", help="write the augmented training set to disk and/or show a grid of it")
    _add_data_arguments(augment)
    augment.add_argument("--augment", nargs="*", default=["crop", "flip"], help="crop, flip, rotate (none: no flag values)")
    augment.add_argument("--copies", type=int, default=1, help="augmented copies of the training split to write")
    augment.add_argument("--seed", type=int, default=0)
    augment.add_argument("--out", help="an .npz to write (images uint8 [N, C, H, W], labels)")
    augment.add_argument("--grid", help="a PNG of originals beside augmented versions, a row per label")
    augment.add_argument("--per-label", type=int, default=6)
    augment.set_defaults(run=run_augment)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (DataError, PaletteError, ConfigError, FileNotFoundError, ValueError) as error:
        print(f"igpt {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
