"""The LightningModule: ImageGPT's training, validation and test steps, optimiser and schedule.

One module serves both stages of the paper:
  pre-training   loss = L_AR or L_BERT (ModelConfig.objective)
  fine-tuning    loss = L_GEN + L_CLF  (OptimConfig.finetune), usually started from a pre-trained
                 checkpoint with ImageGPT.from_pretrained; both from one pass, over inputs
                 masked as in pre-training for BERT.
Metrics are logged as nats per pixel and bits per pixel (for BERT: over the masked pixels), plus
classification loss and accuracy when fine-tuning.

Checkpoints hold only plain data besides tensors (configs as dicts, the palette as nested lists),
so they load with torch.load(weights_only=True). igptlib.model_files reads and checks them;
load_checkpoint and ImageGPT.from_pretrained build a module from one, raising CheckpointError
saying what differs from the model and palette it is meant for.
"""
from __future__ import annotations

import math
import os

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torchmetrics.functional.classification import multiclass_accuracy

from igptlib.config import ModelConfig, OptimConfig
from igptlib.model import GPT
from igptlib.model_files import (CheckpointError, check_palette_fits, check_same_palette, check_same_shapes, check_weights,
                                 compare_checkpoint, read_checkpoint, read_model_file)


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
        if finetune:  # one pass for both losses; a BERT model's inputs masked as in pre-training
            gen_loss, class_logits = self.model.loss_and_classes(tokens, generator)
        else:
            gen_loss, class_logits = self.model.generative_loss(tokens, generator), None
        loss = gen_loss
        self.log(f"{stage}/nats_per_pixel", gen_loss, prog_bar=stage != "test", **log)
        self.log(f"{stage}/bits_per_pixel", gen_loss / math.log(2), **log)
        if class_logits is not None:
            clf_loss = F.cross_entropy(class_logits.float(), labels)
            loss = self.optim_config.gen_weight * gen_loss + self.optim_config.clf_weight * clf_loss
            self.log(f"{stage}/clf_loss", clf_loss, **log)
            accuracy = multiclass_accuracy(class_logits, labels, self.model_config.num_classes, average="micro")
            self.log(f"{stage}/acc", accuracy, prog_bar=True, **log)
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
        # One LambdaLR of lr_factor rather than SequentialLR(LinearLR, CosineAnnealingLR): its state
        # is the step alone, so a run resumed with more steps decays over the new total (a wsd run
        # extended from its stable phase), and one formula covers the four schedules.

        def factor(step: int) -> float:  # a closure, not a lambda in the state dict: weights_only loads
            return lr_factor(step, o.warmup_steps, total, o.schedule, o.min_lr_ratio, o.decay_fraction)

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_train_batch_start(self, batch, batch_idx):
        # Not LearningRateMonitor: with two parameter groups (decay, no decay) it logs two equal
        # columns, lr/pg1 and lr/pg2, where the plots and records read one, train/lr.
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
        """A module for fine-tuning (or further training) that starts from a checkpoint's weights,
        or a .safetensors model file's.

        `optim` is the new stage's (fine-tuning: finetune=True). The model is the checkpoint's, or
        `model` if given (which may change dropout, say, but not the shape); a `palette` given
        must be the checkpoint's. Raises CheckpointError saying what differs.
        """
        if os.fspath(path).endswith(".safetensors"):
            found = read_model_file(path)
            hparams = {"model": found.config.to_dict(), "palette": found.palette}
            weights = {f"model.{name}": tensor for name, tensor in found.weights.items()}
        else:
            checkpoint = read_checkpoint(path)
            hparams, weights = checkpoint["hyper_parameters"], checkpoint["state_dict"]
        model = model or ModelConfig.from_dict(hparams["model"])
        compare_checkpoint(hparams, model, palette, path)
        module = cls(model, optim, palette if palette is not None else hparams.get("palette"),
                     hparams.get("seed", 0) if seed is None else seed)
        check_same_shapes(module.state_dict(), weights, path)
        module.load_state_dict(weights)
        return module


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
    check_same_shapes(module.state_dict(), checkpoint["state_dict"], path)
    module.load_state_dict(checkpoint["state_dict"])
    return module.eval()
