"""Configuration as data: dataclasses that round-trip through YAML and reject what they don't know.

Every stage takes one of these dataclasses; a run saves them beside its checkpoints, and papermill
parameters and command-line flags map onto their fields. Loading is strict on purpose: a misspelt
key or a string where a number belongs is a clear error, never a silently ignored setting.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import types
import typing
from pathlib import Path

import yaml


class ConfigError(ValueError):
    """A configuration value or file is not what the dataclass expects."""


def read_json(path: str | os.PathLike):
    """A JSON file igpt wrote (metrics.json, evaluation.json, ...), or a ConfigError naming the file."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ConfigError(f"{path}: not valid JSON ({error}); expected the file as igpt wrote it "
                          "(run the step that writes it again)") from None


def positive_int(text: str) -> int:
    """An argparse type for counts and sizes: argparse names the flag in the error it makes of this one."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _type_name(annotation) -> str:
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def _check_value(value, annotation, where: str):
    """Return `value` converted to `annotation`, or raise ConfigError saying what was expected."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _check_value(value, option, where)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: expected {_type_name(annotation)}, got {value!r}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        item_type = args[0] if args else typing.Any
        return [_check_value(item, item_type, f"{where}[{i}]") for i, item in enumerate(value)]
    if annotation is typing.Any:
        return value
    if dataclasses.is_dataclass(annotation):
        if isinstance(value, annotation):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping of {annotation.__name__} fields, got {value!r}")
        return annotation.from_dict(value, where=where)
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if not math.isfinite(value):  # NaN passes every range check (all comparisons are False)
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise TypeError(f"{where}: config fields of type {annotation!r} are not supported")


@dataclasses.dataclass
class Config:
    """Base class: strict dict/YAML round trips for a dataclass of plain values."""

    def __post_init__(self):
        # Validate at construction too, so Config(n_px="28") fails where it is written.
        hints = typing.get_type_hints(type(self))
        for field in dataclasses.fields(self):
            where = f"{type(self).__name__}.{field.name}"
            setattr(self, field.name, _check_value(getattr(self, field.name), hints[field.name], where))
        self.validate()

    def validate(self):
        """Subclasses check ranges and relations between fields here."""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict, where: str | None = None):
        where = where or cls.__name__
        if not isinstance(values, dict):
            raise ConfigError(f"{where}: expected a mapping, got {values!r}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {unknown}; known keys are {sorted(known)}")
        hints = typing.get_type_hints(cls)
        checked = {k: _check_value(v, hints[k], f"{where}.{k}") for k, v in values.items()}
        return cls(**checked)

    def replace(self, **changes):
        """A copy with some fields changed, validated like a fresh config."""
        return type(self).from_dict({**self.to_dict(), **changes})

    def save_yaml(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        partial.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))
        partial.replace(path)
        return path

    @classmethod
    def load_yaml(cls, path: str | os.PathLike):
        path = Path(path)
        try:
            values = yaml.safe_load(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such config file") from None
        except yaml.YAMLError as error:
            raise ConfigError(f"{path}: not valid YAML ({' '.join(str(error).split())})") from None  # on one line
        if values is None:  # an empty file would silently be every default: a full-size run
            raise ConfigError(f"{path}: empty; expected a mapping of {cls.__name__} fields")
        return cls.from_dict(values, where=str(path))


AUGMENTATIONS = ("crop", "flip", "rotate")


@dataclasses.dataclass
class DataConfig(Config):
    """Where the images come from and how they become token sequences."""

    dataset: str = "mnist"  # mnist, fashion-mnist or cifar10
    root: str = "data"  # raw files, palettes and augmented sets live under here
    n_px: int = 28  # context reduction: images are resized to n_px x n_px (28 keeps MNIST as is)
    clusters: int = 16  # palette size, which is also the model's vocabulary
    palette: str | None = None  # a .npy of centroids; None means the default path under root
    palette_method: str = "minibatch"  # minibatch (MiniBatchKMeans) or kmeans (KMeans)
    palette_pixels: int = 200_000  # pixels sampled for k-means; all pixels give the same palette, slower
    augment: list[str] = dataclasses.field(default_factory=lambda: ["crop", "flip"])  # as in the seed report
    crop_padding: int = 4
    rotate_degrees: float = 10.0
    val_fraction: float = 0.1
    batch_size: int = 64
    seed: int = 0  # split, palette sampling and k-means
    limit_train: int | None = None  # smoke runs: use only the first N images of each split
    limit_val: int | None = None
    limit_test: int | None = None

    def validate(self):
        from igptlib.data import DATASETS  # the dataset table lives with the data code

        if self.dataset not in DATASETS:
            raise ConfigError(f"DataConfig.dataset: unknown dataset {self.dataset!r}; choose one of {sorted(DATASETS)}")
        if not 1 <= self.n_px <= 256:
            raise ConfigError(f"DataConfig.n_px: expected 1..256, got {self.n_px}")
        if not 2 <= self.clusters <= 4096:
            raise ConfigError(f"DataConfig.clusters: expected 2..4096, got {self.clusters}")
        if self.palette_method not in ("minibatch", "kmeans"):
            raise ConfigError(f"DataConfig.palette_method: expected 'minibatch' or 'kmeans', got {self.palette_method!r}")
        unknown = sorted(set(self.augment) - set(AUGMENTATIONS))
        if unknown:
            raise ConfigError(f"DataConfig.augment: unknown augmentation(s) {unknown}; choose from {list(AUGMENTATIONS)}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"DataConfig.val_fraction: expected a fraction between 0 and 1, got {self.val_fraction}")
        if self.batch_size < 1:
            raise ConfigError(f"DataConfig.batch_size: expected a positive integer, got {self.batch_size}")
        if not 0 <= self.seed < 2**32:  # what numpy's and Lightning's seeding accept
            raise ConfigError(f"DataConfig.seed: expected an integer in 0..{2**32 - 1}, got {self.seed}")
        for name in ("limit_train", "limit_val", "limit_test"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"DataConfig.{name}: expected a positive integer or null, got {value}")

    @property
    def palette_path(self) -> Path:
        if self.palette is not None:
            return Path(self.palette)
        # A palette fitted on a subset (smoke runs) is another palette: it gets its own name.
        subset = f"-first{self.limit_train}" if self.limit_train is not None else ""
        return Path(self.root) / "palettes" / f"{self.dataset}-k{self.clusters}-{self.n_px}px-seed{self.seed}{subset}.npy"
