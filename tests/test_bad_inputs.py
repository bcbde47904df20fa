"""Bad input and faults, command by command: every bad value or bad file gets one line that says what
was wrong, exit status 2, and no file it should not touch changes. Then the fixes behind the table:
images that are too large, 16-bit or turned by EXIF; models that are not overwritten and whose
metadata is not trusted; run folders that stay whole; torchvision's download under any data root.

The commands run through igptlib.cli.main, on the real MNIST files, a real (tiny) trained checkpoint
and the real Lightning Trainer; the download test serves MNIST over HTTP on 127.0.0.1.
"""
import datetime
import functools
import gzip
import hashlib
import http.server
import io
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from igptlib.cli import main
from igptlib.config import RunConfig, run_config
from igptlib.data import PixelDataModule
from igptlib.datasets import DATASETS, MIRROR_VARIABLE, DataError, fetch, load_split
from igptlib.explorer import Explorer
from igptlib.images import load_image
from igptlib.shipped import MODELS_DIR, export_model, shipped_models
from igptlib.train import lock_run_folder, train



# -- helpers ---------------------------------------------------------------------------------------


def snapshot(*folders: Path, exclude: Path | None = None) -> dict:
    """Every file under the folders (but `exclude`) with its content's digest and mode: what must not change."""
    files = {}
    for folder in folders:
        for path in sorted(Path(folder).rglob("*")) if Path(folder).exists() else []:
            if path.is_file() and not (exclude is not None and exclude in path.parents):
                files[path] = (hashlib.md5(path.read_bytes()).hexdigest(), path.stat().st_mode)
    return files


def refused(capsys, argv: list[str], expected: str, *untouched: Path) -> str:
    """Run `igpt argv`; assert exit status 2, one line on stderr naming the command and holding
    `expected`, and no change under the untouched folders; return the line."""
    before = snapshot(*untouched)
    capsys.readouterr()
    try:
        status = main(argv)
    except SystemExit as exit:  # argparse's refusals
        status = exit.code
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert status == 2, (argv, err)
    assert len(lines) == 1 and len(lines[0]) < 600, (argv, err)  # a bad value is shown in excerpt, never whole
    assert lines[0].startswith(f"igpt {argv[0]}") and ": error: " in lines[0], (argv, err)
    assert expected in lines[0], (argv, err)
    assert snapshot(*untouched) == before, argv
    return lines[0]


@pytest.fixture(scope="module")
def repository(tmp_path_factory) -> Path:
    """A copy of the repository's tracked files, and nothing else: commands whose defaults write into
    the repository (report/runs, models/, report/bench) run in it, so that a regression harms a copy,
    and any file they change, add or remove shows in its snapshot."""
    source = Path(__file__).resolve().parent.parent
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=source, capture_output=True, check=True).stdout
    copy = tmp_path_factory.mktemp("repository")
    for name in filter(None, listed.decode().split("\0")):
        if (source / name).is_file():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source / name, copy / name)
    return copy


def refused_in(repository: Path, monkeypatch, capsys, argv: list[str], expected: str, *untouched: Path) -> str:
    """refused(), run from the repository's copy: the copy's files are untouched too."""
    monkeypatch.chdir(repository)
    return refused(capsys, argv, expected, repository, *untouched)


def fill(arguments: list[str], names: dict[str, str]) -> list[str]:
    """The arguments with each {name} replaced by its path."""
    filled = []
    for argument in arguments:
        for name, value in names.items():
            argument = argument.replace("{" + name + "}", value)
        filled.append(argument)
    return filled


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header announces width x height grayscale pixels, with almost no data after it."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b"")


def strip_png(height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (1, height)).save(buffer, format="PNG")
    return buffer.getvalue()


def noise_png() -> bytes:
    """A 28x28 PNG of noise: its compressed pixels run well past the first 120 bytes."""
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


# About 400 bytes of YAML that stand for 9**9 strings when walked or printed (a "billion laughs").
ALIAS_BOMB = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"{name}: &{name} [{', '.join([f'*{previous}'] * 9)}]\n" for previous, name in zip("abcdefgh", "bcdefghi"))


