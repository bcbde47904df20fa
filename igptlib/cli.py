"""The `igpt` command: one subcommand per stage of the data flow, each a thin call into igptlib."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from lightning.fabric.utilities.exceptions import MisconfigurationException

from igptlib.config import DEVICES, ConfigError, DataConfig, positive_int
from igptlib.data import DATASETS, DataError
from igptlib.device import resolve_device
from igptlib.images import MAX_PIXELS, ImageLoadError
from igptlib.model_files import CheckpointError
from igptlib.quantize import PaletteError

# `igpt complete --turn`: quarter turns anticlockwise, or None for the model's choice
TURN_CHOICES = {"none": 0, "90": 1, "180": 2, "270": 3, "auto": None}


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
    if config.palette_path.is_dir():
        raise IsADirectoryError(f"--out {config.palette_path}: a directory; expected the path of a .npy file")
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


def run_complete(args) -> None:
    from igptlib.images import load_image
    from igptlib.plots import completion_figure, save_figure
    from igptlib.quantize import decode, encode
    from igptlib.robustness import turn_upright
    from igptlib.sampling import complete, keep_rows
    from igptlib.shipped import load_model

    device = resolve_device(args.device)
    module = load_model(args.model)
    if module.palette is None:
        raise ValueError(f"{args.model}: the checkpoint holds no palette, so its tokens cannot be turned into colours")
    n_px, channels = module.model_config.n_px, module.palette.shape[1]
    invert = {"auto": None, "yes": True, "no": False}[args.invert]
    image, notes = load_image(args.image, n_px=n_px, channels=channels, invert=invert, max_pixels=args.max_pixels)
    image, turned = turn_upright(module.model.to(device), module.palette, image, TURN_CHOICES[args.turn])
    print("\n".join(notes + turned))
    rows = n_px // 2 if args.rows is None else args.rows
    tokens = encode(image[None], module.palette)
    started = time.perf_counter()
    completed = complete(module.model.to(device), tokens, keep_rows(n_px, rows), samples=args.samples,
                         temperature=args.temperature, top_k=args.top_k, seed=args.seed, progress=True)
    print(f"{args.samples} completions of the bottom {n_px - rows} rows in {time.perf_counter() - started:.2f} s on {device}")
    original = decode(tokens, module.palette)  # what the model saw: the image in palette colours
    fig = completion_figure(original, decode(completed, module.palette), keep_rows=rows)
    print(f"figure: {save_figure(fig, Path(args.out).name, Path(args.out).parent)}")


def run_robustness(args) -> None:
    from igptlib.data import load_split
    from igptlib.judge import digit_classifier
    from igptlib.robustness import robustness_table
    from igptlib.shipped import load_model, model_dataset

    generator, classifier = load_model(args.model), load_model(args.classifier)
    dataset = model_dataset(args.model) or "mnist"
    images, labels = load_split(dataset, args.root, train=False)
    judge, judge_info = digit_classifier(args.root, dataset, progress=True)
    started = time.perf_counter()
    rows = robustness_table(generator, classifier, judge, images[: args.images], labels[: args.images], args.samples, args.seed)
    result = {"model": args.model, "classifier": args.classifier, "dataset": dataset, "judge": judge_info,
              "seconds": round(time.perf_counter() - started, 1), "command": " ".join(args.invocation), "rows": rows}
    out = Path(args.out or f"report/runs/robustness-{args.model}/robustness.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    for row in rows:
        print(f"{row['transform']:>12} handling {'on ' if row['handling'] else 'off'}: completion class agreement "
              f"{row['class_agreement']:.3f}, pixel agreement {row['pixel_agreement']:.3f}, "
              f"classifier accuracy {row['classification_accuracy']:.3f}"
              + (f"; the handling undid the inversion {row['inversion_detected_right']:.3f}, "
                 f"the rotation {row['rotation_chosen_right']:.3f}" if row["handling"] else ""))
    print(f"table: {out}")


def run_export(args) -> None:
    from igptlib.shipped import export_model, shipped_path

    if args.format == "hf":
        run_export_hf(args)
        return
    if not (args.name or args.out):
        raise ValueError("--name is required: the shipped model's name, written to models/<name>.safetensors "
                         "(or --out: another .safetensors path)")
    out = Path(args.out) if args.out else shipped_path(args.name)
    bad = [note for note in args.note if "=" not in note]
    if bad:
        raise ValueError(f"--note {bad[0]!r}: expected KEY=VALUE")
    notes: dict = {"checkpoint": str(args.checkpoint)}
    for key, value in (note.split("=", 1) for note in args.note):
        if key not in notes:
            notes[key] = value
        elif isinstance(notes[key], list):
            notes[key].append(value)
        else:
            notes[key] = [notes[key], value]
    path = export_model(args.checkpoint, out, notes, force=args.force)
    print(f"{path}: {path.stat().st_size / 1e6:.1f} MB")


def run_export_hf(args) -> None:
    from igptlib.hf import export_hf

    if not args.out:
        raise ValueError("--format hf: --out is required: the folder to write the transformers model to")
    folder = export_hf(args.checkpoint, args.out, force=args.force)
    print(f"{folder}: a transformers ImageGPT folder ({', '.join(sorted(p.name for p in folder.iterdir()))})")


def run_import_hf(args) -> None:
    from igptlib.hf import import_hf

    path = import_hf(args.folder, args.out, force=args.force)
    print(f"{path}: {path.stat().st_size / 1e6:.1f} MB; open it with --model {path} or in the explorer")


def _add_bench_commands(commands) -> None:
    from igptlib.bench import add_bench_arguments, run_bench
    from igptlib.bench_converge import add_bench_converge_arguments, run_bench_converge
    from igptlib.bench_sampling import add_bench_sample_arguments, run_bench_sample

    bench = commands.add_parser("bench", help="benchmarks (they print figures; they are not tests)")
    kinds = bench.add_subparsers(dest="bench", required=True, metavar="BENCHMARK")
    train = kinds.add_parser("train", help="training throughput and GFLOP/s against a plain reference model")
    add_bench_arguments(train)
    train.set_defaults(run=run_bench)
    sample = kinds.add_parser("sample", help="KV-cache completion against the naive sampler and transformers' generate()")
    add_bench_sample_arguments(sample)
    sample.set_defaults(run=run_bench_sample)
    converge = kinds.add_parser("converge", help="time to quality: validation nats/px against wall minutes, then test")
    add_bench_converge_arguments(converge)
    converge.set_defaults(run=run_bench_converge)


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors on one line (the usage is a --help away); subcommands' parsers are of this class too."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="igpt", description="ImageGPT on MNIST-sized images: data, palette, training, completion, evaluation.")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error (for bug reports)")
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
    centroids.add_argument("--pixels", type=positive_int, default=200_000, help="pixels sampled for k-means")
    centroids.add_argument("--seed", type=int, default=0)
    centroids.add_argument("--out", help="where to write the .npy (default: under the data root)")
    centroids.add_argument("--force", action="store_true", help="fit again even if the file exists")
    centroids.add_argument("--figure", help="also save the palette's swatches as this PNG")
    centroids.set_defaults(run=run_centroids)

    augment = commands.add_parser("augment", help="write the augmented training set to disk and/or show a grid of it")
    _add_data_arguments(augment)
    augment.add_argument("--augment", nargs="*", default=["crop", "flip"], help="crop, flip, rotate (none: no flag values)")
    augment.add_argument("--copies", type=positive_int, default=1, help="augmented copies of the training split to write")
    augment.add_argument("--seed", type=int, default=0)
    augment.add_argument("--out", help="an .npz to write (images uint8 [N, C, H, W], labels)")
    augment.add_argument("--grid", help="a PNG of originals beside augmented versions, a row per label")
    augment.add_argument("--per-label", type=positive_int, default=6)
    augment.set_defaults(run=run_augment)

    from igptlib.evaluate import add_evaluate_arguments, run_evaluate
    from igptlib.train import add_train_arguments, run_train

    train = commands.add_parser("train", help="train a model (pre-training or fine-tuning) into a run folder")
    add_train_arguments(train)
    train.set_defaults(run=run_train)

    complete = commands.add_parser("complete", help="complete a PNG/JPG/JPEG image with a shipped model or a checkpoint")
    complete.add_argument("--model", "--checkpoint", default="mnist",
                          help="a shipped model's name, a .safetensors file or a .ckpt checkpoint (default: mnist)")
    complete.add_argument("--image", required=True, help="PNG, JPG or JPEG of any size or mode")
    complete.add_argument("--samples", type=positive_int, default=8)
    complete.add_argument("--rows", type=int, help="rows kept from the top (default: half the image)")
    complete.add_argument("--temperature", type=float, default=1.0)
    complete.add_argument("--top-k", type=positive_int)
    complete.add_argument("--seed", type=int, default=0)
    complete.add_argument("--invert", choices=["auto", "yes", "no"], default="auto",
                          help="white-background images are inverted when detected (auto; grayscale models only), always or never")
    complete.add_argument("--turn", choices=list(TURN_CHOICES), default="none",
                          help="quarter turns anticlockwise before completing: none (default), 90, 180, 270, or auto: "
                               "the turn under which the model finds the image most likely")
    complete.add_argument("--out", default="completion.png", help="the figure to write")
    complete.add_argument("--device", choices=DEVICES, default="auto", help="auto (default: the GPU when there is one), cpu or cuda")
    complete.add_argument("--max-pixels", type=positive_int, default=MAX_PIXELS,
                          help=f"refuse images that need more pixels than this once made square (default: {MAX_PIXELS:,})")
    complete.set_defaults(run=run_complete)

    export = commands.add_parser("export", help="ship a checkpoint as one safetensors file (weights, config, palette)")
    export.add_argument("--checkpoint", "--model", required=True,
                        help="a .ckpt checkpoint (--format hf: also a shipped model's name or a .safetensors file)")
    export.add_argument("--format", choices=["igpt", "hf"], default="igpt",
                        help="igpt: one .safetensors file (default); hf: a transformers ImageGPT folder at --out")
    export.add_argument("--name", help="the shipped model's name: models/<name>.safetensors")
    export.add_argument("--out", help="another place to write the .safetensors file")
    export.add_argument("--force", action="store_true", help="replace an existing model file")
    export.add_argument("--note", nargs="*", default=[], metavar="KEY=VALUE", help="provenance kept in the metadata (a repeated KEY makes a list: command=... command=...)")
    export.set_defaults(run=run_export)

    import_hf = commands.add_parser("import-hf", help="a transformers ImageGPT folder (OpenAI's iGPT weights) -> an igpt model file")
    import_hf.add_argument("folder", help="config.json, the weights and preprocessor_config.json (the colour clusters)")
    import_hf.add_argument("--out", required=True, help="the .safetensors file to write")
    import_hf.add_argument("--force", action="store_true", help="replace an existing model file")
    import_hf.set_defaults(run=run_import_hf)

    evaluate = commands.add_parser("evaluate", help="likelihood, probes, classification, completions -> JSON")
    add_evaluate_arguments(evaluate)
    evaluate.set_defaults(run=run_evaluate)

    from igptlib.report import add_card_arguments, add_report_arguments, run_card, run_report
    from igptlib.sweep import add_sweep_arguments, run_sweep

    sweep = commands.add_parser("sweep", help="run the training, completion and evaluation notebooks per size (papermill)")
    add_sweep_arguments(sweep)
    sweep.set_defaults(run=run_sweep)

    from igptlib.records import add_record_arguments, run_record

    record = commands.add_parser("record", help="copy a finished run folder's small files into report/runs/<name> (committed)")
    add_record_arguments(record)
    record.set_defaults(run=run_record)

    report = commands.add_parser("report", help="record runs/*, then build report/ (README, index.html, results.json, model cards) from report/runs/")
    add_report_arguments(report)
    report.set_defaults(run=run_report)

    card = commands.add_parser("card", help="record a shipped model's run folder as its training record, then rebuild its card and the report")
    add_card_arguments(card)
    card.set_defaults(run=run_card)

    robustness = commands.add_parser("robustness", help="inverted and rotated test images: completion and classification, handling on and off")
    robustness.add_argument("--model", default="mnist", help="the model that completes (default: mnist)")
    robustness.add_argument("--classifier", default="mnist-classifier", help="the fine-tuned model that classifies (default: mnist-classifier)")
    robustness.add_argument("--images", type=positive_int, default=200, help="the first N test images (default: 200)")
    robustness.add_argument("--samples", type=positive_int, default=2, help="completions per image (default: 2)")
    robustness.add_argument("--seed", type=int, default=0)
    robustness.add_argument("--root", default="data", help="the data root (test images and the judge's cache)")
    robustness.add_argument("--out", help="the JSON to write (default: report/runs/robustness-MODEL/robustness.json)")
    robustness.set_defaults(run=run_robustness)

    from igptlib.ladder import add_ladder_arguments, run_ladder

    ladder = commands.add_parser("ladder", help="the CPU ladder: S, M and L trained, evaluated and fine-tuned alike, resumably")
    add_ladder_arguments(ladder)
    ladder.set_defaults(run=run_ladder)

    _add_bench_commands(commands)
    return parser


# What a user's input or the machine's state can cause: one line, exit status 2. Anything else is
# a bug: one line and exit status 1, with the traceback behind --debug.
USER_ERRORS = (DataError, PaletteError, ConfigError, CheckpointError, ImageLoadError, OSError, ValueError,
               MisconfigurationException)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--debug" in argv:  # accepted anywhere on the line, not only before the command
        argv = ["--debug", *(arg for arg in argv if arg != "--debug")]
    args = build_parser().parse_args(argv)
    args.invocation = ["igpt", *argv]  # the command line, which records keep as provenance
    try:
        args.run(args)
    except USER_ERRORS as error:
        if args.debug:
            raise
        print(f"igpt {args.command}: error: {error}", file=sys.stderr)
        return 2
    except MemoryError:
        if args.debug:
            raise
        print(f"igpt {args.command}: error: out of memory; expected smaller inputs, sizes or counts "
              f"for this machine", file=sys.stderr)
        return 2
    except Exception as error:
        if args.debug:
            raise
        print(f"igpt {args.command}: internal error (a bug; --debug shows the traceback): "
              f"{type(error).__name__}: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
