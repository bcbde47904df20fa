"""Where the model runs: one choice, auto, cpu or cuda, for training, completion, evaluation, the
notebooks and the explorer.

    resolve_device(choice)        "auto" -> the GPU when PyTorch sees one, else the CPU; "cuda"
                                  without a GPU is an error that says so
    lightning_accelerator(choice) the same choice in Lightning's words ("gpu" or "cpu")
    gpu_autocast(device)          bfloat16 autocast on a GPU that computes in bfloat16; nothing on the CPU
    matmul_gflops(dtype)          the matmul speed of this machine in a dtype (benchmarks, and
    bf16_faster_on_cpu()          whether bfloat16 autocast pays on this CPU at all)
"""
from __future__ import annotations

import contextlib
import functools
import time

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


CPU = torch.device("cpu")


def synchronize(device: torch.device) -> None:
    """Wait for the GPU's queued kernels, so that a wall-clock timer measures them (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_gflops(dtype: torch.dtype, n: int | None = None, repeats: int = 5, device: torch.device = CPU) -> float:
    """Best-of-`repeats` GFLOP/s of an n x n matmul in `dtype` (2 n^3 FLOPs each); n defaults to
    2048 on the CPU and 8192 on a GPU, whose peak a smaller product does not reach."""
    n = n or (8192 if device.type == "cuda" else 2048)
    a, b = torch.randn(n, n, dtype=dtype, device=device), torch.randn(n, n, dtype=dtype, device=device)
    a @ b  # warm-up: thread pool, kernel selection
    synchronize(device)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        a @ b
        synchronize(device)
        best = min(best, time.perf_counter() - started)
    return 2 * n**3 / best / 1e9


@functools.cache
def bf16_faster_on_cpu() -> bool:
    """Whether this CPU multiplies bfloat16 matrices faster than float32 ones: measured once per process.

    A CPU's flags do not tell: of two CPUs with the same AVX-512 BF16 flag, one has been measured
    running a bfloat16 matmul at about twice its float32 speed, the other at half (a training step
    1.6x slower under bf16 autocast; the records' machines.json name both). 512 x 512
    products, best of 20: each takes about a millisecond, short enough to finish between the
    scheduler's preemptions, so a busy machine gives the same answer as a quiet one.
    """
    return matmul_gflops(torch.bfloat16, n=512, repeats=20) > matmul_gflops(torch.float32, n=512, repeats=20)
