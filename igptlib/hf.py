"""transformers' ImageGPT (OpenAI's iGPT weights) in and out: the same network, laid out differently.

transformers' ImageGPTForCausalImageModeling is igptlib's GPT with ModelConfig(norm="rms") and the
activation its config names (OpenAI's weights: quick GELU). Both read the slots [SOS, x_0, ...,
x_{T-2}] with learned positions 0..T-1 and scale attention by 1/sqrt(head dim); the tensors map as

    transformers (vocab_size = K + 1)              igptlib (vocab_size = K)
    transformer.wte [K+1, C]: row K is SOS         wte [K+1, C] (row K: BERT's mask, unread by AR) and sos
    transformer.wpe [T, C]                         wpe
    transformer.h.i.ln_1, ln_2; ln_f (no bias)     blocks.i.ln_1, ln_2; ln_f (nn.RMSNorm)
    transformer.h.i.attn.c_attn, attn.c_proj       blocks.i.attn.qkv, attn.proj
    transformer.h.i.mlp.c_fc, mlp.c_proj           blocks.i.mlp.fc, mlp.proj
    lm_head [K, C] (no bias, not tied to wte)      head [K, C]
    preprocessor's clusters [K, 3] in [-1, 1]      palette [K, C] in 0..255: (clusters + 1) * 127.5

transformers' Conv1D stores its weight as [in, out], the transpose of nn.Linear's. A palette whose
colours are all grey (R = G = B) imports as a 1-channel palette, so a grey model round-trips.

Not converted: the classification head. transformers' ImageGPTForImageClassification average-pools
the image's own T tokens (no SOS) and has no bias; igptlib's pools the AR slots and has one.
LayerNorm models (norm "layer": the shipped ones, and every model trained here by default) do not
export: transformers' ImageGPT norm neither centres nor adds a bias, so it cannot compute them.
Train with `model: {norm: rms}` in the run's YAML to make a model that exports.

    import_hf(folder, out)           a transformers ImageGPT folder -> an igpt model file (shipped.load_model reads it)
    export_hf(source, folder)        an igpt model (name, .safetensors, .ckpt) -> a folder from_pretrained reads,
                                     with its generation config and model card (igptlib.hf_card)
    from_transformers(model, clusters)   a transformers model -> an igptlib ImageGPT module with its palette
    to_transformers(gpt)                 igptlib's GPT -> a transformers model
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open

from igptlib.config import ModelConfig
from igptlib.model import GPT
from igptlib.model_files import FLOAT_TYPES, CheckpointError, check_weights, load_weights_only
from igptlib.lightning_module import ImageGPT
from igptlib.records import RECORDS

# transformers' activation names (ACT2FN) and igptlib's.
ACTIVATIONS_IN = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "quick_gelu": "quick_gelu"}
ACTIVATIONS_OUT = {"gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh", "quick_gelu": "quick_gelu"}
EPS = 1e-5  # the RMS norm's epsilon, as in igptlib.model.norm_layer and OpenAI's configs


class HFError(ValueError):
    """A transformers folder or model that igptlib cannot convert, or transformers missing."""


def transformers_module():
    """The transformers package, or an HFError that names the extra to install."""
    try:
        import transformers
    except ImportError:
        raise HFError("this needs transformers, which is not installed: pip install 'igptlib[hf]'") from None
    return transformers


def _linear_pairs(n_layer: int):
    """(igptlib name, transformers name, transposed) for every tensor but the embeddings."""
    yield "ln_f.weight", "transformer.ln_f.weight", False
    yield "wpe.weight", "transformer.wpe.weight", False
    yield "head.weight", "lm_head.weight", False
    for i in range(n_layer):
        ours, theirs = f"blocks.{i}.", f"transformer.h.{i}."
        yield ours + "ln_1.weight", theirs + "ln_1.weight", False
        yield ours + "ln_2.weight", theirs + "ln_2.weight", False
        for a, b in (("attn.qkv", "attn.c_attn"), ("attn.proj", "attn.c_proj"), ("mlp.fc", "mlp.c_fc"), ("mlp.proj", "mlp.c_proj")):
            yield ours + a + ".weight", theirs + b + ".weight", True  # Conv1D: [in, out]; nn.Linear: [out, in]
            yield ours + a + ".bias", theirs + b + ".bias", False


def model_config_from_hf(config) -> ModelConfig:
    """igptlib's ModelConfig for a transformers ImageGPTConfig; HFError for what igptlib's GPT cannot compute."""
    where = "transformers ImageGPT config"
    if getattr(config, "model_type", None) != "imagegpt":
        raise HFError(f"{where}: expected model_type 'imagegpt', got {getattr(config, 'model_type', None)!r}")
    n_px = math.isqrt(config.n_positions)
    unsupported = [
        (n_px * n_px != config.n_positions, f"n_positions {config.n_positions} is not a square image's pixel count"),
        (config.activation_function not in ACTIVATIONS_IN,
         f"activation_function {config.activation_function!r} (expected one of {sorted(ACTIVATIONS_IN)})"),
        (not config.scale_attn_weights, "scale_attn_weights false (igptlib scales attention by 1/sqrt(head dim))"),
        (config.scale_attn_by_inverse_layer_idx, "scale_attn_by_inverse_layer_idx true"),
        (config.add_cross_attention, "add_cross_attention true"),
        (config.n_inner not in (None, 4 * config.n_embd), f"n_inner {config.n_inner} (igptlib's MLP is 4 * n_embd wide)"),
        (not math.isclose(config.layer_norm_epsilon, EPS), f"layer_norm_epsilon {config.layer_norm_epsilon} (expected {EPS})"),
        (config.vocab_size < 3, f"vocab_size {config.vocab_size} (expected at least 2 colours and SOS)"),
    ]
    problems = [text for bad, text in unsupported if bad]
    if problems:
        raise HFError(f"{where}: igptlib's GPT cannot compute this model: " + "; ".join(problems))
    return ModelConfig(vocab_size=config.vocab_size - 1, n_px=n_px, n_embd=config.n_embd, n_layer=config.n_layer,
                       n_head=config.n_head, dropout=0.0, objective="ar", norm="rms",
                       activation=ACTIVATIONS_IN[config.activation_function])


def palette_from_clusters(clusters, vocab_size: int) -> np.ndarray:
    """The image processor's clusters [K, 3] in [-1, 1] as a palette in 0..255; grey ones as [K, 1]."""
    clusters = np.asarray(clusters, dtype=np.float64)
    if clusters.shape != (vocab_size, 3):
        raise HFError(f"clusters: expected [{vocab_size}, 3] colours (the model's vocabulary), got shape {list(clusters.shape)}")
    if not np.isfinite(clusters).all() or np.abs(clusters).max() > 1 + 1e-6:
        raise HFError("clusters: expected colours in [-1, 1], as transformers' ImageGPT image processor uses them")
    palette = np.clip((clusters + 1) * 127.5, 0, 255).astype(np.float32)
    if np.allclose(palette, palette[:, :1], atol=1e-3):
        return np.ascontiguousarray(palette[:, :1])  # grey levels: a grayscale model
    return palette


