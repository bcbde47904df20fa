"""The `igpt` command, the one command-line module: every sub-command's flags, and per sub-command a
thin run function that calls igptlib with explicit values.

The flags of config fields are generated from the config dataclasses (add_config_arguments): a
field's type, choices, default and help are written once, in igptlib/config.py. A flag that several
commands share (--model, --device, --budget-minutes, --size, --seed) is declared once, by a function
of its own; every command names a model by --model.

Importing this module loads no torch, Lightning, scikit-learn or matplotlib: each run function
imports what its command needs, so that `igpt --help` answers at once.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import inspect
import io
import math
import shutil
import sys
import textwrap
import time
import tokenize
import typing
from pathlib import Path

import yaml

from igptlib.config import (CHOICES, DERIVED_FROM_DATA, DEVICES, EVALUATION_MASKS, EVALUATION_PRECISIONS,
                            FINETUNE_LEARNING_RATES, FINETUNE_SWEEP_STEPS, MAX_PIXELS, PRESETS, DataConfig, ModelConfig,
                            RunConfig, apply_overrides, check_name, clip, excerpt, run_config, write_json)
from igptlib.records import RECORDS
from igptlib.sweep import PIPELINE

# `igpt complete --turn`: quarter turns anticlockwise, or None for the model's choice
TURN_CHOICES = {"none": 0, "90": 1, "180": 2, "270": 3, "auto": None}


def positive_float(text: str) -> float:
    """An argparse type for amounts such as passes over the data: finite and positive."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {excerpt(text)}") from None
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"expected a finite positive number, got {value:g}")
    return value


def minutes(text: str) -> float:
    """An argparse type for budgets and reserves of minutes: 0 or more, and finite, as a budget of NaN
    minutes would never run out."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 0 or a positive number, got {excerpt(text)}") from None
    if not 0 <= value < math.inf:
        raise argparse.ArgumentTypeError(f"expected 0 or a finite positive number, got {value:g}")
    return value


def positive_int(text: str) -> int:
    """An argparse type for counts and sizes: argparse names the flag in the error it makes of this one."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {excerpt(text)}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {excerpt(value)}")
    return value


@functools.cache  # one parser per kind, so that flags of one kind compare equal wherever they are declared
def number(kind: type):
    """An argparse type for int or float whose refusal shows a bounded excerpt of the text given (argparse's
    own shows all of it: a 5000-digit number fills the screen)."""
    def parse(text: str):
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, "
                                             f"got {excerpt(text)}") from None
    parse.__name__ = kind.__name__
    return parse


# -- flags generated from the config dataclasses ---------------------------------------------------

SECTIONS = typing.get_type_hints(RunConfig)  # a run's sections: data DataConfig, model ModelConfig, ...


@functools.cache
def field_comments(cls: type) -> dict[str, str]:
    """Each field's trailing `# comment` in the dataclass's source: the help of its flag."""
    fields = {field.name for field in dataclasses.fields(cls)}
    source = textwrap.dedent(inspect.getsource(cls))
    declared, comments = {}, {}  # row -> the field declared there; field -> its comment
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        row, column = token.start
        if token.type == tokenize.NAME and column == 4 and token.string in fields:  # the class body's indentation
            declared[row] = token.string
        elif token.type == tokenize.COMMENT and row in declared:
            comments[declared[row]] = token.string.lstrip("#").strip()
    return comments


def _int_or_text(text: str) -> int | str:
    """`int | str` fields (train.devices): a number, or a word such as auto that the config checks."""
    try:
        return int(text)
    except ValueError:
        return text


def _flag_type(annotation) -> dict:
    """add_argument's keywords for a field of this type."""
    if annotation is bool:
        return {"action": argparse.BooleanOptionalAction}  # --test and --no-test
    if typing.get_origin(annotation) is list:
        return {"nargs": "*", "type": typing.get_args(annotation)[0]}  # no values: an empty list
    # X | None: None is a config's own default, never a flag's value (`--set section.field=null` sets it).
    options = {option for option in typing.get_args(annotation) if option is not type(None)} or {annotation}
    if options == {int, str}:
        return {"type": _int_or_text}
    (kind,) = options
    if kind not in (int, float, str):
        raise TypeError(f"no flag for config fields of type {annotation!r}")
    return {"type": kind if kind is str else number(kind)}


def _shown(value) -> str:
    return (" ".join(map(str, value)) or "none") if isinstance(value, list) else str(value)


def add_config_arguments(parser: argparse.ArgumentParser, section: str, fields=None, exclude=(),
                         names: dict[str, list[str]] | None = None, description: str | None = None) -> None:
    """One flag per field of a run's `section` (those in `fields`, or all but `exclude`), in a group of
    its own (with `description` under its title): --field-name, or the flag names that `names` gives
    the field instead.

    Type, choices (config.CHOICES) and help (the field's comment) come from config.py. The default is
    None, "not given": the field keeps its value from the preset, the config file or the dataclass;
    the help shows the dataclass's. Fields derived from the data (model.vocab_size, model.n_px) get none.
    """
    cls = SECTIONS[section]
    hints, comments = typing.get_type_hints(cls), field_comments(cls)
    group = parser.add_argument_group(section, description)
    for field in dataclasses.fields(cls):
        if (fields is not None and field.name not in fields) or field.name in exclude or (
                section == "model" and field.name in DERIVED_FROM_DATA):
            continue
        default = field.default_factory() if field.default is dataclasses.MISSING else field.default
        help = comments.get(field.name, "")
        if default is not None:
            help = f"{help} (default: {_shown(default)})".strip()
        keywords = {"dest": f"{section}.{field.name}", "default": None, "help": help.replace("%", "%%"),
                    "choices": CHOICES.get(f"{section}.{field.name}"), **_flag_type(hints[field.name])}
        if keywords["choices"] is None and "action" not in keywords:
            keywords["metavar"] = field.name.upper()  # not the dest's SECTION.FIELD
        group.add_argument(*(names or {}).get(field.name, [f"--{field.name.replace('_', '-')}"]), **keywords)


