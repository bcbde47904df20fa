"""The LightningModule: ImageGPT's training, validation and test steps, optimiser and schedule.

One module serves both stages of the paper:
  pre-training   loss = L_AR or L_BERT (ModelConfig.objective)
  fine-tuning    loss = L_GEN + L_CLF  (OptimConfig.finetune), usually started from a pre-trained
                 checkpoint with ImageGPT.from_pretrained.
Metrics are logged as nats per pixel and bits per pixel (for BERT: over the masked pixels), plus
classification loss and accuracy when fine-tuning.

Checkpoints hold only plain data besides tensors (configs as dicts, the palette as nested lists),
so they load with torch.load(weights_only=True); load_checkpoint checks them against the model
and palette they are meant for and raises CheckpointError saying what differs.
"""
from __future__ import annotations

import math
import os
import re

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F

from igptlib.config import ConfigError, ModelConfig, OptimConfig
from igptlib.model import GPT, ar_loss


class CheckpointError(ValueError):
    """A checkpoint cannot be used here: unreadable, or made for another model or palette."""


def decay_start(warmup_steps: int, total_steps: int, decay_fraction: float) -> int:
    """The step where a wsd schedule's decay begins (never inside the warm-up)."""
    return max(warmup_steps, total_steps - round(decay_fraction * total_steps))


def lr_factor(step: int, warmup_steps: int, total_steps: int, schedule: str, min_lr_ratio: float,
              decay_fraction: float = 0.2) -> float:
    """The learning-rate multiplier at optimizer step `step`: linear warm-up, then the decay."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant" or total_steps <= warmup_steps:
        return 1.0
    if schedule == "wsd":
        start = decay_start(warmup_steps, total_steps, decay_fraction)
        if step < start:
            return 1.0
        progress = min(1.0, (step - start) / max(total_steps - start, 1))
        return min_lr_ratio + (1 - min_lr_ratio) * (1 - progress)
    progress = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
    decay = 0.5 * (1 + math.cos(math.pi * progress)) if schedule == "cosine" else 1 - progress
    return min_lr_ratio + (1 - min_lr_ratio) * decay


def _step_seed(seed: int, step: int, rank: int, stage: str) -> int:
    """A seed per (run seed, step, process, stage): BERT masks that survive an interrupted run."""
    return int(np.random.SeedSequence([seed, step, rank, ["train", "val", "test"].index(stage)]).generate_state(1)[0])


class ImageGPT(L.LightningModule):
    """GPT (igptlib.model) with its objective, metrics and optimiser, for Lightning's Trainer.

    model, optim: ModelConfig and OptimConfig (or their dicts); palette: the [K, C] centroids the
    tokens index (kept in the checkpoint to check and decode with later); seed: BERT's masks.
    """

    def __init__(self, model: dict | ModelConfig, optim: dict | OptimConfig | None = None,
                 palette: list | np.ndarray | None = None, seed: int = 0):
        super().__init__()
        self.model_config = model if isinstance(model, ModelConfig) else ModelConfig.from_dict(model, where="model")
        self.optim_config = optim if isinstance(optim, OptimConfig) else OptimConfig.from_dict(optim or {}, where="optim")
        self.palette = None if palette is None else np.asarray(palette, dtype=np.float32)
        if self.palette is not None:
            check_palette_fits(self.palette, self.model_config)
        palette = None if palette is None else self.palette.tolist()  # (Lightning compares hparams with the arguments)
        # Plain data only, so that checkpoints load with weights_only=True.
        self.save_hyperparameters({
            "model": self.model_config.to_dict(), "optim": self.optim_config.to_dict(), "palette": palette, "seed": seed,
        })
        self.seed = seed
        self.model = GPT(self.model_config)
        # Only what this stage's loss uses is trained (DDP insists that every trainable parameter
        # gets a gradient): the classifier only when fine-tuning, the SOS embedding only for AR.
        self.model.clf_head.requires_grad_(self.optim_config.finetune)
        self.model.sos.requires_grad_(self.model.causal)

    # -- steps -----------------------------------------------------------------------------------

    def _generator(self, stage: str, batch_idx: int) -> torch.Generator | None:
        if self.model_config.objective != "bert":
            return None
        step = self.global_step if stage == "train" else batch_idx
        return torch.Generator().manual_seed(_step_seed(self.seed, step, self.global_rank, stage))

    def _shared_step(self, batch, batch_idx: int, stage: str) -> torch.Tensor:
        tokens, labels = batch
        generator = self._generator(stage, batch_idx)
        finetune = self.optim_config.finetune
        on_step = stage == "train"
        log = dict(on_step=on_step, on_epoch=not on_step, batch_size=len(tokens), sync_dist=not on_step)
        if finetune and self.model.causal:
            logits, class_logits = self.model.forward_with_classes(tokens)  # one pass for both losses
            gen_loss = ar_loss(logits, tokens)
        else:
            gen_loss = self.model.generative_loss(tokens, generator)
            class_logits = self.model.classify(tokens) if finetune else None  # BERT classifies unmasked images
        loss = gen_loss
        self.log(f"{stage}/nats_per_pixel", gen_loss, prog_bar=stage != "test", **log)
        self.log(f"{stage}/bits_per_pixel", gen_loss / math.log(2), **log)
        if class_logits is not None:
            clf_loss = F.cross_entropy(class_logits.float(), labels)
            loss = gen_loss + self.optim_config.clf_weight * clf_loss
            self.log(f"{stage}/clf_loss", clf_loss, **log)
            self.log(f"{stage}/acc", (class_logits.argmax(-1) == labels).float().mean(), prog_bar=True, **log)
        self.log(f"{stage}/loss", loss, **log)
        return loss

    def training_step(self, batch, batch_idx):
        return self._shared_step(batch, batch_idx, "train")

    def validation_step(self, batch, batch_idx):
        self._shared_step(batch, batch_idx, "val")

    def test_step(self, batch, batch_idx):
        self._shared_step(batch, batch_idx, "test")

    # -- optimiser -------------------------------------------------------------------------------

    def configure_optimizers(self):
        o = self.optim_config
        # Decay matrices only (GPT-2's rule): never biases, norms or the SOS vector.
        trainable = [p for p in self.parameters() if p.requires_grad]
        decay = [p for p in trainable if p.ndim >= 2]
        no_decay = [p for p in trainable if p.ndim < 2]
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=o.lr, betas=(o.beta1, o.beta2),
        )
        total = self.trainer.max_steps if self.trainer.max_steps > 0 else o.warmup_steps

        def factor(step: int) -> float:  # a closure, not a lambda in the state dict: weights_only loads
            return lr_factor(step, o.warmup_steps, total, o.schedule, o.min_lr_ratio, o.decay_fraction)

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        if self.optim_config.grad_clip > 0:
            self.clip_gradients(optimizer, gradient_clip_val=self.optim_config.grad_clip, gradient_clip_algorithm="norm")

    def on_train_batch_start(self, batch, batch_idx):
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], on_step=True, on_epoch=False)

    # -- palette and checkpoints -------------------------------------------------------------------

    def setup(self, stage: str):
        palette = getattr(self.trainer.datamodule, "palette", None)
        if palette is not None:
            self.set_palette(palette)

    def set_palette(self, palette: np.ndarray) -> None:
        """Adopt the data's palette: it must fit the vocabulary and match a pre-trained one."""
        palette = np.asarray(palette, dtype=np.float32)
        check_palette_fits(palette, self.model_config)
        if self.palette is not None:
            check_same_palette(self.palette, palette, "the pre-trained weights")
        self.palette = palette
        self.hparams["palette"] = palette.tolist()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # Lightning resumes with load_state_dict, whose shape errors name tensors, not causes.
        compare_checkpoint(checkpoint["hyper_parameters"], self.model_config, self.palette, "the checkpoint")

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, optim: OptimConfig | dict | None = None,
                        palette: np.ndarray | None = None, seed: int | None = None,
                        model: ModelConfig | None = None) -> "ImageGPT":
        """A module for fine-tuning (or further training) that starts from a checkpoint's weights.

        `optim` is the new stage's (fine-tuning: finetune=True). The model is the checkpoint's, or
        `model` if given (which may change dropout, say, but not the shape); a `palette` given
        must be the checkpoint's. Raises CheckpointError saying what differs.
        """
        checkpoint = read_checkpoint(path)
        hparams = checkpoint["hyper_parameters"]
        model = model or ModelConfig.from_dict(hparams["model"])
        compare_checkpoint(hparams, model, palette, path)
        module = cls(model, optim, palette if palette is not None else hparams.get("palette"),
                     hparams.get("seed", 0) if seed is None else seed)
        _load_weights(module, checkpoint["state_dict"], path)
        return module


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


