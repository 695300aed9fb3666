"""The batched augmentation against torchvision's own transforms."""

import math

import pytest
import torch
import torchvision.transforms.functional as TF
from torchvision.transforms import InterpolationMode, RandAugment
from torchvision.transforms.autoaugment import _apply_op

from trainer.augment import Augment, Groups, adjust_brightness, adjust_contrast, adjust_saturation, crop_each, randaugment_ops
from trainer.config import AugmentConfig


@pytest.fixture(scope="module")
def images():
    torch.manual_seed(0)
    smooth = torch.nn.functional.interpolate(torch.rand(64, 3, 8, 8), size=32, mode="bilinear")
    return (smooth * 200 + torch.rand(64, 3, 32, 32) * 55).to(torch.uint8)


def only(**changes) -> AugmentConfig:
    """Every stage off except the ones named."""
    off = dict(scale_min=1.0, hflip=0.0, randaug_n=0, jitter=0.0, erasing=0.0, mean=[0.0] * 3, std=[1 / 255] * 3)
    return AugmentConfig(**{**off, **changes})


def test_magnitudes_are_randaugments():
    space = RandAugment()._augmentation_space(31, (32, 32))
    ops = randaugment_ops(8)
    assert [name for name, _, _ in ops] == list(space)
    assert dict((n, m) for n, m, _ in ops)["Rotate"] == pytest.approx(8.0)  # linspace(0, 30, 31)[8]


@pytest.mark.parametrize("magnitude_bin", [0, 9, 30])
@pytest.mark.parametrize("op", range(14))
def test_each_op_matches_torchvision_per_image(images, op, magnitude_bin):
    """With every image forced to op `op`, the batched result equals torchvision's op image by image."""
    augment = Augment(only(randaug_n=1, randaug_m=magnitude_bin))
    name, magnitude, signed = randaugment_ops(magnitude_bin)[op]
    forced_op = torch.full((len(images),), op)
    signs = torch.arange(len(images)) % 2  # both signs in one batch
    out = augment_with_choices(augment, images, forced_op, signs)
    for i in range(len(images)):
        m = -magnitude if (signed and signs[i]) else magnitude
        expected = _apply_op(images[i], name, m, InterpolationMode.NEAREST, None)
        assert torch.equal(out[i], expected), f"{name} image {i}"


def augment_with_choices(augment, images, op_index, negative):
    """One RandAugment round with the op and sign draws given instead of drawn."""
    return Groups.by(augment.variant_of[op_index, negative]).map(images, augment.randaugment_variant)


@pytest.mark.parametrize("name", ["Equalize", "AutoContrast"])
def test_equalize_and_autocontrast_on_flat_and_two_level_images(name):
    """The edge cases of both ops: a constant image (left as it is) and an image of two values."""
    flat = torch.full((3, 32, 32), 77, dtype=torch.uint8)
    two = flat.clone()
    two[:, :, :10] = 200
    one_channel_flat = two.clone()
    one_channel_flat[1] = 5
    batch = torch.stack([flat, two, one_channel_flat])
    augment = Augment(only(randaug_n=1))
    op = [n for n, _, _ in augment_ops()].index(name)
    out = augment_with_choices(augment, batch, torch.full((3,), op), torch.zeros(3, dtype=torch.long))
    for i in range(3):
        assert torch.equal(out[i], _apply_op(batch[i], name, 0.0, InterpolationMode.NEAREST, None)), i


def augment_ops():
    return randaugment_ops(8)


def test_op_and_sign_frequencies_are_uniform_per_image():
    augment = Augment(only(randaug_n=1))
    signed = {name for name, _, s in augment_ops() if s}
    names = [name for name, _, _ in augment_ops()]
    ops, signs = [], []
    for seed in range(5):
        groups = augment.draw(2000, torch.Generator().manual_seed(seed)).randaugment[0]
        per_image = torch.repeat_interleave(torch.tensor(groups.keys), torch.tensor(groups.sizes))[groups.restore]
        for variant in per_image.tolist():
            name, magnitude = augment.variants[variant]
            ops.append(names.index(name))
            if name in signed:
                signs.append(float(magnitude < 0))
    ops, signs = torch.tensor(ops), torch.tensor(signs)
    seen = torch.bincount(ops, minlength=14).float()
    expected = len(ops) / 14
    chi2 = ((seen - expected) ** 2 / expected).sum().item()
    assert chi2 < 36.1, f"op counts {seen.tolist()} not uniform (chi2={chi2:.1f}, 13 dof, p=0.001)"
    assert abs(signs.mean().item() - 0.5) < 0.02
    assert len(torch.unique(ops[:100])) > 5  # drawn per image, not one op for the batch


