"""Completion and generation: sample the missing pixels one at a time, reusing the key/value cache.

An autoregressive model reads pixels in raster order, so what is kept of an image must come first
in that order: the top rows, or any mask whose kept pixels precede all the missing ones. The kept
prefix is read once into the cache; after that each new pixel costs one step over one token per
sequence, never a pass over the whole prefix again. All images and all their samples run as one
batch.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
from tqdm.auto import tqdm

from igptlib.device import gpu_autocast
from igptlib.model import GPT

MIN_TEMPERATURE = 1e-3  # exp(-gap / T) at a logit gap of 0.1 is exp(-100): greedy in all but name


def tokens_in_rows(n_px: int, rows: int) -> int:
    """The number of tokens kept when the top `rows` rows of an n_px x n_px image are kept."""
    if not 0 <= rows <= n_px:
        raise ValueError(f"rows to keep must lie in 0..{n_px}, got {rows}")
    return rows * n_px


def keep_from_mask(mask: torch.Tensor) -> int:
    """The length of the kept prefix of a boolean mask [H, W] or [T] (True = kept).

    The kept pixels must come first in raster order (the model cannot condition on pixels it has
    not read yet); anything else is an error that says where the order breaks.
    """
    flat = torch.as_tensor(mask, dtype=torch.bool).flatten()
    keep = int(flat.sum())
    if not flat[:keep].all():
        first_gap = int((~flat).nonzero()[0])
        raise ValueError(
            f"the kept pixels must come first in raster order: pixel {first_gap} is missing but "
            f"{keep} pixels are kept; keep a block of whole top rows (or any raster-order prefix)"
        )
    return keep


def sample_next(logits: torch.Tensor, temperature: float, top_k: int | None, generator: torch.Generator) -> torch.Tensor:
    """One token per row of `logits` [B, V]: greedy at temperature 0, else softmax(logits / T) over the top k."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float()
    if temperature != 1:
        logits = logits / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        threshold = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < threshold, float("-inf"))
    probs = logits.softmax(dim=-1)
    # torch.multinomial(probs, 1, generator=generator) draws one sample exactly this way (the
    # exponential race: argmax of p / q with q ~ Exp(1), ATen's Distributions.cpp): the same tokens
    # from the same generator (tests/test_sampling.py checks it). But it first validates the
    # probabilities with reductions read back to the host (a sync on a GPU), which more than
    # doubled a draw's time on the CPU; softmax's output needs no such check.
    return probs.div_(torch.empty_like(probs).exponential_(generator=generator)).argmax(dim=-1)


def _check_sampling(model: GPT, tokens: torch.Tensor, keep: int, samples: int, temperature: float, top_k: int | None):
    if model.config.objective != "ar":
        raise ValueError("completion reads pixels in raster order: it needs a model trained with objective 'ar'")
    seq_len = model.config.seq_len
    if tokens.ndim != 2:
        raise ValueError(f"expected tokens [images, pixels], got shape {tuple(tokens.shape)}")
    if not 0 <= keep <= min(tokens.shape[1], seq_len):
        raise ValueError(f"keep must lie in 0..{min(tokens.shape[1], seq_len)}, got {keep}")
    if samples < 1:
        raise ValueError(f"samples must be a positive integer, got {samples}")
    if not (temperature == 0 or MIN_TEMPERATURE <= temperature < math.inf):
        raise ValueError(f"temperature must be 0 (greedy) or a finite number from {MIN_TEMPERATURE} up "
                         f"(below it the draw is greedy anyway, and logits / T overflows), got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be a positive integer or None, got {top_k}")
    _check_memory(model, tokens.shape[0] * samples)


