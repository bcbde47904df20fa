"""Model files: reading, checking and writing every kind of file a model lives in.

Two kinds, both plain data besides tensors, so that loading one never runs code:
  checkpoints   Lightning's .ckpt, read with torch.load(weights_only=True): the state dict and the
                hyper-parameters (configs as dicts, the palette as nested lists)
  model files   one .safetensors file: the GPT's weights (float32) and the palette (tensor
                "palette"); its metadata holds the model config (YAML), where the weights came
                from (JSON notes) and the dataset

    read_checkpoint(path)                  the checkpoint's dict, or CheckpointError saying why not
    check_checkpoint(path, model, palette) the same, made sure it belongs to that model and palette
    read_model_file(path)                  a ModelFile: config, weights, palette, notes, dataset
    write_model_file(out, ...)             the same, written whole or not at all
    check_weights(config, weights, where)  the config fits the weights, and they are finite
    weights_digest(model)                  which weights these are, whatever file they came from

Building a module from either kind is igptlib.lightning_module's (load_checkpoint) and igptlib.shipped's
(load_model, by a shipped model's name too).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from pathlib import Path

import numpy as np
import torch
import yaml
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save

from igptlib.config import ConfigError, ModelConfig


class CheckpointError(ValueError):
    """A model file cannot be used here: unreadable, or made for another model or palette."""


# -- palettes ---------------------------------------------------------------------------------------


def check_palette_fits(palette: np.ndarray, config: ModelConfig, error: type[ValueError] = ConfigError) -> None:
    """The palette must be [K, C] with K the model's vocabulary; raise `error` saying so if not."""
    if palette.ndim != 2 or palette.shape[0] != config.vocab_size:
        raise error(
            f"the palette has shape {list(palette.shape)}, but the model's vocabulary is {config.vocab_size} "
            f"colours: expected a palette of shape [{config.vocab_size}, C]"
        )


def check_same_palette(saved: np.ndarray, palette: np.ndarray, where) -> None:
    palette = np.asarray(palette, dtype=np.float32)
    if saved.shape != palette.shape:
        raise CheckpointError(
            f"{where}: trained on a palette of shape {list(saved.shape)} "
            f"({saved.shape[0]} colours), but this palette has shape {list(palette.shape)}"
        )
    if not np.allclose(saved, palette, atol=1e-3):
        raise CheckpointError(f"{where}: the palette differs from the one it was trained on "
                              f"(same shape {list(saved.shape)}, other colours): its tokens would mean other colours")


# -- checkpoints ------------------------------------------------------------------------------------


def read_checkpoint(path: str | os.PathLike) -> dict:
    """torch.load with weights_only=True, and a clear error if it is not one of our checkpoints."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such checkpoint") from None
    except Exception as error:  # unpickling refusals and corrupt files alike
        # torch's refusal runs to several lines of advice; its cause is one line of them
        found = re.search(r"Unsupported global: GLOBAL \S+", str(error))
        if found:
            raise CheckpointError(f"{path}: refused: it holds more than weights ({found[0]}) and loading it "
                                  "could run code; expected a checkpoint saved by igpt train") from None
        cause = re.search(r"WeightsUnpickler error:\s*(.+)", str(error))
        raise CheckpointError(f"{path}: not a loadable checkpoint ({type(error).__name__}: "
                              f"{cause[1] if cause else ' '.join(str(error).split())})") from None
    hparams = checkpoint.get("hyper_parameters") if isinstance(checkpoint, dict) else None
    if not isinstance(hparams, dict) or "model" not in hparams or "state_dict" not in checkpoint:
        raise CheckpointError(f"{path}: not an ImageGPT checkpoint (no model config or state_dict in it)")
    try:
        ModelConfig.from_dict(hparams["model"], where=f"{path}: model")
    except ConfigError as error:
        raise CheckpointError(str(error)) from None
    return checkpoint


# What a checkpoint's weights depend on (dropout or the masking rate may change between stages).
SHAPE_FIELDS = ("vocab_size", "n_px", "n_embd", "n_layer", "n_head", "num_classes", "objective", "norm", "activation")


def compare_checkpoint(hparams: dict, model: ModelConfig, palette: np.ndarray | None, where) -> None:
    """Raise CheckpointError unless a checkpoint's hyper-parameters hold this model (and palette)."""
    saved = ModelConfig.from_dict(hparams["model"])
    differences = [f"{name} {getattr(saved, name)!r} (here {getattr(model, name)!r})"
                   for name in SHAPE_FIELDS if getattr(saved, name) != getattr(model, name)]
    if differences:
        raise CheckpointError(f"{where}: made for another model: " + ", ".join(differences))
    if palette is not None and hparams.get("palette") is not None:
        check_same_palette(np.asarray(hparams["palette"], dtype=np.float32), palette, where)


def check_checkpoint(path: str | os.PathLike, model: ModelConfig, palette: np.ndarray | None = None) -> dict:
    """Read a checkpoint and make sure it belongs to `model` (and `palette`); return it.

    Raises CheckpointError naming what differs: vocabulary, image size, width, depth, ...
    """
    checkpoint = read_checkpoint(path)
    compare_checkpoint(checkpoint["hyper_parameters"], model, palette, path)
    return checkpoint


