"""Evaluation of a checkpoint or a model file: every metric the paper reports, into evaluation.json.

From a model and a PixelDataModule, evaluate_model computes
  likelihood        mean next-pixel cross-entropy on the test set, nats and bits per pixel (AR)
  linear probes     per layer, fitted on the training split, L2 strength and best layer chosen on validation (igptlib.metrics)
  classification    the fine-tuned head's accuracy, confusion matrix, Cohen's kappa, and
                    precision/recall/F1 per class (a generative checkpoint's head is untrained: chance)
  completion        keep the top half of test images, sample the rest; then the share of
                    completions that the judge (igptlib.judge) labels as the original's class, and
                    how many completed pixels agree with the original's
  masked reading    (BERT) the probes and classification again, from inputs masked as in
                    pre-training and averaged over several independent masks: a BERT model never
                    saw a whole image, so the paper reads it masked; both readings are recorded

`igpt evaluate --model M` (evaluate_and_write) writes all of it as evaluation.json in the run folder.
Given a budget, it stops between batches once the budget is spent, keeping each pass over a split
it finished in a folder beside the JSON (evaluation.passes/): the same command goes on from there.
"""
from __future__ import annotations

import shlex
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from igptlib import plots
from igptlib.completion import complete_tokens
from igptlib.config import EVALUATION_MASKS, EVALUATION_PRECISIONS, RunConfig, data_config_for, write_json
from igptlib.data import PixelDataModule, encode_all
from igptlib.judge import completion_quality, digit_classifier
from igptlib.metrics import all_layers, classification_metrics, load_pass, probes_from_features, save_pass, split_pass
from igptlib.model_files import check_same_palette, weights_digest
from igptlib.lightning_module import load_checkpoint
from igptlib.quantize import decode
from igptlib.train import find_run_folder


PREDICTIONS_SHOWN = 16  # test images in the predictions figure, before the mistakes


def first_and_mistakes(actual, predicted, first: int = 16, mistakes: int = 8):
    """Indices of the first `first` test images, then of up to `mistakes` later ones predicted wrong:
    the predictions figure shows typical images and the errors."""
    later_mistakes = np.flatnonzero(np.asarray(actual)[first:] != np.asarray(predicted)[first:]) + first
    return np.concatenate([np.arange(min(first, len(actual))), later_mistakes[:mistakes]])


# -- everything at once ----------------------------------------------------------------------------


def unaugmented_train_loader(datamodule, limit: int | None = None):
    """The training split as the probes need it: no augmentation, no shuffling, at most `limit` images."""
    train = datamodule.train_set
    dataset = encode_all(train.images[:limit], train.labels[:limit], datamodule.palette, datamodule.config.n_px)
    return DataLoader(dataset, batch_size=datamodule.config.batch_size, shuffle=False)


