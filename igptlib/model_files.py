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

from igptlib.config import (ConfigError, ModelConfig, OptimConfig, check_regular_file, clip, excerpt, parse_yaml,
                            write_atomically)


class CheckpointError(ValueError):
    """A model file cannot be used here: unreadable, or made for another model or palette."""


MAX_COLOURS = 4096  # the largest palette DataConfig.clusters allows


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


def load_weights_only(path: str | os.PathLike, expected: str, mmap: bool = False, what: str = "checkpoint"):
    """torch.load(weights_only=True), its refusals as one CheckpointError line that says what was
    expected. torch's own text runs to several lines, advising weights_only=False, which would run
    whatever code the file names: its cause is one line of them."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except FileNotFoundError:
        raise
    except Exception as error:  # unpickling refusals and damaged files alike
        found = re.search(r"Unsupported global: GLOBAL \S+", str(error))
        if found:
            raise CheckpointError(f"{path}: refused: it holds more than weights ({found[0]}) and loading it "
                                  f"could run code; expected {expected}") from None
        cause = re.search(r"WeightsUnpickler error:\s*(.+)", str(error))
        detail = cause[1] if cause else str(error).splitlines()[0] if str(error) else ""
        raise CheckpointError(f"{path}: not a loadable {what} ({type(error).__name__}: "
                              f"{clip(detail, 120)}); expected {expected}") from None


def read_checkpoint(path: str | os.PathLike) -> dict:
    """torch.load with weights_only=True, and a clear error if it is not one of our checkpoints."""
    if Path(path).exists():  # opening a FIFO would wait for a writer
        check_regular_file(path, "a checkpoint (.ckpt) saved by igpt train")
    try:
        checkpoint = load_weights_only(path, "a checkpoint saved by igpt train")
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such checkpoint") from None
    hparams = checkpoint.get("hyper_parameters") if isinstance(checkpoint, dict) else None
    if not isinstance(hparams, dict) or "model" not in hparams or "state_dict" not in checkpoint:
        raise CheckpointError(f"{path}: not an ImageGPT checkpoint (no model config or state_dict in it)")
    state = checkpoint["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(name, str) for name in state):
        raise CheckpointError(f"{path}: its state_dict is {excerpt(state)}; expected a mapping of weight names to tensors")
    try:
        ModelConfig.from_dict(hparams["model"], where=f"{path}: model")
        if hparams.get("optim") is not None:
            OptimConfig.from_dict(hparams["optim"], where=f"{path}: optim")
    except ConfigError as error:
        raise CheckpointError(_naming(path, error)) from None
    _check_palette_data(hparams.get("palette"), path)
    seed = hparams.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise CheckpointError(f"{path}: its seed is {excerpt(seed)}; expected an integer in 0..{2**32 - 1}")
    return checkpoint


def _naming(path, error: Exception) -> str:
    """An error's message, starting with the file it is about."""
    message = str(error)
    return message if message.startswith(str(path)) else f"{path}: {message}"


def _check_palette_data(palette, where) -> None:
    """A checkpoint's palette must be rows of 1 or 3 numbers (or None), checked before numpy reads it:
    nested lists that share their items stand for more numbers than any memory holds."""
    if palette is None:
        return
    if isinstance(palette, torch.Tensor):
        good = palette.ndim == 2 and palette.shape[1] in (1, 3) and palette.is_floating_point()
    else:
        good = (isinstance(palette, list) and 0 < len(palette) <= MAX_COLOURS
                and all(isinstance(row, list) and len(row) in (1, 3) for row in palette)
                and all(isinstance(value, (int, float)) and not isinstance(value, bool) for row in palette for value in row))
    if not good:
        raise CheckpointError(f"{where}: its palette is {excerpt(palette)}; expected rows of 1 (grey) or 3 (RGB) numbers, "
                              f"at most {MAX_COLOURS:,} of them")


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


# What the GPT's parameters are: a file's weights of another type are copied into them, so integers,
# booleans or complex numbers would load as garbage without a word.
FLOAT_TYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def check_weights(config: ModelConfig, weights: dict, where) -> None:
    """Refuse a model file whose weights are not floating-point tensors, whose config asks for more
    weights than it holds, or whose weights are not finite.

    The count comes before the model is built: a config's sizes come from the file, and a config
    far beyond its weights would otherwise allocate gigabytes only to fail on the shapes afterwards.
    """
    for name, tensor in weights.items():
        if not isinstance(tensor, torch.Tensor):
            raise CheckpointError(f"{where}: weight {excerpt(name)} is a {type(tensor).__name__}; expected a tensor")
        if tensor.dtype not in FLOAT_TYPES:
            raise CheckpointError(f"{where}: weight {excerpt(name)} holds {str(tensor.dtype).removeprefix('torch.')} "
                                  "values; expected floating-point weights (float32, float16, bfloat16 or float64)")
    held = sum(tensor.numel() for tensor in weights.values())
    if config.least_weights > held:
        raise CheckpointError(
            f"{where}: its model config (n_layer {config.n_layer}, n_embd {config.n_embd}, n_px {config.n_px}) "
            f"needs at least {config.least_weights:,} weights, but the file holds {held:,}: expected a config that fits its weights")
    for name, tensor in weights.items():
        if not torch.isfinite(tensor).all():
            raise CheckpointError(f"{where}: weight {excerpt(name)} holds NaN or infinite values; expected finite weights")


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
    check_regular_file(path, "a .safetensors model file")
    metadata = _metadata(path)
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as error:
        raise CheckpointError(f"{path}: not a readable safetensors file ({error})") from None
    if "model" not in metadata or "palette" not in tensors:
        raise CheckpointError(f"{path}: not a shipped igpt model (no model config or palette in it)")
    try:
        config = ModelConfig.from_dict(parse_yaml(metadata["model"], f"{path}: its model config"), where=f"{path}: model")
    except ConfigError as error:
        raise CheckpointError(_naming(path, error)) from None
    palette = tensors.pop("palette")
    if palette.dtype not in FLOAT_TYPES or not torch.isfinite(palette).all():
        raise CheckpointError(f"{path}: its palette holds {str(palette.dtype).removeprefix('torch.')} values, or values that "
                              "are not finite; expected finite floating-point colours")
    palette = palette.float().numpy()
    check_weights(config, tensors, path)
    check_palette_fits(palette, config, CheckpointError)
    return ModelFile(config, tensors, palette, read_notes(path), metadata.get("dataset"))


def read_notes(path: str | os.PathLike) -> dict:
    """The provenance notes stored in a model file's metadata."""
    try:
        notes = json.loads(_metadata(Path(path)).get("notes", "{}"))
    except (json.JSONDecodeError, RecursionError):
        notes = None
    if not isinstance(notes, dict):
        raise CheckpointError(f"{path}: its notes are not a JSON object; expected the provenance igpt export writes")
    return notes


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
    # Written whole or not at all, never through a link; not with save_file, which makes every file mode
    # 0600 whatever the umask.
    return write_atomically(out, save(tensors, metadata=metadata))