def test_crop_matches_torchvision_resized_crop(images):
    top, left, side = torch.tensor([0, 3, 4]), torch.tensor([4, 0, 2]), 28
    members = torch.tensor([0, 5, 9])
    crops = TF.resize(crop_each(images[members], top, left, side), [32, 32], InterpolationMode.BILINEAR, antialias=True)
    for k, i in enumerate(members.tolist()):
        expected = TF.resized_crop(images[i], top[k].item(), left[k].item(), side, side, [32, 32],
                                   InterpolationMode.BILINEAR, antialias=True)
        assert torch.equal(crops[k], expected)


def test_crop_sizes_follow_the_scale_range(images):
    augment = Augment(only(scale_min=0.75))
    generator = torch.Generator().manual_seed(0)
    area = 1024 * (0.75 + 0.25 * torch.rand(10000, generator=generator, dtype=torch.float64))
    sides = set(area.sqrt().round().long().tolist())
    assert sides == {28, 29, 30, 31, 32}
    draws = augment.draw(len(images), torch.Generator().manual_seed(1))
    assert set(draws.crop.keys) <= {28, 29, 30, 31, 32} and sum(draws.crop.sizes) == len(images)
    out = draws.crop.map(images, augment.resized_crop, draws.crop_top, draws.crop_left)
    assert out.shape == images.shape and out.dtype == torch.uint8
    for i in range(len(images)):  # each image is its own crop, whatever group it was sorted into
        side = int(draws.crop.keys[(draws.crop.restore[i] >= torch.tensor(draws.crop.sizes).cumsum(0)).sum()])
        top, left = draws.crop_top[i].item(), draws.crop_left[i].item()
        assert torch.equal(out[i], augment.resized_crop(side, images[i:i + 1], draws.crop_top[i:i + 1],
                                                        draws.crop_left[i:i + 1])[0]), i
        assert 0 <= top <= 32 - side and 0 <= left <= 32 - side


@pytest.mark.parametrize("factor", [0.9, 0.93, 1.04, 1.1])
def test_jitter_ops_match_torchvision(images, factor):
    f = torch.full((len(images),), factor, dtype=torch.float64)
    assert torch.equal(adjust_brightness(images, f), TF.adjust_brightness(images, factor))
    assert torch.equal(adjust_contrast(images, f), TF.adjust_contrast(images, factor))
    assert torch.equal(adjust_saturation(images, f), TF.adjust_saturation(images, factor))


def test_flip_half_the_images(images):
    out = Augment(only(hflip=0.5))(images, torch.Generator().manual_seed(0))
    flipped = [torch.allclose(out[i], images[i].flip(-1).float(), atol=1e-3) for i in range(len(images))]
    kept = [torch.allclose(out[i], images[i].float(), atol=1e-3) for i in range(len(images))]
    assert all(a or b for a, b in zip(flipped, kept))
    assert 16 < sum(flipped) < 48


def test_erasing_probability_and_area():
    augment = Augment(only(erasing=0.25))
    ones = torch.full((4000, 3, 32, 32), 255, dtype=torch.uint8)
    out = augment(ones, torch.Generator().manual_seed(0))
    erased_fraction = (out[:, 0] == 0).float().mean(dim=(1, 2))
    erased = erased_fraction > 0
    assert abs(erased.float().mean().item() - 0.25) < 0.03
    # torchvision's erase area is U(0.02, 0.33) of the image, h and w rounded
    assert 0.015 < erased_fraction[erased].min().item() and erased_fraction[erased].max().item() < 0.36
    assert math.isclose(erased_fraction[erased].mean().item(), 0.175, abs_tol=0.03)


def test_same_seed_same_batch_any_device(images):
    augment = Augment(AugmentConfig())
    a = augment(images, torch.Generator().manual_seed(3))
    b = augment(images, torch.Generator().manual_seed(3))
    c = augment(images, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.dtype == torch.float32 and a.shape == images.shape
