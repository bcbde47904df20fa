"""`igpt bench sample`: cached completion against the naive sampler it replaces. A benchmark, not a test.

The naive sampler is what common re-implementations do: for every new pixel, run the model over
the whole sequence so far and keep only the last row of logits. It is carried here as the baseline
(and the tests check that both samplers agree under greedy decoding). When transformers is
installed, its generate() on the same model (converted by igptlib.hf) is a second baseline; the
model uses OpenAI iGPT's RMS norm so that transformers can hold it. One more cached completion
runs under torch.profiler, to split its time per drawn pixel: weight matmuls, attention over the
cache, softmax, the draw, everything else, and the Python and dispatch between operators.
"""
from __future__ import annotations

import importlib.util
import os
import time

import torch

from igptlib.bench import time_breakdown
from igptlib.config import DataConfig, model_config
from igptlib.device import CPU, synchronize
from igptlib.model import GPT
from igptlib.records import describe_hardware
from igptlib.sampling import _check_sampling, complete, sample_next, tokens_in_rows


# Where a cached completion's time goes, by ATen operator (bench.time_breakdown); the rest is
# "everything else" (norms, GELU, the copies into the cache) and, on the CPU, the time between operators.
SAMPLING_KERNELS = {
    "weight matmuls": ("aten::addmm", "aten::mm", "aten::linear"),
    "attention over the cache": ("aten::baddbmm", "aten::bmm", "scaled_dot_product"),
    "softmax (attention and the draw)": ("softmax",),
    "the draw (exponential race, argmax)": ("exponential", "argmax", "aten::div"),
}


@torch.inference_mode()
def complete_naive(model: GPT, tokens: torch.Tensor, keep: int, samples: int = 8, temperature: float = 1.0,
                   top_k: int | None = None, seed: int = 0) -> torch.Tensor:
    """The baseline: same contract and same random draws as sampling.complete, no cache."""
    _check_sampling(model, tokens, keep, samples, temperature, top_k)
    model.eval()
    seq_len = model.config.seq_len
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    sequences = torch.zeros(tokens.shape[0] * samples, seq_len, dtype=torch.long, device=device)
    sequences[:, :keep] = tokens[:, :keep].to(device).repeat_interleave(samples, dim=0)
    for position in range(keep, seq_len):
        # The token at `position` is only a target here, so its placeholder value is never read.
        logits = model(sequences[:, : position + 1])[:, position]
        sequences[:, position] = sample_next(logits, temperature, top_k, generator)
    return sequences.view(tokens.shape[0], samples, seq_len)


@torch.inference_mode()
def complete_transformers(model, tokens: torch.Tensor, keep: int, samples: int = 8, temperature: float = 1.0,
                          top_k: int | None = None, seed: int = 0) -> torch.Tensor:
    """The same contract with a transformers ImageGPTForCausalImageModeling and its generate().

    Its draws come from torch's global generator, seeded here inside fork_rng (the caller's random
    state is left as it was), so they differ from ours.
    """
    sos = model.config.vocab_size - 1  # the last row of its token embedding
    seq_len = model.config.n_positions
    prompts = tokens[:, :keep].to(model.device).repeat_interleave(samples, dim=0)
    prompts = torch.cat([torch.full((len(prompts), 1), sos, dtype=torch.long, device=model.device), prompts], dim=1)
    sampling = dict(do_sample=True, temperature=temperature, top_k=top_k or 0) if temperature > 0 else dict(do_sample=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        out = model.generate(prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=seq_len - keep,
                             min_new_tokens=seq_len - keep, pad_token_id=sos, **sampling)
    return out[:, 1:].reshape(tokens.shape[0], samples, seq_len)


def _seconds(function, repeats: int, device: torch.device) -> float:
    best = float("inf")
    for _ in range(repeats):
        synchronize(device)
        started = time.perf_counter()
        function()
        synchronize(device)
        best = min(best, time.perf_counter() - started)
    return best


def bench_sample(preset: str = "xs", images: int = 1, samples: int = 16, rows: int = 14, repeats: int = 3,
                 device: torch.device = CPU) -> dict:
    """Seconds to complete the bottom (n_px - rows) rows of `images` MNIST-shaped images (the default
    DataConfig's side and palette): cached, naive and, when transformers is installed, transformers' generate()."""
    load_before = os.getloadavg()[0]  # other work on the cores shows here: a timing to discard
    torch.manual_seed(0)
    data = DataConfig()
    model = GPT(model_config(preset, vocab_size=data.clusters, n_px=data.n_px, norm="rms")).eval().to(device)
    tokens = torch.randint(0, data.clusters, (images, data.n_px ** 2)).to(device)
    keep = tokens_in_rows(data.n_px, rows)
    # One untimed completion first: on a GPU, the first kernels of each shape are chosen and loaded then.
    complete(model, tokens, keep, samples=samples, seed=0)
    cached = _seconds(lambda: complete(model, tokens, keep, samples=samples, seed=0), repeats, device)
    profiled = time_breakdown(lambda: complete(model, tokens, keep, samples=samples, seed=0), device, SAMPLING_KERNELS)
    naive = _seconds(lambda: complete_naive(model, tokens, keep, samples=samples, seed=0), 1, device)
    result = {
        "preset": preset, "images": images, "samples": samples, "pixels_sampled": data.n_px ** 2 - keep,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(), "cached_s": cached, "naive_s": naive, "speedup": naive / cached,
        "cached_profiled_seconds": profiled, "hardware": describe_hardware(), "load_average_before": load_before,
    }
    if importlib.util.find_spec("transformers") is not None:
        from igptlib.hf import to_transformers

        theirs = to_transformers(model).to(device)
        complete_transformers(theirs, tokens, keep, samples=samples)  # untimed, as ours
        result["transformers_s"] = _seconds(lambda: complete_transformers(theirs, tokens, keep, samples=samples),
                                            repeats, device)
        result["speedup_vs_transformers"] = result["transformers_s"] / cached
    result["load_average_after"] = os.getloadavg()[0]
    return result


def print_report(result: dict) -> None:
    """bench_sample's figures, for the terminal."""
    print(
        f"complete {result['pixels_sampled']} pixels x {result['samples']} samples x {result['images']} image(s), "
        f"preset {result['preset']}, on {result['hardware']} (load average {result['load_average_before']:.1f} before, "
        f"{result['load_average_after']:.1f} after):\n"
        f"  KV-cache sampler  {result['cached_s']:8.3f} s\n"
        f"  naive sampler     {result['naive_s']:8.3f} s  (re-runs the whole sequence for every pixel)\n"
        f"  speedup           {result['speedup']:8.1f}x"
    )
    split = result["cached_profiled_seconds"]
    total = sum(split.values())
    print(f"  where the KV-cache sampler's time goes (one more completion under torch.profiler, which slows it: "
          f"{1000 * total / result['pixels_sampled']:.2f} ms per drawn pixel):")
    for family, seconds in split.items():
        print(f"    {family:52s} {100 * seconds / total:5.1f}%  {1000 * seconds / result['pixels_sampled']:6.3f} ms/pixel")
    if "transformers_s" in result:
        print(f"  transformers      {result['transformers_s']:8.3f} s  (generate() on the same model, converted)\n"
              f"  speedup           {result['speedup_vs_transformers']:8.1f}x")
    else:
        print("  transformers      not installed (pip install 'igptlib[hf]' adds its generate() as a baseline)")