@pytest.fixture(scope="module")
def digit(mnist_root) -> np.ndarray:
    return load_split("mnist", mnist_root, train=False)[0][0, 0].numpy()  # a 7, white on black


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_checkpoint, digit) -> dict[str, Path]:
    """Bad images and bad model files, made once."""
    folder = tmp_path_factory.mktemp("bad-files")
    made = {}

    def write(name: str, content: bytes) -> Path:
        made[name] = folder / name
        made[name].write_bytes(content)
        return made[name]

    write("strip-40000.png", strip_png(40000))  # a few hundred bytes; 1.6 gigapixels made square
    write("strip-170000.png", strip_png(170000))
    write("big.png", png_header(9000, 9000))  # under Pillow's decompression-bomb limit, over ours
    write("bomb.png", png_header(30000, 30000))  # 900 megapixels: over Pillow's limit, which refuses it first
    write("text.png", b"this is text, not a picture")
    write("text.npy", b"centroids, typed by hand")
    os.mkfifo(folder / "fifo.png")  # opening it waits for a writer that never comes
    made["fifo.png"] = folder / "fifo.png"
    Image.fromarray(digit).save(folder / "seven.png")
    made["seven.png"] = folder / "seven.png"

    good = export_model(tiny_checkpoint, folder / "good.safetensors")
    with safe_open(str(good), framework="pt") as handle:
        metadata = handle.metadata()
    tensors = load_file(str(good))
    model = yaml.safe_load(metadata["model"])

    def model_file(name: str, metadata_changes: dict | None = None, tensor_changes: dict | None = None) -> None:
        made[name] = folder / name
        save_file({**tensors, **(tensor_changes or {})}, str(made[name]), metadata={**metadata, **(metadata_changes or {})})

    model_file("bad-yaml.safetensors", {"model": "n_layer: [1, 2"})
    model_file("list.safetensors", {"model": "- 1\n- 2\n"})
    model_file("deep.safetensors", {"model": yaml.safe_dump({**model, "n_layer": 100000})})
    model_file("huge-image.safetensors", {"model": yaml.safe_dump({**model, "n_px": 100000})})
    nan = tensors["head.weight"].clone()
    nan[0, 0] = float("nan")
    model_file("nan.safetensors", tensor_changes={"head.weight": nan})
    write("text.safetensors", b"not a safetensors file")

    model_file("alias.safetensors", {"model": ALIAS_BOMB + yaml.safe_dump(model)})
    model_file("twice.safetensors", {"model": yaml.safe_dump(model) + "n_layer: 3\n"})
    model_file("deeper.safetensors", {"model": yaml.safe_dump({**model, "n_layer": 1000})})
    for dtype in ("int64", "bool", "int8", "complex64", "float8_e4m3fn"):
        model_file(f"{dtype}.safetensors", tensor_changes={"head.weight": tensors["head.weight"].to(getattr(torch, dtype))})
    model_file("int-palette.safetensors", tensor_changes={"palette": tensors["palette"].to(torch.int32)})

    checkpoint = torch.load(tiny_checkpoint, weights_only=True)

    def crafted(name: str, hyper_parameters: dict | None = None, state_dict=None) -> None:
        made[name] = folder / name
        torch.save({**checkpoint, "hyper_parameters": {**checkpoint["hyper_parameters"], **(hyper_parameters or {})},
                    "state_dict": checkpoint["state_dict"] if state_dict is None else state_dict}, made[name])

    shared = ["lol"] * 9
    for _ in range(30):  # 9**31 values in a few hundred bytes: pickle keeps shared references, as YAML's aliases do
        shared = [shared] * 9
    crafted("shared-model.ckpt", {"model": {**checkpoint["hyper_parameters"]["model"], "n_layer": shared}})
    crafted("shared-palette.ckpt", {"palette": shared})
    crafted("shared-optim.ckpt", {"optim": {"lr": shared}})
    crafted("state-list.ckpt", state_dict=[1, 2, 3])
    crafted("int-weights.ckpt", state_dict={**checkpoint["state_dict"],
                                           "model.head.weight": checkpoint["state_dict"]["model.head.weight"].long()})
    crafted("complex-weights.ckpt", state_dict={**checkpoint["state_dict"],
                                               "model.head.weight": checkpoint["state_dict"]["model.head.weight"].cfloat()})
    os.mkfifo(folder / "fifo.ckpt")
    made["fifo.ckpt"] = folder / "fifo.ckpt"

    class Payload:  # what a hostile pickle does: run code when it is loaded
        def __reduce__(self):
            return Path.touch, (folder / "pwned",)

    buffer = io.BytesIO()
    torch.save({"state_dict": {}, "hyper_parameters": {"model": {}}, "payload": Payload()}, buffer)
    write("code.ckpt", buffer.getvalue())
    return made


# -- the table: each command against bad values and bad files ---------------------------------------

COMPLETE = [
    # (what, arguments, the error line holds)
    ("a 1x40000 strip", ["--image", "{strip-40000.png}"], "1x40000 image is too large: made square it needs 1,600,000,000 pixels"),
    ("a 1x170000 strip", ["--image", "{strip-170000.png}"], "28,900,000,000 pixels, over the limit of 25,000,000"),
    ("a square over the cap", ["--image", "{seven.png}", "--max-pixels", "100"], "needs 784 pixels, over the limit of 100"),
    ("81 megapixels announced", ["--image", "{big.png}"], "a 9000x9000 image is too large: made square it needs 81,000,000"),
    ("a decompression bomb", ["--image", "{bomb.png}"], "bomb.png: refused as a possible decompression bomb"),
    ("a bomb under a raised cap", ["--image", "{bomb.png}", "--max-pixels", str(10**12)], "decompression bomb"),
    ("text named .png", ["--image", "{text.png}"], "not an image (expected a PNG, JPG or JPEG file)"),
    ("a folder as the image", ["--image", "{folder}"], "a directory; expected a PNG, JPG or JPEG file"),
    ("a FIFO as the image", ["--image", "{fifo.png}"], "fifo.png: not a regular file (a FIFO, socket or device)"),
    ("no such image", ["--image", "{folder}/absent.png"], "absent.png: no such file"),
    ("temperature NaN", ["--temperature", "nan"], "temperature must be 0 (greedy) or a finite number from 0.001 up"),
    ("temperature 1e-45", ["--temperature", "1e-45"], "got 1e-45"),
    ("temperature -1", ["--temperature", "-1"], "got -1.0"),
    ("temperature inf", ["--temperature", "inf"], "got inf"),
    ("no samples", ["--samples", "0"], "argument --samples: expected a positive integer, got 0"),
    ("samples beyond memory", ["--samples", "100000000"], "need about"),
    ("top-k 0", ["--top-k", "0"], "argument --top-k: expected a positive integer"),
    ("more rows than the image", ["--rows", "99"], "rows to keep must lie in 0..28, got 99"),
    ("a zero pixel cap", ["--max-pixels", "0"], "argument --max-pixels"),
    ("an unknown model", ["--model", "no-such-model"], "is neither a shipped model"),
    ("model metadata that is not YAML", ["--model", "{bad-yaml.safetensors}"], "its model config: not valid YAML"),
    ("an alias bomb in the metadata", ["--model", "{alias.safetensors}"], "its model config: not valid YAML (found the alias *a"),
    ("a key written twice", ["--model", "{twice.safetensors}"], "not valid YAML (the key 'n_layer' appears twice"),
    ("a list where a mapping belongs", ["--model", "{list.safetensors}"], "expected a mapping"),
    ("n_layer: 1000", ["--model", "{deeper.safetensors}"], "(n_layer 1000, n_embd 64, n_px 28) needs at least"),
    ("n_layer: 100000", ["--model", "{deep.safetensors}"], "deep.safetensors: ModelConfig.n_layer: expected 1..1024, got 100000"),
    ("n_px: 100000", ["--model", "{huge-image.safetensors}"], "and n_px 100000 make at least"),
    ("NaN weights", ["--model", "{nan.safetensors}"], "weight 'head.weight' holds NaN or infinite values"),
    *[(f"{dtype} weights", ["--model", "{" + dtype + ".safetensors}"],
       f"weight 'head.weight' holds {dtype} values; expected floating-point weights")
      for dtype in ("int64", "bool", "int8", "complex64", "float8_e4m3fn")],
    ("an integer palette", ["--model", "{int-palette.safetensors}"], "its palette holds int32 values"),
    ("a checkpoint's model of shared references", ["--model", "{shared-model.ckpt}"],
     "shared-model.ckpt: model.n_layer: expected an integer, got [[[[...]"),
    ("a checkpoint's palette of shared references", ["--model", "{shared-palette.ckpt}"], "its palette is [[[[...]"),
    ("a checkpoint's optim of shared references", ["--model", "{shared-optim.ckpt}"], "optim.lr: expected a number, got [[[[...]"),
    ("a state dict that is a list", ["--model", "{state-list.ckpt}"], "its state_dict is [1, 2, 3]; expected a mapping"),
    ("integer weights in a checkpoint", ["--model", "{int-weights.ckpt}"], "weight 'model.head.weight' holds int64 values"),
    ("complex weights in a checkpoint", ["--model", "{complex-weights.ckpt}"], "holds complex64 values"),
    ("a FIFO as the model", ["--model", "{fifo.ckpt}"], "fifo.ckpt: not a regular file (a FIFO, socket or device)"),
    ("not a safetensors file", ["--model", "{text.safetensors}"], "not a readable safetensors file"),
    ("a pickle that runs code", ["--model", "{code.ckpt}"], "refused: it holds more than weights (Unsupported global: GLOBAL"),
]


