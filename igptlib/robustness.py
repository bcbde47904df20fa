"""Inverted and rotated digits: are they still completed and classified like the training digits?

The seed's functional requirement 6 asks that a half image that is inverted or rotated is still
completed as the training data would be. This module measures it on test images transformed by
a known inversion and rotation, with the project's handling off (the model sees the image as it
is) and on:

    inversion     a white background is detected and the image inverted back (load_image's rule)
    orientation   the model judges: of every quarter turn combined with a small correction
                  (ORIENTATIONS), the one under which it finds the image most likely is undone

Completions are judged in the upright frame: the known transform is undone on a completion
before the reference CNN reads it, so that class agreement says whether the model completed the
digit it was shown, not whether the CNN reads rotated digits. Pixel agreement compares the
completed half with the image the model was shown. The handling's own success rate (did it pick
the inversion and the turn that undo the transform?) is counted beside them.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch
from torchvision.transforms.v2 import functional as TF

from igptlib.completion import complete_images
from igptlib.config import ConfigError, read_json, write_json
from igptlib.images import has_white_background
from igptlib.judge import classify_images, pixel_agreement
from igptlib.metrics import nats_per_image
from igptlib.quantize import encode, reduce_context

TRANSFORMS = {  # name: (inverted, degrees anticlockwise)
    "upright": (False, 0), "inverted": (True, 0),
    "rotated 10°": (False, 10), "rotated 20°": (False, 20), "rotated 30°": (False, 30),
    "turned 90°": (False, 90), "turned 180°": (False, 180), "turned 270°": (False, 270),
}
# The table's rows: every transform with the handling off, then on.
PLAN = [(name, handling) for name in TRANSFORMS for handling in (False, True)]
# What a table was measured with: a record of other settings is never extended. A shipped model's
# name stays when a better one replaces it: the weights' digests tell the two apart.
SETTINGS = ("model", "classifier", "model_weights", "classifier_weights", "dataset", "images", "samples", "seed")
# Quarter turns anticlockwise (torch.rot90's k) as `igpt complete --turn` and the explorer name them.
QUARTER_TURNS = {0: "none", 1: "90° anticlockwise", 2: "180°", 3: "90° clockwise"}
# The rotations the orientation handling may undo: every quarter turn, each with small corrections.
ORIENTATIONS = [turn + small for turn in (0, 90, 180, 270) for small in (-30, -20, -10, 0, 10, 20, 30)]


def transform(images: torch.Tensor, inverted: bool, degrees: float) -> torch.Tensor:
    """uint8 images [N, C, H, W] rotated `degrees` anticlockwise (black fill), then inverted if asked."""
    turned = TF.rotate(images, degrees) if degrees % 360 else images
    return 255 - turned if inverted else turned


def detect_inversion(images: torch.Tensor) -> torch.Tensor:
    """A bool per image: its border is mostly bright (dark ink on white, the inverse of MNIST)."""
    return torch.tensor([has_white_background(image.float().mean(dim=0).numpy()) for image in images])


def rotation_nats(model, palette: np.ndarray, image: torch.Tensor, degrees) -> torch.Tensor:
    """Nats per pixel of image [C, H, W] rotated by each of `degrees` anticlockwise, as the model reads
    it (reduced to its n_px): lower is more likely, so the argmin is the model's choice."""
    candidates = torch.cat([transform(image[None], False, angle) for angle in degrees])
    return nats_per_image(model, encode(reduce_context(candidates, model.config.n_px), palette))


def most_likely_rotation(model, palette: np.ndarray, images: torch.Tensor) -> torch.Tensor:
    """Per image, the rotation in ORIENTATIONS whose undoing the model finds most likely."""
    undo = [-angle for angle in ORIENTATIONS]
    return torch.tensor([ORIENTATIONS[int(rotation_nats(model, palette, image, undo).argmin())] for image in images])


