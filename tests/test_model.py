"""The GPT model: residual stream, causality, KV cache, BERT masking, overfitting, configs."""
import pytest
import torch

from igptlib.config import ACTIVATIONS, PRESETS, ConfigError, ModelConfig, model_config
from igptlib.model import ACTIVATION_FUNCTIONS, GPT, Block, ar_loss, bert_loss, mask_tokens


def tiny(**changes) -> ModelConfig:
    return ModelConfig.from_dict({"vocab_size": 8, "n_px": 6, "n_embd": 32, "n_layer": 2, "n_head": 4, **changes})


def random_tokens(config: ModelConfig, batch: int = 3, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, config.vocab_size, (batch, config.seq_len), generator=generator)


def test_block_keeps_the_residual_stream_when_its_outputs_are_zeroed():
    torch.manual_seed(0)
    block = Block(tiny())
    for proj in (block.attn.proj, block.mlp.proj):
        torch.nn.init.zeros_(proj.weight)
        torch.nn.init.zeros_(proj.bias)
    # Give the norms a non-trivial scale and shift: a block that added its sublayers to the normed
    # input (x = ln(x) + attn(ln(x))) would then visibly change x.
    for norm in (block.ln_1, block.ln_2):
        torch.nn.init.normal_(norm.weight)
        torch.nn.init.normal_(norm.bias)
    x = torch.randn(2, 36, 32) * 3 + 1
    torch.testing.assert_close(block(x), x, rtol=0, atol=0)


@pytest.mark.parametrize("t", [0, 17, 35])
def test_ar_logits_before_t_plus_one_ignore_pixel_t(t):
    torch.manual_seed(0)
    model = GPT(tiny()).eval()
    tokens = random_tokens(model.config)
    changed = tokens.clone()
    changed[:, t] = (changed[:, t] + 1) % model.config.vocab_size
    with torch.no_grad():
        before, after = model(tokens), model(changed)
    torch.testing.assert_close(before[:, : t + 1], after[:, : t + 1], rtol=0, atol=0)
    if t + 1 < model.config.seq_len:
        assert not torch.allclose(before[:, t + 1], after[:, t + 1])  # and the next one does see it


def test_bert_attention_is_bidirectional():
    torch.manual_seed(0)
    model = GPT(tiny(objective="bert")).eval()
    tokens = random_tokens(model.config)
    changed = tokens.clone()
    changed[:, -1] = (changed[:, -1] + 1) % model.config.vocab_size
    with torch.no_grad():
        assert not torch.allclose(model(tokens)[:, 0], model(changed)[:, 0])


