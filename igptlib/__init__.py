"""igptlib: ImageGPT on MNIST-sized images. One module per stage of the data flow (see ARCHITECTURE.md)."""
from igptlib.config import (
    PRESETS,
    Config,
    ConfigError,
    DataConfig,
    ModelConfig,
    OptimConfig,
    RunConfig,
    TrainConfig,
    model_config,
    run_config,
)
from igptlib.completion import Completions, complete_images, complete_tokens, keep_mask
from igptlib.data import (
    PixelDataModule,
    augment_images,
    ensure_palette,
    examples_per_label,
    make_augmentation,
    split_indices,
    training_split,
    write_augmented_set,
)
from igptlib.datasets import DATASETS, DataError, fetch, load_split, verify_dataset
from igptlib.evaluate import evaluate_model
from igptlib.images import ImageLoadError, load_image
from igptlib.judge import completion_quality, digit_classifier, pixel_agreement
from igptlib.metrics import classification_metrics, likelihood, linear_probes, nats_per_image, nats_to_bits
from igptlib.model import GPT, KVCache, ar_loss, bert_loss, mask_tokens
from igptlib.model_files import CheckpointError, check_checkpoint, read_model_file, write_model_file
from igptlib.lightning_module import ImageGPT, load_checkpoint
from igptlib.quantize import (
    PaletteError,
    check_palette,
    decode,
    encode,
    fit_palette,
    load_palette,
    reduce_context,
    save_palette,
)
from igptlib.sampling import complete, complete_masked, generate, keep_from_mask, tokens_in_rows
from igptlib.shipped import export_model, load_model, shipped_models
from igptlib.train import TrainBatches, freed_memory_reused, train

__version__ = "0.1.0"
