"""Completion and generation: kept pixels, seeds, greedy decoding, cache against the naive sampler."""
import pytest
import torch

from igptlib.bench_sampling import complete_naive
from igptlib.config import model_config
from igptlib.model import GPT
from igptlib.sampling import complete, complete_masked, generate, keep_from_mask, sample_next, tokens_in_rows


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    model = GPT(model_config("xs", vocab_size=16, n_px=8)).eval()
    # Untrained GPT-2 init gives nearly flat logits; spread them so that greedy choices are never
    # near-ties that float rounding between two exact computations could flip.
    torch.nn.init.normal_(model.head.weight, std=1.0)
    return model


@pytest.fixture(scope="module")
def images():
    return torch.randint(0, 16, (3, 64), generator=torch.Generator().manual_seed(1))


def test_kept_pixels_are_never_changed(model, images):
    keep = tokens_in_rows(8, 5)
    completed = complete(model, images, keep, samples=4, seed=0)
    assert completed.shape == (3, 4, 64) and completed.dtype == torch.long
    assert torch.equal(completed[:, :, :keep], images[:, None, :keep].expand(3, 4, keep))
    assert 0 <= completed.min() and completed.max() < 16


def test_the_same_seed_gives_the_same_samples(model, images):
    first = complete(model, images, 20, samples=4, seed=7)
    assert torch.equal(first, complete(model, images, 20, samples=4, seed=7))
    assert not torch.equal(first, complete(model, images, 20, samples=4, seed=8))
    # Samples of one image differ from each other: they are draws, not copies.
    assert not torch.equal(first[0, 0], first[0, 1])


def test_top_k_of_one_is_greedy_decoding(model, images):
    greedy = complete(model, images, 16, samples=2, temperature=0)
    assert torch.equal(complete(model, images, 16, samples=2, top_k=1, seed=3), greedy)
    assert torch.equal(greedy[:, 0], greedy[:, 1])


def test_cache_and_naive_samplers_agree_under_greedy_decoding(model, images):
    for keep in (0, 1, 30):
        cached = complete(model, images, keep, samples=2, temperature=0)
        naive = complete_naive(model, images, keep, samples=2, temperature=0)
        assert torch.equal(cached, naive), f"keep={keep}"


def test_cache_and_naive_samplers_draw_the_same_random_samples(model, images):
    # Both consume the generator identically, so seeded sampling agrees as well.
    assert torch.equal(complete(model, images, 24, samples=3, seed=5), complete_naive(model, images, 24, samples=3, seed=5))


@pytest.mark.parametrize("temperature, top_k", [(1.0, None), (0.7, None), (1.0, 5)])
def test_sample_next_draws_what_torch_multinomial_draws(temperature, top_k):
    # sample_next draws as torch.multinomial does, without its checks: the same tokens from the
    # same generator, which is left in the same state.
    logits = torch.randn(64, 16, generator=torch.Generator().manual_seed(0)) * 3
    ours, theirs = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    for _ in range(20):
        scaled = logits / temperature
        if top_k is not None:
            scaled = scaled.masked_fill(scaled < scaled.topk(top_k, dim=-1).values[:, -1:], float("-inf"))
        expected = torch.multinomial(scaled.softmax(dim=-1), 1, generator=theirs).squeeze(1)
        assert torch.equal(sample_next(logits, temperature, top_k, ours), expected)
    assert torch.equal(ours.get_state(), theirs.get_state())


def test_masked_completion_reads_kept_pixels_after_drawn_ones(model, images):
    # Kept pixels after missing ones (the left half of each row) are read in chunks between the
    # decode steps; under greedy decoding the result is a whole forward pass per drawn pixel's.
    mask = torch.zeros(8, 8, dtype=torch.bool)
    mask[:2] = True
    mask[2:, :4] = True
    completed = complete_masked(model, images, mask, samples=2, temperature=0)
    expected = images.repeat_interleave(2, dim=0).clone()
    with torch.no_grad():
        for position in (~mask.flatten()).nonzero().flatten().tolist():
            expected[:, position] = model(expected[:, : position + 1])[:, position].argmax(dim=-1)
    assert torch.equal(completed, expected.view(3, 2, 64))


def test_unconditional_generation(model):
    samples = generate(model, 5, seed=0)
    assert samples.shape == (5, 64)
    assert torch.equal(samples, generate(model, 5, seed=0))


def test_unconditional_generation_can_show_its_progress(model, capsys):
    assert torch.equal(generate(model, 2, seed=0, progress=True), generate(model, 2, seed=0))
    err = capsys.readouterr().err
    assert "sampling:" in err and "/64 [" in err  # a bar over the 64 pixels of the 8x8 images


def test_kept_mask_must_be_a_raster_prefix():
    top_half = torch.zeros(8, 8, dtype=torch.bool)
    top_half[:4] = True
    assert keep_from_mask(top_half) == 32
    partial_row = torch.zeros(8, 8, dtype=torch.bool)
    partial_row[:2] = True
    partial_row[2, :3] = True
    assert keep_from_mask(partial_row) == 19
    left_half = torch.zeros(8, 8, dtype=torch.bool)
    left_half[:, :4] = True
    with pytest.raises(ValueError, match="must come first in raster order: pixel 4 is missing"):
        keep_from_mask(left_half)


def test_bad_arguments_are_clear(model, images):
    with pytest.raises(ValueError, match="keep must lie in 0..64"):
        complete(model, images, 65)
    with pytest.raises(ValueError, match="samples must be a positive integer"):
        complete(model, images, 10, samples=0)
    with pytest.raises(ValueError, match="temperature must be 0"):
        complete(model, images, 10, temperature=-1)
    with pytest.raises(ValueError, match="rows to keep must lie in 0..8"):
        tokens_in_rows(8, 9)
    bert = GPT(model_config("xs", vocab_size=16, n_px=8, objective="bert"))
    with pytest.raises(ValueError, match="needs a model trained with objective 'ar'"):
        complete(bert, images, 10)


def test_the_sampling_benchmark_times_both_samplers_and_splits_a_pixels_time(capsys):
    from igptlib.bench import BETWEEN
    from igptlib.bench_sampling import bench_sample, print_report

    result = bench_sample("xs", samples=2, rows=26, repeats=1)  # the bottom 2 rows: 56 pixels drawn
    assert result["pixels_sampled"] == 56 and result["cached_s"] > 0 and result["naive_s"] > 0
    split = result["cached_profiled_seconds"]
    for family in ("weight matmuls", "attention over the cache", "the draw (exponential race, argmax)", BETWEEN):
        assert split[family] > 0, family
    print_report(result)
    printed = capsys.readouterr().out
    assert "ms per drawn pixel" in printed and "attention over the cache" in printed
    # The machine and its load go with the figures: a timing beside other work is one to discard.
    assert result["hardware"] in printed and result["load_average_before"] >= 0 and result["load_average_after"] >= 0