def evaluate_model(model, datamodule, *, probes: bool = True, probe_layers: list[int] | None = None,
                   probe_train: int | None = None, classification: bool = True, completions: int = 16,
                   samples: int = 4, keep_rows: int | None = None, temperature: float = 1.0, seed: int = 0,
                   masks: int = EVALUATION_MASKS, figures: str | Path | None = None, precision: str = "32",
                   progress: bool = True, passes: str | Path | None = None, deadline: float | None = None) -> dict:
    """Every metric of this module for a GPT on a PixelDataModule's test split, as a JSON-ready dict.

    probes: linear probes on `probe_layers` (default all), fitted on the first `probe_train`
    training images (default all). classification: the classification head's metrics.
    completions: how many test images to complete (0: none), `samples` each, keeping the top
    `keep_rows` rows (default half). Likelihood and completion need an AR model; a BERT model
    skips them, and with `masks` > 0 reads the probes and classification a second time, from
    inputs masked as in pre-training and averaged over `masks` masks (seeded by `seed`), into
    results["masked"] beside the unmasked reading (0: the unmasked reading only; each mask costs
    a pass over each split). figures: a folder to save the confusion matrix, actual-vs-predicted,
    probe and completion figures into. precision: "32", or "bf16" for bfloat16 autocast in the passes over
    whole splits (likelihood, classes, probe features); completion sampling stays float32.
    passes: a folder that keeps each finished pass over a split (test, train, validation) and
    serves it again to an evaluation of the same weights and settings. deadline: a
    time.perf_counter() value after which no batch of a pass starts (metrics.OutOfTime): with
    `passes`, what an evaluation stopped so had finished is not computed again.
    """
    if precision not in EVALUATION_PRECISIONS:
        raise ValueError(f"precision must be one of {list(EVALUATION_PRECISIONS)}, got {precision!r}")
    if datamodule.palette is None:
        datamodule.prepare_data()
        datamodule.setup()
    config = model.config
    if (config.vocab_size, config.n_px) != (datamodule.vocab_size, datamodule.config.n_px):
        raise ValueError(f"the model reads {config.n_px}x{config.n_px} images over {config.vocab_size} colours, "
                         f"the data is {datamodule.config.n_px}x{datamodule.config.n_px} over {datamodule.vocab_size}")
    ar = config.objective == "ar"
    if isinstance(masks, bool) or not isinstance(masks, int) or masks < 0:
        raise ValueError(f"masks must be a whole number of masked readings, 0 or more, got {masks!r}")
    masked = 0 if ar else masks  # an AR model reads whole images only
    if keep_rows is not None and not 0 <= keep_rows < config.n_px:
        raise ValueError(f"keep_rows must lie in 0..{config.n_px - 1} (some rows must be left to complete), got {keep_rows}")
    test_loader = datamodule.test_dataloader()
    results: dict = {"test_images": len(datamodule.test_set), "objective": config.objective, "precision": precision}
    started = time.perf_counter()
    layers = [] if not probes else all_layers(model) if probe_layers is None else list(probe_layers)
    weights = weights_digest(model) if passes is not None else None
    pass_seconds, served = {}, []  # a resumed evaluation counts the passes earlier processes measured, too

    def one_pass(split: str, loader, **wanted):
        key = {"split": split, "images": len(loader.dataset), "layers": layers, "precision": precision,
               "weights": weights, **wanted}
        kept = None if passes is None else Path(passes) / f"{split}.npz"
        found = None if kept is None else load_pass(kept, key)
        if found is not None:
            served.append(split)
        else:
            found = split_pass(model, loader, layers=layers, progress=progress, desc=f"{split} split",
                               deadline=deadline, **wanted)
            if kept is not None:
                save_pass(found, kept, key)
        pass_seconds[split] = round(found.seconds, 1)
        return found

    # bfloat16 autocast (as in training) speeds these passes up on CPUs with bf16 instructions;
    # logits and features are still reduced in float32. Sampling is left out: its
    # one-query decode steps run faster in float32.
    with torch.autocast(next(model.parameters()).device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        test = one_pass("test", test_loader, likelihood=ar, classes=classification)  # one pass serves all three
        if ar:
            results["likelihood"] = test.likelihood
        if probes:
            train = one_pass("train", unaugmented_train_loader(datamodule, probe_train))
            val = one_pass("validation", datamodule.val_dataloader())
            results["probes"] = probes_from_features(train, val, test, seed=seed, progress=progress)
        if masked and (probes or classification):
            reading = dict(masks=masked, mask_seed=seed)
            results["masked"] = {"masks": masked, "mask_prob": config.mask_prob, "mask_seed": seed}
            test_masked = one_pass("test-masked", test_loader, classes=classification, **reading)
            if probes:
                train_masked = one_pass("train-masked", unaugmented_train_loader(datamodule, probe_train), **reading)
                val_masked = one_pass("validation-masked", datamodule.val_dataloader(), **reading)
                results["masked"]["probes"] = probes_from_features(train_masked, val_masked, test_masked, seed=seed,
                                                                   progress=progress)
            if classification:
                results["masked"]["classification"] = classification_metrics(test_masked.labels, test_masked.predicted,
                                                                             config.num_classes)
    if classification:
        results["classification"] = classification_metrics(test.labels, test.predicted, config.num_classes)
    if ar and completions > 0:
        tokens, labels = (tensor[:completions] for tensor in datamodule.test_set.tensors)
        completed = complete_tokens(model, datamodule.palette, tokens, rows=keep_rows, samples=samples,
                                    temperature=temperature, seed=seed, progress=progress)
        classifier, info = digit_classifier(datamodule.config.root, datamodule.config.dataset, progress=progress)
        results["completion"] = {
            **completion_quality(tokens, completed.samples, labels, completed.kept_tokens, datamodule.palette,
                                 classifier),
            "temperature": temperature, "classifier": info,
        }
        if figures is not None:
            plots.save_figure(completed.figure(), "completions", figures, close=True)
    if figures is not None and "classification" in results:
        matrix = results["classification"]["confusion_matrix"]
        plots.save_figure(plots.confusion_matrix_plot(matrix), "confusion_matrix", figures, close=True)
        plots.save_figure(plots.actual_vs_predicted(matrix), "actual_vs_predicted", figures, close=True)
        shown = first_and_mistakes(test.labels, test.predicted, PREDICTIONS_SHOWN)
        images = decode(datamodule.test_set.tensors[0][shown], datamodule.palette)
        plots.save_figure(plots.predictions_figure(images, test.labels[shown], test.predicted[shown],
                                                   title=f"The first {PREDICTIONS_SHOWN} test images, then mistakes"),
                          "predictions", figures, close=True)
    if figures is not None and "probes" in results:
        plots.save_figure(plots.probe_accuracy_plot(results["probes"]), "linear_probes", figures, close=True)
    results["pass_seconds"] = pass_seconds
    results["seconds"] = round(time.perf_counter() - started + sum(pass_seconds[split] for split in served), 1)
    return results


def checkpoint_to_evaluate(checkpoint, dataset: str = "mnist") -> tuple:
    """(module, data config, run folder, what was evaluated) for a checkpoint: the data it was
    trained on when it lies in a run folder, else `dataset` in the model's shape."""
    checkpoint = Path(checkpoint)
    module = load_checkpoint(checkpoint)
    run_dir = find_run_folder(checkpoint)
    if run_dir is not None:
        data = RunConfig.load_yaml(run_dir / "config.yaml").data
    else:  # a checkpoint on its own: the data is described by the flags and the model's shape
        run_dir = checkpoint.parent
        data = data_config_for(module.model_config, dataset=dataset)
    # mmap: reading one number must not load a large checkpoint's tensors a second time.
    step = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True).get("global_step")
    return module, data, run_dir, {"checkpoint": str(checkpoint), "global_step": step, "finetuned": module.optim_config.finetune}


