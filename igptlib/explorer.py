"""The completion explorer: pick a model, an image and what to keep of it, then watch the model finish it.

Explorer builds the ipywidgets that notebooks/08_explorer.ipynb shows (and Voila serves as a page);
the work is done by the plain functions below, which the widget calls and the tests check too:

    default_model()                     $IGPT_EXPLORER_MODEL, else the shipped "mnist" model, else None
    uploaded_file(value)                the name and bytes of the file in a FileUpload's value
    prepare_upload(name, content, ...)  an uploaded PNG or JPEG made into the model's input, with notes

The seed report asks that inverted or rotated inputs still complete like the training digits.
Inversion is load_image's: a white background is detected (or the Invert toggle decides).
Rotation is the Turn control's: a quarter turn the user picks, or "auto", where the model judges,
turning the upload to the orientation it finds most likely (igptlib.robustness.turn_upright, as
`igpt complete --turn auto`). That guess is only as good as the model (a turned 0, 1, 6 or 8 still
looks like a digit; `igpt robustness` counts how often it is right), so "none" is the default and
auto shows its numbers.
"""
from __future__ import annotations

import dataclasses
import html
import io
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from igptlib.completion import MISSING_GREY, Completions, complete_tokens, keep_mask
from igptlib.config import MAX_PIXELS
from igptlib.datasets import DataError, load_split
from igptlib.device import resolve_device
from igptlib.extras import require
from igptlib.images import ImageLoadError, load_image
from igptlib.quantize import decode, encode, reduce_context
from igptlib.robustness import QUARTER_TURNS, turn_upright
from igptlib.shipped import MODELS_DIR, load_model, model_dataset, shipped_models

MODEL_VARIABLE = "IGPT_EXPLORER_MODEL"  # how a launcher (make explorer, the page test) picks the model
DEFAULT_MODEL = "mnist"
KEEP = {"top rows": "rows", "top half": "top", "bottom half": "bottom", "left half": "left", "right half": "right"}
# Quarter turns anticlockwise (torch.rot90's k) applied to an upload; None: the model's guess.
TURNS = {**{name: k for k, name in QUARTER_TURNS.items()}, "auto (the model's guess)": None}
PATH_CHOICE = "a checkpoint path:"
SOURCES = ("test image", "random test image", "upload")
PIXEL_SCALE = 4  # 28x28 pictures shown at 112x112, blocky rather than blurred


def default_model(models_dir: str | os.PathLike = MODELS_DIR) -> str | None:
    """The model the explorer opens with: $IGPT_EXPLORER_MODEL, else the shipped "mnist" model, else
    the first shipped one; None when nothing is set and nothing is shipped."""
    chosen = os.environ.get(MODEL_VARIABLE, "").strip()
    if chosen:
        return chosen
    shipped = shipped_models(models_dir)
    if DEFAULT_MODEL in shipped:
        return DEFAULT_MODEL
    return shipped[0] if shipped else None


def uploaded_file(value) -> tuple[str, bytes] | None:
    """(name, content) of the first file in a FileUpload's value; None when nothing is uploaded.

    ipywidgets 8 holds a tuple of dicts ({"name", "content": memoryview, ...}); ipywidgets 7, which
    Colab ships, a dict {name: {"metadata": {"name", ...}, "content": bytes}}.
    """
    if not value:
        return None
    if isinstance(value, dict):
        first = next(iter(value.values()))
        return first["metadata"]["name"], bytes(first["content"])
    return value[0]["name"], bytes(value[0]["content"])