def test_kv_cache_decoding_matches_the_full_forward_pass():
    torch.manual_seed(0)
    model = GPT(tiny()).eval()
    tokens = random_tokens(model.config)
    T = model.config.seq_len
    with torch.no_grad():
        full = model(tokens)
        cache = model.new_cache(len(tokens))
        rows = [model(tokens[:, :5], cache)]  # a prefix: SOS plus 5 tokens -> predictions of tokens 0..5
        rows.append(model(tokens[:, 5:9], cache))  # a chunk
        for t in range(9, T - 1):  # then one token at a time; the last pixel is never an input
            rows.append(model(tokens[:, t : t + 1], cache))
        decoded = torch.cat(rows, dim=1)
        assert cache.length == T
        with pytest.raises(ValueError, match="do not fit"):
            model(tokens[:, -1:], cache)
        # An empty prefix gives the prediction of the first pixel from SOS alone.
        first = model(tokens[:, :0], model.new_cache(len(tokens)))
    assert decoded.shape == full.shape
    torch.testing.assert_close(decoded, full, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(first[:, 0], full[:, 0], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("norm", ["layer", "rms"])
def test_branched_cache_and_decoder_match_the_full_forward_pass_at_every_step(norm):
    # The sampler's way: each image's prefix read once, the cache branched into its samples, then
    # decode steps (the Decoder) with a few chunks (kept pixels after a drawn one) in between.
    torch.manual_seed(0)
    model = GPT(tiny(norm=norm)).eval()
    images, copies, keep, T = 2, 3, 10, model.config.seq_len
    tokens = random_tokens(model.config, batch=images * copies)
    tokens[:, :keep] = tokens[::copies, :keep].repeat_interleave(copies, dim=0)  # the samples share the prefix
    with torch.no_grad():
        full = model(tokens)
        cache = model.new_cache(images)
        rows = [model(tokens[::copies, :keep], cache).repeat_interleave(copies, dim=0)]
        cache.branch(copies)
        assert cache.batch_size == images * copies and cache.shared == keep + 1
        decode = model.decoder()
        t = keep
        while t < T - 1:
            if t % 5 == 0:  # a chunk of 3 tokens, through forward
                rows.append(model(tokens[:, t : t + 3], cache))
                t += 3
            else:
                rows.append(decode(tokens[:, t], cache)[:, None])
                t += 1
        assert cache.length == T
        with pytest.raises(ValueError, match="a decode step reads one token"):
            decode(tokens[:, -1], cache)
    decoded = torch.cat(rows, dim=1)
    torch.testing.assert_close(decoded, full, rtol=1e-4, atol=1e-5)


def test_decoder_and_branch_refuse_what_they_cannot_do():
    model = GPT(tiny()).eval()
    tokens = random_tokens(model.config)
    cache = model.new_cache(3)
    with pytest.raises(ValueError, match="after slot 0"):
        model.decoder()(tokens[:, 0], cache)  # an empty cache: the SOS slot comes first, from forward
    model(tokens[:, :4], cache)
    with pytest.raises(ValueError, match=r"got \(3, 1\)"):
        model.decoder()(tokens[:, 4:5], cache)
    cache.branch(2)
    with pytest.raises(ValueError, match="branches once"):
        cache.branch(2)
    with pytest.raises(ValueError, match="holds 6 sequences"):
        model(tokens[:, 4:6], cache)


def test_single_query_attention_equals_sdpa_over_a_cache_slice():
    import torch.nn.functional as F

    from igptlib.model import single_query_attention

    torch.manual_seed(0)
    keys, values = torch.randn(2, 3 * 8, 50, 16).unbind(0)  # a cache buffer [B * H, max_len, D]
    query = torch.randn(3, 8, 1, 16)
    k, v = keys[:, :37], values[:, :37]  # the slots read so far: a strided view, as in decoding
    expected = F.scaled_dot_product_attention(query, k.view(3, 8, 37, 16), v.view(3, 8, 37, 16))
    got = single_query_attention(query.view(3 * 8, 1, 16), k, v)  # 24 groups of one query
    torch.testing.assert_close(got.view(3, 8, 1, 16), expected, rtol=1e-5, atol=1e-6)


def test_single_query_attention_over_shared_slots_equals_sdpa_over_all_of_them():
    import torch.nn.functional as F

    from igptlib.model import single_query_attention

    torch.manual_seed(0)
    M, G, P, S, D = 4, 3, 20, 7, 16  # 4 groups (images x heads) of 3 queries; 20 shared slots, 7 own
    shared_keys, shared_values = torch.randn(2, M, P, D).unbind(0)
    keys, values = torch.randn(2, M * G, 50, D).unbind(0)
    keys, values = keys[:, :S], values[:, :S]
    query = torch.randn(M, G, D)
    # What each query attends over: its group's shared slots, then its own.
    all_keys = torch.cat([shared_keys.repeat_interleave(G, dim=0), keys], dim=1)
    all_values = torch.cat([shared_values.repeat_interleave(G, dim=0), values], dim=1)
    expected = F.scaled_dot_product_attention(query.view(M * G, 1, D), all_keys, all_values).view(M, G, D)
    got = single_query_attention(query, keys, values, shared_keys, shared_values)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_kv_cache_is_refused_for_bert():
    model = GPT(tiny(objective="bert"))
    with pytest.raises(ValueError, match="objective 'ar'"):
        model(random_tokens(model.config)[:, :3], model.new_cache(3))


def test_bert_masking_rate_and_loss_positions():
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 16, (64, 784), generator=generator)
    masked, mask = mask_tokens(tokens, 0.15, mask_token=16, generator=generator)
    assert abs(mask.float().mean().item() - 0.15) < 0.005
    assert (masked[mask] == 16).all() and torch.equal(masked[~mask], tokens[~mask])

    # Only masked positions count: changing the logits elsewhere leaves the loss as it is.
    logits = torch.randn(64, 784, 16, generator=generator)
    loss = bert_loss(logits, tokens, mask)
    scrambled = logits.clone()
    scrambled[~mask] = torch.randn(int((~mask).sum()), 16, generator=generator)
    torch.testing.assert_close(bert_loss(scrambled, tokens, mask), loss)
    expected = torch.nn.functional.cross_entropy(logits[mask], tokens[mask])
    torch.testing.assert_close(loss, expected)


def test_bert_model_reads_the_mask_token_and_masks_with_its_rate():
    model = GPT(tiny(objective="bert", mask_prob=0.5))
    tokens = random_tokens(model.config, batch=2)
    loss = model.generative_loss(tokens, generator=torch.Generator().manual_seed(0))
    assert loss.ndim == 0 and torch.isfinite(loss)
    with pytest.raises(ValueError, match="token ids must lie in 0..7"):
        GPT(tiny())(tokens.masked_fill(tokens == 0, 8))  # the mask id is no valid AR input


def test_mask_corrupts_at_the_models_rate_with_its_mask_token_and_is_for_bert_only():
    model = GPT(tiny(objective="bert", mask_prob=0.3))
    tokens = random_tokens(model.config, batch=200)
    masked, mask = model.mask(tokens, torch.Generator().manual_seed(0))
    assert abs(mask.float().mean().item() - 0.3) < 0.01
    assert (masked[mask] == model.config.mask_token).all() and torch.equal(masked[~mask], tokens[~mask])
    again, _ = model.mask(tokens, torch.Generator().manual_seed(0))
    assert torch.equal(again, masked)  # a seeded generator gives the same masks
    with pytest.raises(ValueError, match="objective 'bert'"):
        GPT(tiny()).mask(tokens)


def test_a_bert_model_learns_to_fill_pixels_that_only_later_pixels_determine():
    """A task with a known answer: the second half of each sequence mirrors the first, so a masked
    first half can only be read off the later pixels (causal attention would leave pixel 0 at chance,
    1/8). A few seconds of BERT training fill it in: the objective, the mask token and the
    bidirectional attention work together."""
    torch.manual_seed(0)
    model = GPT(tiny(n_px=4, mask_prob=0.5, objective="bert"))  # 16 pixels: 8 free, 8 mirrored
    generator = torch.Generator().manual_seed(0)

    def mirrored(batch: int) -> torch.Tensor:
        half = torch.randint(0, 8, (batch, 8), generator=generator)
        return torch.cat([half, half.flip(1)], dim=1)

    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(150):
        loss = model.generative_loss(mirrored(64), generator)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    tokens = mirrored(256)
    first_half_masked = tokens.clone()
    first_half_masked[:, :8] = model.config.mask_token
    with torch.no_grad():
        filled = model.eval()(first_half_masked)[:, :8].argmax(dim=-1)
    assert (filled == tokens[:, :8]).float().mean() > 0.95
    assert (filled[:, 0] == tokens[:, 0]).float().mean() > 0.95


def test_the_finetuning_pass_masks_bert_inputs_and_leaves_ar_as_it_was():
    torch.manual_seed(0)
    ar = GPT(tiny()).eval()
    tokens = random_tokens(ar.config)
    with torch.no_grad():
        loss, classes = ar.loss_and_classes(tokens)
        torch.testing.assert_close(loss, ar_loss(ar(tokens), tokens))
        torch.testing.assert_close(classes, ar.classify(tokens))

        bert = GPT(tiny(objective="bert")).eval()
        loss, classes = bert.loss_and_classes(tokens, torch.Generator().manual_seed(3))
        masked, mask = bert.mask(tokens, torch.Generator().manual_seed(3))  # the same masks
        assert mask.any()
        torch.testing.assert_close(loss, bert_loss(bert(masked), tokens, mask))
        torch.testing.assert_close(classes, bert.classify(masked))  # classified from the masked images
        assert not torch.allclose(classes, bert.classify(tokens))


@pytest.mark.parametrize("objective", ["ar", "bert"])
def test_a_tiny_model_overfits_one_batch(objective):
    torch.manual_seed(0)
    model = GPT(tiny(objective=objective, mask_prob=0.3))
    tokens = random_tokens(model.config, batch=4)
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)
    first = None
    for _ in range(80):
        # BERT: the same mask every step, so that one batch means one fixed set of targets.
        loss = model.generative_loss(tokens, generator=torch.Generator().manual_seed(0))
        first = first if first is not None else loss.item()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    # Random tokens over 8 colours start near ln 8 = 2.08 nats; memorising them drives it towards 0.
    assert first > 1.8
    assert loss.item() < 0.2


