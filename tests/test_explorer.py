"""The completion explorer driven as a user would, without a browser: real widgets, a real trained
checkpoint, real MNIST test images and uploads; set the controls, press Complete, read the outputs."""
import io
import types

import numpy as np
import pytest
import torch
from PIL import Image

from igptlib.completion import keep_mask
from igptlib.datasets import load_split
from igptlib.explorer import PATH_CHOICE, Explorer, default_model, uploaded_file
from igptlib.robustness import rotation_nats
from igptlib.quantize import encode
from igptlib.bench_sampling import complete_naive
from igptlib.sampling import complete_masked
from igptlib.shipped import export_model, load_model

SCALE = 4  # the explorer draws each pixel as a 4x4 block


@pytest.fixture(scope="module")
def tiny(tiny_checkpoint):
    return load_model(tiny_checkpoint)


@pytest.fixture(scope="module")
def test_images(mnist_root):
    return load_split("mnist", mnist_root, train=False)


@pytest.fixture()
def explorer(tiny_checkpoint, mnist_root, tmp_path, monkeypatch):
    monkeypatch.delenv("IGPT_EXPLORER_MODEL", raising=False)
    return Explorer(tiny_checkpoint, data_root=mnist_root, samples=2, rows=24, models_dir=tmp_path / "no-models")


def png_bytes(pixels: np.ndarray, format: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=format)
    return buffer.getvalue()


def shown(widget) -> torch.Tensor:
    """The picture an Image widget displays, back at one value per model pixel: uint8 [1, H, W]."""
    pixels = np.asarray(Image.open(io.BytesIO(widget.value)).convert("L"))
    return torch.from_numpy(pixels[::SCALE, ::SCALE].copy())[None]


def pictures(explorer, css: str) -> list:
    return [box.children[1] for box in explorer.pictures.children if css in box.children[1]._dom_classes]


def assert_kept(result):
    kept = result.mask.flatten()
    count = len(result.samples)
    assert torch.equal(result.samples[:, kept], result.tokens[kept].expand(count, -1))
    assert torch.equal(result.images[:, :, result.mask], result.original[:, result.mask].expand(count, -1, -1))


def test_keep_mask_rows_and_halves():
    assert keep_mask(28, "rows", 20).sum() == 20 * 28 and keep_mask(28, "rows", 20)[:20].all()
    for keep, kept in [("top", (slice(0, 14), slice(None))), ("bottom", (slice(14, 28), slice(None))),
                       ("left", (slice(None), slice(0, 14))), ("right", (slice(None), slice(14, 28)))]:
        mask = keep_mask(28, keep)
        assert mask[kept].all() and mask.sum() == 28 * 14, keep
    with pytest.raises(ValueError, match="rows to keep must lie in 0..28, got 29"):
        keep_mask(28, "rows", 29)


def test_masked_completion_is_complete_for_top_rows_and_keeps_any_mask(tiny, test_images):
    tokens = encode(test_images[0][:2], tiny.palette)
    rows = complete_naive(tiny.model, tokens, keep=20 * 28, samples=2, seed=3)  # no cache, a pass per pixel
    assert torch.equal(complete_masked(tiny.model, tokens, keep_mask(28, "rows", 20), samples=2, seed=3), rows)
    mask = keep_mask(28, "right")
    drawn = []
    samples = complete_masked(tiny.model, tokens, mask, samples=2, seed=3, on_pixel=lambda n, s: drawn.append(n))
    assert samples.shape == (2, 2, 784) and drawn == list(range(1, 28 * 14 + 1))
    assert torch.equal(samples[:, :, mask.flatten()], tokens[:, None, mask.flatten()].expand(2, 2, -1))


