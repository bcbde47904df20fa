"""Metrics of a model on a split: likelihood, linear probes per layer, classification.

    split_pass        one forward pass over a split: likelihood, class predictions and layer features,
                      from whole images or (BERT) averaged over several masked readings of each;
                      save_pass/load_pass keep a finished one, so that a stopped evaluation goes on
    likelihood        mean next-pixel cross-entropy, nats and bits per pixel (AR); nats_per_image per image
    linear probes     per layer: average-pooled normed features, standardised, logistic regression;
                      fitted on the training split, its L2 strength and the best layer chosen on
                      validation, scored on test
    classification    accuracy, confusion matrix, Cohen's kappa, precision/recall/F1 per class

igptlib.evaluate runs them all on a checkpoint; igptlib.judge measures completions.
"""
from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import cohen_kappa_score, confusion_matrix, precision_recall_fscore_support
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from tqdm.auto import tqdm

from igptlib.config import atomic_file, clip


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
    image_nats: torch.Tensor | None = None  # each image's mean next-pixel cross-entropy [N] (AR models)
    predicted: np.ndarray | None = None  # the classification head's labels [N]
    features: dict[int, np.ndarray] = dataclasses.field(default_factory=dict)  # {layer: [N, n_embd]}
    seconds: float = 0.0  # the wall time of the pass that measured these, kept with them


class OutOfTime(Exception):
    """A pass over a split stopped between two batches because its deadline had passed."""


def mask_generators(masks: int, mask_seed: int) -> list[torch.Generator]:
    """One generator per masked reading: reading j draws its masks, batch after batch, from
    mask_seed + j, so that a pass's masks are reproducible and reading j of a pass with several
    masks is the one reading of a pass with masks=1 and mask_seed + j."""
    return [torch.Generator().manual_seed(mask_seed + j) for j in range(masks)]


def masked_reading(model, tokens: torch.Tensor, layers, generators) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """A BERT model's reading of tokens [B, T] masked as in pre-training, once per generator, then
    averaged: (class probabilities [B, num_classes], {layer: features [B, n_embd]}). Averaging the
    features before a probe and the probabilities before the argmax is the paper's ensemble over masks."""
    readings = [model.forward_all(model.mask(tokens, generator)[0], layers)[1:] for generator in generators]
    probabilities = torch.stack([class_logits.float().softmax(dim=-1) for class_logits, _ in readings]).mean(dim=0)
    return probabilities, {layer: torch.stack([pooled[layer].float() for _, pooled in readings]).mean(dim=0)
                           for layer in layers}


@torch.inference_mode()
def split_pass(model, loader, *, likelihood: bool = False, classes: bool = False, layers=(), masks: int = 0,
               mask_seed: int = 0, progress: bool = False, desc: str = "pass",
               deadline: float | None = None) -> SplitPass:
    """Likelihood, class predictions and layer features (GPT.forward_all) of every image the loader
    yields, from one forward pass per batch: an evaluation that wants all three of the test split
    pays for one pass.

    likelihood: mean next-pixel cross-entropy over every pixel, and over each image's pixels; the
    model must be autoregressive. masks: 0 reads each image whole; k > 0 (a BERT model, whose
    pre-training never showed it a whole image) reads it k times, masked as in pre-training, and
    averages the readings (masked_reading; the masks from mask_generators(k, mask_seed)), which
    costs k passes. deadline: a time.perf_counter() value; a batch due to start after it raises
    OutOfTime instead.
    """
    if likelihood and model.config.objective != "ar":
        raise ValueError("likelihood needs an autoregressive model (objective 'ar'); a BERT model has no next-pixel density")
    if isinstance(masks, bool) or not isinstance(masks, int) or masks < 0:
        raise ValueError(f"masks must be a whole number of masked readings, 0 or more, got {masks!r}")
    if masks and model.config.objective != "bert":
        raise ValueError(f"masked readings are for a model with objective 'bert'; this one is {model.config.objective!r}")
    generators = mask_generators(masks, mask_seed)
    layers = list(layers)
    model.eval()
    device = _device(model)
    labels, predicted, nats, pixels = [], [], [], 0
    started = time.perf_counter()
    features: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    for tokens, batch_labels in tqdm(loader, desc=desc, unit="batch", leave=False, disable=not progress):
        if deadline is not None and time.perf_counter() > deadline:
            raise OutOfTime(f"{desc}: stopped after {len(labels)} of {len(loader)} batches as the budget ran out")
        tokens = tokens.to(device)
        # Class scores: the logits of a whole reading, the averaged probabilities of masked ones.
        if masks:
            scores, pooled = masked_reading(model, tokens, layers, generators)
        else:
            logits, scores, pooled = model.forward_all(tokens, layers)
        if likelihood:  # reduced in float32 even if the model runs in lower precision
            nats.append(F.cross_entropy(logits.float().transpose(1, 2), tokens, reduction="none").mean(dim=1).cpu())
            pixels += tokens.numel()
        if classes:
            predicted.append(scores.argmax(dim=-1).cpu())
        for layer in layers:
            features[layer].append(pooled[layer].float().cpu())
        labels.append(batch_labels)
    if not labels:
        raise ValueError("the loader yielded no images")
    result = SplitPass(labels=torch.cat(labels).numpy(),
                       features={layer: torch.cat(chunks).numpy() for layer, chunks in features.items()},
                       seconds=time.perf_counter() - started)
    if likelihood:
        result.image_nats = torch.cat(nats)
        mean = result.image_nats.double().mean().item()  # every image has as many pixels
        result.likelihood = {"nats_per_pixel": mean, "bits_per_pixel": nats_to_bits(mean), "pixels": pixels}
    if classes:
        result.predicted = torch.cat(predicted).numpy()
    return result


