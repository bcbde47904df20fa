"""Evaluation: likelihood, linear probes, classification metrics and completion quality.

What the paper reports, and what this module computes from a model and a PixelDataModule:
  likelihood        mean next-pixel cross-entropy on the test set, nats and bits per pixel (AR)
  linear probes     per layer: average-pooled normed features, standardised, logistic regression;
                    fitted on the training split, the best layer chosen on validation, scored on test
  classification    the fine-tuned head's accuracy, confusion matrix, Cohen's kappa, and
                    precision/recall/F1 per class (a generative checkpoint's head is untrained: chance)
  completion        keep the top half of test images, sample the rest; then the share of
                    completions that a separately trained digit classifier labels as the original's
                    class, and how many completed pixels agree with the original's

`igpt evaluate --checkpoint C` (run_evaluate) writes all of it as evaluation.json in the run folder.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shlex
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import cohen_kappa_score, confusion_matrix, precision_recall_fscore_support
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from igptlib import plots
from igptlib.config import DEVICES, RunConfig, data_config_for, positive_int
from igptlib.data import PixelDataModule, encode_all, load_split
from igptlib.device import resolve_device
from igptlib.module import check_same_palette, load_checkpoint
from igptlib.quantize import decode
from igptlib.sampling import complete
from igptlib.train import find_run_folder


PRECISIONS = ("32", "bf16")  # of the evaluation passes: float32, or bfloat16 autocast


def nats_to_bits(nats: float) -> float:
    """Nats per pixel to bits per pixel: divide by ln 2."""
    return nats / math.log(2)


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


# -- one pass over a split -------------------------------------------------------------------------


@dataclasses.dataclass
class SplitPass:
    """What one forward pass over a split gives: whichever of these were asked for."""

    labels: np.ndarray  # the loader's labels [N]
    likelihood: dict | None = None  # nats and bits per pixel (AR models)
    predicted: np.ndarray | None = None  # the classification head's labels [N]
    features: dict[int, np.ndarray] = dataclasses.field(default_factory=dict)  # {layer: [N, n_embd]}


@torch.inference_mode()
def split_pass(model, loader, *, likelihood: bool = False, classes: bool = False, layers: list[int] = (),
               progress: bool = False, desc: str = "pass") -> SplitPass:
    """Likelihood, class predictions and layer features of every image the loader yields, from one
    forward pass per batch: an evaluation that wants all three of the test split pays for one pass.

    likelihood: mean next-pixel cross-entropy over every pixel, the sum divided once at the end so
    that unequal batch sizes weigh right; the model must be autoregressive (model(tokens)[:, t]
    predicts tokens[:, t] from the ones before it). Each layer's features equal
    model.features(tokens, layer) (layer 0: the input embeddings, layer k: the output of block k),
    read by hooks on the blocks instead of running them again per layer.
    """
    if likelihood and model.config.objective != "ar":
        raise ValueError("likelihood needs an autoregressive model (objective 'ar'); a BERT model has no next-pixel density")
    n_layer = model.config.n_layer
    layers = list(layers)
    bad = [layer for layer in layers if not 0 <= layer <= n_layer]
    if bad:
        raise ValueError(f"layers must lie in 0..{n_layer}, got {layers}")
    model.eval()
    device = _device(model)
    stream: dict[int, torch.Tensor] = {}
    hooks = []
    if layers:
        hooks.append(model.blocks[0].register_forward_pre_hook(lambda block, args: stream.__setitem__(0, args[0])))
        for index, block in enumerate(model.blocks, start=1):
            hooks.append(block.register_forward_hook(lambda block, args, out, index=index: stream.__setitem__(index, out)))
    total, pixels = 0.0, 0
    labels, predicted = [], []
    features: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    try:
        for tokens, batch_labels in tqdm(loader, desc=desc, unit="batch", leave=False, disable=not progress):
            tokens = tokens.to(device)
            logits, class_logits = model.forward_with_classes(tokens)
            if likelihood:  # reduced in float32 even if the model runs in lower precision
                total += F.cross_entropy(logits.float().flatten(0, 1), tokens.flatten(), reduction="sum").item()
                pixels += tokens.numel()
            if classes:
                predicted.append(class_logits.argmax(dim=-1).cpu())
            for layer in layers:
                h = stream[layer].float()
                features[layer].append(F.layer_norm(h, h.shape[-1:]).mean(dim=1).cpu())  # as GPT.features
            labels.append(batch_labels)
    finally:
        for hook in hooks:
            hook.remove()
    if not labels:
        raise ValueError("the loader yielded no images")
    result = SplitPass(labels=torch.cat(labels).numpy(),
                       features={layer: torch.cat(chunks).numpy() for layer, chunks in features.items()})
    if likelihood:
        nats = total / pixels
        result.likelihood = {"nats_per_pixel": nats, "bits_per_pixel": nats_to_bits(nats), "pixels": pixels}
    if classes:
        result.predicted = torch.cat(predicted).numpy()
    return result


def all_layers(model) -> list[int]:
    return list(range(model.config.n_layer + 1))


# -- likelihood ------------------------------------------------------------------------------------


def likelihood(model, loader, progress: bool = False, classes: bool = False):
    """Mean next-pixel cross-entropy over every pixel of every image the loader yields (AR models).

    With classes=True the same pass also reads the classification head, and the result is
    (likelihood dict, actual labels, predicted labels), as predict_classes gives them.
    """
    found = split_pass(model, loader, likelihood=True, classes=classes, progress=progress, desc="likelihood")
    return (found.likelihood, found.labels, found.predicted) if classes else found.likelihood


# -- linear probes ---------------------------------------------------------------------------------


def layer_features(model, loader, layers: list[int] | None = None, progress: bool = False) -> tuple[dict[int, np.ndarray], np.ndarray]:
    """Features of several layers (default all) from one pass per batch: ({layer: [N, n_embd]}, labels [N])."""
    layers = all_layers(model) if layers is None else list(layers)
    if not layers:
        raise ValueError("layers must name at least one layer")
    found = split_pass(model, loader, layers=layers, progress=progress, desc="features")
    return found.features, found.labels


def fit_linear_probe(features, labels, max_iter: int = 1000, seed: int = 0):
    """A logistic regression on standardised features (a scikit-learn pipeline; .score gives accuracy).

    Standardising with the training set's mean and spread first lets the probe converge in a few
    hundred L-BFGS steps, whatever the scale of the layer.
    """
    _check_examples("train", features, labels)
    if len(np.unique(labels)) < 2:
        raise ValueError("the training labels hold a single class: a probe needs at least two")
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=max_iter, random_state=seed)).fit(features, labels)


def _check_examples(split: str, features, labels) -> None:
    if len(features) != len(labels):
        raise ValueError(f"{split}: {len(features)} feature rows but {len(labels)} labels")
    if len(labels) == 0:
        raise ValueError(f"{split}: no examples")


def probe_accuracy(probe, features, labels, split: str = "test") -> float:
    _check_examples(split, features, labels)
    return float(probe.score(features, labels))


def linear_probe(train_features, train_labels, test_features, test_labels, max_iter: int = 1000, seed: int = 0) -> float:
    """Accuracy on the test features of a probe fitted on the train features."""
    _check_examples("test", test_features, test_labels)
    return probe_accuracy(fit_linear_probe(train_features, train_labels, max_iter, seed), test_features, test_labels)


def probes_from_features(train: SplitPass, val: SplitPass, test: SplitPass, max_iter: int = 1000, seed: int = 0,
                         progress: bool = False) -> dict:
    """A linear probe per layer, fitted once on train; the best layer is picked on validation and
    reported on test. Picking on validation keeps the test accuracy an honest estimate (picking the
    best of several test scores would flatter it)."""
    if not train.features:
        raise ValueError("no layer's features to probe")
    val_accuracy, test_accuracy = {}, {}
    for layer in tqdm(train.features, desc="probes", unit="layer", leave=False, disable=not progress):
        probe = fit_linear_probe(train.features[layer], train.labels, max_iter, seed)
        val_accuracy[layer] = probe_accuracy(probe, val.features[layer], val.labels, "validation")
        test_accuracy[layer] = probe_accuracy(probe, test.features[layer], test.labels)
    best = max(val_accuracy, key=val_accuracy.get)
    return {
        "val_accuracy": val_accuracy,
        "test_accuracy": test_accuracy,
        "best_layer": best,
        "best_test_accuracy": test_accuracy[best],
        "train_examples": len(train.labels),
    }


def linear_probes(model, train_loader, val_loader, test_loader, layers: list[int] | None = None,
                  max_iter: int = 1000, seed: int = 0, progress: bool = False) -> dict:
    """probes_from_features on the three loaders' features. The train loader should yield unaugmented images."""
    layers = all_layers(model) if layers is None else list(layers)
    train, val, test = (split_pass(model, loader, layers=layers, progress=progress, desc=f"{name} features")
                        for name, loader in (("train", train_loader), ("validation", val_loader), ("test", test_loader)))
    return probes_from_features(train, val, test, max_iter, seed, progress)