@pytest.mark.parametrize("what, arguments, expected", COMPLETE, ids=[case[0] for case in COMPLETE])
def test_complete_refuses(capsys, files, tiny_checkpoint, tmp_path, what, arguments, expected):
    names = {**{name: str(path) for name, path in files.items()}, "folder": str(tmp_path)}
    arguments = fill(arguments, names)
    out = tmp_path / "completion.png"
    defaults = {"--model": str(tiny_checkpoint), "--image": names["seven.png"]}
    for flag, value in defaults.items():
        if flag not in arguments:
            arguments += [flag, value]
    refused(capsys, ["complete", *arguments, "--out", str(out)], expected, files["seven.png"].parent, MODELS_DIR)
    assert not out.exists()
    assert not (files["seven.png"].parent / "pwned").exists()  # the hostile pickle ran no code


EXPORT = [
    ("no name", [], "--name is required"),
    ("a name that is a path", ["--name", "../../x"], "--name '../../x': expected a plain model name"),
    ("a name that is absolute", ["--name", "/tmp/x"], "expected a plain model name"),
    ("a shipped model's name", ["--name", "{shipped}"], "exists; choose another name, or replace it with --force"),
    ("a folder as --out", ["--out", "{folder}"], "a directory; expected the path of a .safetensors file"),
    ("--out without .safetensors", ["--out", "{folder}/model.bin"], "expected a path ending in .safetensors"),
    ("an existing --out", ["--out", "{folder}/taken.safetensors"], "taken.safetensors exists"),
    ("no such checkpoint", ["--model", "{folder}/absent.ckpt", "--out", "{folder}/new.safetensors"], "no such checkpoint"),
    ("a --note without =", ["--out", "{folder}/new.safetensors", "--note", "oops"], "--note 'oops': expected KEY=VALUE"),
]


@pytest.mark.parametrize("what, arguments, expected", EXPORT, ids=[case[0] for case in EXPORT])
def test_export_refuses_and_overwrites_nothing(capsys, tiny_checkpoint, tmp_path, what, arguments, expected):
    shipped = shipped_models()
    assert shipped, f"the repository ships models in {MODELS_DIR}"
    (tmp_path / "taken.safetensors").write_bytes(b"someone's model")
    names = {"shipped": shipped[0], "folder": str(tmp_path)}
    arguments = fill(arguments, names)
    if "--model" not in arguments:
        arguments += ["--model", str(tiny_checkpoint)]
    refused(capsys, ["export", *arguments], expected, tmp_path, MODELS_DIR)
    assert not list(tmp_path.glob("*.partial")) and not list(MODELS_DIR.glob("*.partial"))
    assert not (tmp_path / "new.safetensors").exists()


def test_export_follows_the_umask_and_replaces_only_with_force(capsys, tiny_checkpoint, tmp_path):
    out = tmp_path / "mine.safetensors"
    previous = os.umask(0o022)
    try:
        assert main(["export", "--model", str(tiny_checkpoint), "--out", str(out)]) == 0
    finally:
        os.umask(previous)
    assert out.stat().st_mode & 0o777 == 0o644  # safetensors' own save_file makes 0600 whatever the umask
    first = out.read_bytes()
    refused(capsys, ["export", "--model", str(tiny_checkpoint), "--out", str(out), "--note", "a=b"], "exists", tmp_path)
    assert main(["export", "--model", str(tiny_checkpoint), "--out", str(out), "--note", "a=b", "--force"]) == 0
    assert out.read_bytes() != first