def config_flags(args) -> dict[str, dict]:
    """The generated flags that were given: section -> {field: value}."""
    given = {}
    for dest, value in vars(args).items():
        section, dot, field = dest.partition(".")
        if dot and value is not None:
            given.setdefault(section, {})[field] = value
    return given


def data_config(args, **fields) -> DataConfig:
    """The DataConfig of a command's data flags: those given, the dataclass's defaults for the rest."""
    return DataConfig(**config_flags(args).get("data", {}), **fields)


def add_set_argument(parser: argparse.ArgumentParser, help: str) -> None:
    """--set SECTION.FIELD=VALUE ...: the generic override of any config field (config.apply_overrides)."""
    parser.add_argument("--set", dest="overrides", nargs="*", default=[], metavar="SECTION.FIELD=VALUE", help=help)


# -- flags that several commands share -------------------------------------------------------------

MODEL_FORMS = "a shipped model's name, a .safetensors file or a .ckpt checkpoint"


def add_model_argument(parser: argparse.ArgumentParser, help: str, **keywords) -> None:
    """--model: how every command names a model; `help` says what this command does with it."""
    parser.add_argument("--model", metavar="MODEL", help=help, **keywords)


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", choices=DEVICES, default="auto", help="auto (default: the GPU when there is one), cpu or cuda")


def add_budget_argument(parser: argparse.ArgumentParser, stops: str) -> None:
    """--budget-minutes: `stops` says where the command stops once the budget is spent, and how it goes on."""
    parser.add_argument("--budget-minutes", type=minutes, metavar="MIN", help=f"wall-clock minutes allowed: {stops}")


def add_size_argument(parser: argparse.ArgumentParser, default: str, what: str = "the model's preset") -> None:
    parser.add_argument("--size", default=default, choices=list(PRESETS), metavar="SIZE",
                        help=f"{what}: {', '.join(PRESETS)} (default: {default})")


def add_seed_argument(parser: argparse.ArgumentParser, what: str = "the seed of the sampling") -> None:
    parser.add_argument("--seed", type=number(int), default=0, metavar="SEED", help=f"{what} (default: 0)")


def add_learning_rates_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--lr", type=float, nargs="+", default=list(FINETUNE_LEARNING_RATES),
                        help="the fine-tuning learning rates that the sweep tries on the validation split "
                             f"(default: {' '.join(f'{lr:g}' for lr in FINETUNE_LEARNING_RATES)})")


def add_json_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", help="also write the figures to this JSON file")


# -- the sub-commands: each a thin call into igptlib -----------------------------------------------


def run_data(args) -> None:
    from igptlib.data import split_indices
    from igptlib.datasets import fetch, load_split

    config = data_config(args)
    report = fetch(config.dataset, config.root, timeout=args.timeout, refetch=args.refetch)
    print(report)
    sizes = {}
    for split in ("train", "test"):
        images, labels = load_split(config.dataset, config.root, train=split == "train")
        sizes[split] = len(labels)
        print(f"  {split}: {len(labels)} images {tuple(images.shape[1:])}, per label {labels.bincount().tolist()}")
    train_idx, val_idx = split_indices(sizes["train"], 0.1, seed=0)
    print(f"  seeded 90/10 split (seed 0): {len(train_idx)} train, {len(val_idx)} validation")


def run_centroids(args) -> None:
    from igptlib.data import ensure_palette
    from igptlib.plots import palette_swatches, save_figure

    config = data_config(args, palette=args.out)
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
        swatches = palette_swatches(palette, f"{config.dataset}: {len(palette)}-colour palette")
        figure = save_figure(swatches, Path(args.figure).name, Path(args.figure).parent)
        print(f"  swatches: {figure}")


def run_augment(args) -> None:
    import torch

    from igptlib.data import augment_images, examples_per_label, training_split, write_augmented_set
    from igptlib.plots import image_grid, save_figure

    config = data_config(args)
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
                         title=f"{config.dataset}: originals (left) and augmented ({', '.join(config.augment) or 'none'})")
        print(f"grid: {save_figure(fig, Path(args.grid).name, Path(args.grid).parent)}")


def train_config(args) -> tuple[RunConfig, Path]:
    """The RunConfig and run folder that the `igpt train` flags ask for: the resumed run's config, the
    --config file, the config --model was trained with or the --size preset; then --model's weights to
    fine-tune, the flags given, and --set."""
    flags = config_flags(args)
    dataset = flags.get("data", {}).get("dataset", DataConfig.dataset)
    objective = flags.get("model", {}).get("objective", ModelConfig.objective)
    if args.model:
        from igptlib.shipped import model_name, training_config
        from igptlib.train import find_run_folder

        pretrained, weights = training_config(args.model)  # how it was trained, and the file of its weights
    # Run folders are named as the notebooks name them: runs/<dataset>-<size>, a BERT run's with
    # -bert; a fine-tuning run goes into its pre-trained run's finetune/ folder (a model file's:
    # runs/<its name>-finetune).
    if args.run_dir:
        run_dir = Path(args.run_dir)
    elif args.model:
        pretrained_run = find_run_folder(weights) if weights.suffix == ".ckpt" else None
        run_dir = pretrained_run / "finetune" if pretrained_run else Path("runs") / f"{model_name(args.model)}-finetune"
    else:
        run_dir = Path("runs") / (f"{dataset}-{args.size}" + ("" if objective == "ar" else f"-{objective}"))
    if args.resume:
        if not (run_dir / "config.yaml").exists():
            raise FileNotFoundError(f"nothing to resume in {run_dir}: it has no config.yaml")
        config = RunConfig.load_yaml(run_dir / "config.yaml")
    elif args.config:
        config = RunConfig.load_yaml(args.config)
    elif args.model:  # its data and palette are what the pre-trained model reads
        config = pretrained
    else:
        config = run_config(args.size, dataset, objective)
    values = config.to_dict()
    if args.model:
        # The model is the pre-trained one; the new stage adds the classification loss.
        values["model"] = pretrained.to_dict()["model"]
        values["optim"]["finetune"] = True
        values["train"]["init_from"] = str(weights)
    for section, fields in flags.items():
        values[section].update(fields)
    return RunConfig.from_dict(apply_overrides(values, args.overrides)), run_dir


