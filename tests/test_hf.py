"""transformers' ImageGPT in and out (igptlib.hf): the same logits and greedy completions both ways.

Every model here is a tiny random one built in the test (no download): a transformers ImageGPT
from a random config, or an igptlib GPT with OpenAI iGPT's RMS norm. All their parameters are
randomised, norm weights and biases included, so a tensor mapped to the wrong place shows.
"""
import json
import re
import sys

import numpy as np
import pytest
import torch
import transformers
import yaml
from PIL import Image

from igptlib.bench_sampling import complete_transformers
from igptlib.cli import main
from igptlib.config import ModelConfig
from igptlib.hf import HFError, export_hf, import_hf, to_transformers
from igptlib.lightning_module import ImageGPT
from igptlib.quantize import encode
from igptlib.sampling import complete, tokens_in_rows
from igptlib.shipped import load_model, save_model, shipped_models

# (channels, n_px, transformers activation): a 16-grey MNIST-like palette, and an RGB one as OpenAI's.
KINDS = {"gray": (1, 12, "gelu_pytorch_tanh"), "rgb": (3, 8, "quick_gelu")}
K = 16


def randomise(model: torch.nn.Module, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            noise = torch.randn(parameter.shape, generator=generator)
            parameter.copy_(1 + 0.1 * noise if "ln_" in name else 0.15 * noise)


def clusters_for(channels: int, seed: int) -> np.ndarray:
    """Clusters [K, 3] in [-1, 1] as transformers' image processor holds them; grey ones have R = G = B."""
    levels = np.random.default_rng(seed).uniform(-1, 1, (K, channels))
    return np.repeat(levels, 3 // channels, axis=1)


def hf_folder(path, kind: str, seed: int = 0):
    """A random transformers ImageGPT saved as a folder (config, weights, processor with clusters)."""
    channels, n_px, activation = KINDS[kind]
    config = transformers.ImageGPTConfig(vocab_size=K + 1, n_positions=n_px * n_px, n_embd=32, n_layer=2, n_head=4,
                                         activation_function=activation)
    torch.manual_seed(seed)
    model = transformers.ImageGPTForCausalImageModeling(config).eval()
    randomise(model, seed)
    clusters = clusters_for(channels, seed)
    model.save_pretrained(path)
    transformers.ImageGPTImageProcessor(clusters=clusters, size={"height": n_px, "width": n_px}).save_pretrained(path)
    return model, clusters


def hf_logits(model, tokens: torch.Tensor) -> torch.Tensor:
    """transformers' next-pixel logits for whole images: SOS first, the last pixel only a target."""
    sos = torch.full((len(tokens), 1), model.config.vocab_size - 1)
    with torch.no_grad():
        return model(torch.cat([sos, tokens[:, :-1]], dim=1)).logits


def assert_same_model(gpt, hf_model, n_px: int, seed: int = 1) -> None:
    """Same logits to 1e-5 (float32) and the same greedy completion of the bottom half."""
    tokens = torch.randint(0, gpt.config.vocab_size, (3, n_px * n_px), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        ours = gpt(tokens)
    torch.testing.assert_close(ours, hf_logits(hf_model, tokens), rtol=0, atol=1e-5)
    keep = tokens_in_rows(n_px, n_px // 2)
    greedy = complete(gpt, tokens, keep, samples=1, temperature=0)
    theirs = complete_transformers(hf_model, tokens, keep, samples=1, temperature=0)
    assert torch.equal(greedy, theirs)
    assert len(greedy.unique()) > 2  # a real completion, not one colour repeated


@pytest.mark.parametrize("kind", KINDS)
def test_a_transformers_model_imports_and_exports_back_unchanged(kind, tmp_path, capsys):
    channels, n_px, _ = KINDS[kind]
    original, clusters = hf_folder(tmp_path / "hf", kind)
    out = tmp_path / "imported.safetensors"
    assert main(["import-hf", str(tmp_path / "hf"), "--out", str(out)]) == 0
    assert str(out) in capsys.readouterr().out

    module = load_model(out)
    config = module.model_config
    assert (config.vocab_size, config.n_px, config.norm, config.objective) == (K, n_px, "rms", "ar")
    assert module.palette.shape == (K, channels)  # grey clusters become a 1-channel palette
    np.testing.assert_allclose(module.palette, (clusters[:, :channels] + 1) * 127.5, atol=1e-4)
    assert_same_model(module.model, original, n_px)

    folder = tmp_path / "back"
    assert main(["export", "--format", "hf", "--model", str(out), "--out", str(folder)]) == 0
    back = transformers.ImageGPTForCausalImageModeling.from_pretrained(folder).eval()
    assert back.config.activation_function == original.config.activation_function
    assert_same_model(module.model, back, n_px)
    for name, tensor in original.state_dict().items():
        torch.testing.assert_close(back.state_dict()[name], tensor, rtol=0, atol=0, msg=name)
    processor = transformers.ImageGPTImageProcessor.from_pretrained(folder)
    np.testing.assert_allclose(np.asarray(processor.clusters), clusters, atol=1e-5)
    card = (folder / "README.md").read_text()
    assert yaml.safe_load(card.split("---")[1])["license"] == "other"  # imported weights keep their own license
    assert "converted by igptlib from the transformers ImageGPT model hf;" in card
    assert str(tmp_path) not in card, "no local path in a card"


@pytest.mark.parametrize("kind", KINDS)
def test_an_igpt_model_exports_to_transformers_and_imports_back(kind, tmp_path):
    channels, n_px, _ = KINDS[kind]
    activation = {"gray": "gelu", "rgb": "gelu_tanh"}[kind]
    torch.manual_seed(0)
    palette = np.sort(np.random.default_rng(0).uniform(0, 255, (K, channels)).astype(np.float32), axis=0)
    module = ImageGPT(ModelConfig(vocab_size=K, n_px=n_px, n_embd=32, n_layer=2, n_head=4, norm="rms",
                                  activation=activation), palette=palette).eval()
    randomise(module.model, 3)
    source = tmp_path / "ours.safetensors"
    save_model(module, source, dataset="mnist" if channels == 1 else "cifar10")

    folder = export_hf(source, tmp_path / "hf")
    theirs = transformers.ImageGPTForCausalImageModeling.from_pretrained(folder).eval()
    assert_same_model(module.model, theirs, n_px)
    # transformers' own processor quantises an image to the tokens our palette gives it.
    processor = transformers.ImageGPTImageProcessor.from_pretrained(folder)
    image = np.random.default_rng(1).integers(0, 256, (n_px, n_px, 3), dtype=np.uint8)
    if channels == 1:
        image[:] = image[:, :, :1]
    ours = encode(torch.from_numpy(image).permute(2, 0, 1)[:channels], palette)
    assert torch.equal(processor(images=image, do_resize=False, return_tensors="pt")["input_ids"][0], ours)

    card = (folder / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert front["license"] == "mit" and front["library_name"] == "transformers" and "trained with igptlib" in card
    assert front["datasets"] == ["ylecun/mnist" if channels == 1 else "uoft-cs/cifar10"] and front["metrics"]
    assert front["pipeline_tag"] == "unconditional-image-generation" and "model-index" not in front  # no record
    assert "\n# ours\n" in card and "No evaluation of this model was recorded" in card
    generation = json.loads((folder / "generation_config.json").read_text())
    assert (generation["bos_token_id"], generation["max_length"], generation["do_sample"]) == (K, n_px * n_px + 1, True)

    back = tmp_path / "back.safetensors"
    import_hf(folder, back)
    again = load_model(back)
    assert again.palette.shape == (K, channels)
    np.testing.assert_allclose(again.palette, palette, atol=1e-4)
    tokens = torch.randint(0, K, (2, n_px * n_px))
    with torch.no_grad():
        torch.testing.assert_close(again.model(tokens), module.model(tokens), rtol=0, atol=1e-5)


def tiny_rms_module(n_px: int = 8, seed: int = 3) -> ImageGPT:
    """A tiny random ImageGPT with OpenAI iGPT's RMS norm and a 16-grey palette, as a trained one would be."""
    torch.manual_seed(seed)
    palette = np.linspace(0, 255, K, dtype=np.float32)[:, None]
    module = ImageGPT(ModelConfig(vocab_size=K, n_px=n_px, n_embd=32, n_layer=2, n_head=4, norm="rms"),
                      palette=palette).eval()
    randomise(module.model, seed)
    return module


def python_blocks(markdown: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", markdown, re.S)


def test_a_shipped_rms_model_exports_ready_for_a_hub(tmp_path, monkeypatch, capsys):
    """`igpt export --format hf` of a shipped model: its logits through from_pretrained, its card with
    its name and its record's results, and the card's generate() example run as written."""
    from igptlib import shipped

    module = tiny_rms_module()
    models = tmp_path / "models"
    save_model(module, models / "tiny.safetensors", dataset="mnist")
    # The record `igpt evaluate --model tiny` writes; its numbers are the test's: the card must carry them.
    record = tmp_path / "report" / "runs" / "shipped-tiny"
    record.mkdir(parents=True)
    evaluation = {"model": module.model_config.to_dict(), "test_images": 10000, "likelihood":
                  {"nats_per_pixel": 2.0127, "bits_per_pixel": 2.0127 / np.log(2)},
                  "probes": {"best_layer": 1, "best_test_accuracy": 0.4316}}
    (record / "evaluation.json").write_text(json.dumps(evaluation))
    monkeypatch.setattr(shipped, "MODELS_DIR", models)
    monkeypatch.chdir(tmp_path)  # where a clone's report/runs/ would be

    assert main(["export", "--format", "hf", "--model", "tiny", "--out", "tiny-hf"]) == 0
    assert "generation_config.json" in capsys.readouterr().out
    folder = tmp_path / "tiny-hf"
    theirs = transformers.ImageGPTForCausalImageModeling.from_pretrained(folder).eval()
    assert_same_model(module.model, theirs, 8)  # logits within 1e-5, the same greedy completion

    card = (folder / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert "\n# tiny\n" in card and str(tmp_path) not in card
    assert front["pipeline_tag"] == "unconditional-image-generation" and front["datasets"] == ["ylecun/mnist"]
    [index] = front["model-index"]
    assert index["name"] == "tiny"
    likelihood, probe = index["results"]
    assert likelihood["dataset"] == probe["dataset"] == {"type": "ylecun/mnist", "name": "mnist", "split": "test"}
    assert [metric["value"] for metric in likelihood["metrics"]] == [2.0127, round(2.0127 / np.log(2), 4)]
    assert probe["task"]["type"] == "image-classification" and probe["metrics"][0]["value"] == 0.4316
    assert "2.0127 nats per pixel" in card and "accuracy 0.4316" in card

    # The card's example, run as written from the folder's parent (its model_id is the folder's name).
    [example] = python_blocks(card)
    namespace = {}
    state = torch.random.get_rng_state()
    exec(compile(example, "README.md", "exec"), namespace)
    torch.random.set_rng_state(state)
    images, completed = namespace["images"], namespace["completed"]
    assert images.shape == (4, 8, 8, 3) and completed.shape == (1, 8, 8, 3)
    assert set(np.unique(images)) <= set(np.rint(module.palette[:, 0]).astype(np.uint8))  # the palette's greys
    assert not (images == images[:1]).all(), "sampled, not one image repeated"
    assert (completed[0, :4] == images[0, :4]).all(), "the kept top half stays"

    # Re-trained in another shape, the model no longer matches its record: no results are claimed.
    evaluation["model"] = {**evaluation["model"], "norm": "layer"}
    (record / "evaluation.json").write_text(json.dumps(evaluation))
    export_hf("tiny", tmp_path / "again")
    card = (tmp_path / "again" / "README.md").read_text()
    assert "model-index" not in yaml.safe_load(card.split("---")[1]) and "No evaluation of this model" in card


def test_an_imported_models_card_names_its_hub_id_not_the_cache_path(tmp_path):
    cache = tmp_path / "hub" / "models--openai--imagegpt-tiny" / "snapshots" / "0123abcd"
    hf_folder(cache, "rgb")
    import_hf(cache, tmp_path / "imported.safetensors")
    card = (export_hf(tmp_path / "imported.safetensors", tmp_path / "out") / "README.md").read_text()
    assert "converted by igptlib from the transformers ImageGPT model openai/imagegpt-tiny;" in card
    assert str(tmp_path) not in card


@pytest.mark.parametrize("name", shipped_models())
def test_every_shipped_model_exports_with_the_same_logits(name, tmp_path, request):
    module = load_model(name)
    if module.model_config.norm != "rms":
        request.applymarker(pytest.mark.xfail(raises=HFError, strict=True,
                                              reason="a LayerNorm model: re-trained with norm rms, it exports"))
    folder = export_hf(name, tmp_path / name)
    theirs = transformers.ImageGPTForCausalImageModeling.from_pretrained(folder).eval()
    assert_same_model(module.model, theirs, module.model_config.n_px)


def rgb_picture() -> np.ndarray:
    """A 20x14 RGB picture on white paper: a red block and a blue one."""
    picture = np.full((14, 20, 3), 255, dtype=np.uint8)
    picture[3:11, 2:9] = (200, 30, 30)
    picture[3:11, 11:18] = (20, 40, 220)
    return picture


@pytest.fixture()
def rgb_model(tmp_path):
    hf_folder(tmp_path / "hf", "rgb")
    return import_hf(tmp_path / "hf", tmp_path / "igpt-rgb.safetensors")


def test_igpt_complete_reads_an_rgb_png_with_an_imported_rgb_model(rgb_model, tmp_path, capsys):
    Image.fromarray(rgb_picture()).save(tmp_path / "blocks.png")
    figure = tmp_path / "fig.png"
    args = ["complete", "--model", str(rgb_model), "--image", str(tmp_path / "blocks.png"), "--samples", "2",
            "--out", str(figure)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "mode RGB" in out and "resized 20x20 to 8x8" in out
    assert "converted" not in out and "inverted" not in out  # RGB stays RGB; white paper stays white
    assert figure.stat().st_size > 0


def test_the_explorer_completes_an_rgb_upload_with_an_imported_model(rgb_model, upload, tmp_path, monkeypatch):
    from test_explorer import png_bytes

    from igptlib.explorer import Explorer

    monkeypatch.delenv("IGPT_EXPLORER_MODEL", raising=False)
    explorer = Explorer(str(rgb_model), data_root=tmp_path / "no-data", samples=2, rows=4, models_dir=tmp_path / "none")
    assert explorer.complete() is None and "no cifar10 files under" in explorer.error  # an RGB model's test images
    upload(explorer, "blocks.png", png_bytes(rgb_picture()))
    result = explorer.complete()
    assert explorer.error == ""
    assert result.samples.shape == (2, 64) and result.original.shape == (3, 8, 8)
    assert torch.equal(result.samples[:, :32], result.tokens[None, :32].expand(2, 32))


def test_transformers_generate_keeps_the_prefix_and_draws_valid_colours(tmp_path):
    original, _ = hf_folder(tmp_path / "hf", "rgb")
    tokens = torch.randint(0, K, (2, 64))
    samples = complete_transformers(original, tokens, keep=20, samples=3, temperature=1.0, top_k=5, seed=0)
    assert samples.shape == (2, 3, 64)
    assert torch.equal(samples[:, :, :20], tokens[:, None, :20].expand(2, 3, 20))
    assert samples.min() >= 0 and samples.max() < K  # never the SOS token
    assert not torch.equal(samples[:, 0], samples[:, 1])  # sampled, not greedy
    state = torch.random.get_rng_state()
    again = complete_transformers(original, tokens, keep=20, samples=3, temperature=1.0, top_k=5, seed=0)
    assert torch.equal(again, samples)  # seeded
    assert torch.equal(torch.random.get_rng_state(), state)  # and the caller's random state untouched


def test_what_cannot_be_converted_is_refused_clearly(tmp_path, capsys):
    # A LayerNorm model (igptlib's default norm).
    layer = ImageGPT(ModelConfig(vocab_size=K, n_px=4, n_embd=16, n_layer=1, n_head=2, norm="layer"),
                     palette=np.linspace(0, 255, K, dtype=np.float32)[:, None])
    save_model(layer, tmp_path / "layer.safetensors")
    assert main(["export", "--format", "hf", "--model", str(tmp_path / "layer.safetensors"), "--out", str(tmp_path / "out")]) == 2
    assert "LayerNorm" in capsys.readouterr().err
    bert = ImageGPT(ModelConfig(vocab_size=K, n_px=4, n_embd=16, n_layer=1, n_head=2, norm="rms", objective="bert"))
    with pytest.raises(HFError, match="causal only"):
        to_transformers(bert.model)

    config = transformers.ImageGPTConfig(vocab_size=K + 1, n_positions=16, n_embd=16, n_layer=1, n_head=2,
                                         scale_attn_by_inverse_layer_idx=True)
    transformers.ImageGPTForCausalImageModeling(config).save_pretrained(tmp_path / "scaled")
    (tmp_path / "scaled" / "preprocessor_config.json").write_text(json.dumps({"clusters": clusters_for(3, 0).tolist()}))
    with pytest.raises(HFError, match="scale_attn_by_inverse_layer_idx"):
        import_hf(tmp_path / "scaled", tmp_path / "x.safetensors")

    # A classifier's folder has no language head to complete with.
    config.scale_attn_by_inverse_layer_idx = False
    transformers.ImageGPTForImageClassification(config).save_pretrained(tmp_path / "classifier")
    (tmp_path / "classifier" / "preprocessor_config.json").write_text(json.dumps({"clusters": clusters_for(3, 0).tolist()}))
    with pytest.raises(HFError, match="weights missing for .*lm_head"):
        import_hf(tmp_path / "classifier", tmp_path / "x.safetensors")
    (tmp_path / "classifier" / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(HFError, match="a 'gpt2' model; expected transformers' ImageGPT"):
        import_hf(tmp_path / "classifier", tmp_path / "x.safetensors")

    hf_folder(tmp_path / "hf", "rgb")
    (tmp_path / "hf" / "preprocessor_config.json").write_text("{}")
    assert main(["import-hf", str(tmp_path / "hf"), "--out", str(tmp_path / "x.safetensors")]) == 2
    assert "holds no clusters" in capsys.readouterr().err
    assert main(["import-hf", str(tmp_path), "--out", str(tmp_path / "x.safetensors")]) == 2
    assert "no config.json" in capsys.readouterr().err


def test_a_missing_transformers_names_the_extra(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers now raises ImportError
    assert main(["import-hf", str(tmp_path), "--out", str(tmp_path / "x.safetensors")]) == 2
    assert "pip install 'igptlib[hf]'" in capsys.readouterr().err