def clusters_from_palette(palette: np.ndarray) -> np.ndarray:
    """A palette [K, C] in 0..255 as the image processor's clusters [K, 3] in [-1, 1] (grey repeated)."""
    palette = np.asarray(palette, dtype=np.float32)
    return np.repeat(palette, 3 // palette.shape[1], axis=1) / 127.5 - 1


def from_transformers(model, clusters) -> ImageGPT:
    """An igptlib module (eval mode) computing what a transformers ImageGPTForCausalImageModeling computes."""
    config = model_config_from_hf(model.config)
    module = ImageGPT(config, palette=palette_from_clusters(clusters, config.vocab_size))
    theirs = {name: tensor.detach().float() for name, tensor in model.state_dict().items()}
    ours = {a: (theirs[b].T if transposed else theirs[b]).contiguous() for a, b, transposed in _linear_pairs(config.n_layer)}
    wte = theirs["transformer.wte.weight"]
    ours["wte.weight"] = wte  # row K, SOS there, is BERT's mask row here: an AR model never reads it
    ours["sos"] = wte[config.vocab_size]
    missing, unexpected = module.model.load_state_dict(ours, strict=False)
    assert not unexpected and set(missing) == {"clf_head.weight", "clf_head.bias"}, (missing, unexpected)
    return module.eval()


def to_transformers(gpt: GPT):
    """A transformers ImageGPTForCausalImageModeling (eval mode) computing what igptlib's GPT computes."""
    transformers = transformers_module()
    config: ModelConfig = gpt.config
    if config.objective != "ar":
        raise HFError("transformers' ImageGPT is causal only; this model was trained with objective 'bert'")
    if config.norm != "rms":
        raise HFError("transformers' ImageGPT normalises by the root mean square without centring or bias; this "
                      "model uses LayerNorm (ModelConfig.norm 'layer'), which it cannot hold. Export a model "
                      "trained with model.norm: rms")
    hf_config = transformers.ImageGPTConfig(
        vocab_size=config.vocab_size + 1, n_positions=config.seq_len, n_embd=config.n_embd, n_layer=config.n_layer,
        n_head=config.n_head, activation_function=ACTIVATIONS_OUT[config.activation], resid_pdrop=config.dropout,
        embd_pdrop=config.dropout, attn_pdrop=config.dropout, layer_norm_epsilon=EPS, tie_word_embeddings=False,
    )
    model = transformers.ImageGPTForCausalImageModeling(hf_config)
    ours = {name: tensor.detach().float() for name, tensor in gpt.state_dict().items()}
    theirs = {b: (ours[a].T if transposed else ours[a]).contiguous() for a, b, transposed in _linear_pairs(config.n_layer)}
    theirs["transformer.wte.weight"] = torch.cat([ours["wte.weight"][: config.vocab_size], ours["sos"][None]])
    model.load_state_dict(theirs, strict=True)
    return model.eval()


def read_hf_folder(folder: str | os.PathLike):
    """(model, clusters) from a transformers ImageGPT folder: config.json, weights, preprocessor_config.json."""
    transformers = transformers_module()
    folder = Path(folder)
    try:
        model_type = json.loads((folder / "config.json").read_text()).get("model_type")
    except FileNotFoundError:
        raise HFError(f"{folder}: not a transformers model folder (no config.json)") from None
    except (OSError, json.JSONDecodeError, AttributeError) as error:
        raise HFError(f"{folder / 'config.json'}: not a readable model config ({error})") from None
    if model_type != "imagegpt":
        raise HFError(f"{folder}: a {model_type!r} model; expected transformers' ImageGPT (model_type 'imagegpt')")
    processor = folder / "preprocessor_config.json"
    try:
        clusters = json.loads(processor.read_text()).get("clusters")
    except (OSError, json.JSONDecodeError) as error:
        raise HFError(f"{processor}: expected the image processor's config with the colour clusters ({error})") from None
    if clusters is None:
        raise HFError(f"{processor}: holds no clusters, so the model's tokens have no colours")
    config = transformers.ImageGPTConfig.from_pretrained(folder, local_files_only=True)
    # Refuse what cannot be converted, and a config far beyond its weights, before any model is built.
    check_weight_files(folder, model_config_from_hf(config))
    bar = transformers.utils.logging.is_progress_bar_enabled()
    transformers.utils.logging.disable_progress_bar()  # a bar per file read, on the line an error would take
    try:
        # local_files_only: nothing is downloaded; transformers reads safetensors, or .bin with weights_only.
        model, info = transformers.ImageGPTForCausalImageModeling.from_pretrained(
            folder, local_files_only=True, output_loading_info=True)
    except OSError as error:
        raise HFError(f"{folder}: no readable weights ({error})") from None
    finally:
        if bar:
            transformers.utils.logging.enable_progress_bar()
    if info["missing_keys"]:
        raise HFError(f"{folder}: weights missing for {sorted(info['missing_keys'])[:3]}; completion needs "
                      "ImageGPTForCausalImageModeling's weights (the language head included)")
    return model.float().eval(), clusters


def check_weight_files(folder: Path, config: ModelConfig) -> None:
    """The folder's weight files (safetensors, or .bin read with weights_only) hold floating-point
    tensors, at least as many weights as `config` needs: read from their headers, before any model
    of the config's size is built."""
    held, files = 0, sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))
    for path in files:
        try:
            if path.suffix == ".safetensors":
                with safe_open(str(path), framework="pt") as handle:
                    shapes = {name: (handle.get_slice(name).get_dtype(), handle.get_slice(name).get_shape())
                              for name in handle.keys()}
            else:
                tensors = load_weights_only(path, "transformers' weights", mmap=True, what="weights file")
        except SafetensorError as error:
            raise HFError(f"{path}: not a readable safetensors file ({error})") from None
        except CheckpointError as error:
            raise HFError(str(error)) from None
        if path.suffix == ".safetensors":
            wrong = {name: dtype for name, (dtype, _) in shapes.items() if dtype not in ("F16", "BF16", "F32", "F64")}
            held += sum(math.prod(shape) for _, shape in shapes.values())
        else:
            if not isinstance(tensors, dict):
                raise HFError(f"{path}: not a state dict; expected transformers' weights")
            wrong = {name: str(tensor.dtype) for name, tensor in tensors.items()
                     if not isinstance(tensor, torch.Tensor) or tensor.dtype not in FLOAT_TYPES}
            held += sum(tensor.numel() for tensor in tensors.values() if isinstance(tensor, torch.Tensor))
        if wrong:
            name, dtype = next(iter(wrong.items()))
            raise HFError(f"{path}: weight {name} holds {dtype} values; expected floating-point weights")
    if not files:
        raise HFError(f"{folder}: no weights (expected model.safetensors or pytorch_model.bin)")
    if config.least_weights > held:
        raise HFError(f"{folder}: its config (n_layer {config.n_layer}, n_embd {config.n_embd}, n_positions "
                      f"{config.seq_len}) needs at least {config.least_weights:,} weights, but its files hold {held:,}")