def run_train(args) -> None:
    config, run_dir = train_config(args)
    if args.print_config:
        print(f"# igpt train would train this config into {run_dir}")
        print(yaml.safe_dump(config.to_dict(), sort_keys=False), end="")
        return
    from igptlib.records import note_command
    from igptlib.train import first_process, train, validation_score

    budget = None if args.budget_minutes is None else args.budget_minutes * 60
    metrics = train(config, run_dir, resume=args.resume, budget_seconds=budget)
    if not first_process():  # the other processes of a DDP run print nothing
        return
    if metrics.get("stopped_by_budget"):
        print(f"stopped at step {metrics['global_step']} of {config.train.steps}: the {args.budget_minutes:g}-minute "
              f"budget ran out; go on with --run-dir {run_dir} --resume")
    note_command(run_dir, args.invocation)  # provenance for the run's record
    print(f"run folder: {run_dir}  (step {metrics['global_step']}, {metrics['wall_seconds']} s)")
    monitor = validation_score(config)[0]
    best = metrics[f"best_{monitor.replace('/', '_')}"]
    if best is not None:
        print(f"  best {monitor}: {best:.4f}")
    for key, value in metrics.get("test", {}).items():
        print(f"  {key}: {value:.4f}")


def run_complete(args) -> None:
    from igptlib.completion import complete_images
    from igptlib.device import resolve_device
    from igptlib.images import load_image
    from igptlib.plots import save_figure
    from igptlib.robustness import turn_upright
    from igptlib.shipped import load_model

    if Path(args.out).is_dir():  # else the figure would go beside it, as DIR.png
        raise IsADirectoryError(f"--out {args.out}: a directory; expected the path of a .png file")
    device = resolve_device(args.device)
    module = load_model(args.model)
    if module.palette is None:
        raise ValueError(f"{args.model}: the checkpoint holds no palette, so its tokens cannot be turned into colours")
    model, n_px = module.model.to(device), module.model_config.n_px
    invert = {"auto": None, "yes": True, "no": False}[args.invert]
    image, notes = load_image(args.image, n_px=n_px, channels=module.palette.shape[1], invert=invert,
                              max_pixels=args.max_pixels)
    image, turned = turn_upright(model, module.palette, image, TURN_CHOICES[args.turn])
    print("\n".join(notes + turned))
    completed = complete_images(model, module.palette, image[None], rows=args.rows, samples=args.samples,
                                temperature=args.temperature, top_k=args.top_k, seed=args.seed, progress=True)
    print(f"{args.samples} completions of the bottom {n_px - completed.kept_rows} rows in {completed.seconds:.2f} s on {device}")
    print(f"figure: {save_figure(completed.figure(), Path(args.out).name, Path(args.out).parent)}")


def run_robustness(args) -> None:
    from igptlib.robustness import measure_models
    from igptlib.shipped import has_trained_classifier, model_name

    if not has_trained_classifier(args.classifier):  # its accuracy would be a number that measures nothing
        raise ValueError(f"--classifier {args.classifier}: its classification head was never trained (it is not a "
                         "fine-tuned model); expected a fine-tuned classifier, such as mnist-classifier")
    out = Path(args.out or f"report/runs/robustness-{model_name(args.model)}/robustness.json")
    budget = None if args.budget_minutes is None else args.budget_minutes * 60
    record = measure_models(out, args.model, args.classifier, data_config(args).root, args.images, args.samples,
                            args.seed, budget, command=" ".join(args.invocation))
    for row in record["rows"]:
        print(f"{row['transform']:>12} handling {'on ' if row['handling'] else 'off'}: completion class agreement "
              f"{row['class_agreement']:.3f}, pixel agreement {row['pixel_agreement']:.3f}, "
              f"classifier accuracy {row['classification_accuracy']:.3f}"
              + (f"; the handling undid the inversion {row['inversion_detected_right']:.3f}, "
                 f"the rotation {row['rotation_chosen_right']:.3f}" if row["handling"] else ""))
    if record["complete"]:
        print(f"table: {out}")
    else:
        print(f"{len(record['rows'])} rows of the table measured, in {out}; the budget ran out: "
              "the same command measures the rest")


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
    notes: dict = {"checkpoint": str(args.model)}
    for key, value in (note.split("=", 1) for note in args.note):
        if key not in notes:
            notes[key] = value
        elif isinstance(notes[key], list):
            notes[key].append(value)
        else:
            notes[key] = [notes[key], value]
    path = export_model(args.model, out, notes, force=args.force)
    print(f"{path}: {path.stat().st_size / 1e6:.1f} MB")


def run_export_hf(args) -> None:
    from igptlib.hf import export_hf

    if not args.out:
        raise ValueError("--format hf: --out is required: the folder to write the transformers model to")
    folder = export_hf(args.model, args.out, force=args.force)
    print(f"{folder}: a transformers ImageGPT folder ({', '.join(sorted(p.name for p in folder.iterdir()))})")


def run_import_hf(args) -> None:
    from igptlib.hf import import_hf

    path = import_hf(args.folder, args.out, force=args.force)
    print(f"{path}: {path.stat().st_size / 1e6:.1f} MB; open it with --model {path} or in the explorer")


def run_evaluate(args) -> None:
    """Evaluate a checkpoint (or a model file) and write its metrics and figures into its run folder (or record)."""
    from igptlib.device import resolve_device
    from igptlib.evaluate import evaluate_and_write, model_to_evaluate, passes_folder, summary
    from igptlib.metrics import OutOfTime

    device = resolve_device(args.device)  # a GPU asked for and missing is an error before any work
    changes = config_flags(args).get("data", {})
    module, data, run_dir, source = model_to_evaluate(args.model, dataset=changes.pop("dataset", "mnist"), out=args.out)
    out = Path(args.out) if args.out else run_dir / "evaluation.json"
    try:
        results = evaluate_and_write(
            module, data.replace(**changes), out, source, device, command=args.invocation,
            budget_seconds=None if args.budget_minutes is None else args.budget_minutes * 60,
            probes=args.probes, probe_layers=args.probe_layers, probe_train=args.probe_train,
            classification=source["finetuned"] if args.classification is None else args.classification,
            completions=args.completions, samples=args.samples, keep_rows=args.keep_rows, temperature=args.temperature,
            seed=args.seed, masks=args.masks, figures=run_dir / "figures" if args.figures else None,
            precision=args.precision,
        )
    except OutOfTime as stopped:
        print(f"{stopped}; the passes finished so far are kept in {passes_folder(out)}: the same command goes on from them")
        return
    print(summary(results))
    print(f"metrics: {out}")


