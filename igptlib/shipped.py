"""Shipped models: trained weights that come with the repository, one safetensors file each.

models/<name>.safetensors is a model file (igptlib.model_files): the GPT's weights, the palette,
the model config and where the weights came from (the run, the step, the command). load_model opens a shipped name, a .safetensors file or a Lightning .ckpt alike, so the
explorer, the notebooks and `igpt complete` accept any of them. An installed package carries the
models as package data (igptlib/models/); IGPT_MODELS_DIR names another folder (find_models_dir).

    shipped_models()                       names of the models in models/
    export_model(checkpoint, out, notes)   a .ckpt -> a .safetensors file with config and palette
    save_model(module, out, notes)         the same for a module in memory (igptlib.hf's imports)
    load_model(source)                     an ImageGPT module in eval mode, on the CPU
    model_dataset(source)                  the dataset it was trained on, where known
    has_trained_classifier(source)         whether its classification head was fine-tuned
    training_config(source)                how it was trained, and its weights' file, to train on from it
"""
from __future__ import annotations

import os
from pathlib import Path

from igptlib.config import PRESETS, RunConfig, check_name, run_config
from igptlib.lightning_module import ImageGPT, load_checkpoint
from igptlib.model_files import (CheckpointError, check_same_shapes, read_checkpoint, read_dataset, read_model_file,
                                 read_notes, write_model_file)
from igptlib.records import made_by_finetuning
from igptlib.train import find_run_folder

MODELS_VARIABLE = "IGPT_MODELS_DIR"


def find_models_dir() -> Path:
    """Where the shipped models are: $IGPT_MODELS_DIR if set; else igptlib/models/, the package data
    of an installed package; else models/ beside igptlib/, in a clone (an editable install too)."""
    chosen = os.environ.get(MODELS_VARIABLE, "").strip()
    if chosen:
        return Path(chosen).expanduser()
    package_data = Path(__file__).resolve().parent / "models"
    return package_data if package_data.is_dir() else package_data.parent.parent / "models"


MODELS_DIR = find_models_dir()  # read once, when igptlib is imported


def shipped_models(models_dir: str | os.PathLike = MODELS_DIR) -> list[str]:
    """The names of the shipped models (files models/<name>.safetensors), sorted."""
    return sorted(path.stem for path in Path(models_dir).glob("*.safetensors"))


def shipped_path(name: str, models_dir: str | os.PathLike = MODELS_DIR) -> Path:
    """models/<name>.safetensors, for a name that is a plain file name (it cannot point elsewhere)."""
    check_name(name, what="model name", becomes=f"{Path(models_dir).name}/<name>.safetensors")
    return Path(models_dir) / f"{name}.safetensors"


def export_model(checkpoint: str | os.PathLike, out: str | os.PathLike, notes: dict | None = None,
                 force: bool = False) -> Path:
    """Write a checkpoint's weights, config and palette to one safetensors file; return its path.

    `notes` (plain data: run folder, step, command, metrics...) goes into the metadata as JSON.
    An existing file is replaced only with `force`: shipped models are not overwritten by accident.
    """
    out = Path(out)
    if out.is_dir():
        raise IsADirectoryError(f"{out}: a directory; expected the path of a .safetensors file")
    if out.suffix != ".safetensors":
        raise ValueError(f"{out}: expected a path ending in .safetensors (the file load_model reads)")
    if out.exists() and not force:
        raise FileExistsError(f"{out} exists; choose another name, or replace it with --force")
    module = load_checkpoint(checkpoint)
    if module.palette is None:
        raise CheckpointError(f"{checkpoint}: holds no palette, so a shipped model could not turn tokens into colours")
    return save_model(module, out, notes, model_dataset(checkpoint))


def save_model(module: ImageGPT, out: str | os.PathLike, notes: dict | None = None, dataset: str | None = None) -> Path:
    """Write a module's weights, config and palette to one safetensors file, as export_model does."""
    return write_model_file(out, module.model_config, module.model.state_dict(), module.palette, notes, dataset)


def _load_model_file(path: Path) -> ImageGPT:
    found = read_model_file(path)
    module = ImageGPT(found.config, palette=found.palette)
    check_same_shapes(module.model.state_dict(), found.weights, path)
    module.model.load_state_dict(found.weights)
    return module.eval()