def test_complete_shows_cut_input_samples_and_original(explorer, test_images):
    explorer.source.value = "test image"
    explorer.index.value = 3
    explorer.keep.value = "top rows"
    explorer.rows.value = 22
    explorer.samples.value = 3
    explorer.temperature.value = 0.8
    explorer.top_k.value = 5
    explorer.seed.value = 1
    explorer.button.click()
    result = explorer.result
    assert explorer.error == "" and explorer.message.value == ""
    assert result.source == "mnist test image 3 (label 0)"
    assert result.samples.shape == (3, 784) and result.mask.sum() == 22 * 28
    assert torch.equal(result.tokens, encode(test_images[0][3], result.palette))
    assert_kept(result)
    assert explorer.progress.value == explorer.progress.max == 6 * 28
    assert explorer.status.value.startswith("done: 3 samples")
    # What the page shows: the cut input, each sample as drawn, the original.
    samples = pictures(explorer, "igpt-sample")
    assert len(samples) == 3
    assert all(torch.equal(shown(widget), image) for widget, image in zip(samples, result.images))
    assert torch.equal(shown(pictures(explorer, "igpt-original")[0]), result.original)
    cut = shown(pictures(explorer, "igpt-input")[0])
    assert torch.equal(cut, result.cut)
    assert torch.equal(cut[:, :22], result.original[:, :22]) and (cut[:, 22:] == 128).all()
    # The same controls give the same samples again; another seed gives others.
    assert torch.equal(explorer.complete().samples, result.samples)
    explorer.seed.value = 2
    assert not torch.equal(explorer.complete().samples, result.samples)


def test_every_half_keeps_its_pixels(explorer):
    explorer.samples.value = 1
    for keep in ["top half", "bottom half", "left half", "right half"]:
        explorer.keep.value = keep
        assert explorer.rows.disabled
        result = explorer.complete()
        assert explorer.error == ""
        assert result.mask.sum() == 14 * 28 and len(result.samples) == 1
        assert_kept(result)


def test_random_picks_a_test_image_and_shows_its_index(explorer, test_images):
    explorer.source.value = "random test image"
    first = explorer.complete()
    index = explorer.index.value
    assert first.source == f"mnist test image {index} (label {int(test_images[1][index])})"
    explorer.complete()
    assert explorer.index.value != index


def test_inverted_and_turned_upload_is_made_upright(explorer, upload, tiny, test_images):
    digit = test_images[0][7, 0].numpy()
    paper = 255 - np.rot90(digit, -1)  # dark ink on white, lying on its side (turned clockwise)
    upload(explorer, "side.png", png_bytes(np.ascontiguousarray(paper)))
    assert explorer.source.value == "upload"
    explorer.turn.value = "90° anticlockwise"
    result = explorer.complete()
    assert explorer.error == ""
    assert torch.equal(result.image, test_images[0][7])
    assert result.source == "side.png"
    assert any("white background detected" in note for note in result.notes)
    assert "turned 90° anticlockwise, as asked" in result.notes
    assert_kept(result)
    assert "white background detected" in explorer.notes.value

    explorer.invert.value = "no"
    assert torch.equal(explorer.complete().image, torch.rot90(torch.from_numpy(paper.copy())[None], 1, (-2, -1)))


def test_auto_turn_takes_the_orientation_the_model_finds_most_likely(explorer, upload, tiny, test_images):
    digit = test_images[0][11]
    upload(explorer, "digit.png", png_bytes(digit[0].numpy()))
    explorer.turn.value = "auto (the model's guess)"
    result = explorer.complete()
    nats = rotation_nats(tiny.model, tiny.palette, digit, [0, 90, 180, 270]).tolist()
    turn = nats.index(min(nats))
    assert torch.equal(result.image, torch.rot90(digit, turn, (-2, -1)))
    assert any("the model finds it most likely that way" in note and f"{min(nats):.3f}" in note for note in result.notes)


def ipywidgets7_value(name: str, content: bytes) -> dict:
    """A FileUpload's value as ipywidgets 7 (Colab's) makes it from the browser's metadata and data lists."""
    return {name: {"metadata": {"name": name, "type": "image/png", "size": len(content), "lastModified": 0},
                   "content": content}}


def test_an_upload_is_read_from_the_value_of_ipywidgets_7_and_8(explorer, upload, test_images):
    content = png_bytes(test_images[0][7, 0].numpy())
    assert uploaded_file(ipywidgets7_value("seven.png", content)) == ("seven.png", content)
    assert uploaded_file({}) is None and uploaded_file(()) is None  # nothing uploaded yet, either way

    upload(explorer, "seven.png", content)  # ipywidgets 8, installed here
    completed_8 = explorer.complete()
    assert uploaded_file(explorer.upload.value) == ("seven.png", content)
    # The same explorer with ipywidgets 7's value (this environment's FileUpload cannot hold one).
    explorer.upload = types.SimpleNamespace(value=ipywidgets7_value("seven.png", content))
    completed_7 = explorer.complete()
    assert explorer.error == "" and completed_7.source == completed_8.source == "seven.png"
    assert torch.equal(completed_7.image, test_images[0][7]) and torch.equal(completed_8.image, test_images[0][7])