OTHERS = [
    (["centroids", "--root", "{root}", "--out", "{folder}"], "a directory; expected the path of a .npy file"),
    (["centroids", "--root", "{root}", "--clusters", "1", "--out", "{folder}/p.npy"], "DataConfig.clusters: expected 2..4096, got 1"),
    (["centroids", "--root", "{root}", "--pixels", "0"], "DataConfig.palette_pixels: expected a positive integer, got 0"),
    (["augment", "--root", "{root}", "--per-label", "0", "--grid", "{folder}/g.png"], "argument --per-label: expected a positive integer, got 0"),
    (["augment", "--root", "{root}", "--copies", "0", "--out", "{folder}/a.npz"], "argument --copies"),
    (["augment", "--root", "{root}", "--augment", "twirl", "--grid", "{folder}/g.png"], "argument --augment: invalid choice: 'twirl'"),
    (["evaluate", "--model", "{checkpoint}", "--probe-train", "0"], "argument --probe-train: expected a positive integer, got 0"),
    (["evaluate", "--model", "{checkpoint}", "--device", "tpu"], "argument --device: invalid choice: 'tpu'"),
    (["evaluate", "--model", "{folder}/absent.ckpt"], "no such checkpoint"),
    (["evaluate", "--model", "{checkpoint}", "--limit-test", "0"], "DataConfig.limit_test: expected a positive integer or null, got 0"),
    (["evaluate", "--model", "{checkpoint}", "--dataset", "svhn"], "argument --dataset: invalid choice: 'svhn'"),
    (["finetune-sweep", "--model", "{folder}/absent.ckpt"], "no such checkpoint"),
    (["finetune-sweep", "--model", "{checkpoint}", "--steps", "0"], "argument --steps: expected a positive integer, got 0"),
    (["bench", "train", "--batch-size", "0"], "argument --batch-size: expected a positive integer, got 0"),
    (["bench", "train", "--steps", "0"], "argument --steps"),
    (["bench", "sample", "--repeats", "0"], "argument --repeats: expected a positive integer, got 0"),
    (["bench", "sample", "--samples", "-3"], "argument --samples"),
    (["data", "--dataset", "svhn"], "argument --dataset: invalid choice: 'svhn'"),
    (["augment", "--root", "{root}", "--copies", "1000000", "--out", "{folder}/a.npz"],
     "--copies 1000000: 1,000,000 augmented copies of 54,000 images need 42,336.0 GB in memory, over half"),
    (["centroids", "--root", "{root}", "--out", "{text.npy}"], "text.npy: not a .npy array (the file is not in numpy's .npy format)"),
    (["evaluate", "--model", "{checkpoint}", "--budget-minutes", "nan"],
     "argument --budget-minutes: expected 0 or a finite positive number, got nan"),
    (["robustness", "--budget-minutes", "inf"], "argument --budget-minutes: expected 0 or a finite positive number, got inf"),
    (["experiment", "ladder-cpu-s", "--budget-minutes", "nan"], "argument --budget-minutes: expected 0 or a finite positive number, got nan"),
    (["bench", "converge", "--name", "x", "--minutes", "nan"], "argument --minutes: expected a finite positive number"),
    (["robustness", "--model", "{checkpoint}", "--classifier", "{checkpoint}", "--out", "{folder}/r.json"],
     "last.ckpt: its classification head was never trained (it is not a fine-tuned model)"),
    (["robustness", "--model", "mnist", "--classifier", "mnist", "--out", "{folder}/r.json"],
     "--classifier mnist: its classification head was never trained"),
]


@pytest.mark.parametrize("arguments, expected", OTHERS, ids=[" ".join(case[0][:1] + case[0][-2:]) for case in OTHERS])
def test_other_commands_refuse(capsys, mnist_root, tiny_checkpoint, files, tmp_path, arguments, expected):
    names = {"root": str(mnist_root), "folder": str(tmp_path), "checkpoint": str(tiny_checkpoint),
             **{name: str(path) for name, path in files.items()}}
    arguments = fill(arguments, names)
    refused(capsys, arguments, expected, tmp_path, mnist_root, tiny_checkpoint.parent.parent)
    assert not list(tmp_path.iterdir())


# -- import-hf: weights that are not finite floats, a config beyond its weights ---------------------


@pytest.fixture(scope="module")
def hf_folders(tmp_path_factory) -> dict[str, Path]:
    """A tiny random transformers ImageGPT folder, and damaged copies of it."""
    transformers = pytest.importorskip("transformers")
    root = tmp_path_factory.mktemp("hf")
    config = transformers.ImageGPTConfig(vocab_size=17, n_positions=16, n_embd=16, n_layer=1, n_head=2)
    transformers.ImageGPTForCausalImageModeling(config).save_pretrained(root / "good")
    clusters = np.repeat(np.linspace(-1, 1, 16)[:, None], 3, axis=1)
    (root / "good" / "preprocessor_config.json").write_text(f'{{"clusters": {clusters.tolist()}}}')
    weights = load_file(str(root / "good" / "model.safetensors"))
    folders = {}

    def damaged(name: str, changes: dict | None = None, config_changes: dict | None = None) -> None:
        folders[name] = root / name
        shutil.copytree(root / "good", folders[name])
        save_file({**weights, **(changes or {})}, str(folders[name] / "model.safetensors"), metadata={"format": "pt"})
        if config_changes:
            values = json.loads((folders[name] / "config.json").read_text())
            (folders[name] / "config.json").write_text(json.dumps({**values, **config_changes}))

    nan = weights["lm_head.weight"].clone()
    nan[0, 0] = float("nan")
    damaged("nan", {"lm_head.weight": nan})
    damaged("int", {"lm_head.weight": weights["lm_head.weight"].long()})
    damaged("bool", {"lm_head.weight": weights["lm_head.weight"] > 0})
    damaged("deep", config_changes={"n_layer": 1000, "n_embd": 512, "n_head": 8})  # 3 billion weights, were it built
    return folders


