"""igptlib: ImageGPT on MNIST-sized images. One module per stage of the data flow (see DESIGN.md)."""
from igptlib.config import Config, ConfigError, DataConfig
from igptlib.data import (
    DATASETS,
    DataError,
    PixelDataModule,
    augment_images,
    ensure_palette,
    examples_per_label,
    fetch,
    load_split,
    make_augmentation,
    split_indices,
    training_split,
    verify_dataset,
    write_augmented_set,
)
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

__version__ = "0.1.0"
