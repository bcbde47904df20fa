"""Where the model runs: one choice, auto, cpu or cuda, for training, completion, evaluation, the
notebooks and the explorer.

    resolve_device(choice)        "auto" -> the GPU when PyTorch sees one, else the CPU; "cuda"
                                  without a GPU is an error that says so
    lightning_accelerator(choice) the same choice in Lightning's words ("gpu" or "cpu")
    gpu_autocast(device)          bfloat16 autocast on a GPU that computes in bfloat16; nothing on the CPU
"""
from __future__ import annotations

import contextlib

import torch

from igptlib.config import DEVICES


def resolve_device(choice: str | torch.device = "auto") -> torch.device:
    """The torch.device a device choice means (auto, cpu or cuda, or an explicit "cuda:1")."""
    name = str(choice)
    kind = name.split(":")[0]
    if kind not in DEVICES or (":" in name and kind != "cuda"):
        raise ValueError(f"device: expected one of {', '.join(DEVICES)} (or cuda:N), got {name!r}")
    if kind == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r}: PyTorch sees no CUDA GPU on this machine; use --device cpu or auto")
    return torch.device(name)


def lightning_accelerator(choice: str) -> str:
    """Lightning's accelerator for a device choice: "gpu" or "cpu" (a clear error for cuda without a GPU)."""
    return "gpu" if resolve_device(choice).type == "cuda" else "cpu"


def bf16_on_gpu(device: torch.device) -> bool:
    """Whether `device` is a GPU that computes in bfloat16 natively (Ampere and later; a T4 only emulates it)."""
    return device.type == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False)


def gpu_autocast(device: torch.device):
    """bfloat16 autocast on a GPU that supports it, else a context that changes nothing.

    On the CPU, sampling stays float32 (faster for its one-pixel steps); on a GPU, bfloat16 halves
    the memory traffic that dominates those steps.
    """
    if bf16_on_gpu(device):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