# -- classification --------------------------------------------------------------------------------


def predict_classes(model, loader, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(actual labels, the classification head's predictions) over every image of the loader."""
    found = split_pass(model, loader, classes=True, progress=progress, desc="classify")
    return found.labels, found.predicted


def classification_metrics(actual, predicted, num_classes: int = 10) -> dict:
    """Accuracy, Cohen's kappa, confusion matrix and per-class precision/recall/F1.

    confusion_matrix[i][j] counts images of class i predicted as class j. Every class in
    0..num_classes-1 gets a row and a column, present or not, so matrices of runs compare.
    """
    actual, predicted = np.asarray(actual), np.asarray(predicted)
    if actual.ndim != 1 or actual.shape != predicted.shape:
        raise ValueError(f"expected two equally long 1-d label arrays, got shapes {actual.shape} and {predicted.shape}")
    if len(actual) == 0:
        raise ValueError("no labels to compare")
    for name, values in (("actual", actual), ("predicted", predicted)):
        if values.min() < 0 or values.max() >= num_classes:
            raise ValueError(f"{name} labels must lie in 0..{num_classes - 1}, got {values.min()}..{values.max()}")
    classes = list(range(num_classes))
    precision, recall, f1, support = precision_recall_fscore_support(actual, predicted, labels=classes, zero_division=0)
    return {
        "accuracy": float((actual == predicted).mean()),
        "kappa": float(cohen_kappa_score(actual, predicted, labels=classes)),
        "confusion_matrix": confusion_matrix(actual, predicted, labels=classes).tolist(),
        "precision": precision.tolist(),
        "recall": recall.tolist(),
        "f1": f1.tolist(),
        "support": support.tolist(),
        "macro_f1": float(f1.mean()),
    }


# -- the separately trained digit classifier -------------------------------------------------------


class DigitClassifier(nn.Module):
    """A tiny CNN that judges completions: two strided convolutions and a linear layer.

    It is deliberately independent of the GPT (other architecture, raw pixels, own training), so
    that "the classifier sees the right digit" measures the completion, not the model's own view.
    """

    def __init__(self, channels: int = 1, image_size: int = 28, classes: int = 10):
        super().__init__()
        self.channels, self.image_size, self.classes = channels, image_size, classes
        side = math.ceil(math.ceil(image_size / 2) / 2)  # each strided convolution halves the side, rounding up
        self.net = nn.Sequential(
            nn.Conv2d(channels, 16, 5, stride=2, padding=2), nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
            nn.Flatten(), nn.Linear(32 * side * side, classes),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Class logits for uint8 images [N, C, H, W]; other sizes are resized to image_size first."""
        if images.ndim != 4 or images.shape[1] != self.channels:
            raise ValueError(f"expected images [N, {self.channels}, H, W], got shape {tuple(images.shape)}")
        x = images.float() / 255
        if x.shape[-2:] != (self.image_size, self.image_size):
            # Context-reduced images (n_px < 28) are scaled back up to what the classifier learnt on.
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", antialias=True, align_corners=False)
        return self.net(x)


@torch.inference_mode()
def classify_images(classifier: DigitClassifier, images: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """The classifier's label for each uint8 image [N, C, H, W]."""
    classifier.eval()
    return torch.cat([classifier(chunk).argmax(dim=-1) for chunk in torch.as_tensor(images).split(batch_size)])


def train_digit_classifier(images: torch.Tensor, labels: torch.Tensor, epochs: int = 1, batch_size: int = 128,
                           lr: float = 2e-3, seed: int = 0, progress: bool = False) -> DigitClassifier:
    """Fit a DigitClassifier to uint8 images [N, C, H, W]; one epoch of MNIST gives about 97-98%."""
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    # The seed sets initialisation and batch order without disturbing the caller's random state.
    # Autocast is switched off: a caller's bfloat16 autocast made this CNN collapse to one class.
    with torch.random.fork_rng(), torch.autocast("cpu", enabled=False), torch.autocast("cuda", enabled=False):
        torch.manual_seed(seed)
        classifier = DigitClassifier(images.shape[1], images.shape[-1], int(labels.max()) + 1)
        optimizer = torch.optim.Adam(classifier.parameters(), lr=lr)
        classifier.train()
        for _ in range(epochs):
            order = torch.randperm(len(images))
            for batch in tqdm(order.split(batch_size), desc="digit classifier", unit="batch", leave=False, disable=not progress):
                loss = F.cross_entropy(classifier(images[batch]), labels[batch])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
    return classifier.eval()


def digit_classifier(root: str | Path = "data", dataset: str = "mnist", seed: int = 0, epochs: int = 1,
                     progress: bool = False) -> tuple[DigitClassifier, dict]:
    """The reference classifier for `dataset`, trained once and cached under root/classifiers.

    Returns (classifier, info) where info holds its test accuracy and how it was trained. The cache
    is a safetensors file (no pickled code) whose metadata carries info.
    """
    path = Path(root) / "classifiers" / f"{dataset}-cnn-seed{seed}-epochs{epochs}.safetensors"
    if path.exists():
        with safe_open(str(path), framework="pt") as file:
            info = json.loads(file.metadata()["info"])
        classifier = DigitClassifier(info["channels"], info["image_size"], info["classes"])
        classifier.load_state_dict(load_file(str(path)))
        return classifier.eval(), info
    images, labels = load_split(dataset, root, train=True)
    started = time.perf_counter()
    classifier = train_digit_classifier(images, labels, epochs=epochs, seed=seed, progress=progress)
    seconds = time.perf_counter() - started
    test_images, test_labels = load_split(dataset, root, train=False)
    accuracy = float((classify_images(classifier, test_images) == test_labels).float().mean())
    info = {
        "dataset": dataset, "seed": seed, "epochs": epochs, "train_seconds": round(seconds, 1),
        "test_accuracy": accuracy, "channels": classifier.channels, "image_size": classifier.image_size,
        "classes": classifier.classes,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    # A half-written cache is never mistaken for one, even with two processes training at once.
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
    save_file(classifier.state_dict(), str(partial), metadata={"info": json.dumps(info)})
    partial.replace(path)
    return classifier, info


# -- completion quality ----------------------------------------------------------------------------


def _check_completions(originals: torch.Tensor, completions: torch.Tensor, keep: int) -> None:
    if originals.ndim != 2 or completions.ndim != 3:
        raise ValueError(f"expected originals [N, T] and completions [N, samples, T], got shapes "
                         f"{tuple(originals.shape)} and {tuple(completions.shape)}")
    if completions.shape[0] != originals.shape[0] or completions.shape[2] != originals.shape[1]:
        raise ValueError(f"completions {tuple(completions.shape)} do not match originals {tuple(originals.shape)}: "
                         f"expected [{originals.shape[0]}, samples, {originals.shape[1]}]")
    if not 0 <= keep < originals.shape[1]:
        raise ValueError(f"keep must lie in 0..{originals.shape[1] - 1} (something must be completed), got {keep}")
    if not torch.equal(completions[:, :, :keep], originals[:, None, :keep].expand(-1, completions.shape[1], -1)):
        raise ValueError(f"the completions' first {keep} tokens differ from the originals': "
                         f"are they in the same order, and was the same `keep` used?")


def pixel_agreement(originals: torch.Tensor, completions: torch.Tensor, keep: int) -> float:
    """The share of completed tokens (positions keep..T-1) equal to the original's token there."""
    originals, completions = torch.as_tensor(originals), torch.as_tensor(completions)
    _check_completions(originals, completions, keep)
    return float((completions[:, :, keep:] == originals[:, None, keep:]).float().mean())


def completion_quality(originals: torch.Tensor, completions: torch.Tensor, labels: torch.Tensor, keep: int,
                       palette: np.ndarray, classifier: DigitClassifier) -> dict:
    """How good are completions [N, samples, T] of the originals' tokens [N, T], first `keep` kept?

    class_agreement: the share of completions the classifier labels as the original's class
    (agreeing_completions: how many they are).
    original_accuracy: the classifier's accuracy on the (palette-coloured) originals themselves,
    the ceiling class_agreement should be read against. pixel_agreement: see pixel_agreement.
    """
    originals, completions, labels = torch.as_tensor(originals), torch.as_tensor(completions), torch.as_tensor(labels)
    _check_completions(originals, completions, keep)
    if labels.shape != originals.shape[:1]:
        raise ValueError(f"expected one label per original ({originals.shape[0]}), got shape {tuple(labels.shape)}")
    count, samples, _ = completions.shape
    predicted = classify_images(classifier, decode(completions.flatten(0, 1), palette)).view(count, samples)
    original_predicted = classify_images(classifier, decode(originals, palette))
    agreeing = int((predicted == labels[:, None]).sum())
    return {
        "class_agreement": agreeing / (count * samples),
        "agreeing_completions": agreeing,
        "original_accuracy": float((original_predicted == labels).float().mean()),
        "pixel_agreement": pixel_agreement(originals, completions, keep),
        "images": count,
        "samples": samples,
        "kept_tokens": keep,
    }


# -- everything at once ----------------------------------------------------------------------------


def unaugmented_train_loader(datamodule, limit: int | None = None):
    """The training split as the probes need it: no augmentation, no shuffling, at most `limit` images."""
    train = datamodule.train_set
    dataset = encode_all(train.images[:limit], train.labels[:limit], datamodule.palette, datamodule.config.n_px)
    return DataLoader(dataset, batch_size=datamodule.config.batch_size, shuffle=False)


def evaluate_model(model, datamodule, *, probes: bool = True, probe_layers: list[int] | None = None,
                   probe_train: int | None = None, classification: bool = True, completions: int = 16,
                   samples: int = 4, keep_rows: int | None = None, temperature: float = 1.0, seed: int = 0,
                   figures: str | Path | None = None, precision: str = "32", progress: bool = True) -> dict:
    """Every metric of this module for a GPT on a PixelDataModule's test split, as a JSON-ready dict.

    probes: linear probes on `probe_layers` (default all), fitted on the first `probe_train`
    training images (default all). classification: the classification head's metrics.
    completions: how many test images to complete (0: none), `samples` each, keeping the top
    `keep_rows` rows (default half). Likelihood and completion need an AR model; a BERT model
    skips them. figures: a folder to save the confusion matrix, actual-vs-predicted, probe and
    completion figures into. precision: "32", or "bf16" for bfloat16 autocast in the passes over
    whole splits (likelihood, classes, probe features); completion sampling stays float32.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    if datamodule.palette is None:
        datamodule.prepare_data()
        datamodule.setup()
    config = model.config
    if (config.vocab_size, config.n_px) != (datamodule.vocab_size, datamodule.config.n_px):
        raise ValueError(f"the model reads {config.n_px}x{config.n_px} images over {config.vocab_size} colours, "
                         f"the data is {datamodule.config.n_px}x{datamodule.config.n_px} over {datamodule.vocab_size}")
    ar = config.objective == "ar"
    if keep_rows is not None and not 0 <= keep_rows < config.n_px:
        raise ValueError(f"keep_rows must lie in 0..{config.n_px - 1} (some rows must be left to complete), got {keep_rows}")
    test_loader = datamodule.test_dataloader()
    results: dict = {"test_images": len(datamodule.test_set), "objective": config.objective, "precision": precision}
    started = time.perf_counter()
    # bfloat16 autocast (as in training) speeds these passes up on CPUs with bf16 instructions;
    # logits and features are still reduced in float32. Sampling is left out: its
    # one-query decode steps run faster in float32.
    with torch.autocast(_device(model).type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        layers = (all_layers(model) if probe_layers is None else list(probe_layers)) if probes else []
        test = split_pass(model, test_loader, likelihood=ar, classes=classification, layers=layers,
                          progress=progress, desc="test split")  # one pass serves all three
        if ar:
            results["likelihood"] = test.likelihood
        if probes:
            train, val = (split_pass(model, loader, layers=layers, progress=progress, desc=f"{name} features")
                          for name, loader in (("train", unaugmented_train_loader(datamodule, probe_train)),
                                               ("validation", datamodule.val_dataloader())))
            results["probes"] = probes_from_features(train, val, test, seed=seed, progress=progress)
    if classification:
        results["classification"] = classification_metrics(test.labels, test.predicted, config.num_classes)
    if ar and completions > 0:
        keep_rows = config.n_px // 2 if keep_rows is None else keep_rows
        tokens, labels = datamodule.test_set.tensors
        tokens, labels = tokens[:completions], labels[:completions]
        keep = keep_rows * config.n_px
        sampled = complete(model, tokens, keep, samples=samples, temperature=temperature, seed=seed, progress=progress)
        classifier, info = digit_classifier(datamodule.config.root, datamodule.config.dataset, progress=progress)
        results["completion"] = {
            **completion_quality(tokens, sampled, labels, keep, datamodule.palette, classifier),
            "temperature": temperature, "classifier": info,
        }
        if figures is not None:
            fig = plots.completion_figure(decode(tokens, datamodule.palette), decode(sampled, datamodule.palette), keep_rows)
            plots.save_figure(fig, "completions", figures, close=True)
    if figures is not None and "classification" in results:
        matrix = results["classification"]["confusion_matrix"]
        plots.save_figure(plots.confusion_matrix_plot(matrix), "confusion_matrix", figures, close=True)
        plots.save_figure(plots.actual_vs_predicted(matrix), "actual_vs_predicted", figures, close=True)
    if figures is not None and "probes" in results:
        plots.save_figure(plots.probe_accuracy_plot(results["probes"]), "linear_probes", figures, close=True)
    results["seconds"] = round(time.perf_counter() - started, 1)
    return results


# -- the `igpt evaluate` command --------------------------------------------------------------------


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="a checkpoint of a run, e.g. runs/mnist-s-ar/checkpoints/best.ckpt")
    source.add_argument("--model", help="a shipped model's name or a .safetensors file, evaluated on its own dataset; "
                        "default --out: its record, report/runs/shipped-<name>/evaluation.json (figures beside it)")
    parser.add_argument("--out", help="the JSON to write (default: evaluation.json in the run folder)")
    parser.add_argument("--root", help="data root (default: the run's)")
    parser.add_argument("--dataset", default="mnist", help="for a checkpoint without a run folder (default: mnist)")
    parser.add_argument("--limit-test", type=positive_int, help="only the first N test images")
    parser.add_argument("--batch-size", type=positive_int)
    parser.add_argument("--device", choices=DEVICES, default="auto", help="auto (default: the GPU when there is one), cpu or cuda")
    parser.add_argument("--precision", choices=PRECISIONS, default="32",
                        help="32 (default) or bf16: bfloat16 autocast for the passes over whole splits, faster on CPUs with bf16 instructions")
    parser.add_argument("--no-probes", dest="probes", action="store_false", help="skip the linear probes")
    parser.add_argument("--probe-layers", type=int, nargs="+", help="layers to probe (default: all, 0 = embeddings)")
    parser.add_argument("--probe-train", type=positive_int, help="fit the probes on the first N training images (default: all)")
    parser.add_argument("--classification", action=argparse.BooleanOptionalAction, default=None,
                        help="the classification head's metrics (default: only for fine-tuned checkpoints)")
    parser.add_argument("--completions", type=int, default=16, help="test images to complete (0: none; default 16)")
    parser.add_argument("--samples", type=positive_int, default=4, help="completions per image (default 4)")
    parser.add_argument("--keep-rows", type=int, help="rows kept of each image (default: half)")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-figures", dest="figures", action="store_false", help="write no figures")


def _model_to_evaluate(args) -> tuple:
    """(module, data config, folder for evaluation.json and figures, what was evaluated) for
    --checkpoint (its run folder) or --model (a shipped model's record, or the folder of --out)."""
    if args.model is not None:
        from igptlib.records import made_by_finetuning, shipped_record
        from igptlib.shipped import MODELS_DIR, load_model, model_dataset, read_notes, shipped_models

        module = load_model(args.model)  # a name or a file; anything else is refused here
        path = MODELS_DIR / f"{args.model}.safetensors" if args.model in shipped_models() else Path(args.model)
        data = data_config_for(module.model_config, dataset=model_dataset(path) or args.dataset)
        folder = Path(args.out).parent if args.out else shipped_record(path.stem)
        return module, data, folder, {"model_file": str(path), "global_step": None,
                                      "finetuned": made_by_finetuning(read_notes(path))}
    checkpoint = Path(args.checkpoint)
    module = load_checkpoint(checkpoint)
    run_dir = find_run_folder(checkpoint)
    if run_dir is not None:
        data = RunConfig.load_yaml(run_dir / "config.yaml").data
    else:  # a checkpoint on its own: the data is described by the flags and the model's shape
        run_dir = checkpoint.parent
        data = data_config_for(module.model_config, dataset=args.dataset)
    # mmap: reading one number must not load a large checkpoint's tensors a second time.
    step = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True).get("global_step")
    return module, data, run_dir, {"checkpoint": str(checkpoint), "global_step": step, "finetuned": module.optim_config.finetune}


def run_evaluate(args) -> dict:
    """Evaluate a checkpoint (or a shipped model) and write its metrics and figures into its run folder (or record)."""
    device = resolve_device(args.device)  # a GPU asked for and missing is an error before any work
    module, data, run_dir, source = _model_to_evaluate(args)
    model_config = module.model_config
    changes = {name: getattr(args, name) for name in ("root", "limit_test", "batch_size") if getattr(args, name) is not None}
    data = data.replace(**changes)
    datamodule = PixelDataModule(data)
    datamodule.prepare_data()
    datamodule.setup()
    if module.palette is not None:  # tokens of another palette would mean other colours
        check_same_palette(module.palette, datamodule.palette, args.checkpoint or args.model)

    model = module.model.to(device).eval()
    finetuned = source["finetuned"]
    results = evaluate_model(
        model, datamodule, probes=args.probes, probe_layers=args.probe_layers, probe_train=args.probe_train,
        classification=finetuned if args.classification is None else args.classification,
        completions=args.completions, samples=args.samples, keep_rows=args.keep_rows, temperature=args.temperature,
        seed=args.seed, figures=run_dir / "figures" if args.figures else None, precision=args.precision,
    )
    results = {**source, "model": model_config.to_dict(), "data": data.to_dict(), **results}
    if getattr(args, "invocation", None):  # set by `igpt`: the record keeps the command that measured it
        results["command"] = shlex.join(args.invocation)
    out = Path(args.out) if args.out else run_dir / "evaluation.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")  # an interrupted write never replaces a good file
    partial.write_text(json.dumps(results, indent=2) + "\n")
    partial.replace(out)
    print(summary(results))
    print(f"metrics: {out}")
    return results


def summary(results: dict) -> str:
    """A few lines for the terminal: the headline number of each part of an evaluation."""
    lines = [f"evaluated on {results['test_images']} test images in {results['seconds']} s"]
    if "likelihood" in results:
        nll = results["likelihood"]
        lines.append(f"  likelihood: {nll['nats_per_pixel']:.4f} nats/pixel, {nll['bits_per_pixel']:.4f} bits/pixel")
    if "probes" in results:
        probes = results["probes"]
        lines.append(f"  linear probe: {probes['best_test_accuracy']:.4f} test accuracy at layer {probes['best_layer']}")
    if "classification" in results:
        clf = results["classification"]
        lines.append(f"  classification: accuracy {clf['accuracy']:.4f}, kappa {clf['kappa']:.4f}")
    if "completion" in results:
        done = results["completion"]
        lines.append(f"  completion: class agreement {done['class_agreement']:.3f} (originals {done['original_accuracy']:.3f}), "
                     f"pixel agreement {done['pixel_agreement']:.3f}")
    return "\n".join(lines)