def turn_upright(model, palette: np.ndarray, image: torch.Tensor, turn: int | None) -> tuple[torch.Tensor, list[str]]:
    """(image [C, H, W] turned by `turn` quarter turns anticlockwise, notes on what was done); turn
    None lets the model choose the quarter turn under which it finds the image most likely, which
    for a model of upright digits is the one that stands the digit up (`igpt complete --turn auto`
    and the explorer's Turn control)."""
    notes = []
    if turn is None:
        nats = rotation_nats(model, palette, image, [90 * k for k in QUARTER_TURNS])
        turn = int(nats.argmin())
        likelihoods = ", ".join(f"{QUARTER_TURNS[k]} {value:.3f}" for k, value in enumerate(nats.tolist()))
        done = f"turned {QUARTER_TURNS[turn]}" if turn else "left as it is"
        notes.append(f"{done}: the model finds it most likely that way (nats per pixel: {likelihoods})")
    elif turn not in QUARTER_TURNS:
        raise ValueError(f"turn must be a number of quarter turns in 0..3 or None (the model's choice), got {turn!r}")
    elif turn:
        notes.append(f"turned {QUARTER_TURNS[turn]}, as asked")
    return torch.rot90(image, turn, dims=(-2, -1)).contiguous(), notes


def handle(model, palette: np.ndarray, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(images as the handling leaves them, the inversion it detected, the rotation it undid) per image."""
    inverted = detect_inversion(images)
    upright_colours = torch.where(inverted[:, None, None, None], 255 - images, images)
    rotation = most_likely_rotation(model, palette, upright_colours)
    handled = torch.stack([transform(image[None], False, -float(angle))[0] for image, angle in zip(upright_colours, rotation)])
    return handled, inverted, rotation


def measure(generator, classifier, judge, images: torch.Tensor, labels: torch.Tensor, name: str, handling: bool,
            samples: int = 2, seed: int = 0) -> dict:
    """One row of the table: `images` [N, C, H, W] transformed by TRANSFORMS[name], handled or not,
    completed from their top half by `generator` and classified by `classifier` (both as
    igptlib.load_model returns them, with their palettes); `judge` reads the completions."""
    if name not in TRANSFORMS:
        raise ValueError(f"unknown transform {name!r}; the known transforms are {list(TRANSFORMS)}")
    model, palette = generator.model, generator.palette
    inverted, degrees = TRANSFORMS[name]
    shown = transform(images, inverted, degrees)
    row: dict = {"transform": name, "handling": handling, "images": len(images), "samples": samples}
    undo_inversion, undo_degrees = torch.full((len(images),), inverted), torch.full((len(images),), float(degrees))
    if handling:
        shown, undo_inversion, undo_degrees = handle(model, palette, shown)
        row["inversion_detected_right"] = float((undo_inversion == inverted).float().mean())
        turned_wrongly = (undo_degrees - degrees) % 360 != 0
        row["rotation_chosen_right"] = float((~turned_wrongly).float().mean())
        # Which digits it turns wrongly says whether a wrong turn matters: a 0, 1 or 8 turned half
        # round is still itself, a 6 is a 9.
        row["turned_wrongly_by_digit"] = torch.bincount(labels[turned_wrongly], minlength=10).tolist()
        # What is left of the transform after the handling: undone below, before the judge reads a completion.
        undo_inversion = undo_inversion != inverted
        undo_degrees = degrees - undo_degrees
    completed = complete_images(model, palette, shown, samples=samples, seed=seed)  # from the top half
    upright = torch.stack([  # undone in the reverse order: the colours first, then the rotation
        transform((255 - image if flip else image)[None], False, -float(angle))[0]
        for image, flip, angle in zip(completed.images.flatten(0, 1), undo_inversion.repeat_interleave(samples),
                                      undo_degrees.repeat_interleave(samples))
    ])
    predicted = classify_images(judge, upright).view(len(images), samples)
    row["class_agreement"] = float((predicted == labels[:, None]).float().mean())
    row["pixel_agreement"] = pixel_agreement(completed.tokens, completed.samples, completed.kept_tokens)
    with torch.inference_mode():
        classifier.model.eval()
        device = next(classifier.model.parameters()).device
        logits = torch.cat([classifier.model.classify(chunk.to(device)).cpu()
                            for chunk in encode(shown, classifier.palette).split(256)])
    row["classification_accuracy"] = float((logits.argmax(dim=-1) == labels).float().mean())
    return row


def measure_into(out: Path, record: dict, generator, classifier, judge, images: torch.Tensor, labels: torch.Tensor,
                 budget_seconds: float | None = None) -> dict:
    """Measure every row of the table into the JSON record `out`, resumably: the rows of a record
    already there with the same settings (`record`'s model, classifier, dataset, images, samples
    and seed) are kept, each new row is written as soon as it is measured, and once
    `budget_seconds` have passed it stops after the row it is measuring (so every call measures
    one at least). Returns the record; its "complete" says whether every row is in."""
    from tqdm.auto import tqdm

    settings = {key: record[key] for key in SETTINGS}
    if out.exists():
        earlier = read_json(out, expected=dict)
        rows, seconds = earlier.get("rows"), earlier.get("seconds")
        if not (isinstance(rows, list) and all(isinstance(row, dict) and (row.get("transform"), row.get("handling")) in PLAN
                                               for row in rows)
                and isinstance(seconds, (int, float)) and math.isfinite(seconds)):
            raise ConfigError(f"{out}: a damaged table (its rows or seconds are not what igpt robustness writes); "
                              "move it away to measure again")
        if {key: earlier.get(key) for key in SETTINGS} != settings:
            raise ValueError(f"{out} holds a table of other settings ({ {key: earlier.get(key) for key in SETTINGS} }); "
                             f"move it away or give another --out to measure {settings}")
        record = {**record, "rows": earlier["rows"], "seconds": earlier["seconds"]}
    else:
        record = {**record, "rows": [], "seconds": 0.0}
    done = {(row["transform"], row["handling"]) for row in record["rows"]}
    started = time.perf_counter()
    for name, handling in tqdm([key for key in PLAN if key not in done], desc="robustness"):
        row_started = time.perf_counter()
        record["rows"].append(measure(generator, classifier, judge, images, labels, name, handling,
                                      settings["samples"], settings["seed"]))
        record["seconds"] = round(record["seconds"] + time.perf_counter() - row_started, 1)
        record["rows"].sort(key=lambda row: PLAN.index((row["transform"], row["handling"])))
        record["complete"] = len(record["rows"]) == len(PLAN)
        write_json(out, record)  # the record a stopped run resumes from
        if budget_seconds is not None and time.perf_counter() - started >= budget_seconds:
            break
    record["complete"] = len(record["rows"]) == len(PLAN)
    return record


def measure_models(out: str | Path, model, classifier, root: str | Path = "data", images: int = 200, samples: int = 2,
                   seed: int = 0, budget_seconds: float | None = None, command: str | None = None) -> dict:
    """The table for a model that completes and a fine-tuned model that classifies (each a shipped
    model's name, a .safetensors or a .ckpt), on the first `images` test images, measured into the
    JSON `out` as measure_into does (resumably, within the budget)."""
    from igptlib.datasets import load_split
    from igptlib.judge import digit_classifier
    from igptlib.model_files import weights_digest
    from igptlib.shipped import has_trained_classifier, load_model, model_dataset, model_name

    generator, judged = load_model(model), load_model(classifier)
    if not has_trained_classifier(classifier):  # its accuracy would be a number that measures nothing
        raise ValueError(f"classifier {classifier}: its classification head was never trained (it is not a "
                         "fine-tuned model); expected a fine-tuned classifier, such as mnist-classifier")
    dataset = model_dataset(model) or "mnist"
    test_images, labels = load_split(dataset, root, train=False)
    judge, judge_info = digit_classifier(root, dataset, progress=True)
    record = {"model": model_name(model), "classifier": model_name(classifier),
              "model_weights": weights_digest(generator.model), "classifier_weights": weights_digest(judged.model),
              "dataset": dataset, "images": min(images, len(test_images)), "samples": samples, "seed": seed,
              "judge": judge_info, "command": command}
    return measure_into(Path(out), record, generator, judged, judge, test_images[:images], labels[:images], budget_seconds)