def _load_weights(module: ImageGPT, state_dict: dict, path) -> None:
    own = module.state_dict()
    wrong = [f"{name}: checkpoint {list(tensor.shape)}, model {list(own[name].shape)}"
             for name, tensor in state_dict.items() if name in own and own[name].shape != tensor.shape]
    missing, unexpected = sorted(set(own) - set(state_dict)), sorted(set(state_dict) - set(own))
    if wrong or missing or unexpected:
        details = wrong[:3] + [f"missing {missing[:3]}"] * bool(missing) + [f"unexpected {unexpected[:3]}"] * bool(unexpected)
        raise CheckpointError(f"{path}: weights of another shape than the model's: " + "; ".join(details))
    module.load_state_dict(state_dict)


def check_checkpoint(path: str | os.PathLike, model: ModelConfig, palette: np.ndarray | None = None) -> dict:
    """Read a checkpoint and make sure it belongs to `model` (and `palette`); return it.

    Raises CheckpointError naming what differs: vocabulary, image size, width, depth, ...
    """
    checkpoint = read_checkpoint(path)
    compare_checkpoint(checkpoint["hyper_parameters"], model, palette, path)
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


def load_checkpoint(path: str | os.PathLike, palette: np.ndarray | None = None) -> ImageGPT:
    """An ImageGPT module from a checkpoint (on the CPU, in eval mode), checked against `palette` if given."""
    checkpoint = read_checkpoint(path)
    hparams = checkpoint["hyper_parameters"]
    if palette is not None:
        model = ModelConfig.from_dict(hparams["model"])
        check_palette_fits(np.asarray(palette, dtype=np.float32), model, CheckpointError)
        if hparams.get("palette") is not None:
            check_same_palette(np.asarray(hparams["palette"], dtype=np.float32), palette, path)
    check_weights(ModelConfig.from_dict(hparams["model"]), checkpoint["state_dict"], path)
    module = ImageGPT(hparams["model"], hparams.get("optim"), hparams.get("palette"), hparams.get("seed", 0))
    _load_weights(module, checkpoint["state_dict"], path)
    return module.eval()