IMPORT_HF = [
    ("nan", "nan: weight 'head.weight' holds NaN or infinite values; expected finite weights"),
    ("int", "model.safetensors: weight lm_head.weight holds I64 values; expected floating-point weights"),
    ("bool", "weight lm_head.weight holds BOOL values"),
    ("deep", "its config (n_layer 1000, n_embd 512, n_positions 16) needs at least 3,145,736,192 weights, but its files hold"),
]


@pytest.mark.parametrize("folder, expected", IMPORT_HF, ids=[case[0] for case in IMPORT_HF])
def test_import_hf_refuses_weights_igpt_could_not_use(capsys, hf_folders, tmp_path, folder, expected):
    refused(capsys, ["import-hf", str(hf_folders[folder]), "--out", str(tmp_path / "imported.safetensors")], expected,
            hf_folders[folder], tmp_path)
    assert not list(tmp_path.iterdir())


# -- writes never go through a link -------------------------------------------------------------------


def links_to_a_victim(folder: Path, out: Path) -> Path:
    """`out` and the temporary names igpt once wrote beside it, made links to a file elsewhere (the victim)."""
    victim = folder / "elsewhere" / "victim.txt"
    victim.parent.mkdir()
    victim.write_text("someone else's file")
    for name in (out.name, out.name + ".partial", out.name + ".partial.npy", out.name + ".partial.npz"):
        (out.parent / name).symlink_to(victim)
    return victim


def test_complete_replaces_a_link_at_out_and_never_writes_through_it(capsys, tiny_checkpoint, files, tmp_path):
    out = tmp_path / "l.png"
    victim = links_to_a_victim(tmp_path, out)
    assert main(["complete", "--model", str(tiny_checkpoint), "--image", str(files["seven.png"]), "--samples", "1", "--rows", "27",
                 "--out", str(out)]) == 0
    assert victim.read_text() == "someone else's file"
    assert not out.is_symlink() and Image.open(out).format == "PNG"
    refused(capsys, ["complete", "--model", str(tiny_checkpoint), "--image", str(files["seven.png"]), "--out", str(tmp_path)],
            "--out " + str(tmp_path) + ": a directory; expected the path of a .png file", tmp_path)
    assert not (tmp_path.parent / f"{tmp_path.name}.png").exists()  # the figure did not go beside the folder


def test_export_with_force_replaces_a_link_and_never_writes_through_it(capsys, tiny_checkpoint, tmp_path):
    out = tmp_path / "model.safetensors"
    victim = links_to_a_victim(tmp_path, out)
    refused(capsys, ["export", "--model", str(tiny_checkpoint), "--out", str(out)], "exists", tmp_path)
    assert main(["export", "--model", str(tiny_checkpoint), "--out", str(out), "--force"]) == 0
    assert victim.read_text() == "someone else's file" and not out.is_symlink()
    load_file(str(out))
    assert not [path for path in tmp_path.iterdir() if path.name.endswith(".partial") and not path.is_symlink()]


def test_palette_augmentation_and_kept_pass_writers_never_write_through_a_link(mnist_root, tmp_path):
    from igptlib.config import DataConfig, write_atomically
    from igptlib.data import write_augmented_set
    from igptlib.metrics import SplitPass, load_pass, save_pass
    from igptlib.quantize import load_palette, save_palette

    victims = []
    for name in ("palette.npy", "augmented.npz", "pass.npz", "text.json"):
        (tmp_path / name.split(".")[0]).mkdir()
        victims.append(links_to_a_victim(tmp_path / name.split(".")[0], tmp_path / name.split(".")[0] / name))
    save_palette(np.array([[0.0], [255.0]], dtype=np.float32), tmp_path / "palette" / "palette.npy")
    write_augmented_set(DataConfig(root=str(mnist_root), limit_train=16), tmp_path / "augmented" / "augmented.npz")
    save_pass(SplitPass(labels=np.arange(3)), tmp_path / "pass" / "pass.npz", {"split": "test"})
    write_atomically(tmp_path / "text" / "text.json", "{}")
    assert [victim.read_text() for victim in victims] == ["someone else's file"] * 4
    np.testing.assert_array_equal(load_palette(tmp_path / "palette" / "palette.npy")[:, 0], [0, 255])
    assert np.load(tmp_path / "augmented" / "augmented.npz")["images"].shape[0] == 16
    assert load_pass(tmp_path / "pass" / "pass.npz", {"split": "test"}).labels.tolist() == [0, 1, 2]
    assert (tmp_path / "text" / "text.json").read_text() == "{}"


# -- files that are damaged, inputs that would be read wrongly ------------------------------------------


def test_a_truncated_kept_pass_is_measured_again(capsys, tiny_checkpoint, tmp_path):
    out = tmp_path / "evaluation.json"
    passes = tmp_path / "evaluation.passes"
    passes.mkdir()
    np.savez(passes / "test.npz", labels=np.arange(1000), meta=np.array("{}"))
    (passes / "test.npz").write_bytes((passes / "test.npz").read_bytes()[:300])  # a write cut short
    assert main(["evaluate", "--model", str(tiny_checkpoint), "--out", str(out), "--no-probes", "--completions", "0",
                 "--no-figures", "--limit-test", "32"]) == 0
    err = capsys.readouterr().err
    assert "test.npz: a kept pass that cannot be read (BadZipFile: " in err and "measuring it again" in err
    assert json.loads(out.read_text())["test_images"] == 32 and not passes.exists()


