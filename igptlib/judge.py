"""The judge of completions: a small CNN trained apart from the GPT, and the completion quality it measures.

    digit_classifier     the judge for a dataset, trained once (one epoch) and cached under data/classifiers
    completion_quality   how many completions the judge labels as the original's class, and how many
                         completed pixels equal the original's
"""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from igptlib.datasets import load_split
from igptlib.quantize import decode


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