def save_pass(found: SplitPass, path: Path, key: dict) -> None:
    """Keep a finished pass as an .npz (arrays and JSON, no pickles) with `key`, what it was a pass of."""
    meta = {"key": key, "likelihood": found.likelihood, "seconds": found.seconds}
    arrays = {"labels": found.labels, "meta": np.array(json.dumps(meta))}
    if found.predicted is not None:
        arrays["predicted"] = found.predicted
    if found.image_nats is not None:
        arrays["image_nats"] = found.image_nats.numpy()
    arrays.update({f"layer_{layer}": values for layer, values in found.features.items()})
    with atomic_file(path) as file:  # whole or not at all, and never through a link
        np.savez(file, **arrays)


def load_pass(path: Path, key: dict) -> SplitPass | None:
    """The pass save_pass kept at `path`; None where there is none, it was a pass of something else,
    or it cannot be read (cut short, damaged: said on stderr), so that the pass is measured again."""
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as saved:
            meta = json.loads(str(saved["meta"]))
            if meta["key"] != key:
                return None
            return SplitPass(labels=saved["labels"], likelihood=meta["likelihood"],
                             image_nats=torch.from_numpy(saved["image_nats"]) if "image_nats" in saved.files else None,
                             predicted=saved["predicted"] if "predicted" in saved.files else None,
                             features={int(name.removeprefix("layer_")): saved[name]
                                       for name in saved.files if name.startswith("layer_")},
                             seconds=meta.get("seconds", 0.0))  # passes kept before their time was: unknown, 0
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile, zlib.error) as error:
        print(f"{path}: a kept pass that cannot be read ({type(error).__name__}: {clip(error, 120)}); "
              "measuring it again", file=sys.stderr)
        return None


def nats_per_image(model, tokens: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Each image's mean next-pixel cross-entropy [N] for tokens [N, T] (AR): lower is more likely.
    The model's judgement of which of several versions of an image (turned, say) is the usual one."""
    loader = DataLoader(TensorDataset(tokens, torch.zeros(len(tokens), dtype=torch.long)), batch_size=batch_size)
    return split_pass(model, loader, likelihood=True).image_nats


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


# The inverse L2 strengths (scikit-learn's C) a probe tries per layer. scikit-learn's default of 1
# over-regularises: on the shipped mnist's features of 54,000 images C = 100 probed 0.9740 against
# 0.9617 at C = 1 (layer 3), so each layer's strength is chosen on validation.
PROBE_STRENGTHS = (0.1, 1.0, 10.0, 100.0)


def fit_linear_probe(features, labels, max_iter: int = 1000, seed: int = 0, inverse_l2: float = 1.0):
    """A logistic regression on standardised features (a scikit-learn pipeline; .score gives accuracy).

    Standardising with the training set's mean and spread first lets the probe converge in a few
    hundred L-BFGS steps, whatever the scale of the layer.
    """
    _check_examples("train", features, labels)
    if len(np.unique(labels)) < 2:
        raise ValueError("the training labels hold a single class: a probe needs at least two")
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=inverse_l2, max_iter=max_iter, random_state=seed))
    with warnings.catch_warnings():
        # A weakly regularised fit may stop before L-BFGS converges; it is still a probe, and
        # validation judges it against the others.
        warnings.simplefilter("ignore", ConvergenceWarning)
        return probe.fit(features, labels)


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
                         progress: bool = False, strengths=PROBE_STRENGTHS) -> dict:
    """A linear probe per layer and inverse L2 strength, fitted on train; each layer keeps the
    strength that does best on validation, the best layer is picked on validation too, and only
    then is each kept probe scored on test. Choosing on validation keeps the test accuracy an honest
    estimate (picking the best of several test scores would flatter it)."""
    if not train.features:
        raise ValueError("no layer's features to probe")
    if not strengths:
        raise ValueError("strengths must name at least one inverse L2 strength")
    val_accuracy, test_accuracy, inverse_l2 = {}, {}, {}
    fits = [(layer, c) for layer in train.features for c in strengths]
    for layer, c in tqdm(fits, desc="probes", unit="fit", leave=False, disable=not progress):
        probe = fit_linear_probe(train.features[layer], train.labels, max_iter, seed, inverse_l2=c)
        accuracy = probe_accuracy(probe, val.features[layer], val.labels, "validation")
        if accuracy > val_accuracy.get(layer, -1.0):
            val_accuracy[layer], inverse_l2[layer] = accuracy, c
            test_accuracy[layer] = probe_accuracy(probe, test.features[layer], test.labels)
    best = max(val_accuracy, key=val_accuracy.get)
    return {
        "val_accuracy": val_accuracy,
        "test_accuracy": test_accuracy,
        "inverse_l2": inverse_l2,
        "inverse_l2_tried": list(strengths),
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