def test_damaged_records_are_named_not_tracebacks(capsys, tiny_run, tmp_path):
    from igptlib.config import ConfigError
    from igptlib.robustness import SETTINGS, measure_into

    (tiny_run / "metrics.json").write_text("[1, 2]")
    refused(capsys, ["record", "--model", str(tiny_run), "--records", str(tmp_path / "records")],
            "metrics.json: holds a JSON list, [1, 2]; expected a JSON object", tiny_run)
    assert not (tmp_path / "records").exists() or not list((tmp_path / "records").iterdir())
    table = tmp_path / "robustness.json"
    table.write_text(json.dumps({"rows": "upright", "seconds": 1.0}))
    with pytest.raises(ConfigError, match="robustness.json: a damaged table"):
        measure_into(table, {key: None for key in SETTINGS}, None, None, None, None, None)


def test_out_of_memory_is_a_clear_error(capsys, tmp_path):
    # 10**12 sequences of 784 tokens: torch's allocator refuses the 6.3 PB at once.
    line = refused(capsys, ["bench", "train", "--size", "xs", "--batch-size", str(10**12), "--no-reference",
                            "--device", "cpu", "--json", str(tmp_path / "bench.json")],
                   "error: out of memory (", tmp_path)
    assert "can't allocate memory" in line and "expected smaller inputs, sizes or counts for this machine" in line


@pytest.mark.parametrize("ink", ["white", "black"])
def test_a_digit_drawn_on_transparency_is_read_whatever_its_ink(tmp_path, digit, ink):
    colour = 255 if ink == "white" else 0
    drawing = np.stack([np.full_like(digit, colour)] * 3 + [digit], axis=-1)  # the digit's shape in the alpha channel
    Image.fromarray(drawing, mode="RGBA").save(tmp_path / "drawn.png")
    image, notes = load_image(tmp_path / "drawn.png")
    assert f"flattened transparency onto {'black (the drawing is light)' if ink == 'white' else 'white'}" in notes
    assert np.abs(image[0].numpy().astype(int) - digit.astype(int)).max() <= 1


# -- names that would be paths ------------------------------------------------------------------------

NAMES = [
    (["record", "--model", "{run}", "--name", ".."], "--name '..': expected a plain record name"),
    (["record", "--model", "{run}", "--name", "{repository}/report"], "expected a plain record name"),
    (["record", "--model", "{run}", "--name", "a/b/c"], "--name 'a/b/c': expected a plain record name"),
    (["record", "--model", "{run}", "--name", ""], "--name '': expected a plain record name"),
    (["record", "--model", "{run}", "--name", "robustness-mnist"], "robustness-mnist exists and is not a run record (no record.json"),
    (["record", "--model", "report/runs/ladder-cpu-s"], "ladder-cpu-s: a run record, not a run folder"),
    (["bench", "converge", "--name", "../x", "--minutes", "0.01"], "--name '../x': expected a plain recipe name"),
    (["bench", "converge", "--name", "x", "--branch-from", "../y"], "--branch-from '../y': expected a plain recipe name"),
    (["card", "--model", "../models/mnist", "--run-dir", "{run}"], "--model '../models/mnist': expected a plain shipped model's name"),
    (["export", "--model", "{checkpoint}", "--name", "../models/mnist"], "expected a plain model name"),
]


@pytest.mark.parametrize("arguments, expected", NAMES, ids=[" ".join(case[0][:1] + case[0][-2:]) for case in NAMES])
def test_names_are_never_paths(capsys, monkeypatch, repository, tiny_run, tiny_checkpoint, arguments, expected):
    names = {"run": str(tiny_run), "repository": str(repository), "checkpoint": str(tiny_checkpoint)}
    refused_in(repository, monkeypatch, capsys, fill(arguments, names), expected, tiny_run, MODELS_DIR)
    assert not (repository.parent / "x").exists() and not (repository / "runs").exists()


def test_a_record_replaces_only_its_own_folder(capsys, monkeypatch, repository, tiny_run):
    monkeypatch.chdir(repository)
    before = snapshot(repository)
    for _ in range(2):  # the second replaces the first whole
        assert main(["record", "--model", str(tiny_run), "--name", "bad-input-check"]) == 0
    record = repository / "report" / "runs" / "bad-input-check"
    try:
        assert (record / "record.json").is_file() and (record / "metrics.json").is_file()
        assert snapshot(repository, exclude=record) == before
        assert sorted(path.name for path in record.parent.iterdir() if "bad-input-check" in path.name) == ["bad-input-check"]
    finally:
        shutil.rmtree(record)


# -- train: a refused run leaves its folder as it found it ------------------------------------------

TINY = ["--size", "xs", "--limit-train", "64", "--limit-val", "32", "--limit-test", "32", "--batch-size", "16",
        "--val-every", "2", "--save-every", "1", "--checkpoint-steps", "--no-test", "--no-progress-bar"]

