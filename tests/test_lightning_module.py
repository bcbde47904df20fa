"""The LightningModule: steps and metrics, schedule, fine-tuning switch, checkpoints and their checks."""
import math
import warnings

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from igptlib.config import ConfigError, ModelConfig, OptimConfig
from igptlib.model_files import CheckpointError, read_checkpoint
from igptlib.lightning_module import ImageGPT, load_checkpoint, lr_factor
from igptlib.model import bert_loss

MODEL = dict(vocab_size=8, n_px=6, n_embd=32, n_layer=2, n_head=4)


class RandomTokens(L.LightningDataModule):
    """Random token images with random labels and a grey palette: enough to drive the Trainer."""

    def __init__(self, vocab_size: int = 8, seq_len: int = 36, count: int = 32, palette_size: int | None = None):
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.data = TensorDataset(torch.randint(0, vocab_size, (count, seq_len), generator=generator),
                                  torch.randint(0, 10, (count,), generator=generator))
        self.palette = np.linspace(0, 255, palette_size or vocab_size, dtype=np.float32)[:, None]

    def train_dataloader(self):
        return DataLoader(self.data, batch_size=8, shuffle=True)

    def val_dataloader(self):
        return DataLoader(self.data, batch_size=8)

    def test_dataloader(self):
        return DataLoader(self.data, batch_size=8)


def fit(module, datamodule, tmp_path=None, steps: int = 3, **kwargs) -> L.Trainer:
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    trainer = L.Trainer(
        max_steps=steps, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path, **kwargs,
    )
    trainer.fit(module, datamodule=datamodule)
    return trainer


def test_lr_warms_up_linearly_then_decays():
    factors = [lr_factor(step, 10, 110, "cosine", 0.1) for step in range(111)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert all(a <= b for a, b in zip(factors[:10], factors[1:10]))
    assert all(a >= b for a, b in zip(factors[10:], factors[11:]))
    assert factors[60] == pytest.approx(0.55) and factors[110] == pytest.approx(0.1)
    assert lr_factor(60, 10, 110, "linear", 0.0) == pytest.approx(0.5)
    assert lr_factor(60, 10, 110, "constant", 0.0) == 1.0


def test_wsd_holds_the_rate_then_decays_and_extends_without_a_warm_restart():
    factors = [lr_factor(step, 10, 110, "wsd", 0.0, decay_fraction=0.2) for step in range(111)]
    assert factors[9] == pytest.approx(1.0) and all(f == 1.0 for f in factors[10:88])  # stable until step 88
    assert all(a > b for a, b in zip(factors[88:110], factors[89:111])) and factors[110] == 0.0
    # Extending the run to 220 steps from a stable-phase checkpoint: the rate at every step already
    # taken is the same as before, so the longer run goes on without jumping back up.
    assert [lr_factor(step, 10, 220, "wsd", 0.0, 0.2) for step in range(88)] == factors[:88]


def test_bad_optim_configs_are_refused():
    with pytest.raises(ConfigError, match="schedule"):
        OptimConfig(schedule="step")
    with pytest.raises(ConfigError, match="OptimConfig.lr: expected a number, got 'fast'"):
        OptimConfig.from_dict({"lr": "fast"})
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['momentum'\]"):
        OptimConfig.from_dict({"momentum": 0.9})


@pytest.mark.parametrize("objective", ["ar", "bert"])
def test_pretraining_logs_nats_and_bits_per_pixel(objective):
    torch.manual_seed(0)
    module = ImageGPT({**MODEL, "objective": objective}, {"warmup_steps": 2})
    trainer = fit(module, RandomTokens(), val_check_interval=3, limit_val_batches=2)
    metrics = trainer.callback_metrics
    assert float(metrics["val/bits_per_pixel"]) == pytest.approx(float(metrics["val/nats_per_pixel"]) / math.log(2))
    assert 1.0 < metrics["val/nats_per_pixel"] < 3.0  # near ln 8 for random tokens
    assert "train/lr" in metrics and "val/acc" not in metrics
    assert module.hparams["palette"] == RandomTokens().palette.tolist()  # adopted from the data


def test_bert_validation_masks_are_the_same_every_time():
    module = ImageGPT({**MODEL, "objective": "bert"}).eval()
    batch = next(iter(RandomTokens().val_dataloader()))
    with torch.no_grad():
        losses = [module.model.generative_loss(batch[0], module._generator("val", 0)) for _ in range(2)]
    assert losses[0] == losses[1]


def test_bert_finetuning_classifies_the_masked_images_its_generative_loss_reads():
    module = ImageGPT({**MODEL, "objective": "bert"}, {"finetune": True}).eval()
    tokens, labels = next(iter(RandomTokens().val_dataloader()))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # self.log without a Trainer says so, and logs nothing
        loss = module._shared_step((tokens, labels), 0, "val")
        masked, mask = module.model.mask(tokens, module._generator("val", 0))  # the step's masks
        expected = bert_loss(module.model(masked), tokens, mask) + F.cross_entropy(module.model.classify(masked), labels)
        unmasked = bert_loss(module.model(masked), tokens, mask) + F.cross_entropy(module.model.classify(tokens), labels)
    torch.testing.assert_close(loss, expected)
    assert not torch.isclose(loss, unmasked)


def test_finetuning_starts_from_the_pretrained_weights_and_adds_the_classifier_loss(tmp_path):
    torch.manual_seed(0)
    pretrained = ImageGPT(MODEL, {"warmup_steps": 1})
    trainer = fit(pretrained, RandomTokens(), steps=2)
    trainer.save_checkpoint(tmp_path / "pre.ckpt")

    module = ImageGPT.from_pretrained(tmp_path / "pre.ckpt", OptimConfig(finetune=True, warmup_steps=1))
    for name, tensor in pretrained.state_dict().items():
        torch.testing.assert_close(module.state_dict()[name], tensor)
    trainer = fit(module, RandomTokens(), steps=2, val_check_interval=2, limit_val_batches=1)
    metrics = trainer.callback_metrics
    assert "val/acc" in metrics and "val/clf_loss" in metrics
    assert float(metrics["val/loss"]) == pytest.approx(float(metrics["val/nats_per_pixel"] + metrics["val/clf_loss"]), rel=1e-5)


def test_checkpoints_round_trip_with_weights_only(tmp_path):
    torch.manual_seed(0)
    module = ImageGPT(MODEL, {"warmup_steps": 1}, seed=7)
    trainer = fit(module, RandomTokens(), steps=2)
    trainer.save_checkpoint(tmp_path / "run.ckpt")

    raw = torch.load(tmp_path / "run.ckpt", weights_only=True)  # plain data: no pickled classes
    assert raw["hyper_parameters"]["model"] == ModelConfig(**MODEL).to_dict()
    loaded = load_checkpoint(tmp_path / "run.ckpt", palette=RandomTokens().palette)
    assert loaded.seed == 7 and loaded.model_config == module.model_config
    for name, tensor in module.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], tensor)
    again = ImageGPT.load_from_checkpoint(tmp_path / "run.ckpt", weights_only=True)
    torch.testing.assert_close(again.model.wte.weight, module.model.wte.weight)


