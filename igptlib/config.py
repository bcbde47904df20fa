"""Configuration as data: dataclasses that round-trip through YAML and reject what they don't know.

Every stage takes one of these dataclasses; a run saves them beside its checkpoints, and papermill
parameters and command-line flags map onto their fields (a field's trailing comment is its flag's
help: igptlib.cli generates the flags from the fields). Loading is strict on purpose: a misspelt
key or a string where a number belongs is a clear error, never a silently ignored setting.

This is the one configuration module: every stage's dataclass and preset lives here, and it imports
nothing else of igptlib, so that any module may import it (ARCHITECTURE.md).
    DataConfig                   the dataset, palette size, image side, augmentation, batches
    ModelConfig, PRESETS         the network's shape and objective; model_config(preset, **changes)
    OptimConfig                  Adam(W), warm-up and schedule, pre-training or fine-tuning
    TrainConfig                  steps, validation, checkpoints, precision, devices
    RunConfig, TRAIN_PRESETS     all four, as a run folder's config.yaml; run_config(size, dataset, ...)
    CHOICES                      the valid values of the fields that have a fixed set of them
    FINETUNE_LEARNING_RATES, EVALUATION_PRECISIONS, MAX_PIXELS, ...   defaults and limits that the
                                 commands show in their --help, here because this module loads quickly
    data_config_for(model)       the data of the tokens a model reads (a model file without its run)
    apply_overrides(values, ["section.field=value", ...])   the generic command-line override
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import re
import reprlib
import secrets
import types
import typing
from pathlib import Path

import yaml


class ConfigError(ValueError):
    """A configuration value or file is not what the dataclass expects."""


def excerpt(value, limit: int = 80) -> str:
    """A bad value as an error message shows it: its repr, cut to about `limit` characters. A value
    read from a file may be huge, or nested and shared so that printing it whole never ends."""
    shown = reprlib.Repr()
    shown.maxlevel, shown.maxdict, shown.maxlist, shown.maxtuple, shown.maxset = 3, 4, 6, 6, 6
    shown.maxstring = shown.maxother = limit
    shown.maxlong = 40
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 128:
        return f"an integer of about {int(value.bit_length() * math.log10(2)) + 1:,} digits"  # repr() refuses 4,300 or more
    text = shown.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def clip(text: str, limit: int = 200) -> str:
    """Text (an error's) cut to `limit` characters, on one line."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_regular_file(path: str | os.PathLike, expected: str) -> Path:
    """`path`, if it is a regular file (or a link to one); else an OSError saying what it is. Opening a
    FIFO waits for a writer that never comes; a folder or a device is no file of ours either."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file; expected {expected}")
    if path.is_dir():
        raise IsADirectoryError(f"{path}: a directory; expected {expected}")
    if not path.is_file():
        raise OSError(f"{path}: not a regular file (a FIFO, socket or device); expected {expected}")
    return path


NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def check_name(name, flag: str = "--name", what: str = "name", becomes: str = "") -> str:
    """`name` if it is a plain file name (letters, digits, '.', '_', '-'; a letter or digit first), never a
    path: a --name becomes one file or folder inside the command's own folder, and '..', '/x' or
    'a/b' would put it (or the folder it replaces) elsewhere. `becomes` says what it turns into."""
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise ConfigError(f"{flag} {excerpt(name)}: expected a plain {what} of letters, digits, '.', '_' and '-', "
                          f"starting with a letter or digit, at most 100 characters"
                          + (f" (it becomes {becomes})" if becomes else ""))
    return name


def read_text(path: str | os.PathLike, expected: str) -> str:
    """A UTF-8 text file, or an error naming the file and what was expected of it."""
    path = check_regular_file(path, expected)
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not UTF-8 text (byte {error.start}: {error.reason}); expected {expected} "
                          "saved as UTF-8") from None


def read_json(path: str | os.PathLike, expected: type | None = None):
    """A JSON file igpt wrote (metrics.json, evaluation.json, ...), or a ConfigError naming the file;
    `expected` (dict or list) is the type the file must hold."""
    path = Path(path)
    try:
        values = json.loads(read_text(path, "a JSON file as igpt writes it"))
    except (json.JSONDecodeError, RecursionError) as error:
        cause = error if isinstance(error, json.JSONDecodeError) else "nested too deeply"
        raise ConfigError(f"{path}: not valid JSON ({cause}); expected the file as igpt wrote it "
                          "(run the step that writes it again)") from None
    if expected is not None and not isinstance(values, expected):
        raise ConfigError(f"{path}: holds a JSON {type(values).__name__}, {excerpt(values)}; expected a JSON "
                          f"{'object' if expected is dict else 'array'} as igpt writes it (run the step that writes it again)")
    return values


class _StrictLoader(yaml.SafeLoader):
    """yaml.safe_load's loader, refusing aliases and duplicate keys.

    A few hundred bytes of nested aliases stand for billions of values: whatever walks or prints
    what they load (a config check, an error message) never ends. igpt writes YAML without them. A
    key written twice would silently keep its last value.
    """

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(None, None, f"found the alias *{clip(event.anchor, 40)}: igpt reads YAML "
                                              "without anchors and aliases (write each value out)", event.start_mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    duplicate = key in seen
                except TypeError:  # an unhashable key: the constructor below says so
                    continue
                if duplicate:
                    raise yaml.constructor.ConstructorError(None, None, f"the key {excerpt(key, 40)} appears twice",
                                                            key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep)


def parse_yaml(text: str, where: str):
    """YAML text as plain data (what yaml.safe_load gives, without aliases or duplicate keys), or a
    one-line ConfigError starting with `where`."""
    try:
        return yaml.load(text, Loader=_StrictLoader)
    except yaml.YAMLError as error:
        cause = str(error).replace(' in "<unicode string>",', " at")  # `where` names the file
        raise ConfigError(f"{where}: not valid YAML ({clip(cause, 300)})") from None
    except RecursionError:
        raise ConfigError(f"{where}: not valid YAML (nested too deeply)") from None
    except ValueError as error:  # int() refuses numbers of 4,300 digits or more
        raise ConfigError(f"{where}: a value YAML cannot read ({clip(error, 160)})") from None


def read_yaml(path: str | os.PathLike, expected: str = "a YAML file"):
    """A YAML file as plain data (parse_yaml), or a ConfigError naming the file."""
    return parse_yaml(read_text(path, expected), str(path))


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike):
    """A new binary file to write `path` through: renamed over `path` when the block ends, removed
    if it raises, so that an interrupted write never leaves a half-written file where a reader (or a
    resuming run) expects a whole one.

    The temporary file is created with a random name and O_EXCL, so it is never a link or file that
    was there before; the rename replaces a link at `path` itself, never the file it points to.
    """
    path = Path(path)
    if path.is_dir() and not path.is_symlink():  # checked first: the rename would fail only after the write
        raise IsADirectoryError(f"{path}: a directory; expected the path of a file")
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        partial = path.with_name(f"{path.name}.{secrets.token_hex(4)}.partial")
        try:
            descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o666)
            break
        except FileExistsError:
            continue
    try:
        with os.fdopen(descriptor, "wb") as file:
            yield file
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def write_atomically(path: str | os.PathLike, content: str | bytes) -> Path:
    """Write text or bytes to `path` whole or not at all, never through a link (atomic_file)."""
    with atomic_file(path) as file:
        file.write(content.encode() if isinstance(content, str) else content)
    return Path(path)


def write_json(path: str | os.PathLike, data) -> Path:
    """`data` as indented JSON, written atomically (see write_atomically); read back with read_json."""
    return write_atomically(path, json.dumps(data, indent=2) + "\n")


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
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: expected {_type_name(annotation)}, got {excerpt(value)}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {excerpt(value)}")
        item_type = args[0] if args else typing.Any
        return [_check_value(item, item_type, f"{where}[{i}]") for i, item in enumerate(value)]
    if annotation is typing.Any:
        return value
    if dataclasses.is_dataclass(annotation):
        if isinstance(value, annotation):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping of {annotation.__name__} fields, got {excerpt(value)}")
        return annotation.from_dict(value, where=where)
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {excerpt(value)}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {excerpt(value)}")
        if abs(value) >= 2**63:  # no count or size of ours is larger; a pickled checkpoint's may be
            raise ConfigError(f"{where}: expected an integer of at most 64 bits, got {excerpt(value)}")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {excerpt(value)}")
        if not math.isfinite(value):  # NaN passes every range check (all comparisons are False)
            raise ConfigError(f"{where}: expected a finite number, got {excerpt(value)}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {excerpt(value)}")
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
            raise ConfigError(f"{where}: expected a mapping, got {excerpt(values)}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {excerpt(unknown)}; known keys are {sorted(known)}")
        hints = typing.get_type_hints(cls)
        checked = {k: _check_value(v, hints[k], f"{where}.{k}") for k, v in values.items()}
        return cls(**checked)

    def replace(self, **changes):
        """A copy with some fields changed, validated like a fresh config."""
        return type(self).from_dict({**self.to_dict(), **changes})

    def save_yaml(self, path: str | os.PathLike) -> Path:
        return write_atomically(path, yaml.safe_dump(self.to_dict(), sort_keys=False))

    @classmethod
    def load_yaml(cls, path: str | os.PathLike):
        path = Path(path)
        if not path.exists():
            raise ConfigError(f"{path}: no such config file")
        values = read_yaml(path, f"a YAML mapping of {cls.__name__} fields")
        if values is None:  # an empty file would silently be every default: a full-size run
            raise ConfigError(f"{path}: empty; expected a mapping of {cls.__name__} fields")
        return cls.from_dict(values, where=str(path))


# -- the data --------------------------------------------------------------------------------------

# The datasets igptlib.datasets can fetch (its DATASETS table holds their files; tests/test_data.py checks
# that the two agree). Named here so that a config is checked without importing the data code.
DATASET_NAMES = ("mnist", "fashion-mnist", "cifar10")
AUGMENTATIONS = ("crop", "flip", "rotate")
PALETTE_METHODS = ("minibatch", "kmeans")  # scikit-learn's MiniBatchKMeans or KMeans


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
    augment: list[str] = dataclasses.field(default_factory=lambda: ["crop", "flip"])  # of training images, the seed report's (none: [])
    crop_padding: int = 4  # crop: pad by this many pixels, then crop back to the image's size at random
    rotate_degrees: float = 10.0  # rotate: turn by a random angle of at most this many degrees either way
    val_fraction: float = 0.1  # the share of the training split held out for validation
    batch_size: int = 64  # images per batch, in training, validation and test
    seed: int = 0  # split, palette sampling and k-means
    limit_train: int | None = None  # smoke runs: only the first N training images (None: all)
    limit_val: int | None = None  # only the first N validation images (None: all)
    limit_test: int | None = None  # only the first N test images (None: all)

    def validate(self):
        if self.dataset not in DATASET_NAMES:
            raise ConfigError(f"DataConfig.dataset: unknown dataset {excerpt(self.dataset)}; choose one of {sorted(DATASET_NAMES)}")
        if not 1 <= self.n_px <= 256:
            raise ConfigError(f"DataConfig.n_px: expected 1..256, got {self.n_px}")
        if not 2 <= self.clusters <= 4096:
            raise ConfigError(f"DataConfig.clusters: expected 2..4096, got {self.clusters}")
        if self.palette_method not in PALETTE_METHODS:
            raise ConfigError(f"DataConfig.palette_method: expected 'minibatch' or 'kmeans', got {excerpt(self.palette_method)}")
        if self.palette_pixels < 1:
            raise ConfigError(f"DataConfig.palette_pixels: expected a positive integer, got {self.palette_pixels}")
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


# -- the model -------------------------------------------------------------------------------------

OBJECTIVES = ("ar", "bert")
MAX_LAYERS = 1024  # ten times the deepest GPT published
MAX_WEIGHTS = 2**35
NORMS = ("layer", "rms")
ACTIVATIONS = ("gelu", "gelu_tanh", "quick_gelu")  # the MLP's; igptlib.model has the function of each name


@dataclasses.dataclass
class ModelConfig(Config):
    """The shape of the network and its pre-training objective."""

    vocab_size: int = 16  # palette size K; token ids 0..K-1, and K is BERT's mask token
    n_px: int = 28  # images are n_px x n_px, so sequences hold n_px * n_px tokens
    n_embd: int = 256  # width: of the embeddings and of every block
    n_layer: int = 8  # transformer blocks
    n_head: int = 8  # attention heads per block (n_embd must be a multiple of it)
    dropout: float = 0.0  # the paper trains without dropout
    objective: str = "ar"  # "ar": causal, next pixel; "bert": bidirectional, masked pixels
    mask_prob: float = 0.15  # BERT: the chance that each pixel is masked
    num_classes: int = 10  # the classification head (fine-tuning, L_CLF)
    # OpenAI's iGPT (transformers' ImageGPT) differs in these two; the defaults are GPT-2's, as trained here.
    norm: str = "layer"  # "layer": LayerNorm; "rms": x / sqrt(mean(x^2) + 1e-5) * weight, no centring, no bias
    activation: str = "gelu"  # the MLP's: one of ACTIVATIONS

    def validate(self):
        for name in ("vocab_size", "n_px", "n_embd", "n_layer", "n_head", "num_classes"):
            if getattr(self, name) < 1:
                raise ConfigError(f"ModelConfig.{name}: expected a positive integer, got {getattr(self, name)}")
        if self.vocab_size < 2:
            raise ConfigError(f"ModelConfig.vocab_size: expected at least 2 palette colours, got {self.vocab_size}")
        if self.n_embd % self.n_head:
            raise ConfigError(f"ModelConfig: n_embd ({self.n_embd}) must be a multiple of n_head ({self.n_head})")
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"ModelConfig.objective: expected one of {list(OBJECTIVES)}, got {excerpt(self.objective)}")
        if not 0.0 < self.mask_prob < 1.0:
            raise ConfigError(f"ModelConfig.mask_prob: expected a probability in (0, 1), got {self.mask_prob}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"ModelConfig.dropout: expected a probability in [0, 1), got {self.dropout}")
        if self.norm not in NORMS:
            raise ConfigError(f"ModelConfig.norm: expected one of {list(NORMS)}, got {excerpt(self.norm)}")
        if self.activation not in ACTIVATIONS:
            raise ConfigError(f"ModelConfig.activation: expected one of {list(ACTIVATIONS)}, got {excerpt(self.activation)}")
        # Checked before any model is built: `n_layer: 100000` would allocate for minutes before failing.
        if self.n_layer > MAX_LAYERS:
            raise ConfigError(f"ModelConfig.n_layer: expected 1..{MAX_LAYERS}, got {self.n_layer}")
        if self.least_weights > MAX_WEIGHTS:
            raise ConfigError(f"ModelConfig: n_layer {self.n_layer}, n_embd {self.n_embd} and n_px {self.n_px} make at least "
                              f"{self.least_weights:,} weights, over the limit of {MAX_WEIGHTS:,} (128 GiB in float32, "
                              "more than one GPU holds); expected a smaller model")

    @property
    def seq_len(self) -> int:
        return self.n_px * self.n_px

    @property
    def least_weights(self) -> int:
        """The fewest weights a GPT of this shape holds: the attention (4 C^2) and MLP (8 C^2) matrices
        of every layer and a position embedding per pixel. A file holding fewer is not this model."""
        return 12 * self.n_layer * self.n_embd**2 + self.seq_len * self.n_embd

    @property
    def mask_token(self) -> int:
        return self.vocab_size


# Widths, depths and heads. Parameter counts for 28x28 MNIST with a 16-colour palette (from
# GPT(model_config(name)).num_parameters()): xs 0.25M, s 6.5M, m 38.3M, l 114.0M,
# igpt-s 76.1M, igpt-m 454.3M, igpt-l 1361.2M (the paper's 76M, 455M and 1.4B, there with 512
# colours and longer contexts).
PRESETS: dict[str, dict] = {
    # Heads of 32 to 64 dimensions: CPU attention kernels run several times slower on narrower heads.
    "xs": dict(n_embd=64, n_layer=4, n_head=2),  # CPU demos and tests: trains in minutes on 2 cores
    "cpu": dict(n_embd=128, n_layer=4, n_head=4),  # the first shipped models: about an hour on 2 CPU cores
    # Time to quality on 2 CPU cores: the attention kernel's time grows with n_layer * n_embd and the
    # weights with n_layer * n_embd^2, so three wider layers learn more per minute than four narrow ones.
    "cpu-fast": dict(n_embd=192, n_layer=3, n_head=3),
    "course": dict(n_embd=192, n_layer=3, n_head=3),  # the course's default run: cpu-fast's shape on 16x16 images
    # The CPU ladder (igptlib.experiments): about 3x the parameters from one size to the next, heads of 64.
    "cpu-s": dict(n_embd=192, n_layer=3, n_head=3),  # 1.5M
    "cpu-m": dict(n_embd=256, n_layer=6, n_head=4),  # 5.0M
    "cpu-l": dict(n_embd=448, n_layer=6, n_head=7),  # 14.9M
    "s": dict(n_embd=256, n_layer=8, n_head=4),  # the S/M/L sweep, each sized for one GPU
    "m": dict(n_embd=512, n_layer=12, n_head=8),
    "l": dict(n_embd=768, n_layer=16, n_head=12),
    "igpt-s": dict(n_embd=512, n_layer=24, n_head=8),  # the paper's iGPT-S, -M and -L
    "igpt-m": dict(n_embd=1024, n_layer=36, n_head=8),
    "igpt-l": dict(n_embd=1536, n_layer=48, n_head=16),
}


def model_config(preset: str = "s", **changes) -> ModelConfig:
    """The ModelConfig of a named preset, with some fields changed (e.g. vocab_size, objective)."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown model preset {excerpt(preset)}; choose one of {list(PRESETS)}")
    return ModelConfig.from_dict({**PRESETS[preset], **changes}, where=f"preset {excerpt(preset)}")