def model_to_evaluate(model: str, dataset: str = "mnist", out=None) -> tuple:
    """checkpoint_to_evaluate for a checkpoint; for a shipped model's name or a .safetensors file, the
    same of the model file, whose folder is its record's (or the folder of `out`)."""
    from igptlib.records import made_by_finetuning, shipped_record
    from igptlib.model_files import read_notes
    from igptlib.shipped import MODELS_DIR, load_model, model_dataset, shipped_models, unknown_model

    if model not in shipped_models() and Path(model).suffix != ".safetensors":  # what load_model reads as a checkpoint
        if Path(model).suffix != ".ckpt" and not Path(model).exists():
            raise unknown_model(model)
        return checkpoint_to_evaluate(model, dataset)
    module = load_model(model)
    path = MODELS_DIR / f"{model}.safetensors" if model in shipped_models() else Path(model)
    data = data_config_for(module.model_config, dataset=model_dataset(path) or dataset)
    folder = Path(out).parent if out else shipped_record(path.stem)
    return module, data, folder, {"model_file": str(path), "global_step": None,
                                  "finetuned": made_by_finetuning(read_notes(path))}


def passes_folder(out: Path) -> Path:
    """Where an evaluation into `out` keeps its finished passes until it has written `out`."""
    return out.with_name(out.stem + ".passes")