def run_sweep(args) -> None:
    import logging

    from igptlib.device import resolve_device
    from igptlib.sweep import sweep

    resolve_device(args.device)  # cuda without a GPU: an error now, not inside the first notebook
    # papermill logs each cell as it starts ("Executing Cell 6") and the cells' output, timed.
    logging.basicConfig(format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("papermill").setLevel(logging.INFO)
    sweep(sizes=args.sizes, dataset=data_config(args).dataset, notebooks=args.notebooks, runs=args.runs, steps=args.steps,
          smoke=args.smoke, device=args.device, records=None if args.smoke else args.records, command=args.invocation,
          preset_schedule=args.preset_schedule)


def run_experiment(args) -> None:
    import logging

    from igptlib import experiments

    if args.list or args.name is None:
        for experiment in experiments.EXPERIMENTS.values():
            print(f"{experiment.name:<22}{experiment.about} ({', '.join(experiment.notebooks)})")
        return
    experiments.experiment(args.name)  # an unknown name: an error before papermill starts
    logging.basicConfig(format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("papermill").setLevel(logging.INFO)  # each cell as it starts, and its output
    done = experiments.run(args.name, seed=args.seed, budget_minutes=args.budget_minutes, runs=args.runs,
                           records=None if args.smoke else args.records, smoke=args.smoke, command=args.invocation)
    if not done:
        print(f"{args.name}: unfinished; the same command goes on from where it stopped")


def run_folder_of(model: str) -> Path:
    """The run folder that --model names: a run folder itself, or the one holding a checkpoint."""
    if Path(model).suffix != ".ckpt":
        return Path(model)
    from igptlib.train import find_run_folder

    run_dir = find_run_folder(model)
    if run_dir is None:
        raise ValueError(f"--model {model}: not in a run folder (expected a config.yaml beside it or one folder up)")
    return run_dir


def run_record(args) -> None:
    from igptlib.records import record_run

    print(f"record: {record_run(run_dir=run_folder_of(args.model), name=args.name, records=args.records)}")


def run_report(args) -> None:
    from igptlib.report import build_report

    print(f"report: {build_report(runs=None if args.records_only else args.runs, out=args.out)}")


def run_card(args) -> None:
    from igptlib.report import shipped_model_card

    check_name(args.model, "--model", "shipped model's name", "models/<name>.safetensors")
    print(f"model card: {shipped_model_card(name=args.model, run_dir=args.run_dir, out=args.out)}")


def run_finetune_sweep(args) -> None:
    from igptlib.finetune_sweep import finetune_sweep
    from igptlib.shipped import model_name

    pretrained = model_name(args.model)
    finetune_sweep(args.model, runs=Path(args.runs or f"runs/finetune-sweep-{pretrained}"),
                   out=Path(args.out or f"report/runs/finetune-sweep-{pretrained}"), lrs=args.lr, steps=args.steps,
                   budget_minutes=args.budget_minutes, command=args.invocation)


def run_bench_train(args) -> None:
    import torch

    from igptlib.bench import bench_train, print_report
    from igptlib.device import resolve_device
    from igptlib.train import freed_memory_reused

    if args.threads:
        torch.set_num_threads(args.threads)
    # process-wide: the reference profits as much as ours
    with freed_memory_reused() if args.malloc == "reuse" else contextlib.nullcontext():
        result = bench_train(size=args.size, batch_size=args.batch_size, steps=args.steps, precision=args.precision,
                             reference=args.reference, n_px=args.n_px, vocab_size=args.vocab_size, warmup=args.warmup,
                             device=resolve_device(args.device))
    result["malloc"] = args.malloc
    print_report(result, args.precision)
    if args.json:
        write_json(args.json, result)  # whole or not at all, never through a link


def run_bench_sample(args) -> None:
    from igptlib.bench_sampling import bench_sample, print_report
    from igptlib.device import resolve_device

    result = bench_sample(preset=args.size, images=args.images, samples=args.samples, rows=args.rows,
                          repeats=args.repeats, device=resolve_device(args.device))
    print_report(result)
    if args.json:
        write_json(args.json, result)  # whole or not at all, never through a link


def run_bench_converge(args) -> None:
    from igptlib.bench_converge import measure, redraw

    out = Path(args.out)
    if args.redraw:
        print(f"plot: {redraw(out, Path(args.readme))}")
        return
    if not args.name:
        raise ValueError("--name is required: the recipe's name, for report/bench/converge-NAME.json")
    check_name(args.name, what="recipe name", becomes="converge-<name>.json and runs/converge-<name>")
    if args.branch_from is not None:
        check_name(args.branch_from, "--branch-from", "recipe name", "converge-<name>.json")
    record, path = measure(name=args.name, out=out, size=args.size, minutes=args.minutes, overrides=args.overrides,
                           run_dir=args.run_dir, threads=args.threads, branch_from=args.branch_from,
                           at_step=args.at_step, parent_run_dir=args.parent_run_dir)
    figure = redraw(out, Path(args.readme))
    test = record["test"]["nats_per_pixel"]
    print(f"{args.name}: {record['training']['steps']} steps in {record['training']['minutes']:.1f} min; "
          f"test {test:.4f} nats/px ({record['test']['images']} images, float32)")
    for target, minutes in record["minutes_to"].items():
        print(f"  reached {target} nats/px (validation, else the final test): {'never' if minutes is None else f'after {minutes:.1f} min'}")
    print(f"  record: {path}\n  plot: {figure}")


def run_bench_classify(args) -> None:
    from igptlib.bench_classify import classify, cnn_control, write_record

    check_name(args.name, what="recipe name", becomes="classify-<name>.json and runs/classify-<name>")
    if args.cnn:
        record = cnn_control(args.name, epochs=args.epochs)
    else:
        record = classify(args.name, Path(args.run_dir or f"runs/classify-{args.name}"), args.size, args.pretrain_steps,
                          args.finetune_steps, args.overrides, args.pretrain_overrides, args.finetune_overrides,
                          args.probe, args.budget_minutes)
        if record is None:
            return
    path = write_record(record, Path(args.out))
    test = record["test"]
    print(f"{args.name}: {record['training']['minutes']:.1f} wall min ({record['training']['cpu_minutes']:.1f} CPU min) "
          f"to a classifier of test accuracy {test['accuracy']:.4f}, kappa {test['kappa']:.4f}\n  record: {path}")
    if "probe" in record:
        print(f"  probe: {record['probe']['best_test_accuracy']:.4f} at layer {record['probe']['best_layer']} "
              f"after {record['probe']['minutes']:.1f} min")


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors on one line (the usage is a --help away), and no abbreviated flags: a
    flag that is the beginning of another (--run of --run-dir) is an unknown flag, never read as the
    longer one. Subcommands' parsers are of this class too."""

    def __init__(self, *args, **keywords):
        super().__init__(*args, allow_abbrev=False, **keywords)

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class _Version(argparse.Action):
    """--version: the installed distribution's version, read (importlib.metadata) only when asked for."""

    def __init__(self, option_strings, dest, **keywords):
        super().__init__(option_strings, dest, nargs=0, **keywords)

    def __call__(self, parser, namespace, values, option_string=None):
        from importlib.metadata import version

        print(f"igpt {version('igptlib')}")
        parser.exit()


COURSE = "the course's commands"
MAINTENANCE = "commands that maintain the report and the benchmarks"


def command_listing(groups: dict[str, list[tuple[str, str]]]) -> str:
    """`igpt --help`'s list of commands, group by group, each command's help wrapped to the terminal."""
    width = max(shutil.get_terminal_size().columns - 2, 40)  # argparse's own width
    indent = 4 + max(len(name) for rows in groups.values() for name, _ in rows)
    blocks = []
    for title, rows in groups.items():
        lines = [f"{title}:"]
        for name, help in rows:
            lines += textwrap.wrap(help, width, initial_indent=f"  {name}".ljust(indent), subsequent_indent=" " * indent)
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="igpt", usage="%(prog)s [-h] [--version] [--debug] COMMAND ...",
                     description="ImageGPT on MNIST-sized images: data, palette, training, completion, evaluation.",
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action=_Version, help="show the installed igpt's version and exit")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error (for bug reports)")
    # The commands are listed by group below the options (the epilog; argparse lists them in one group).
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", help=argparse.SUPPRESS, prog="igpt")
    groups: dict[str, list[tuple[str, str]]] = {COURSE: [], MAINTENANCE: []}

    def command(name: str, group: str, help: str, **keywords) -> argparse.ArgumentParser:
        groups[group].append((name, help))
        return commands.add_parser(name, help=help, **{"description": help, **keywords})

    data = command("data", COURSE, "fetch and verify a dataset (offline sources included)")
    add_config_arguments(data, "data", fields=("dataset", "root"))
    data.add_argument("--timeout", type=float, default=120.0, help="seconds allowed to each download source")
    data.add_argument("--refetch", action="store_true", help="fetch again, keeping damaged files as *.bad")
    data.set_defaults(run=run_data)

    centroids = command("centroids", COURSE, "fit the k-means colour palette and save it as .npy")
    add_config_arguments(centroids, "data",
                         fields=("dataset", "root", "n_px", "clusters", "palette_method", "palette_pixels", "seed"),
                         # --method and --pixels: the names these flags had before they were generated
                         names={"palette_method": ["--palette-method", "--method"],
                                "palette_pixels": ["--palette-pixels", "--pixels"]})
    centroids.add_argument("--out", help="where to write the .npy (default: under the data root)")
    centroids.add_argument("--force", action="store_true", help="fit again even if the file exists")
    centroids.add_argument("--figure", help="also save the palette's swatches as this PNG")
    centroids.set_defaults(run=run_centroids)

    augment = command("augment", COURSE, "write the augmented training set to disk and/or show a grid of it")
    add_config_arguments(augment, "data", fields=("dataset", "root", "augment", "crop_padding", "rotate_degrees", "seed"))
    augment.add_argument("--copies", type=positive_int, default=1, help="augmented copies of the training split to write")
    augment.add_argument("--out", help="an .npz to write (images uint8 [N, C, H, W], labels)")
    augment.add_argument("--grid", help="a PNG of originals beside augmented versions, a row per label")
    augment.add_argument("--per-label", type=positive_int, default=6)
    augment.set_defaults(run=run_augment)

    train = command(
        "train", COURSE, "train a model (pre-training, or fine-tuning --model) into a run folder",
        description="A config flag left out keeps the value of the resumed run, the --config file, --model's training "
                    "or the --size preset. The defaults shown are the config dataclasses' own; --print-config shows "
                    "the values a run would use.")
    add_size_argument(train, "s")
    train.add_argument("--config", help="a RunConfig YAML to start from instead of the --size preset")
    add_model_argument(train, f"fine-tune (L_GEN + L_CLF) this pre-trained model: {MODEL_FORMS} (a checkpoint's run "
                              "folder says how it was trained)")
    train.add_argument("--run-dir", help="the run folder (default: runs/<dataset>-<size>, -bert added for BERT; "
                                         "fine-tuning: the pre-trained run's finetune/, or runs/<model>-finetune)")
    train.add_argument("--resume", action="store_true", help="continue the run in --run-dir from its last checkpoint")
    add_budget_argument(train, "stop cleanly at a checkpoint once they have passed (go on later with --resume)")
    train.add_argument("--print-config", action="store_true",
                       help="print the config these flags resolve to (YAML, a --config file) and train nothing")
    add_set_argument(train, "change any config field after the flags, e.g. model.n_embd=32 data.augment=[]")
    for section in SECTIONS:
        # --model sets optim.finetune and train.init_from together; --device is train.accelerator's flag.
        add_config_arguments(train, section, exclude=("finetune", "init_from"), names={"accelerator": ["--device"]})
    train.set_defaults(run=run_train)

    complete = command("complete", COURSE, "complete a PNG/JPG/JPEG image with a model")
    add_model_argument(complete, f"the model that completes: {MODEL_FORMS} (default: mnist)", default="mnist")
    complete.add_argument("--image", required=True, help="PNG, JPG or JPEG of any size or mode")
    complete.add_argument("--samples", type=positive_int, default=8)
    complete.add_argument("--rows", type=int, help="rows kept from the top (default: half the image)")
    complete.add_argument("--temperature", type=float, default=1.0)
    complete.add_argument("--top-k", type=positive_int)
    add_seed_argument(complete)
    complete.add_argument("--invert", choices=["auto", "yes", "no"], default="auto",
                          help="white-background images are inverted when detected (auto; grayscale models only), always or never")
    complete.add_argument("--turn", choices=list(TURN_CHOICES), default="none",
                          help="quarter turns anticlockwise before completing: none (default), 90, 180, 270, or auto: "
                               "the turn under which the model finds the image most likely")
    complete.add_argument("--out", default="completion.png", help="the figure to write")
    add_device_argument(complete)
    complete.add_argument("--max-pixels", type=positive_int, default=MAX_PIXELS,
                          help=f"refuse images that need more pixels than this once made square (default: {MAX_PIXELS:,})")
    complete.set_defaults(run=run_complete)

    evaluate = command("evaluate", COURSE, "likelihood, probes, classification, completions -> JSON")
    add_model_argument(evaluate, f"the model to evaluate: {MODEL_FORMS}. A checkpoint is evaluated on its run's data, "
                                 "into its run folder; a model file on its own dataset, into its record "
                                 "(report/runs/shipped-<name>/evaluation.json, figures beside it)", required=True)
    evaluate.add_argument("--out", help="the JSON to write (default: evaluation.json in the run folder or the record)")
    add_config_arguments(evaluate, "data", fields={"dataset", "root", "batch_size", "limit_test"},
                         description="the data the model was trained on, changed where given; --dataset "
                                     "names it for a checkpoint outside a run folder")
    add_device_argument(evaluate)
    evaluate.add_argument("--precision", choices=EVALUATION_PRECISIONS, default="32",
                          help="32 (default) or bf16: bfloat16 autocast for the passes over whole splits, faster on CPUs with bf16 instructions")
    evaluate.add_argument("--no-probes", dest="probes", action="store_false", help="skip the linear probes")
    evaluate.add_argument("--probe-layers", type=int, nargs="+", help="layers to probe (default: all, 0 = embeddings)")
    evaluate.add_argument("--probe-train", type=positive_int, help="fit the probes on the first N training images (default: all)")
    evaluate.add_argument("--classification", action=argparse.BooleanOptionalAction, default=None,
                          help="the classification head's metrics (default: only for fine-tuned checkpoints)")
    evaluate.add_argument("--completions", type=int, default=16, help="test images to complete (0: none; default 16)")
    evaluate.add_argument("--samples", type=positive_int, default=4, help="completions per image (default 4)")
    evaluate.add_argument("--keep-rows", type=int, help="rows kept of each image (default: half)")
    evaluate.add_argument("--temperature", type=float, default=1.0)
    add_seed_argument(evaluate)
    evaluate.add_argument("--masks", type=number(int), default=EVALUATION_MASKS,
                          help="a BERT model is read a second time from masked inputs, as in pre-training: masks "
                               f"averaged per image, seeded by --seed (0: the unmasked reading only; default {EVALUATION_MASKS})")
    evaluate.add_argument("--no-figures", dest="figures", action="store_false", help="write no figures")
    add_budget_argument(evaluate, "stop between two batches once they have passed, keeping every finished pass over "
                                  "a split; the same command goes on")
    evaluate.set_defaults(run=run_evaluate)

    export = command("export", COURSE, "ship a checkpoint as one safetensors file (weights, config, palette)")
    add_model_argument(export, "the .ckpt checkpoint to ship (--format hf: also a shipped model's name or a "
                               ".safetensors file)", required=True)
    export.add_argument("--format", choices=["igpt", "hf"], default="igpt",
                        help="igpt: one .safetensors file (default); hf: a transformers ImageGPT folder at --out")
    export.add_argument("--name", help="the shipped model's name: models/<name>.safetensors")
    export.add_argument("--out", help="another place to write the .safetensors file")
    export.add_argument("--force", action="store_true", help="replace an existing model file")
    export.add_argument("--note", nargs="*", default=[], metavar="KEY=VALUE", help="provenance kept in the metadata (a repeated KEY makes a list: command=... command=...)")
    export.set_defaults(run=run_export)

    import_hf = command("import-hf", COURSE, "a transformers ImageGPT folder (OpenAI's iGPT weights) -> an igpt model file")
    import_hf.add_argument("folder", help="config.json, the weights and preprocessor_config.json (the colour clusters)")
    import_hf.add_argument("--out", required=True, help="the .safetensors file to write")
    import_hf.add_argument("--force", action="store_true", help="replace an existing model file")
    import_hf.set_defaults(run=run_import_hf)

    sweep = command("sweep", COURSE, "run the training, completion and evaluation notebooks per size (papermill)")
    sweep.add_argument("--sizes", nargs="+", default=["s", "m", "l"], help="model presets (default: s m l)")
    add_config_arguments(sweep, "data", fields=("dataset",))
    sweep.add_argument("--notebooks", nargs="+", default=list(PIPELINE), help=f"default: {' '.join(PIPELINE)}")
    sweep.add_argument("--runs", default="runs", help="where the run folders go (default: runs)")
    schedule = sweep.add_mutually_exclusive_group()
    schedule.add_argument("--steps", type=positive_int, help="pre-training steps for every size (default: the notebooks')")
    schedule.add_argument("--preset-schedule", action="store_true",
                          help="train each size for its preset's own schedule, fine-tune for a tenth of it (the GPU sweep)")
    sweep.add_argument("--smoke", action="store_true", help="tiny data and steps, as the tests run them")
    sweep.add_argument("--records", default="report/runs",
                       help="record each finished run here for the report (default: report/runs; smoke runs are not recorded)")
    add_device_argument(sweep)
    sweep.set_defaults(run=run_sweep)

    experiment = command("experiment", COURSE, "run a named experiment: the course's notebooks with its parameters (papermill)")
    experiment.add_argument("name", nargs="?", metavar="NAME", help="the experiment (igpt experiment --list shows them)")
    experiment.add_argument("--list", action="store_true", help="list the experiments and exit")
    add_seed_argument(experiment, "the run's seed (the notebooks' seed parameter, data.seed): runs/NAME-seedK for K > 0")
    add_budget_argument(experiment, "training stops at a checkpoint once they have passed; the same command goes on")
    experiment.add_argument("--runs", default="runs", help="where the run folder goes: runs/NAME, or runs/NAME-seedK (default: runs)")
    experiment.add_argument("--records", default="report/runs", help="record each finished stage here (default: report/runs)")
    experiment.add_argument("--smoke", action="store_true", help="tiny data and steps, recorded nowhere: a check that it runs")
    experiment.set_defaults(run=run_experiment)

    record = command("record", MAINTENANCE, "copy a finished run folder's small files into report/runs/<name> (committed)")
    add_model_argument(record, "the finished run folder, or a checkpoint in it (its finetune/ folder comes along)",
                       required=True)
    record.add_argument("--name", help="the record's name (default: the run folder's name)")
    record.add_argument("--records", default=str(RECORDS), help=f"where records live (default: {RECORDS})")
    record.set_defaults(run=run_record)

    report = command("report", MAINTENANCE, "record runs/*, then execute the report notebooks (notebooks/09 onwards) on "
                                            "report/runs/ and report/bench/ and export them to report/ (README, "
                                            "index.html; results.json, model cards)")
    report.add_argument("--runs", default="runs", help="the finished run folders under it are recorded first (default: runs)")
    report.add_argument("--records-only", action="store_true", help="record no run folder: build from the committed records alone")
    report.add_argument("--out", default="report", help="where the report and its records (runs/) live (default: report): a new or "
                                                        "empty folder, or one an earlier build wrote")
    report.set_defaults(run=run_report)

    card = command("card", MAINTENANCE, "record a shipped model's run folder as its training record, then rebuild its "
                                        "card and the report")
    add_model_argument(card, "the shipped model's name: models/<name>.safetensors", required=True)
    card.add_argument("--run-dir", required=True,
                      help="the run folder that made it (with finetune/ and evaluation.json): recorded as its training record")
    card.add_argument("--out", default="report", help="the report folder (default: report)")
    card.set_defaults(run=run_card)

    robustness = command("robustness", MAINTENANCE, "inverted and rotated test images: completion and classification, "
                                                    "handling on and off")
    add_model_argument(robustness, f"the model that completes: {MODEL_FORMS} (default: mnist)", default="mnist")
    robustness.add_argument("--classifier", default="mnist-classifier",
                            help="the fine-tuned model that classifies, named as --model is (default: mnist-classifier)")
    robustness.add_argument("--images", type=positive_int, default=200, help="the first N test images (default: 200)")
    robustness.add_argument("--samples", type=positive_int, default=2, help="completions per image (default: 2)")
    add_seed_argument(robustness)
    add_config_arguments(robustness, "data", fields=("root",))
    add_budget_argument(robustness, "stop between two rows once they have passed; the same command goes on")
    robustness.add_argument("--out", help="the JSON to write (default: report/runs/robustness-NAME/robustness.json, NAME the "
                                          "shipped model's or the checkpoint's run folder's)")
    robustness.set_defaults(run=run_robustness)

    sweep_lr = command("finetune-sweep", MAINTENANCE, "choose the fine-tuning learning rate on the validation split, resumably")
    add_model_argument(sweep_lr, f"the pre-trained model: {MODEL_FORMS} (e.g. runs/ladder-cpu-l/checkpoints/last.ckpt "
                                 "or mnist)", required=True)
    add_learning_rates_argument(sweep_lr)
    sweep_lr.add_argument("--steps", type=positive_int, default=FINETUNE_SWEEP_STEPS,
                          help=f"fine-tuning steps per rate (default: {FINETUNE_SWEEP_STEPS})")
    sweep_lr.add_argument("--runs", help="where the runs go (default: runs/finetune-sweep-<pre-trained run>)")
    sweep_lr.add_argument("--out", help="the record: JSON and figure (default: report/runs/finetune-sweep-<pre-trained run>)")
    add_budget_argument(sweep_lr, "stop cleanly at a checkpoint before they have passed")
    sweep_lr.set_defaults(run=run_finetune_sweep)

    bench = command("bench", MAINTENANCE, "benchmarks (they print figures; they are not tests)")
    kinds = bench.add_subparsers(dest="bench", required=True, metavar="BENCHMARK")
    train = kinds.add_parser("train", help="training throughput and GFLOP/s against a plain reference model")
    add_size_argument(train, "s")
    train.add_argument("--batch-size", type=positive_int, default=64)
    train.add_argument("--steps", type=positive_int, default=3, help="timed steps per model (the median counts)")
    train.add_argument("--warmup", type=int, default=5, help="untimed steps per model first (default: 5)")
    train.add_argument("--precision", choices=["bf16", "fp32"], default="bf16", help="our model's precision")
    train.add_argument("--no-reference", dest="reference", action="store_false", help="skip the reference model")
    train.add_argument("--n-px", type=positive_int, default=28)
    train.add_argument("--vocab-size", type=int, default=16)
    train.add_argument("--threads", type=positive_int, help="torch threads (default: torch's choice, one per core)")
    train.add_argument("--malloc", choices=["reuse", "default"], default="reuse",
                       help="reuse: glibc keeps freed memory, as `igpt train` sets it on CPUs (for both models); "
                            "default: glibc as it comes")
    add_device_argument(train)
    add_json_argument(train)
    train.set_defaults(run=run_bench_train)
    sample = kinds.add_parser("sample", help="KV-cache completion against the naive sampler and transformers' generate()")
    add_size_argument(sample, "xs")
    sample.add_argument("--images", type=positive_int, default=1)
    sample.add_argument("--samples", type=positive_int, default=16)
    sample.add_argument("--rows", type=int, default=14, help="rows kept; the rest are sampled")
    sample.add_argument("--repeats", type=positive_int, default=3, help="the cached sampler's best of this many runs")
    add_device_argument(sample)
    add_json_argument(sample)
    sample.set_defaults(run=run_bench_sample)
    converge = kinds.add_parser("converge", help="time to quality: validation nats/px against wall minutes, then test")
    converge.add_argument("--name", help="the recipe's name: report/bench/converge-NAME.json (required unless --redraw)")
    add_size_argument(converge, "cpu", "the preset to start from")
    converge.add_argument("--minutes", type=positive_float, default=30.0, help="wall-clock budget of the training (default: 30)")
    add_set_argument(converge, "change the preset's config, e.g. optim.lr=3e-3 data.batch_size=16 model.n_head=2")
    converge.add_argument("--threads", type=int, default=2, help="torch threads (default: 2, this machine's cores)")
    converge.add_argument("--run-dir", help="the run folder (default: runs/converge-NAME)")
    converge.add_argument("--out", default="report/bench", help="where the JSON and the plot go (default: report/bench)")
    converge.add_argument("--readme", default="docs/benchmarks.md",
                          help="the Markdown page whose time-to-quality table is rewritten (default: docs/benchmarks.md)")
    converge.add_argument("--redraw", action="store_true", help="train nothing: redraw the plot and the table from the JSONs")
    converge.add_argument("--branch-from", metavar="PARENT",
                          help="the recorded wsd run (report/bench/converge-PARENT.json) to branch from: a shorter run "
                               "of the same recipe whose decay starts at --at-step, timed as if trained from scratch")
    converge.add_argument("--at-step", type=int, help="with --branch-from: the parent's kept step where the decay starts")
    converge.add_argument("--parent-run-dir", help="with --branch-from: the parent's run folder (default: the one its record names)")
    converge.set_defaults(run=run_bench_converge)
    classify = kinds.add_parser("classify", help="time to quality for classification: pre-training, fine-tuning, test")
    classify.add_argument("--name", required=True, help="the recipe's name: report/bench/classify-NAME.json")
    add_size_argument(classify, "cpu-fast", "the preset to start from")
    classify.add_argument("--pretrain-steps", type=int, default=4000, help="generative pre-training steps (0: none, the labels-alone control)")
    classify.add_argument("--finetune-steps", type=positive_int, default=12000, help="fine-tuning steps (L_GEN + L_CLF)")
    add_set_argument(classify, "change the preset's config for both stages, e.g. data.n_px=16 model.norm=rms")
    classify.add_argument("--pretrain-set", dest="pretrain_overrides", nargs="+", default=[], metavar="SECTION.FIELD=VALUE",
                          help="change the pre-training stage's config only")
    classify.add_argument("--finetune-set", dest="finetune_overrides", nargs="+", default=[], metavar="SECTION.FIELD=VALUE",
                          help="change the fine-tuning stage's config only, e.g. optim.lr=1e-3 data.augment=[crop]")
    classify.add_argument("--probe", action="store_true", help="also fit linear probes on the pre-trained model (own minutes)")
    add_budget_argument(classify, "stop at a checkpoint before they have passed; run again to go on")
    classify.add_argument("--run-dir", help="the run folder (default: runs/classify-NAME)")
    classify.add_argument("--out", default="report/bench", help="where the JSON goes (default: report/bench)")
    classify.add_argument("--cnn", action="store_true", help="the convolutional control instead of the transformer")
    classify.add_argument("--epochs", type=positive_int, default=12, help="with --cnn: training epochs (default: 12)")
    classify.set_defaults(run=run_bench_classify)

    parser.epilog = command_listing(groups)
    return parser


def user_error(error: Exception) -> bool:
    """Whether a user's input or the machine's state caused `error`. igptlib's own errors about
    inputs (ConfigError, CheckpointError, PaletteError, ImageLoadError...) are ValueErrors; two
    others are not, and each is looked for only once its module is loaded, as a command that never
    loaded it cannot have raised it (importing torch or Lightning here would cost every command seconds)."""
    if isinstance(error, (OSError, ValueError)):
        return True
    others = {"igptlib.datasets": "DataError", "lightning.fabric.utilities.exceptions": "MisconfigurationException"}
    return any(module in sys.modules and isinstance(error, getattr(sys.modules[module], name))
               for module, name in others.items())


def out_of_memory(error: Exception) -> bool:
    """Python's MemoryError, or torch's: a GPU's OutOfMemoryError, or a CPU allocation refused."""
    torch = sys.modules.get("torch")  # a command that never loaded torch ran out of memory in Python's hands
    return isinstance(error, MemoryError) or (torch is not None and isinstance(error, torch.OutOfMemoryError)) or (
        isinstance(error, RuntimeError) and "can't allocate memory" in str(error))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--debug" in argv:  # accepted anywhere on the line, not only before the command
        argv = ["--debug", *(arg for arg in argv if arg != "--debug")]
    args = build_parser().parse_args(argv)
    args.invocation = ["igpt", *argv]  # the command line, which records keep as provenance
    try:
        args.run(args)
    except Exception as error:
        if args.debug:
            raise
        if user_error(error):  # one line, whatever it says; exit status 2
            print(f"igpt {args.command}: error: {clip(error, 1000)}", file=sys.stderr)
            return 2
        if out_of_memory(error):
            print(f"igpt {args.command}: error: out of memory ({clip(error, 200)}); expected smaller inputs, "
                  "sizes or counts for this machine", file=sys.stderr)
            return 2
        # Anything else is a bug: one line and exit status 1, with the traceback behind --debug.
        print(f"igpt {args.command}: internal error (a bug; --debug shows the traceback): "
              f"{type(error).__name__}: {clip(error, 1000)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