def prepare_upload(name: str, content: bytes, model, palette: np.ndarray, invert: bool | None = None,
                   turn: int | None = None, max_pixels: int = MAX_PIXELS) -> tuple[torch.Tensor, list[str]]:
    """An uploaded file's bytes as the model's input, uint8 [C, n_px, n_px], and notes on what was done.

    invert: None detects a white background (load_image); turn: quarter turns anticlockwise, None
    lets the model choose (turn_upright). A file that is not a PNG or JPEG, or that would need more
    than max_pixels once made square, raises ImageLoadError.
    """
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / Path(name).name
        path.write_bytes(content)
        try:
            image, notes = load_image(path, n_px=model.config.n_px, channels=palette.shape[1], invert=invert,
                                      max_pixels=max_pixels)
        except ImageLoadError as error:
            # The temporary folder means nothing to the user; the name they uploaded does.
            raise ImageLoadError(str(error).replace(str(path), name)) from None
    image, turned = turn_upright(model, palette, image, turn)
    return image, notes + turned


@dataclasses.dataclass
class Completion(Completions):
    """One press of Complete: the completions of one image (tokens [T], samples [samples, T]), with
    where the image came from."""

    model: str
    source: str  # "test image 7 (label 9)" or the uploaded file's name
    image: torch.Tensor  # uint8 [C, n_px, n_px]: the image the model was given, before the cut
    notes: list[str]