def import_hf(folder: str | os.PathLike, out: str | os.PathLike, force: bool = False) -> Path:
    """Convert a transformers ImageGPT folder into an igpt model file; return its path."""
    from igptlib.shipped import save_model

    out = Path(out)
    if out.suffix != ".safetensors":
        raise HFError(f"{out}: expected a path ending in .safetensors (the file load_model reads)")
    if out.exists() and not force:
        raise FileExistsError(f"{out} exists; choose another path, or replace it with --force")
    model, clusters = read_hf_folder(folder)
    notes = {"imported_from": str(Path(folder).resolve()), "format": "transformers ImageGPT",
             "transformers_config": model.config.to_diff_dict()}
    module = from_transformers(model, clusters)
    try:  # igpt's loader refuses what is not finite: an import that wrote it would be of no use
        check_weights(module.model_config, module.model.state_dict(), folder)
    except CheckpointError as error:
        raise HFError(str(error)) from None
    return save_model(module, out, notes)


def export_hf(source: str | os.PathLike, folder: str | os.PathLike, force: bool = False,
              models_dir: str | os.PathLike | None = None, records: str | os.PathLike = RECORDS) -> Path:
    """Write an igpt model (shipped name, .safetensors or .ckpt) as a transformers ImageGPT folder.

    The folder holds config.json, model.safetensors (ImageGPTForCausalImageModeling) and
    generation_config.json (generate() starts at the SOS token and samples a whole image), the
    image processor's preprocessor_config.json with the palette as clusters, and a README.md model
    card (igptlib.hf_card) with a shipped model's results from its record under `records`.
    models_dir: where shipped models are (None: shipped.MODELS_DIR). A folder that already holds
    files is written into only with `force`.
    """
    from igptlib.hf_card import model_card, recorded_evaluation
    from igptlib.model_files import read_notes
    from igptlib.records import shipped_record
    from igptlib.shipped import MODELS_DIR, load_model, model_dataset, model_name, shipped_models

    transformers = transformers_module()
    models_dir = MODELS_DIR if models_dir is None else Path(models_dir)
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise HFError(f"{folder}: a file; expected the folder to write the transformers model to")
    if folder.is_dir() and any(folder.iterdir()) and not force:
        raise FileExistsError(f"{folder} is not empty; choose another folder, or write into it with --force")
    module = load_model(source, models_dir)
    if module.palette is None:
        raise HFError(f"{source}: holds no palette, so the exported model's tokens would have no colours")
    config = module.model_config
    model = to_transformers(module.model)
    # Without these, generate() knows neither where an image starts nor how long it is.
    model.generation_config = transformers.GenerationConfig(
        bos_token_id=config.vocab_size, max_length=config.seq_len + 1, do_sample=True, top_k=0)
    model.save_pretrained(folder)
    processor = transformers.ImageGPTImageProcessor(clusters=clusters_from_palette(module.palette),
                                                    size={"height": config.n_px, "width": config.n_px})
    processor.save_pretrained(folder)
    shipped = str(source) in shipped_models(models_dir)
    path = models_dir / f"{source}.safetensors" if shipped else Path(source)
    imported_from = read_notes(path).get("imported_from") if path.suffix == ".safetensors" else None
    name = model_name(source, models_dir)
    evaluation = recorded_evaluation(shipped_record(name, records), config) if shipped else None
    card = model_card(name, module, model_dataset(source, models_dir), folder.name, imported_from, evaluation)
    (folder / "README.md").write_text(card)
    return folder
