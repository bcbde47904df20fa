"""igptlib: ImageGPT on MNIST-sized images. One module per stage of the data flow (see ARCHITECTURE.md).

The names below are the public API, each imported from its module on first use (`igptlib.load_model`,
`from igptlib import load_model`): importing the package itself loads no torch, so that `igpt --help`
answers at once. The training function is `igptlib.train.train` (the name igptlib.train is its module).
"""
import importlib

_API = {  # module -> the names it exports
    "config": ["PRESETS", "Config", "ConfigError", "DataConfig", "ModelConfig", "OptimConfig", "RunConfig",
               "TrainConfig", "model_config", "run_config"],
    "completion": ["Completions", "complete_images", "complete_tokens", "keep_mask"],
    "data": ["PixelDataModule", "augment_images", "ensure_palette", "examples_per_label", "make_augmentation",
             "split_indices", "training_split", "write_augmented_set"],
    "datasets": ["DATASETS", "DataError", "fetch", "load_split", "verify_dataset"],
    "evaluate": ["evaluate_model"],
    "images": ["ImageLoadError", "load_image"],
    "judge": ["completion_quality", "digit_classifier", "pixel_agreement"],
    "metrics": ["classification_metrics", "likelihood", "linear_probes", "nats_per_image", "nats_to_bits"],
    "model": ["GPT", "KVCache", "ar_loss", "bert_loss", "mask_tokens"],
    "model_files": ["CheckpointError", "check_checkpoint", "read_model_file", "write_model_file"],
    "lightning_module": ["ImageGPT", "load_checkpoint"],
    "quantize": ["PaletteError", "check_palette", "decode", "encode", "fit_palette", "load_palette", "reduce_context",
                 "save_palette"],
    "sampling": ["complete", "complete_masked", "generate", "keep_from_mask", "tokens_in_rows"],
    "shipped": ["export_model", "load_model", "shipped_models"],
    "train": ["TrainBatches"],
}
_MODULE_OF = {name: module for module, names in _API.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str):
    if name == "__version__":  # the installed distribution's, as pyproject.toml gives it
        from importlib.metadata import version

        return version("igptlib")
    if name not in _MODULE_OF:
        raise AttributeError(f"module 'igptlib' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"igptlib.{_MODULE_OF[name]}"), name)
    globals()[name] = value  # the next look-up finds it without coming here
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