TRAIN = [
    (["--seed", "-1"], "DataConfig.seed: expected an integer in 0..4294967295, got -1"),
    (["--lr", "nan"], "optim.lr: expected a finite number, got nan"),
    (["--lr", "0"], "OptimConfig.lr: expected a positive number, got 0.0"),
    (["--steps", "0"], "TrainConfig.steps: expected a positive integer, got 0"),
    (["--set", "train.early_stop_from=-1"], "TrainConfig.early_stop_from: expected a step number, 0 or more, got -1"),
    (["--strategy", "bogus"], "invalid strategy name: `strategy='bogus'`"),
    (["--precision", "8-bit"], "argument --precision: invalid choice"),
    (["--clusters", "1"], "expected 2..4096, got 1"),
    (["--config", "{empty.yaml}"], "empty.yaml: empty; expected a mapping of RunConfig fields"),
    (["--config", "{list.yaml}"], "list.yaml: expected a mapping"),
    (["--config", "{broken.yaml}"], "broken.yaml: not valid YAML"),
    (["--config", "{bomb.yaml}"], "bomb.yaml: not valid YAML (found the alias *a: igpt reads YAML without anchors"),
    (["--set", "data.augment=[&a [crop, crop], *a]"], "--set 'data.augment=[&a [crop, crop], *a]': not valid YAML (found the alias"),
    (["--config", "{twice.yaml}"], "twice.yaml: not valid YAML (the key 'n_px' appears twice"),
    (["--config", "{latin1.yaml}"], "latin1.yaml: not UTF-8 text (byte 20: invalid continuation byte)"),
    (["--config", "{digits.yaml}"], "digits.yaml: a value YAML cannot read (Exceeds the limit (4300 digits)"),
    (["--config", "{fifo.yaml}"], "fifo.yaml: not a regular file (a FIFO, socket or device)"),
    (["--set", "data.augment=[crop"], "--set 'data.augment=[crop': not valid YAML (while parsing a flow sequence"),
    (["--set", "model.n_layer=" + "9" * 5000], "': a value YAML cannot read"),
    (["--n-layer", "100000"], "ModelConfig.n_layer: expected 1..1024, got 100000"),
    (["--n-embd", "65536", "--n-head", "1"], "n_embd 65536 and n_px 28 make at least 206,209,810,432 weights, over the limit of 34,359,738,368"),
    (["--devices", "-3"], "TrainConfig.devices: expected a positive number of devices, -1 (all) or 'auto', got -3"),
    (["--budget-minutes", "nan"], "argument --budget-minutes: expected 0 or a finite positive number, got nan"),
    (["--n-layer", "9" * 5000], "argument --n-layer: expected an integer, got '9999"),
    (["--lr", "x" * 5000], "argument --lr: expected a number, got 'xxxx"),
]


@pytest.fixture()
def configs(tmp_path) -> dict[str, str]:
    folder = tmp_path / "configs"
    folder.mkdir()
    (folder / "empty.yaml").write_text("")
    (folder / "list.yaml").write_text("- data\n- model\n")
    (folder / "broken.yaml").write_text("data: {n_px: [\n")
    (folder / "bomb.yaml").write_text(ALIAS_BOMB + "data:\n  augment: *i\n")
    (folder / "twice.yaml").write_text("data:\n  n_px: 28\n  n_px: 14\n")
    (folder / "latin1.yaml").write_bytes("data:\n  dataset: caf\u00e9\n".encode("latin-1"))
    (folder / "digits.yaml").write_text("data:\n  seed: " + "9" * 5000 + "\n")
    os.mkfifo(folder / "fifo.yaml")
    return {path.name: str(path) for path in folder.iterdir()}


@pytest.mark.parametrize("arguments, expected", TRAIN, ids=[" ".join(case[0]) for case in TRAIN])
def test_a_refused_new_run_makes_no_folder(capsys, mnist_root, tmp_path, configs, arguments, expected):
    run = tmp_path / "run"
    arguments = fill(arguments, configs)
    refused(capsys, ["train", *TINY, "--root", str(mnist_root), "--run-dir", str(run), *arguments], expected, tmp_path)
    assert not run.exists()


@pytest.fixture()
def tiny_run(tiny_checkpoint, tmp_path) -> Path:
    """A private copy of the tiny 2-step run folder."""
    run = tmp_path / "run"
    shutil.copytree(tiny_checkpoint.parent.parent, run)
    return run


RESUME = [
    (["--resume", "--seed", "-1"], "DataConfig.seed"),
    (["--resume", "--strategy", "bogus"], "invalid strategy name"),
    (["--resume", "--n-px", "14"], "made for another model: n_px 28 (here 14)"),
    ([], "already holds a run; continue it with --resume"),
]


@pytest.mark.parametrize("arguments, expected", RESUME, ids=[" ".join(case[0]) or "no --resume" for case in RESUME])
def test_a_refused_resume_changes_nothing_in_the_run(capsys, tiny_run, arguments, expected):
    refused(capsys, ["train", "--run-dir", str(tiny_run), "--no-progress-bar", *arguments], expected, tiny_run)
    assert not (tiny_run / "history.yaml").exists()


def test_resume_with_nothing_to_resume(capsys, tmp_path):
    refused(capsys, ["train", "--run-dir", str(tmp_path / "none"), "--resume"], "nothing to resume", tmp_path)
    assert not (tmp_path / "none").exists()