def png(image: torch.Tensor, scale: int = PIXEL_SCALE) -> bytes:
    """uint8 [C, H, W] -> PNG bytes, each pixel drawn as a scale x scale block."""
    pixels = image.movedim(0, -1).numpy()
    picture = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)
    picture = picture.resize((picture.width * scale, picture.height * scale), Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


class Explorer:
    """The completion explorer as ipywidgets: display it (it shows its `widget`), or drive it from
    code: set the controls' `.value`, then `complete()` (or `button.click()`); `result` holds the
    last Completion and `error` the message shown for the last failure ("" when it worked)."""

    def __init__(self, model: str | os.PathLike | None = None, dataset: str | None = None, data_root: str | os.PathLike = "data",
                 samples: int = 8, rows: int = 14, seed: int = 0, models_dir: str | os.PathLike = MODELS_DIR,
                 device: str = "auto"):
        w = require("ipywidgets", "course", "the completion explorer")
        self.dataset, self.data_root, self.models_dir = dataset, Path(data_root), Path(models_dir)
        self.device = resolve_device(device)  # auto: the GPU when there is one
        self.result: Completion | None = None
        self.error = ""
        self._models: dict[tuple, object] = {}
        self._test_sets: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._random = np.random.default_rng(seed)  # which test image "random" picks, reproducibly

        wide = dict(style={"description_width": "initial"})
        shipped = shipped_models(self.models_dir)
        model = default_model(self.models_dir) if model is None else str(model)
        self.model_choice = w.Dropdown(options=[*shipped, PATH_CHOICE], description="Model", **wide)
        self.model_path = w.Text(placeholder="runs/.../checkpoints/best.ckpt or a .safetensors file",
                                 layout=w.Layout(width="28em"))
        if model in shipped:
            self.model_choice.value = model
        else:
            self.model_choice.value = PATH_CHOICE
            self.model_path.value = model or ""

        toggles = dict(style={"description_width": "initial", "button_width": "auto"})
        self.source = w.ToggleButtons(options=SOURCES, description="Image", **toggles)
        self.index = w.IntText(value=0, description="test index", layout=w.Layout(width="12em"), **wide)
        self.upload = w.FileUpload(accept=".png,.jpg,.jpeg", multiple=False, description="Upload PNG/JPEG",
                                   layout=w.Layout(width="auto"))
        self.upload.observe(self._uploaded, names="value")
        self.invert = w.ToggleButtons(options=["auto", "yes", "no"], description="Invert upload", **toggles,
                                      tooltips=["invert when the background is white", "always", "never"])
        self.turn = w.Dropdown(options=list(TURNS), description="Turn upload", **wide)

        self.keep = w.Dropdown(options=list(KEEP), description="Keep", **wide)
        self.rows = w.IntSlider(value=rows, min=0, max=28, description="rows from the top", **wide)
        self.keep.observe(lambda change: setattr(self.rows, "disabled", change["new"] != "top rows"), names="value")
        self.samples = w.IntSlider(value=samples, min=1, max=16, description="Samples", **wide)
        self.temperature = w.FloatSlider(value=1.0, min=0.0, max=2.0, step=0.05, description="Temperature", **wide)
        self.top_k = w.IntSlider(value=0, min=0, max=16, description="Top-k (0: all)", **wide)
        self.seed = w.IntText(value=seed, description="Seed", layout=w.Layout(width="10em"), **wide)

        self.button = w.Button(description="Complete", button_style="primary", icon="play")
        self.button.on_click(lambda _: self.complete())
        self.progress = w.IntProgress(value=0, min=0, max=1, description="Pixels", **wide)
        self.status = w.Label()
        self.message = w.HTML()
        self.pictures = w.HBox()
        self.notes = w.HTML()
        note = ("The model draws pixels in raster order (top to bottom, left to right): it sees a kept pixel "
                "only once it gets there, so a bottom or right half tells it less than a top or left half.")
        self.widget = w.VBox([
            w.HBox([self.model_choice, self.model_path]),
            w.HBox([self.source, self.index, self.upload]),
            w.HBox([self.invert, self.turn]),
            w.HBox([self.keep, self.rows]),
            w.HBox([self.samples, self.temperature]),
            w.HBox([self.top_k, self.seed]),
            w.HBox([self.button, self.progress, self.status]),
            self.message, self.pictures, self.notes,
            w.HTML(f"<small>{html.escape(note)}</small>"),
        ])
        if model is None:
            self._show_error(self._no_model_message())

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)

    def _uploaded(self, change) -> None:
        if change["new"]:
            self.source.value = "upload"

    def _no_model_message(self) -> str:
        return (f"No model to complete with: nothing is shipped in {self.models_dir} (expected "
                f"{DEFAULT_MODEL}.safetensors) and ${MODEL_VARIABLE} is not set. Enter the path of a .ckpt "
                f"checkpoint or a .safetensors model above, then press Complete.")

    def _show_error(self, text: str) -> None:
        self.error = text
        self.message.value = f'<div style="color:#b00020">&#9888; {html.escape(text)}</div>' if text else ""

    # -- what Complete does ----------------------------------------------------------------------

    def complete(self) -> Completion | None:
        """Complete the chosen image with the chosen model and controls; None (and `error` set) on failure."""
        self.button.disabled = True
        self._show_error("")
        try:
            self.result = self._complete()
        except (ValueError, OSError, DataError, MemoryError) as error:  # bad uploads, paths, checkpoints, data
            self.result = None
            self.pictures.children = ()
            self.status.value = "failed"
            self._show_error(str(error) if not isinstance(error, MemoryError) else
                             "Out of memory: expected a smaller image, model or number of samples for this machine.")
        finally:
            self.button.disabled = False
        return self.result

    def _model(self):
        if self.model_choice.value != PATH_CHOICE:
            source = self.model_choice.value
            key = (source,)
        else:
            source = self.model_path.value.strip()
            if not source:
                raise ValueError(self._no_model_message() if not shipped_models(self.models_dir)
                                 else "Enter the path of a .ckpt checkpoint or a .safetensors model, or pick a shipped model.")
            path = Path(source)
            key = (str(path.resolve()), path.stat().st_mtime if path.exists() else None)  # a retrained file is reloaded
        if key not in self._models:
            self.status.value = f"loading {source}..."
            module = load_model(source, self.models_dir)
            module.model.to(self.device)
            if module.palette is None:
                raise ValueError(f"{source}: holds no palette, so its tokens cannot be turned into colours")
            # Test images come from the model's own dataset unless the explorer was given one.
            # A model that records none (an imported one): MNIST's test images, or CIFAR-10's for an
            # RGB model such as OpenAI's iGPT.
            dataset = self.dataset or model_dataset(source, self.models_dir) or (
                "mnist" if module.palette.shape[1] == 1 else "cifar10")
            self._models = {key: (module, dataset)}  # one model in memory at a time
        module, dataset = self._models[key]
        n_px, vocab = module.model_config.n_px, module.model_config.vocab_size
        self.rows.max, self.top_k.max = n_px, vocab
        return source, module, dataset

    def _image(self, module, dataset: str) -> tuple[torch.Tensor, str, list[str]]:
        if self.source.value == "upload":
            upload = uploaded_file(self.upload.value)
            if upload is None:
                raise ValueError("No file uploaded yet: choose a PNG, JPG or JPEG file with the Upload button.")
            name, content = upload
            image, notes = prepare_upload(name, content, module.model, module.palette,
                                          {"auto": None, "yes": True, "no": False}[self.invert.value],
                                          TURNS[self.turn.value])
            return image, name, notes
        if dataset not in self._test_sets:
            self._test_sets[dataset] = load_split(dataset, self.data_root, train=False)
        images, labels = self._test_sets[dataset]
        if self.source.value == "random test image":
            self.index.value = int(self._random.integers(len(images)))
        index = self.index.value
        if not 0 <= index < len(images):
            raise ValueError(f"test index must lie in 0..{len(images) - 1}, got {index}")
        image = reduce_context(images[index], module.model_config.n_px)
        return image, f"{dataset} test image {index} (label {int(labels[index])})", []

    def _complete(self) -> Completion:
        name, module, dataset = self._model()
        model, palette = module.model, module.palette
        image, source, notes = self._image(module, dataset)
        mask = keep_mask(model.config.n_px, KEEP[self.keep.value], self.rows.value)
        tokens = encode(image[None], palette)  # once: the preview and the completion read the same tokens
        original = decode(tokens[0], palette)
        count = self.samples.value
        missing = (~mask.flatten()).nonzero().flatten()
        shown = self._show_pictures(original.masked_fill(~mask, MISSING_GREY), original, count)
        self.progress.max, self.progress.value = max(len(missing), 1), 0
        self.status.value = f"drawing {len(missing)} pixels in {count} samples..."

        def on_pixel(drawn: int, sequences: torch.Tensor) -> None:
            self.progress.value = drawn
            # A row at a time: redrawing after every pixel would cost more than the sampling.
            if drawn % model.config.n_px == 0 or drawn == len(missing):
                pictures = decode(sequences[0].cpu(), palette)
                undrawn = torch.zeros(mask.numel(), dtype=torch.bool)
                undrawn[missing[drawn:]] = True
                pictures = pictures.masked_fill(undrawn.view_as(mask), MISSING_GREY)
                for widget, picture in zip(shown, pictures):
                    widget.value = png(picture)

        completed = complete_tokens(model, palette, tokens, mask=mask, samples=count,
                                    temperature=self.temperature.value, top_k=self.top_k.value or None,
                                    seed=self.seed.value, on_pixel=on_pixel)[0]
        result = Completion(**vars(completed), model=name, source=source, image=image, notes=notes)
        for widget, picture in zip(shown, result.images):
            widget.value = png(picture)
        self.status.value = f"done: {count} samples in {result.seconds:.1f} s on {self.device.type}"
        self.notes.value = "<br>".join(html.escape(line) for line in
                                       [f"model: {name}; image: {source}", *notes])
        return result

    def _show_pictures(self, cut: torch.Tensor, original: torch.Tensor, count: int) -> list:
        """Lay out the cut input, `count` sample pictures (the cut input until drawn) and the original;
        return the samples' Image widgets."""
        import ipywidgets as w

        def picture(image: torch.Tensor, label: str, css: str):
            widget = w.Image(value=png(image), format="png")
            widget.add_class(css)  # what the page test looks for
            return widget, w.VBox([w.Label(label), widget])

        samples = [picture(cut, f"sample {i + 1}", "igpt-sample") for i in range(count)]
        self.pictures.children = (picture(cut, "input", "igpt-input")[1], *(box for _, box in samples),
                                  picture(original, "original", "igpt-original")[1])
        return [widget for widget, _ in samples]
