"""`igpt bench train`: training throughput of a preset, against the machine's matmul peak and a reference.

A benchmark, not a test: it prints figures and asserts nothing. In one process it measures
  1. the matmul GFLOP/s of this machine in float32 and bfloat16 (square matrices, best of a few),
  2. our training step (GPT with scaled_dot_product_attention, under the chosen precision),
  3. a straightforward reference of the same size: nn.MultiheadAttention called with an explicit
     float causal mask and its default arguments, in float32, as many re-implementations are written.
Every training step is forward + backward + AdamW update on random tokens of a full batch.

FLOPs are counted as the work a training step needs, the same for both models:
  per token: 6 * N + 6 * n_layer * T * n_embd   (AR)   or   6 * N + 12 * n_layer * T * n_embd   (BERT)
where N counts the weights of every matmul on the loss's path (12 n_embd^2 per block, plus the
n_embd x vocab head), 6 = 2 (multiply-add) x 3 (forward, and a backward twice as costly), and the
attention term is QK^T plus AV: 4 T n_embd per token and layer forward, halved by the causal mask
for AR (the masked half is work a kernel may skip, so it is not counted). Embedding lookups,
norms, GELU and the optimizer are not counted: they are real time but no FLOPs by this measure.

One more step of each model runs under torch.profiler, to show where its time goes: matrix
products, the fused attention kernel, softmax, everything else, and (on the CPU) the time between
operators, which is Python and dispatch. From that split the benchmark
also prints a ceiling for the speed-up: our step could take no less than its attention kernel's
measured time plus its matmul FLOPs at the measured matmul peak.
"""
from __future__ import annotations

import os
import resource
import statistics
import time

import torch
from torch import nn
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from igptlib.config import ModelConfig, model_config
from igptlib.device import CPU, matmul_gflops, synchronize
from igptlib.model import GPT, ar_loss
from igptlib.records import describe_hardware

def train_flops_per_token(config: ModelConfig) -> tuple[float, float]:
    """FLOPs of one training step per token, (weight matmuls, attention), by the module docstring's formula."""
    C, T = config.n_embd, config.seq_len
    matmul_weights = config.n_layer * 12 * C * C + C * config.vocab_size
    attention = (6 if config.objective == "ar" else 12) * config.n_layer * T * C
    return 6 * matmul_weights, attention


# Kernel families of a profiled step, by ATen operator name; the rest is "everything else".
KERNELS = {
    "matmul": ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm"),
    "attention kernel": ("scaled_dot_product",),  # the fused SDPA kernels, forward and backward
    "softmax": ("softmax",),  # the reference's attention weights, forward and backward, and the loss's log-softmax
}


BETWEEN = "between operators (Python, dispatch, allocation)"


def time_breakdown(step, device: torch.device = CPU, kernels: dict[str, tuple] = KERNELS) -> dict[str, float]:
    """Seconds of one call of `step` per kernel family (`kernels`, by ATen operator name), from
    torch.profiler's self times: the CPU's on the CPU, the GPU kernels' on a GPU. On the CPU the
    wall time no operator accounts for is BETWEEN: the Python and dispatch around the kernels."""
    gpu = device.type == "cuda"
    # This CUDA build's profiler logs an error when it finds no GPU; a CPU benchmark has none to find.
    os.environ.setdefault("KINETO_LOG_LEVEL", "5")
    activities = [ProfilerActivity.CPU, ProfilerActivity.CUDA] if gpu else [ProfilerActivity.CPU]
    with profile(activities=activities) as profiler:
        started = time.perf_counter()
        step()
        wall = time.perf_counter() - started
    seconds = dict.fromkeys([*kernels, "everything else"], 0.0)
    for event in profiler.key_averages():
        if event.device_type != DeviceType.CPU:
            continue  # a GPU kernel's own row: its time is counted on the operator that launched it
        family = next((name for name, keys in kernels.items() if any(k in event.key for k in keys)), "everything else")
        seconds[family] += (event.self_device_time_total if gpu else event.self_cpu_time_total) / 1e6
    if not gpu:  # on a GPU the kernels overlap the host's work, so no wall time is theirs alone
        seconds[BETWEEN] = max(0.0, wall - sum(seconds.values()))
    return seconds