def test_checkpoints_of_another_palette_or_shape_are_refused_clearly(tmp_path):
    module = ImageGPT(MODEL, palette=RandomTokens().palette)
    trainer = fit(module, RandomTokens(), steps=1)
    path = tmp_path / "run.ckpt"
    trainer.save_checkpoint(path)

    sixteen = np.linspace(0, 255, 16, dtype=np.float32)[:, None]
    with pytest.raises(CheckpointError, match=r"palette has shape \[16, 1\], but the model.s vocabulary is 8 colours"):
        load_checkpoint(path, palette=sixteen)
    rgb = np.zeros((8, 3), np.float32)
    with pytest.raises(CheckpointError, match=r"trained on a palette of shape \[8, 1\].*this palette has shape \[8, 3\]"):
        load_checkpoint(path, palette=rgb)
    with pytest.raises(CheckpointError, match="other colours"):
        load_checkpoint(path, palette=RandomTokens().palette[::-1].copy())
    with pytest.raises(CheckpointError, match=r"another model: vocab_size 8 \(here 16\)"):
        ImageGPT.from_pretrained(path, model=ModelConfig(**{**MODEL, "vocab_size": 16}))
    with pytest.raises(CheckpointError, match=r"n_layer 2 \(here 3\)"):
        ImageGPT.from_pretrained(path, model=ModelConfig(**{**MODEL, "n_layer": 3}))

    # A checkpoint whose tensors were tampered with: the shapes, not the config, disagree.
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["state_dict"]["model.wpe.weight"] = torch.zeros(49, 32)
    torch.save(checkpoint, tmp_path / "bad.ckpt")
    with pytest.raises(CheckpointError, match=r"model.wpe.weight: file \[49, 32\], model \[36, 32\]"):
        load_checkpoint(tmp_path / "bad.ckpt")
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a loadable checkpoint"):
        read_checkpoint(tmp_path / "junk.ckpt")
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        read_checkpoint(tmp_path / "missing.ckpt")


def test_a_palette_that_does_not_fit_the_vocabulary_is_refused():
    with pytest.raises(ConfigError, match=r"palette has shape \[16, 1\], but the model's vocabulary is 8"):
        fit(ImageGPT(MODEL), RandomTokens(palette_size=16), steps=1)