def free_memory(device: torch.device) -> int | None:
    """Bytes that can still be allocated on `device`, where the system says (Linux, CUDA); else None."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as meminfo:
            fields = dict(line.split(":", 1) for line in meminfo)
        return int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None


def _check_memory(model: GPT, sequences: int) -> None:
    """Refuse a batch whose key/value cache alone would not fit, before allocating any of it."""
    c = model.config
    need = 2 * c.n_layer * sequences * (c.seq_len + 1) * c.n_embd * 4  # keys and values, float32
    free = free_memory(next(model.parameters()).device)
    if free is not None and need > free:
        raise ValueError(f"{sequences} sequences (images x samples) need about {need / 2**30:.1f} GiB for the "
                         f"key/value cache, more than the {free / 2**30:.1f} GiB free here; expected fewer samples")


def complete(
    model: GPT,
    tokens: torch.Tensor,
    keep: int,
    samples: int = 8,
    temperature: float = 1.0,
    top_k: int | None = None,
    seed: int = 0,
    progress: bool = False,
) -> torch.Tensor:
    """Keep the first `keep` tokens of each image and sample the rest: [N, >=keep] -> [N, samples, T].

    The kept tokens are copied unchanged into every sample. The same seed gives the same samples;
    temperature 0 (or top_k=1) is greedy decoding. This is complete_masked with a prefix mask.
    """
    _check_sampling(model, tokens, keep, samples, temperature, top_k)
    seq_len = model.config.seq_len
    prefix = torch.zeros(tokens.shape[0], seq_len, dtype=torch.long)
    prefix[:, :keep] = tokens[:, :keep]
    return complete_masked(model, prefix, torch.arange(seq_len) < keep, samples, temperature, top_k, seed, progress)


def generate(model: GPT, count: int, temperature: float = 1.0, top_k: int | None = None, seed: int = 0,
             progress: bool = False) -> torch.Tensor:
    """Unconditional samples: `count` whole images drawn from the model, [count, T]; progress shows a
    bar of the pixels drawn."""
    empty = torch.zeros(1, 0, dtype=torch.long)
    return complete(model, empty, keep=0, samples=count, temperature=temperature, top_k=top_k, seed=seed,
                    progress=progress)[0]


@torch.inference_mode()
def complete_masked(
    model: GPT,
    tokens: torch.Tensor,
    mask: torch.Tensor,
    samples: int = 8,
    temperature: float = 1.0,
    top_k: int | None = None,
    seed: int = 0,
    progress: bool = False,
    on_pixel: Callable[[int, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Keep the pixels where `mask` ([H, W] or [T], True = kept) is set and sample the others: [N, T] -> [N, samples, T].

    The model runs where its weights are, in bfloat16 autocast on a GPU that supports it.
    Pixels are still drawn in raster order, and a kept pixel is copied in when the model reaches
    it: a missing pixel is conditioned on the kept pixels above it and to its left, never on those
    after it. So the bottom or right half gives the model less to go on than the top or left half.
    With a prefix mask (whole top rows) this is `complete`, the same samples for the same seed.

    progress shows a bar of the pixels drawn. on_pixel(drawn, sequences) runs after each drawn pixel
    with the count drawn so far and the sequences as they stand, [N, samples, T] (missing pixels not
    yet drawn hold token 0).
    """
    flat = torch.as_tensor(mask, dtype=torch.bool).flatten()
    seq_len = model.config.seq_len
    if flat.numel() != seq_len or tokens.ndim != 2 or tokens.shape[1] != seq_len:
        raise ValueError(f"expected tokens [images, {seq_len}] and a mask of {seq_len} pixels, "
                         f"got shapes {tuple(tokens.shape)} and {tuple(torch.as_tensor(mask).shape)}")
    missing = (~flat).nonzero().flatten().tolist()
    keep = missing[0] if missing else seq_len  # the kept prefix, read in one pass
    _check_sampling(model, tokens, keep, samples, temperature, top_k)
    model.eval()
    device = next(model.parameters()).device
    count = tokens.shape[0]
    generator = torch.Generator(device=device).manual_seed(seed)
    sequences = tokens.to(device).repeat_interleave(samples, dim=0)
    sequences[:, ~flat.to(device)] = 0  # nothing of the missing pixels may leak into the samples

    if not missing:
        return sequences.view(count, samples, seq_len).cpu()
    # The kept prefix is the same for every sample of an image: read it once per image, then branch
    # the cache so that the samples share its keys and values (stored, and read each step, once).
    cache = model.new_cache(count)
    decode = model.decoder()  # the step of one drawn pixel, the loop's usual case
    with gpu_autocast(device), tqdm(total=len(missing), desc="sampling", unit="px", leave=False,
                                    disable=not progress) as bar:
        logits = model(sequences[::samples, :keep], cache)[:, -1].repeat_interleave(samples, dim=0)
        cache.branch(samples)
        for drawn, position in enumerate(missing, start=1):
            token = sample_next(logits, temperature, top_k, generator)
            sequences[:, position] = token
            bar.update()
            if on_pixel is not None:
                on_pixel(drawn, sequences.view(count, samples, seq_len))
            # The kept pixels up to the next missing one are read with this one, in one step.
            end = missing[drawn] if drawn < len(missing) else seq_len
            if end == position + 1 < seq_len:
                logits = decode(token, cache)
            elif end < seq_len:
                logits = model(sequences[:, position:end], cache)[:, -1]
    return sequences.view(count, samples, seq_len).cpu()