def has_trained_classifier(source: str | os.PathLike, models_dir: str | os.PathLike = MODELS_DIR) -> bool:
    """Whether a model's classification head was trained: a checkpoint's optim config says it was
    fine-tuned; a model file's notes name a fine-tuning run's checkpoint. A generative model's head
    is as it was initialised, and its accuracy measures nothing."""
    path = Path(models_dir) / f"{source}.safetensors" if str(source) in shipped_models(models_dir) else Path(source)
    if path.suffix == ".safetensors":
        return made_by_finetuning(read_notes(path))
    return bool((read_checkpoint(path)["hyper_parameters"].get("optim") or {}).get("finetune"))


def model_dataset(source: str | os.PathLike, models_dir: str | os.PathLike = MODELS_DIR) -> str | None:
    """The dataset a model was trained on: from a shipped file's metadata, or from a checkpoint's
    run folder (its config.yaml); None where neither says."""
    shipped = str(source) in shipped_models(models_dir)
    path = Path(models_dir) / f"{source}.safetensors" if shipped else Path(source)
    if path.suffix == ".safetensors":
        return read_dataset(path)
    run = find_run_folder(path)
    return None if run is None else RunConfig.load_yaml(run / "config.yaml").data.dataset


def model_name(source: str | os.PathLike, models_dir: str | os.PathLike = MODELS_DIR) -> str:
    """A short name for a model, to title a record by: a shipped model's name; else its run folder's
    name (a fine-tuning's as <pre-trained run>-finetune); else the file's name without its suffix."""
    if str(source) in shipped_models(models_dir):
        return str(source)
    path = Path(source)
    run = find_run_folder(path) if path.suffix == ".ckpt" else None
    if run is None:
        return path.stem
    return f"{run.parent.name}-{run.name}" if run.name == "finetune" else run.name


def load_model(source: str | os.PathLike, models_dir: str | os.PathLike = MODELS_DIR) -> ImageGPT:
    """An ImageGPT module from a shipped model's name, a .safetensors file or a .ckpt checkpoint."""
    if str(source) in shipped_models(models_dir):
        return _load_model_file(Path(models_dir) / f"{source}.safetensors")
    path = Path(source)
    if path.suffix == ".safetensors":
        return _load_model_file(path)
    if path.suffix == ".ckpt" or path.exists():
        return load_checkpoint(path)
    raise unknown_model(source, models_dir)


def unknown_model(source: str | os.PathLike, models_dir: str | os.PathLike = MODELS_DIR) -> CheckpointError:
    """The error for a model named by something that is none of the three ways to name one."""
    return CheckpointError(f"{str(source)!r} is neither a shipped model ({', '.join(shipped_models(models_dir)) or 'none yet'}) "
                           "nor a .safetensors or .ckpt file")


def training_config(source: str | os.PathLike, models_dir: str | os.PathLike = MODELS_DIR) -> tuple[RunConfig, Path]:
    """How a model was trained, and the file holding its weights, for a stage that trains on from it
    (fine-tuning): a checkpoint's run folder's config.yaml; for a model file (a shipped name or a
    .safetensors file), which keeps no run config, the first preset of its shape on its dataset."""
    path = Path(models_dir) / f"{source}.safetensors" if str(source) in shipped_models(models_dir) else Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"{source}: no such checkpoint (expected a pre-trained run's .ckpt, a .safetensors "
                                f"model or a shipped model's name: {', '.join(shipped_models(models_dir)) or 'none yet'})")
    if path.suffix != ".safetensors":
        run_dir = find_run_folder(path)
        if run_dir is None:
            raise ValueError(f"{path}: not in a run folder (expected a config.yaml beside it or one folder up)")
        return RunConfig.load_yaml(run_dir / "config.yaml"), path
    found = read_model_file(path)
    shape = {name: getattr(found.config, name) for name in ("n_embd", "n_layer", "n_head")}
    size = next((size for size, preset in PRESETS.items() if preset == shape), None)
    if size is None or found.dataset is None:
        raise CheckpointError(f"{path}: how it was trained is unknown (its shape {shape} is no preset's, or it does not "
                              "say its dataset); train on from its run's .ckpt instead")
    config = run_config(size, found.dataset, found.config.objective, n_px=found.config.n_px, clusters=found.config.vocab_size)
    return config.replace(model=found.config.to_dict()), path