def test_features_and_classification_shapes():
    torch.manual_seed(0)
    model = GPT(tiny())
    tokens = random_tokens(model.config)
    for layer in range(model.config.n_layer + 1):
        features = model.features(tokens, layer)
        assert features.shape == (3, 32)
    assert model.classify(tokens).shape == (3, 10)
    logits, classes = model.forward_with_classes(tokens)
    torch.testing.assert_close(logits, model(tokens))
    torch.testing.assert_close(classes, model.classify(tokens))
    with pytest.raises(ValueError, match="layer must lie in 0..2"):
        model.features(tokens, 3)


def test_one_whole_pass_gives_the_logits_the_classes_and_every_layers_features():
    torch.manual_seed(0)
    model = GPT(tiny()).eval()
    tokens = random_tokens(model.config)
    logits, classes, features = model.forward_all(tokens, layers=[2, 0])
    torch.testing.assert_close(logits, model(tokens))
    torch.testing.assert_close(classes, model.classify(tokens))
    assert list(features) == [2, 0]  # in the order asked for
    for layer in (0, 2):
        torch.testing.assert_close(features[layer], model.features(tokens, layer))
    with pytest.raises(ValueError, match="layer must lie in 0..2, got -1"):
        model.forward_all(tokens, layers=[-1])


