"""The model card of a transformers ImageGPT folder that igptlib exports (its README.md): what a
model hub reads (license, pipeline tag, dataset, and the results measured for the model, as
model-index) and how to use the model, with a generate() example that runs as written.

    model_card(name, module, dataset, model_id, ...)   the card
    recorded_evaluation(record, config)                a record's evaluation.json, if it measured this model
    source_name(imported_from)                         where an imported model came from, without a local path
"""
from __future__ import annotations

import os
from pathlib import Path

import yaml

from igptlib.config import ModelConfig, read_json
from igptlib.lightning_module import ImageGPT

# Hub ids of the datasets the card names.
HUB_DATASETS = {"mnist": "ylecun/mnist", "fashion-mnist": "zalando-datasets/fashion_mnist", "cifar10": "uoft-cs/cifar10"}
PIPELINE_TAG = "unconditional-image-generation"  # what generate() does with the exported model


def recorded_evaluation(record: str | os.PathLike, config: ModelConfig) -> dict | None:
    """record/evaluation.json, where it exists and evaluated a model of this very config (a model
    re-trained in another shape has no results until it is evaluated again); else None."""
    path = Path(record) / "evaluation.json"
    if not path.is_file():
        return None
    evaluation = read_json(path)
    return evaluation if evaluation.get("model") == config.to_dict() else None


def source_name(imported_from: str) -> str:
    """An imported model's origin, without the local path: a hub id where the folder lies in a hub
    cache (…/models--openai--imagegpt-small/snapshots/<revision>), else the folder's name."""
    cached = [part for part in Path(imported_from).parts if part.startswith("models--")]
    return cached[-1].removeprefix("models--").replace("--", "/") if cached else Path(imported_from).name


def model_index(name: str, dataset: str | None, evaluation: dict) -> list[dict]:
    """The hub's model-index: the test likelihood and the best linear probe the record measured."""
    data = {"type": HUB_DATASETS.get(dataset, dataset or "unknown"), "name": dataset or "unknown", "split": "test"}
    results = []
    likelihood = evaluation.get("likelihood")
    if likelihood:
        results.append({"task": {"type": PIPELINE_TAG, "name": "Image generation"}, "dataset": data, "metrics": [
            {"type": "nll", "name": "test nats per pixel", "value": round(likelihood["nats_per_pixel"], 4)},
            {"type": "bpd", "name": "test bits per pixel", "value": round(likelihood["bits_per_pixel"], 4)}]})
    probes = evaluation.get("probes") or {}
    if "best_test_accuracy" in probes:
        results.append({"task": {"type": "image-classification", "name": "Linear probe"}, "dataset": data, "metrics": [
            {"type": "accuracy", "name": f"linear probe accuracy (layer {probes['best_layer']})",
             "value": round(probes["best_test_accuracy"], 4)}]})
    return [{"name": name, "results": results}] if results else []


def results_text(evaluation: dict | None) -> str:
    if evaluation is None:
        return "No evaluation of this model was recorded with it."
    lines = [f"Measured by `igpt evaluate` on {evaluation.get('test_images', 'the')} test images:", ""]
    if evaluation.get("likelihood"):
        lines.append(f"- likelihood: {evaluation['likelihood']['nats_per_pixel']:.4f} nats per pixel "
                     f"({evaluation['likelihood']['bits_per_pixel']:.4f} bits)")
    probes = evaluation.get("probes") or {}
    if "best_test_accuracy" in probes:
        lines.append(f"- linear probe (a logistic regression on layer {probes['best_layer']}'s average-pooled "
                     f"features, not part of this folder): accuracy {probes['best_test_accuracy']:.4f}")
    classification = evaluation.get("classification") or {}
    if "accuracy" in classification:
        lines.append(f"- igptlib's fine-tuned classification head (not exported, see below): accuracy "
                     f"{classification['accuracy']:.4f}")
    return "\n".join(lines)


def usage(config: ModelConfig, model_id: str) -> str:
    """A script that loads the model, samples four images and completes one from its top half."""
    n_px, half = config.n_px, config.n_px // 2 * config.n_px
    return f'''```python
import numpy as np
import torch
from transformers import ImageGPTForCausalImageModeling, ImageGPTImageProcessor

model_id = "{model_id}"  # this folder, or the model's id on a hub
model = ImageGPTForCausalImageModeling.from_pretrained(model_id)
processor = ImageGPTImageProcessor.from_pretrained(model_id)
clusters = np.asarray(processor.clusters)  # the palette, in [-1, 1]

def to_pixels(tokens):  # colour tokens [N, {n_px * n_px}] -> RGB images [N, {n_px}, {n_px}, 3]
    return np.rint((clusters[tokens.numpy()] + 1) * 127.5).astype(np.uint8).reshape(-1, {n_px}, {n_px}, 3)

torch.manual_seed(0)
# Four images, sampled from the start-of-sequence token (generation_config.json holds it).
images = to_pixels(model.generate(num_return_sequences=4)[:, 1:])

# The first one's top half, completed: the start-of-sequence token, then the kept tokens.
tokens = processor(images=list(images[:1]), return_tensors="pt")["input_ids"]
start = torch.full((1, 1), model.generation_config.bos_token_id)
completed = to_pixels(model.generate(torch.cat([start, tokens[:, :{half}]], dim=1))[:, 1:])
```'''


def model_card(name: str, module: ImageGPT, dataset: str | None, model_id: str, imported_from: str | None = None,
               evaluation: dict | None = None) -> str:
    """The card of an exported model named `name`, whose folder or hub id is `model_id`.

    A model igptlib trained is MIT-licensed like igptlib; one it imported keeps its weights' own
    license, which igptlib cannot know (license: other). `evaluation` (recorded_evaluation) gives
    the results, in the front matter as model-index and in the text.
    """
    config = module.model_config
    front = {"license": "other" if imported_from else "mit", "library_name": "transformers",
             "pipeline_tag": PIPELINE_TAG, "tags": ["image-gpt", "igpt"]}
    if dataset in HUB_DATASETS:
        front["datasets"] = [HUB_DATASETS[dataset]]
    front["metrics"] = ["perplexity", "accuracy"]
    index = model_index(name, dataset, evaluation) if evaluation else []
    if index:
        front["model-index"] = index
    grey = module.palette.shape[1] == 1
    origin = (f"converted by igptlib from the transformers ImageGPT model {source_name(imported_from)}; the "
              "license of those weights applies." if imported_from else
              f"trained with igptlib{f' on {dataset}' if dataset else ''}.")
    return f"""---
{yaml.safe_dump(front, sort_keys=False)}---

# {name}

An autoregressive ImageGPT ("Generative Pretraining from Pixels", Chen et al. 2020) over
{config.n_px}x{config.n_px} images in a {config.vocab_size}-colour {"grayscale" if grey else "RGB"} palette \
({config.n_layer} layers, width {config.n_embd}, {config.n_head} heads), {origin}

## Results

{results_text(evaluation)}

## Use

{usage(config, model_id)}

Token {config.vocab_size} (the last row of the token embedding) is the start of sequence; the language
head predicts the {config.vocab_size} colours, so `generate()` never draws it. The processor's `clusters`
are the palette in [-1, 1] (`(clusters + 1) * 127.5` gives 0..255){"; a grayscale palette is stored with R = G = B" if grey else ""}.
The classification head is not exported: transformers' ImageGPTForImageClassification pools other
positions than igptlib's fine-tuned classifier does.
"""
