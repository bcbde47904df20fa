"""`igpt bench train`: its baseline is the same model, and its report splits a step's time honestly."""
import pytest
import torch

from igptlib.bench import ReferenceGPT, bench_train, print_report, train_flops_per_token
from igptlib.cli import main
from igptlib.config import model_config
from igptlib.model import GPT


def reference_with_weights_of(model: GPT) -> ReferenceGPT:
    """A ReferenceGPT holding `model`'s weights, under nn.MultiheadAttention's and nn.Sequential's names."""
    renames = {
        ".attn.qkv.weight": ".attn.in_proj_weight", ".attn.qkv.bias": ".attn.in_proj_bias",
        ".attn.proj.": ".attn.out_proj.", ".mlp.fc.": ".mlp.0.", ".mlp.proj.": ".mlp.2.",
    }
    weights = {}
    for name, tensor in model.state_dict().items():
        if name.startswith("clf_head."):
            continue  # the benchmark trains the generative objective only
        for ours, theirs in renames.items():
            name = name.replace(ours, theirs)
        weights[name] = tensor
    reference = ReferenceGPT(model.config)
    reference.load_state_dict(weights)  # strict: every parameter of the baseline is accounted for
    return reference


def test_the_reference_computes_the_same_function_as_our_model():
    torch.manual_seed(0)
    config = model_config("xs", n_px=8, vocab_size=16)
    model = GPT(config).eval()
    reference = reference_with_weights_of(model).eval()
    tokens = torch.randint(0, 16, (3, config.seq_len), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(reference(tokens), model(tokens), atol=1e-5, rtol=1e-4)


def test_flops_split_into_weight_matmuls_and_attention():
    config = model_config("s", vocab_size=16)
    matmuls, attention = train_flops_per_token(config)
    assert matmuls == 6 * (8 * 12 * 256**2 + 256 * 16)
    assert attention == 6 * 8 * 784 * 256  # causal: half of QK^T and AV, forward and backward
    _, bert_attention = train_flops_per_token(model_config("s", vocab_size=16, objective="bert"))
    assert bert_attention == 2 * attention


def test_bench_reports_where_each_models_time_goes(capsys):
    result = bench_train("xs", batch_size=2, steps=1, precision="bf16", reference=True, n_px=8, vocab_size=16, warmup=1)
    result["malloc"] = "default"
    assert "torch threads" in result["hardware"] or " x " in result["hardware"]  # the CPU and threads, or the GPUs
    ours, reference = result["ours (bf16, SDPA)"], result["reference (float32, MHA + float mask)"]
    for row in (ours, reference):
        assert row["seconds_per_step"] > 0 and sum(row["profiled_seconds"].values()) > 0
    # Ours runs the fused SDPA kernel; the reference's default MultiheadAttention call never does.
    assert ours["profiled_seconds"]["attention kernel"] > 0
    assert reference["profiled_seconds"]["attention kernel"] == 0
    assert reference["profiled_seconds"]["softmax"] > 0
    print_report(result, "bf16")
    printed = capsys.readouterr().out
    assert "speed-up over the reference" in printed and "ceiling with this attention kernel" in printed


def test_bench_refuses_a_run_with_nothing_to_time(capsys):
    with pytest.raises(SystemExit) as refused:  # argparse's own check of the flag's type
        main(["bench", "train", "--size", "xs", "--steps", "0"])
    assert refused.value.code == 2 and "argument --steps: expected a positive integer, got 0" in capsys.readouterr().err
    assert main(["bench", "train", "--size", "xs", "--warmup", "-1"]) == 2
    assert "expected at least 1 timed step and no negative warm-up" in capsys.readouterr().err