# -- the optimiser ---------------------------------------------------------------------------------

SCHEDULES = ("cosine", "linear", "constant", "wsd")  # the learning rate after warm-up: igptlib.lightning_module.lr_factor


@dataclasses.dataclass
class OptimConfig(Config):
    """Adam(W) with linear warm-up then decay, and the choice between pre-training and fine-tuning."""

    lr: float = 1e-3  # the peak learning rate, reached at the end of warm-up
    weight_decay: float = 0.0  # the paper uses none; when set, it applies to matrices only
    beta1: float = 0.9  # Adam's decay rate of the gradient's running mean
    beta2: float = 0.95  # as in the paper
    warmup_steps: int = 500  # linear warm-up from 0 to lr over this many steps
    # After warm-up: "cosine" or "linear" decay over the run; "constant"; or "wsd" (warm-up, stable,
    # decay): constant until the last decay_fraction of the steps, then linear decay. A wsd run can
    # be extended from any checkpoint of its stable phase (train saves one where the decay begins)
    # with a larger step count and no warm restart.
    schedule: str = "cosine"  # after warm-up: cosine or linear decay, constant, or wsd (decay over the last decay_fraction)
    min_lr_ratio: float = 0.0  # the decay ends at lr * min_lr_ratio (the paper decays to 0)
    decay_fraction: float = 0.2  # wsd: the share of the steps spent decaying
    grad_clip: float = 1.0  # gradient norm clipping (0: off)
    finetune: bool = False  # False: L_GEN only; True: L_GEN + L_CLF with the classification head
    clf_weight: float = 1.0  # weight of L_CLF when fine-tuning
    gen_weight: float = 1.0  # weight of L_GEN when fine-tuning (0: trained on labels alone)

    def validate(self):
        if self.lr <= 0:
            raise ConfigError(f"OptimConfig.lr: expected a positive number, got {self.lr}")
        if self.warmup_steps < 0:
            raise ConfigError(f"OptimConfig.warmup_steps: expected 0 or more, got {self.warmup_steps}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"OptimConfig.schedule: expected one of {list(SCHEDULES)}, got {excerpt(self.schedule)}")
        for name in ("beta1", "beta2", "min_lr_ratio", "decay_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"OptimConfig.{name}: expected a number in [0, 1], got {getattr(self, name)}")
        for name in ("weight_decay", "grad_clip", "clf_weight", "gen_weight"):
            if getattr(self, name) < 0:
                raise ConfigError(f"OptimConfig.{name}: expected 0 or more, got {getattr(self, name)}")


# -- the trainer and the whole run -----------------------------------------------------------------

DEVICES = ("auto", "cpu", "cuda")  # where a model runs: igptlib.device resolves the choice
PRECISIONS = ("32-true", "bf16-mixed", "16-mixed", "bf16-true", "64-true")
PRECISION_WORDS = {"32-true": "float32", "bf16-mixed": "bfloat16 autocast", "16-mixed": "float16 autocast",
                   "bf16-true": "bfloat16", "64-true": "float64"}
PAPER_CHECKPOINT_STEPS = [131000, 262000, 524000]
EVALUATION_PRECISIONS = ("32", "bf16")  # of igpt evaluate's passes: float32, or bfloat16 autocast
EVALUATION_MASKS = 4  # a BERT model's masked readings that igpt evaluate averages per image (a pass each)
MAX_PIXELS = 25_000_000  # a user's image made square: a 5000x5000 square holds a 12-megapixel phone photo


@dataclasses.dataclass
class TrainConfig(Config):
    """How long and where to train, when to validate and save: the Trainer's side of a run."""

    steps: int = 20_000  # optimizer steps (batches: no gradient accumulation)
    val_every: int = 1000  # steps between validations
    val_batches: int | None = None  # batches per validation (None: the whole validation split)
    save_every: int = 1000  # steps between refreshes of checkpoints/last.ckpt
    checkpoint_steps: list[int] = dataclasses.field(default_factory=lambda: list(PAPER_CHECKPOINT_STEPS))  # kept as step-N.ckpt
    test: bool = True  # evaluate the best checkpoint on the test split at the end
    precision: str = "bf16-mixed"  # Lightning's precision; bf16 autocast where it is faster (train() falls back where it is not)
    accelerator: str = "auto"  # the device: auto (the GPU when there is one), cpu or cuda
    devices: int | str = "auto"  # per node; with strategy "ddp", one process each
    strategy: str = "auto"  # auto, ddp, ...
    num_nodes: int = 1  # machines, for multi-node ddp
    log_every: int = 50  # steps between logged training metrics
    progress_bar: bool = True  # Lightning's progress bar
    init_from: str | None = None  # a checkpoint whose weights start this run (fine-tuning)
    # The score is validation accuracy when fine-tuning, else validation nats per pixel; it picks best.ckpt too.
    early_stop: int | None = None  # stop after this many validations without a better score (None: never)
    early_stop_from: int = 0  # the step from which those validations count (a high learning rate's wandering does not)

    def validate(self):
        for name in ("steps", "val_every", "save_every", "num_nodes", "log_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"TrainConfig.{name}: expected a positive integer, got {getattr(self, name)}")
        if self.early_stop is not None and self.early_stop < 1:
            raise ConfigError(f"TrainConfig.early_stop: expected a positive number of validations or null, got {self.early_stop}")
        if self.early_stop_from < 0:
            raise ConfigError(f"TrainConfig.early_stop_from: expected a step number, 0 or more, got {self.early_stop_from}")
        if self.val_batches is not None and self.val_batches < 1:
            raise ConfigError(f"TrainConfig.val_batches: expected a positive integer or null, got {self.val_batches}")
        if any(step < 1 for step in self.checkpoint_steps):
            raise ConfigError(f"TrainConfig.checkpoint_steps: expected positive step numbers, got {self.checkpoint_steps}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"TrainConfig.precision: expected one of {list(PRECISIONS)}, got {excerpt(self.precision)}")
        if self.accelerator not in DEVICES:
            raise ConfigError(f"TrainConfig.accelerator: expected one of {list(DEVICES)}, got {excerpt(self.accelerator)}")
        if isinstance(self.devices, str) and self.devices != "auto":
            raise ConfigError(f"TrainConfig.devices: expected a number of devices or 'auto', got {excerpt(self.devices)}")
        if isinstance(self.devices, int) and not (self.devices >= 1 or self.devices == -1):
            raise ConfigError(f"TrainConfig.devices: expected a positive number of devices, -1 (all) or 'auto', "
                              f"got {self.devices}")


# The model's fields that a run takes from its data: model field -> (data field, why they are equal).
DERIVED_FROM_DATA = {
    "vocab_size": ("clusters", "the palette's colours are the model's vocabulary"),
    "n_px": ("n_px", "the model reads the data's images"),
}

# The fields whose values come from a fixed set, as a run's section.field: the command line offers them as choices.
CHOICES = {
    "data.dataset": DATASET_NAMES, "data.palette_method": PALETTE_METHODS, "data.augment": AUGMENTATIONS,
    "model.objective": OBJECTIVES, "model.norm": NORMS, "model.activation": ACTIVATIONS,
    "optim.schedule": SCHEDULES, "train.precision": PRECISIONS, "train.accelerator": DEVICES,
}


@dataclasses.dataclass
class RunConfig(Config):
    """Everything a run needs: data, model, optimiser, trainer. Saved as the run folder's config.yaml.

    The model's vocab_size and n_px are derived from the data here and nowhere else: from_dict
    fills them in and to_dict leaves them out, so that a run's palette size and image side are set
    once, in data. A mapping that names them (an older run's config.yaml, a checkpoint's model)
    must agree with the data.
    """

    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)

    def validate(self):
        for field, (source, why) in DERIVED_FROM_DATA.items():
            mine, theirs = getattr(self.model, field), getattr(self.data, source)
            if mine != theirs:
                raise ConfigError(f"model.{field} is {mine} but data.{source} is {theirs}: {why}, so they must be "
                                  f"equal (set data.{source} alone: the run derives model.{field} from it)")

    def to_dict(self) -> dict:
        values = super().to_dict()
        for field in DERIVED_FROM_DATA:
            del values["model"][field]
        return values

    @classmethod
    def from_dict(cls, values: dict, where: str | None = None):
        where = where or cls.__name__
        if isinstance(values, dict) and isinstance(values.get("model", {}), dict):  # else the base class says what is wrong
            data = _check_value(values.get("data", {}), DataConfig, f"{where}.data")
            derived = {field: getattr(data, source) for field, (source, _) in DERIVED_FROM_DATA.items()}
            values = {**values, "data": data, "model": {**derived, **values.get("model", {})}}
        return super().from_dict(values, where)


def data_config_for(model: ModelConfig, **fields) -> DataConfig:
    """The DataConfig of the tokens a model reads (its palette size and image side), with other fields as given:
    the data of a model file or a checkpoint that has no run folder."""
    derived = {source: getattr(model, field) for field, (source, _) in DERIVED_FROM_DATA.items()}
    return DataConfig(**derived, **fields)


# Training settings per size: xs trains in minutes on 2 CPU cores; s, m, l are the one-GPU sweep.
TRAIN_PRESETS: dict[str, dict] = {
    "xs": dict(optim=dict(lr=3e-3, warmup_steps=50), train=dict(steps=500, val_every=100, val_batches=10, save_every=100)),
    # Batch 32 without augmentation: the test set is unflipped, centred digits, and 1,500 steps see each
    # training image less than once (the shipped mnist model: about an hour on 2 CPU cores).
    "cpu": dict(
        data=dict(batch_size=32, augment=[]),
        optim=dict(lr=2e-3, warmup_steps=100),
        train=dict(steps=1500, val_every=250, val_batches=20, save_every=100),
    ),
    # Time to quality on 2 CPU cores (`igpt bench converge`; runs in report/bench/converge-*.json): a
    # wsd schedule (the run extends from its decay-start checkpoint without a warm restart) and
    # batch 16 (twice the updates of batch 32 for the same images); validation on 1,024 images.
    # 4,000 steps took 53.6 minutes on 2 quiet cores (converge-cpu-fast-60min: 0.2996 test nats/px,
    # the shipped mnist model); 1,600 of them at 21 minutes branch into a 2,000-step run.
    "cpu-fast": dict(
        data=dict(batch_size=16, augment=[]),
        optim=dict(lr=2e-3, warmup_steps=100, schedule="wsd", decay_fraction=0.2),
        train=dict(steps=4000, val_every=250, val_batches=64, save_every=100),
    ),
    # The course's default run (what `make` and Run All train): the classification time-to-quality
    # recipe (`igpt bench classify`, report/bench/classify-*.json) sized for about 20 minutes of
    # training on 2 CPU cores. 16x16 images have a third of 28x28's tokens, and a step costs a
    # quarter; its fine-tuning is FINETUNE_PRESETS["course"].
    "course": dict(
        data=dict(n_px=16, batch_size=16, augment=[]),
        optim=dict(lr=2e-3, warmup_steps=100, schedule="wsd", decay_fraction=0.2),
        train=dict(steps=1500, val_every=250, val_batches=64, save_every=100, checkpoint_steps=[]),
    ),
    # The CPU ladder: one schedule for the three sizes, so that size alone differs; crops of up to
    # 2 pixels but no flips (a mirrored 2 or 7 is no digit of the test set).
    **{size: dict(
        data=dict(batch_size=16, augment=["crop"], crop_padding=2),
        optim=dict(lr=1e-3, warmup_steps=200, schedule="wsd", decay_fraction=0.2),
        train=dict(steps=2620, val_every=262, val_batches=32, save_every=100, checkpoint_steps=[655, 1310, 2620]),
    ) for size in ("cpu-s", "cpu-m", "cpu-l")},
    # The one-GPU S/M/L sweep on the seed's schedule: 524,000 steps for every size, with checkpoints
    # at its 131,000, 262,000 and 524,000 (TrainConfig's default checkpoint_steps).
    **{size: dict(optim=dict(lr=lr, warmup_steps=5000), train=dict(steps=PAPER_CHECKPOINT_STEPS[-1]))
       for size, lr in (("s", 1e-3), ("m", 6e-4), ("l", 3e-4))},
    # The paper's shapes; the paper's own schedule (batch 128, 1M steps) is out of reach here.
    "igpt-s": dict(optim=dict(lr=3e-4, warmup_steps=5000), train=dict(steps=100_000)),
    "igpt-m": dict(optim=dict(lr=2e-4, warmup_steps=5000), train=dict(steps=100_000)),
    "igpt-l": dict(optim=dict(lr=1e-4, warmup_steps=5000), train=dict(steps=100_000)),
}


# Fine-tuning (L_GEN + L_CLF) changes to a size's run, where measurement found a recipe: crops of up to
# 2 pixels, half of pre-training's peak rate, a cosine decay, validation accuracy on 2,000 images
# (enough to tell 99.0% from 99.3%). Sizes without one fine-tune as igptlib.course derives it.
FINETUNE_PRESETS: dict[str, dict] = {
    "course": dict(
        data=dict(augment=["crop"], crop_padding=2),
        optim=dict(lr=1e-3, warmup_steps=50, schedule="cosine", finetune=True),
        train=dict(steps=2000, val_every=500, val_batches=125, save_every=250, checkpoint_steps=[]),
    ),
}


# The fine-tuning learning-rate sweep's defaults (igpt finetune-sweep): the learning rates it tries on
# validation and its steps per rate.
FINETUNE_LEARNING_RATES = (1e-4, 3e-4, 1e-3, 3e-3)
FINETUNE_SWEEP_STEPS = 300


def finetune_run_config(size: str, pretrained: RunConfig, init_from: str) -> RunConfig | None:
    """The fine-tuning run of `size`'s FINETUNE_PRESETS entry, from a run of its pre-training
    (`pretrained`, whose data and model it keeps) and the checkpoint `init_from`; None for a size without one."""
    preset = FINETUNE_PRESETS.get(size)
    if preset is None:
        return None
    values = pretrained.to_dict()
    for section, fields in preset.items():
        values[section].update(fields)
    values["train"]["init_from"] = init_from
    return RunConfig.from_dict(values, where=f"fine-tuning preset {size!r}")


def run_config(size: str = "s", dataset: str = "mnist", objective: str = "ar", **data) -> RunConfig:
    """The RunConfig of a preset size for a dataset; `data` changes DataConfig fields (root, clusters...)."""
    if size not in PRESETS:
        raise ConfigError(f"unknown size {excerpt(size)}; choose one of {list(PRESETS)}")
    preset = TRAIN_PRESETS[size]
    data_config = DataConfig.from_dict({"dataset": dataset, **preset.get("data", {}), **data})
    model = {**PRESETS[size], "objective": objective}  # its vocab_size and n_px are the data's
    return RunConfig.from_dict({"data": data_config, "model": model, "optim": preset["optim"], "train": preset["train"]})


# -- the generic override --------------------------------------------------------------------------


def apply_overrides(values: dict, overrides: list[str]) -> dict:
    """`section.field=value` strings applied to a config's dict, e.g. RunConfig.to_dict() (values parsed
    as YAML: 3e-3, [], true), in the spirit of minGPT's CfgNode.merge_from_args: each component owns
    its defaults, one generic override changes any of them. from_dict then checks the result."""
    for override in overrides:
        key, sep, text = override.partition("=")
        section, dot, field = key.partition(".")
        if not sep or not dot or section not in values or field not in values[section]:
            known = ", ".join(f"{s}.FIELD" for s in values)
            raise ConfigError(f"--set {excerpt(override)}: expected SECTION.FIELD=VALUE with a known field ({known})")
        values[section][field] = _parse(text, f"--set {excerpt(override)}")
    return values


def _parse(text: str, where: str):
    value = parse_yaml(text, where)
    if isinstance(value, str):  # YAML 1.1 reads 3e-3 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    return value