class ReferenceBlock(nn.Module):
    """The same pre-norm block written the straightforward way: nn.MultiheadAttention, a float mask."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd)
        self.attn = nn.MultiheadAttention(config.n_embd, config.n_head, batch_first=True)
        self.ln_2 = nn.LayerNorm(config.n_embd)
        self.mlp = nn.Sequential(
            nn.Linear(config.n_embd, 4 * config.n_embd), nn.GELU(), nn.Linear(4 * config.n_embd, config.n_embd)
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.ln_1(x)
        # The default call, as most code makes it: it forms the [T, T] attention weights explicitly
        # (need_weights=True), and the caller drops them. need_weights=False would reach SDPA inside.
        x = x + self.attn(h, h, h, attn_mask=mask)[0]
        return x + self.mlp(self.ln_2(x))


class ReferenceGPT(nn.Module):
    """The baseline the benchmark carries: the same parameters and outputs as GPT, written plainly."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size + 1, config.n_embd)
        self.wpe = nn.Embedding(config.seq_len, config.n_embd)
        self.sos = nn.Parameter(torch.zeros(config.n_embd))
        self.blocks = nn.ModuleList(ReferenceBlock(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd)
        self.head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        T = config.seq_len
        # -inf above the diagonal: the explicit float mask added to every attention score.
        self.register_buffer("mask", torch.full((T, T), float("-inf")).triu(1), persistent=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.wte(tokens[:, :-1])
        x = torch.cat([self.sos.expand(len(tokens), 1, -1), x], dim=1) + self.wpe.weight
        for block in self.blocks:
            x = block(x, self.mask)
        return self.head(self.ln_f(x))


def training_step(model: nn.Module, tokens: torch.Tensor, bf16: bool):
    """A function that runs one training step of `model` on `tokens` (both on one device) and returns its seconds."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> float:
        synchronize(tokens.device)
        started = time.perf_counter()
        with torch.autocast(tokens.device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = ar_loss(model(tokens), tokens)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        synchronize(tokens.device)
        return time.perf_counter() - started

    return step


def bench_train(size: str, batch_size: int, steps: int, precision: str, reference: bool, n_px: int, vocab_size: int,
                warmup: int = 5, device: torch.device = CPU) -> dict:
    if steps < 1 or warmup < 0:
        raise ValueError(f"expected at least 1 timed step and no negative warm-up, got --steps {steps} --warmup {warmup}")
    config = model_config(size, n_px=n_px, vocab_size=vocab_size, objective="ar")
    tokens = torch.randint(0, vocab_size, (batch_size, config.seq_len), generator=torch.Generator().manual_seed(0))
    tokens = tokens.to(device)
    matmul_flops, attention_flops = (flops * tokens.numel() for flops in train_flops_per_token(config))
    flops_per_step = matmul_flops + attention_flops
    torch.manual_seed(0)
    ours = GPT(config).to(device)
    result = {
        "size": size, "parameters": ours.num_parameters(), "batch_size": batch_size, "seq_len": config.seq_len,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(), "flops_per_step": flops_per_step, "matmul_flops_per_step": matmul_flops,
        "attention_flops_per_step": attention_flops, "hardware": describe_hardware(),
        "load_average_before": os.getloadavg()[0],
    }
    runs = {f"ours ({precision}, SDPA)": training_step(ours, tokens, precision == "bf16")}
    if reference:
        runs["reference (float32, MHA + float mask)"] = training_step(ReferenceGPT(config).to(device), tokens, False)
    # Warm-up: first-touch memory, kernel selection, and the allocator growing its heap. The
    # reference's steps take several rounds to settle, each faster than the last, so a single
    # warm-up step would flatter our speed-up.
    for _ in range(warmup):
        for step in runs.values():
            step()
    # Rounds of one step each, and the matmul peak between them: a machine that gets busier or
    # quieter during the run weighs on every figure alike.
    times = {name: [] for name in runs}
    peaks = {"float32": [], "bfloat16": []}
    for _ in range(steps):
        for dtype in peaks:
            peaks[dtype].append(matmul_gflops(getattr(torch, dtype), device=device))
        for name, step in runs.items():
            times[name].append(step())
    for name, seconds in times.items():
        median = statistics.median(seconds)
        result[name] = {"seconds_per_step": median, "step_seconds": seconds,
                        "tokens_per_second": tokens.numel() / median, "gflops": flops_per_step / median / 1e9}
    result["matmul_gflops"] = {dtype: max(values) for dtype, values in peaks.items()}  # the best: never flattering
    for name, step in runs.items():
        result[name]["profiled_seconds"] = time_breakdown(step, device)
    result["load_average_after"] = os.getloadavg()[0]
    result["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    if device.type == "cuda":
        result["peak_gpu_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return result


def print_report(result: dict, precision: str) -> None:
    peaks = result["matmul_gflops"]
    peak = peaks["bfloat16" if precision == "bf16" else "float32"]
    print(f"igpt bench train: preset {result['size']} ({result['parameters'] / 1e6:.2f}M parameters), "
          f"batch {result['batch_size']} x {result['seq_len']} tokens, on {result.get('device', 'cpu')}, "
          f"{result['threads']} threads, malloc {result['malloc']}")
    print(f"  FLOPs per step (formula in igptlib/bench.py): {result['flops_per_step'] / 1e12:.3f} TFLOP")
    print(f"  matmul peak measured in this run: float32 {peaks['float32']:.0f} GFLOP/s, bfloat16 {peaks['bfloat16']:.0f} GFLOP/s "
          f"(load average {result['load_average_before']:.1f} before, {result['load_average_after']:.1f} after)")
    rows = {k: v for k, v in result.items() if isinstance(v, dict) and "gflops" in v}
    for name, row in rows.items():
        row_peak = peaks["float32"] if "float32" in name else peak
        spread = f"{min(row['step_seconds']):.2f}-{max(row['step_seconds']):.2f}"
        print(f"  {name:40s} {row['seconds_per_step']:7.2f} s/step ({spread})  {row['tokens_per_second']:9.0f} tokens/s  "
              f"{row['gflops']:6.1f} GFLOP/s  ({100 * row['gflops'] / row_peak:.0f}% of its precision's matmul peak)")
    print("  where a step's time goes (one more step under torch.profiler, which slows it a little):")
    for name, row in rows.items():
        split = row["profiled_seconds"]
        total = sum(split.values())
        shares = ", ".join(f"{family} {100 * seconds / total:.0f}%" for family, seconds in split.items()
                           if seconds >= total / 200)  # what rounds to 0% is left out
        print(f"    {name:38s} {total:6.2f} s: {shares}")
        if split["attention kernel"]:
            print(f"    {'':38s} its attention kernel: {result['attention_flops_per_step'] / split['attention kernel'] / 1e9:.0f} GFLOP/s "
                  f"of the formula's attention FLOPs")
    if len(rows) == 2:
        ours, ref = rows.values()
        print(f"  speed-up over the reference: {ours['tokens_per_second'] / ref['tokens_per_second']:.2f}x")
        # Our attention kernel's share of the measured step, plus every weight matmul at the peak:
        # no step of this model with this kernel can be faster than that.
        attention_share = ours["profiled_seconds"]["attention kernel"] / sum(ours["profiled_seconds"].values())
        floor = attention_share * ours["seconds_per_step"] + result["matmul_flops_per_step"] / (peak * 1e9)
        print(f"  ceiling with this attention kernel: {floor:.2f} s/step (its measured time, plus the weight matmuls "
              f"at the matmul peak), {ref['seconds_per_step'] / floor:.2f}x the reference")
    print(f"  peak resident memory of the benchmark: {result['peak_rss_gib']:.1f} GiB")
    if "peak_gpu_memory_gib" in result:
        print(f"  peak GPU memory allocated: {result['peak_gpu_memory_gib']:.1f} GiB")