def test_ar_loss_of_a_uniform_model_is_log_vocab():
    logits = torch.zeros(2, 10, 16)
    tokens = torch.randint(0, 16, (2, 10))
    torch.testing.assert_close(ar_loss(logits, tokens), torch.tensor(16.0).log())


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_round_trips_through_yaml(name, tmp_path):
    config = model_config(name, vocab_size=16)
    path = config.save_yaml(tmp_path / f"{name}.yaml")
    assert ModelConfig.load_yaml(path) == config


def test_paper_presets_have_the_papers_shapes():
    shapes = {name: (PRESETS[name]["n_embd"], PRESETS[name]["n_layer"], PRESETS[name]["n_head"]) for name in PRESETS}
    assert shapes["igpt-s"] == (512, 24, 8)
    assert shapes["igpt-m"] == (1024, 36, 8)
    assert shapes["igpt-l"] == (1536, 48, 16)


def test_bad_model_configs_are_refused_clearly(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['n_embed'\]"):
        ModelConfig.from_dict({"n_embed": 64})
    with pytest.raises(ConfigError, match="ModelConfig.n_layer: expected an integer, got '8'"):
        ModelConfig.from_dict({"n_layer": "8"})
    with pytest.raises(ConfigError, match="multiple of n_head"):
        ModelConfig(n_embd=100, n_head=8)
    with pytest.raises(ConfigError, match="objective"):
        ModelConfig(objective="mlm")
    with pytest.raises(ConfigError, match=r"ModelConfig.norm: expected one of \['layer', 'rms'\], got 'batch'"):
        ModelConfig(norm="batch")
    with pytest.raises(ConfigError, match="ModelConfig.activation: expected one of .*'quick_gelu'.*, got 'relu'"):
        ModelConfig(activation="relu")
    with pytest.raises(ConfigError, match="unknown model preset 'xl'"):
        model_config("xl")
    (tmp_path / "bad.yaml").write_text("n_layer: 2\nwidth: 64\n")
    with pytest.raises(ConfigError, match="width"):
        ModelConfig.load_yaml(tmp_path / "bad.yaml")


def test_every_activation_a_config_accepts_has_its_function():
    # The names are igptlib.config's, which imports nothing of the model; the functions are the model's.
    assert set(ACTIVATION_FUNCTIONS) == set(ACTIVATIONS)


def test_shipped_models_load_and_configs_without_the_newer_keys_keep_todays_model():
    """norm and activation came after the shipped files: a config without them is the LayerNorm, exact-GELU model."""
    import torch.nn.functional as F
    import yaml
    from safetensors import safe_open

    from igptlib.shipped import MODELS_DIR, load_model, shipped_models

    assert shipped_models()
    for name in shipped_models():
        with safe_open(str(MODELS_DIR / f"{name}.safetensors"), framework="pt") as handle:
            stored = yaml.safe_load(handle.metadata()["model"])
        older = {key: value for key, value in stored.items() if key not in ("norm", "activation")}
        config = ModelConfig.from_dict(older)
        assert (config.norm, config.activation) == ("layer", "gelu")
        assert {key: value for key, value in config.to_dict().items() if key in older} == older
        module = load_model(name)
        assert module.model_config == config
        assert isinstance(module.model.ln_f, torch.nn.LayerNorm) and module.model.blocks[0].mlp.activation is F.gelu
        with torch.no_grad():
            assert torch.isfinite(module.model(random_tokens(config, batch=1))).all()