def evaluate_and_write(module, data, out: Path, source: dict, device="cpu", command: list[str] | None = None,
                       budget_seconds: float | None = None, **options) -> dict:
    """evaluate_model on `data`'s test split, written to `out` as evaluation.json is: what was
    evaluated (`source`), the model and data configs, the metrics, and the command that measured
    them. Every writer of evaluation.json goes through here, so every one has this schema.

    Resumable: the passes over the splits stop once `budget_seconds` are spent (metrics.OutOfTime),
    and the same call goes on from the passes kept in passes_folder(out)."""
    datamodule = PixelDataModule(data)
    datamodule.prepare_data()
    datamodule.setup()
    if module.palette is not None:  # tokens of another palette would mean other colours
        check_same_palette(module.palette, datamodule.palette, source.get("checkpoint") or source.get("model_file"))
    deadline = None if budget_seconds is None else time.perf_counter() + budget_seconds
    results = evaluate_model(module.model.to(device).eval(), datamodule, passes=passes_folder(out), deadline=deadline,
                             **options)
    results = {**source, "model": module.model_config.to_dict(), "data": data.to_dict(), **results}
    if command:  # the record keeps the command that measured it
        results["command"] = shlex.join(command)
    write_json(out, results)
    shutil.rmtree(passes_folder(out))
    return results


def evaluate_checkpoint(checkpoint, out=None, device="cpu", data_changes: dict | None = None, **options) -> dict:
    """Evaluate a run's checkpoint on the data it was trained on (changed by `data_changes`, e.g.
    a larger batch), into `out` (default: evaluation.json in the run folder) with its figures in
    figures/ beside it. options: evaluate_model's."""
    module, data, run_dir, source = checkpoint_to_evaluate(checkpoint)
    out = Path(out) if out is not None else run_dir / "evaluation.json"
    return evaluate_and_write(module, data.replace(**(data_changes or {})), out, source, device,
                              figures=out.parent / "figures", **options)


def _classifier_lines(reading: dict, indent: str) -> list[str]:
    """The probe's and the classification head's lines of one reading (whole or masked inputs)."""
    lines = []
    if "probes" in reading:
        probes = reading["probes"]
        lines.append(f"{indent}linear probe: {probes['best_test_accuracy']:.4f} test accuracy at layer {probes['best_layer']} "
                     f"(C = {probes['inverse_l2'][probes['best_layer']]:g}, chosen on validation)")
    if "classification" in reading:
        clf = reading["classification"]
        lines.append(f"{indent}classification: accuracy {clf['accuracy']:.4f}, kappa {clf['kappa']:.4f}")
    return lines


def summary(results: dict) -> str:
    """A few lines for the terminal: the headline number of each part of an evaluation."""
    lines = [f"evaluated on {results['test_images']} test images in {results['seconds']} s"]
    if "likelihood" in results:
        nll = results["likelihood"]
        lines.append(f"  likelihood: {nll['nats_per_pixel']:.4f} nats/pixel, {nll['bits_per_pixel']:.4f} bits/pixel")
    lines += _classifier_lines(results, "  ")
    if "masked" in results:
        masked = results["masked"]
        lines.append(f"  masked inputs (mask rate {masked['mask_prob']:g}, averaged over {masked['masks']} masks):")
        lines += _classifier_lines(masked, "    ")
    if "completion" in results:
        done = results["completion"]
        lines.append(f"  completion: class agreement {done['class_agreement']:.3f} (originals {done['original_accuracy']:.3f}), "
                     f"pixel agreement {done['pixel_agreement']:.3f}")
    return "\n".join(lines)
