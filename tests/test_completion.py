"""Images completed one way for every caller: encoding, what is kept, what is drawn, bad requests."""
import numpy as np
import pytest
import torch

from igptlib.completion import MISSING_GREY, complete_images, complete_tokens, keep_mask
from igptlib.config import model_config
from igptlib.model import GPT
from igptlib.quantize import encode
from igptlib.sampling import complete

PALETTE = np.linspace(0, 255, 16, dtype=np.float32)[:, None]  # 16 grey levels, as a 1-channel palette


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return GPT(model_config("xs", vocab_size=16, n_px=8)).eval()


@pytest.fixture(scope="module")
def images():
    return torch.randint(0, 256, (3, 1, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))


def test_images_are_encoded_kept_and_drawn_as_the_sampler_draws_them(model, images):
    completed = complete_images(model, PALETTE, images, rows=5, samples=4, seed=3)
    tokens = encode(images, PALETTE)
    assert torch.equal(completed.tokens, tokens)
    assert torch.equal(completed.samples, complete(model, tokens, 5 * 8, samples=4, seed=3))
    assert completed.kept_tokens == 40 and completed.kept_rows == 5
    assert completed.images.shape == (3, 4, 1, 8, 8) and completed.original.shape == (3, 1, 8, 8)
    # What is drawn: the kept rows of the palette-coloured original in every sample, grey below in the cut.
    assert torch.equal(completed.images[:, :, :, :5], completed.original[:, None, :, :5].expand(-1, 4, -1, -1, -1))
    assert torch.equal(completed.cut[..., :5, :], completed.original[..., :5, :])
    assert (completed.cut[..., 5:, :] == MISSING_GREY).all()


def test_half_the_image_is_kept_by_default_and_larger_images_are_resized(model, images):
    large = images.repeat_interleave(4, dim=-1).repeat_interleave(4, dim=-2)  # 32x32
    completed = complete_images(model, PALETTE, large, samples=2)
    assert completed.kept_rows == 4 and completed.images.shape == (3, 2, 1, 8, 8)


def test_one_image_of_the_batch_and_its_figure(model, images, tmp_path):
    completed = complete_tokens(model, PALETTE, encode(images, PALETTE), rows=3, samples=2, seed=0)
    one = completed[1]
    assert torch.equal(one.samples, completed.samples[1]) and one.images.shape == (2, 1, 8, 8)
    assert one.cut.shape == (1, 8, 8) and one.seconds == completed.seconds
    fig = completed.figure(title="three images")
    assert len(fig.axes) == 3 * (2 + 2)  # per image: the cut input, two samples, the original


def test_a_mask_keeps_any_pixels_and_on_pixel_sees_every_drawn_one(model, images):
    mask = keep_mask(8, "right")
    seen = []
    completed = complete_images(model, PALETTE, images, mask=mask, samples=2, on_pixel=lambda drawn, _: seen.append(drawn))
    assert seen == list(range(1, 33))
    assert torch.equal(completed.samples[:, :, mask.flatten()], completed.tokens[:, None, mask.flatten()].expand(-1, 2, -1))
    with pytest.raises(ValueError, match="kept pixels must come first in raster order"):
        completed.figure()  # the figure shows whole top rows kept; a right half is not that


def test_bad_requests_say_what_was_expected(model, images):
    with pytest.raises(ValueError, match="either the rows to keep or a mask"):
        complete_images(model, PALETTE, images, rows=2, mask=keep_mask(8, "top"))
    with pytest.raises(ValueError, match=r"rows to keep must lie in 0\.\.8, got 9"):
        complete_images(model, PALETTE, images, rows=9)
    with pytest.raises(ValueError, match="unknown part to keep 'middle'"):
        keep_mask(8, "middle")
    with pytest.raises(ValueError, match="not a number of whole 8-pixel rows"):
        complete_images(model, PALETTE, images, mask=torch.arange(64).view(8, 8) < 12).kept_rows