def test_one_process_per_run_folder_and_a_killed_one_frees_it(capsys, tiny_run):
    # Another process holding the run folder's lock, as a training process does (without torch to import).
    code = ("import fcntl, sys; lock = open(sys.argv[1], 'a'); fcntl.flock(lock, fcntl.LOCK_EX)\n"
            "print('locked', flush=True); sys.stdin.read()")
    holder = subprocess.Popen([sys.executable, "-c", code, str(tiny_run / ".lock")], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        line = refused(capsys, ["train", "--run-dir", str(tiny_run), "--resume", "--steps", "3", "--no-progress-bar"],
                       "is in use: another process is training in it", tiny_run)
        assert str(tiny_run) in line
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    lock_run_folder(tiny_run).close()  # the kernel released the killed process's lock


def test_resume_with_changed_settings_is_recorded(capsys, tiny_run):
    before = RunConfig.load_yaml(tiny_run / "config.yaml")
    assert main(["train", "--run-dir", str(tiny_run), "--resume", "--steps", "3", "--lr", "0.001", "--no-progress-bar"]) == 0
    assert "resumed at step 2 with changed settings" in capsys.readouterr().out
    after = RunConfig.load_yaml(tiny_run / "config.yaml")
    assert (after.train.steps, after.optim.lr) == (3, 0.001)
    history = yaml.safe_load((tiny_run / "history.yaml").read_text())
    assert len(history) == 1 and history[0]["resumed_at_step"] == 2
    assert history[0]["changes"] == {"optim.lr": [before.optim.lr, 0.001], "train.steps": [2, 3]}
    datetime.datetime.fromisoformat(history[0]["time"])
    assert torch.load(tiny_run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 3


def test_a_new_run_that_fails_before_its_first_checkpoint_leaves_the_folder_reusable(mnist_root, tmp_path):
    class Unfetchable(PixelDataModule):  # what a machine without the data and without a network does
        def prepare_data(self):
            raise DataError("no network here")

    config = run_config("xs", root=str(mnist_root), limit_train=64, limit_val=32, limit_test=32, batch_size=16)
    config = config.replace(train={**config.train.to_dict(), "steps": 1, "test": False, "progress_bar": False,
                                   "checkpoint_steps": []})
    run = tmp_path / "run"
    with pytest.raises(DataError, match="no network here"):
        train(config, run, datamodule=Unfetchable(config.data))
    assert not (run / "config.yaml").exists()
    lock_run_folder(run).close()  # released after the failure


def test_a_broken_metrics_json_is_named(tiny_run):
    from igptlib.config import ConfigError
    from igptlib.course import train_once

    (tiny_run / "metrics.json").write_text('{"global_step": 2,')  # cut off mid-write
    with pytest.raises(ConfigError, match=r"run/metrics.json: not valid JSON \(.*\); expected the file as igpt wrote it"):
        train_once(RunConfig.load_yaml(tiny_run / "config.yaml"), tiny_run)


# -- images: what the model sees ---------------------------------------------------------------------


def test_16_bit_grayscale_is_rescaled_not_clipped(tmp_path, digit):
    paper = (255 - digit).astype(np.uint16) * 257  # dark ink on light paper, 16 bits deep
    Image.fromarray(paper).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode == "I;16"
    image, notes = load_image(tmp_path / "deep.png")
    assert "rescaled mode I;16 (0..65535) to 8-bit grayscale (0..255)" in notes
    assert any("white background detected" in note for note in notes)
    np.testing.assert_array_equal(image[0].numpy(), digit)


@pytest.mark.parametrize("orientation, turn", [(3, 2), (6, 1), (8, 3)])
def test_exif_orientation_is_applied(tmp_path, digit, orientation, turn):
    # A camera stores the sensor's pixels and says in EXIF how to turn them: 6 means "turn 90° clockwise to view".
    stored = np.ascontiguousarray(np.rot90(digit, turn))
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(stored).save(tmp_path / "phone.jpg", quality=100, exif=exif)
    image, notes = load_image(tmp_path / "phone.jpg")
    assert f"turned upright as its EXIF orientation ({orientation}) says" in notes
    assert np.abs(image[0].numpy().astype(int) - digit.astype(int)).mean() < 3


# -- the explorer's upload path ---------------------------------------------------------------------


@pytest.fixture()
def explorer(tiny_checkpoint, mnist_root, tmp_path, monkeypatch):
    monkeypatch.delenv("IGPT_EXPLORER_MODEL", raising=False)
    return Explorer(tiny_checkpoint, data_root=mnist_root, samples=1, rows=27, models_dir=tmp_path / "no-models")


UPLOADS = [
    ("strip.png", lambda: strip_png(40000), "strip.png: a 1x40000 image is too large"),
    ("strip.png", lambda: strip_png(170000), "28,900,000,000 pixels"),
    ("big.png", lambda: png_header(9000, 9000), "big.png: a 9000x9000 image is too large"),
    ("bomb.png", lambda: png_header(30000, 30000), "bomb.png: refused as a possible decompression bomb"),
    ("notes.png", lambda: b"plain text", "notes.png: not an image"),
    ("cut.png", lambda: noise_png()[:120], "cut.png: unreadable or damaged image"),
]


@pytest.mark.parametrize("name, content, expected", UPLOADS, ids=[case[2][:30] for case in UPLOADS])
def test_the_explorer_shows_a_bad_upload_in_the_widget(explorer, upload, name, content, expected):
    upload(explorer, name, content())
    assert explorer.complete() is None
    assert expected in explorer.error
    assert expected in explorer.message.value and explorer.status.value == "failed"
    assert "/tmp" not in explorer.error  # the upload's temporary path means nothing to the user


def test_the_explorer_takes_a_16_bit_upload(explorer, upload, digit):
    buffer = io.BytesIO()
    Image.fromarray((255 - digit).astype(np.uint16) * 257).save(buffer, format="PNG")
    upload(explorer, "deep.png", buffer.getvalue())
    result = explorer.complete()
    assert result is not None, explorer.error
    assert "rescaled mode I;16 (0..65535) to 8-bit grayscale (0..255)" in result.notes
    np.testing.assert_array_equal(result.image[0].numpy(), digit)


# -- torchvision's download under relative and absolute data roots ----------------------------------


@pytest.fixture(scope="module")
def mnist_mirror(mnist_root, tmp_path_factory):
    """MNIST's four files gzipped and served over HTTP on 127.0.0.1, as torchvision's mirrors serve them."""
    folder = tmp_path_factory.mktemp("mirror")
    for raw in DATASETS["mnist"].files:
        with open(mnist_root / "MNIST" / "raw" / raw.name, "rb") as source, gzip.open(folder / f"{raw.name}.gz", "wb", compresslevel=1) as packed:
            shutil.copyfileobj(source, packed)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()


@pytest.mark.parametrize("relative", [True, False], ids=["relative root", "absolute root"])
def test_torchvision_download_under_any_root(mnist_mirror, tmp_path, monkeypatch, relative):
    monkeypatch.setenv(MIRROR_VARIABLE, mnist_mirror)
    monkeypatch.chdir(tmp_path)
    root = Path("data") if relative else tmp_path / "data"
    report = fetch("mnist", root, sources=("torchvision",), timeout=300)
    assert report.source == "torchvision download", str(report)
    raw = sorted(path.name for path in (tmp_path / "data" / "MNIST" / "raw").iterdir())
    assert raw == sorted(file.name for file in DATASETS["mnist"].files)
    assert [path.name for path in (tmp_path / "data").iterdir()] == ["MNIST"]  # no staging folder left behind