def test_a_bad_upload_shows_a_message_and_the_explorer_keeps_working(explorer, upload, test_images):
    digit = test_images[0][0, 0].numpy()
    bad = [
        ("notes.png", b"these are notes, not a picture", "notes.png: not an image (expected a PNG, JPG or JPEG file)"),
        # A JPEG cut short: its header reads, its pixels do not.
        ("photo.jpg", png_bytes(digit, "JPEG")[:300], "photo.jpg: unreadable or damaged image"),
        ("anim.png", png_bytes(digit, "GIF"), "anim.png: a GIF image; expected PNG, JPG or JPEG"),
    ]
    assert explorer.complete() is not None  # a completion on screen before the bad uploads
    for name, content, message in bad:
        upload(explorer, name, content)
        assert explorer.complete() is None
        assert explorer.error.startswith(message)
        assert message in explorer.message.value and explorer.pictures.children == ()
        assert explorer.status.value == "failed" and not explorer.button.disabled

    explorer.source.value = "test image"
    result = explorer.complete()
    assert explorer.error == "" and explorer.message.value == ""
    assert len(pictures(explorer, "igpt-sample")) == 2
    assert_kept(result)


def test_without_a_model_the_explorer_says_what_to_do(mnist_root, tiny_checkpoint, tmp_path, monkeypatch):
    monkeypatch.delenv("IGPT_EXPLORER_MODEL", raising=False)
    explorer = Explorer(data_root=mnist_root, samples=1, rows=24, models_dir=tmp_path)
    assert explorer.model_choice.value == PATH_CHOICE
    assert "No model to complete with: nothing is shipped in" in explorer.error
    assert explorer.complete() is None and "No model to complete with" in explorer.message.value
    explorer.model_path.value = str(tmp_path / "missing.ckpt")
    assert explorer.complete() is None and "missing.ckpt: no such checkpoint" in explorer.error
    explorer.model_path.value = str(tiny_checkpoint)
    assert explorer.complete() is not None and explorer.error == ""


def test_test_images_come_from_the_models_own_dataset(tiny_checkpoint, tmp_path):
    import shutil

    from igptlib.config import RunConfig

    run = tmp_path / "fashion-run"
    shutil.copytree(tiny_checkpoint.parent.parent, run)
    config = RunConfig.load_yaml(run / "config.yaml")
    config.replace(data={**config.data.to_dict(), "dataset": "fashion-mnist"}).save_yaml(run / "config.yaml")
    models = tmp_path / "models"
    export_model(run / "checkpoints" / "last.ckpt", models / "clothes.safetensors")
    empty = tmp_path / "no-data"  # no dataset at all: the error names the one the explorer looked for
    explorer = Explorer("clothes", data_root=empty, samples=1, models_dir=models)
    assert explorer.complete() is None and "no fashion-mnist files under" in explorer.error
    explorer = Explorer("clothes", dataset="mnist", data_root=empty, samples=1, models_dir=models)
    assert explorer.complete() is None and "no mnist files under" in explorer.error


def test_the_default_is_the_variable_then_the_shipped_mnist_model(tiny_checkpoint, mnist_root, tmp_path, monkeypatch):
    monkeypatch.delenv("IGPT_EXPLORER_MODEL", raising=False)
    assert default_model(tmp_path) is None
    export_model(tiny_checkpoint, tmp_path / "mnist.safetensors")
    export_model(tiny_checkpoint, tmp_path / "another.safetensors")
    assert default_model(tmp_path) == "mnist"
    explorer = Explorer(data_root=mnist_root, samples=1, rows=24, models_dir=tmp_path)
    assert explorer.model_choice.options == ("another", "mnist", PATH_CHOICE)
    assert explorer.model_choice.value == "mnist" and explorer.error == ""
    assert explorer.complete().model == "mnist"
    monkeypatch.setenv("IGPT_EXPLORER_MODEL", str(tiny_checkpoint))
    assert default_model(tmp_path) == str(tiny_checkpoint)
    explorer = Explorer(data_root=mnist_root, models_dir=tmp_path)
    assert explorer.model_choice.value == PATH_CHOICE and explorer.model_path.value == str(tiny_checkpoint)