# -- weights ----------------------------------------------------------------------------------------


def check_weights(config: ModelConfig, weights: dict, where) -> None:
    """Refuse a model file whose config asks for more weights than it holds, or whose weights are not finite.

    The first check comes before the model is built: a config's sizes come from the file, and
    `n_layer: 100000` would otherwise allocate gigabytes only to fail on the shapes afterwards.
    """
    held = sum(tensor.numel() for tensor in weights.values())
    # At least the attention (4 C^2) and MLP (8 C^2) matrices of every layer and a position embedding each.
    needed = config.n_layer * 12 * config.n_embd**2 + config.seq_len * config.n_embd
    if needed > held:
        raise CheckpointError(
            f"{where}: its model config (n_layer {config.n_layer}, n_embd {config.n_embd}, n_px {config.n_px}) "
            f"needs at least {needed:,} weights, but the file holds {held:,}: expected a config that fits its weights")
    for name, tensor in weights.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise CheckpointError(f"{where}: weight {name} holds NaN or infinite values; expected finite weights")


def check_same_shapes(wanted: dict, weights: dict, where) -> None:
    """Raise CheckpointError unless `weights` has exactly the tensors of `wanted` (a state dict), shape for shape."""
    wrong = [f"{name}: file {list(tensor.shape)}, model {list(wanted[name].shape)}"
             for name, tensor in weights.items() if name in wanted and wanted[name].shape != tensor.shape]
    missing, unexpected = sorted(set(wanted) - set(weights)), sorted(set(weights) - set(wanted))
    if wrong or missing or unexpected:
        details = wrong[:3] + [f"missing {missing[:3]}"] * bool(missing) + [f"unexpected {unexpected[:3]}"] * bool(unexpected)
        raise CheckpointError(f"{where}: weights of another shape than the model's: " + "; ".join(details))


def weights_digest(model: torch.nn.Module) -> str:
    """The SHA-256 of a model's weights, names and values: the same for every file that holds them."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


# -- safetensors model files ------------------------------------------------------------------------


@dataclasses.dataclass
class ModelFile:
    """What a .safetensors model file holds: the GPT's config and weights, its palette, and provenance."""

    config: ModelConfig
    weights: dict[str, torch.Tensor]  # the GPT's state dict
    palette: np.ndarray  # [K, C] float32
    notes: dict  # where the weights came from: run, step, command, metrics
    dataset: str | None  # the dataset it was trained on, where known


def _metadata(path: Path) -> dict:
    try:
        with safe_open(str(path), framework="pt") as handle:
            return handle.metadata() or {}
    except (SafetensorError, OSError) as error:
        raise CheckpointError(f"{path}: not a readable safetensors file ({error})") from None


def read_model_file(path: str | os.PathLike) -> ModelFile:
    """A .safetensors model file, checked: its config is valid and fits its finite weights."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such model file")
    metadata = _metadata(path)
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as error:
        raise CheckpointError(f"{path}: not a readable safetensors file ({error})") from None
    if "model" not in metadata or "palette" not in tensors:
        raise CheckpointError(f"{path}: not a shipped igpt model (no model config or palette in it)")
    try:
        config = ModelConfig.from_dict(yaml.safe_load(metadata["model"]), where=f"{path}: model")
    except yaml.YAMLError as error:
        raise CheckpointError(f"{path}: its model config is not valid YAML ({' '.join(str(error).split())})") from None
    except ConfigError as error:
        raise CheckpointError(str(error)) from None
    palette = tensors.pop("palette").numpy()
    check_weights(config, tensors, path)
    check_palette_fits(palette, config, CheckpointError)
    return ModelFile(config, tensors, palette, read_notes(path), metadata.get("dataset"))


def read_notes(path: str | os.PathLike) -> dict:
    """The provenance notes stored in a model file's metadata."""
    return json.loads(_metadata(Path(path)).get("notes", "{}"))


def read_dataset(path: str | os.PathLike) -> str | None:
    """The dataset a model file says it was trained on, if it says."""
    return _metadata(Path(path)).get("dataset")


def write_model_file(out: str | os.PathLike, config: ModelConfig, weights: dict, palette: np.ndarray,
                     notes: dict | None = None, dataset: str | None = None) -> Path:
    """Write weights (as float32), config, palette and notes to one .safetensors file; return its path."""
    out = Path(out)
    tensors = {name: tensor.detach().float().contiguous() for name, tensor in weights.items()}
    tensors["palette"] = torch.from_numpy(np.asarray(palette, dtype=np.float32))
    metadata = {"model": yaml.safe_dump(config.to_dict()), "notes": json.dumps(notes or {})}
    if dataset is not None:  # the explorer shows test images of the model's own dataset
        metadata["dataset"] = dataset
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")  # a crash leaves no half-written model behind
    # Written with open() rather than save_file, which makes every file mode 0600 whatever the umask.
    partial.write_bytes(save(tensors, metadata=metadata))
    partial.replace(out)
    return out
