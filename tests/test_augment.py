"""The batched augmentation against torchvision's own transforms."""

import math

import pytest
import torch
import torchvision.transforms.functional as TF
from torchvision.transforms import InterpolationMode, RandAugment
from torchvision.transforms.autoaugment import _apply_op

from trainer.augment import Augment, adjust_brightness, adjust_contrast, adjust_saturation, crop_each, randaugment_ops
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


@pytest.mark.parametrize("op", range(14))
def test_each_op_matches_torchvision_per_image(images, op):
    """With every image forced to op `op`, the batched result equals torchvision's op image by image."""
    augment = Augment(only(randaug_n=1, randaug_m=9))
    name, magnitude, signed = augment.ops[op]
    forced_op = torch.full((len(images),), op)
    signs = torch.arange(len(images)) % 2  # both signs in one batch
    out = augment_with_choices(augment, images, forced_op, signs)
    for i in range(len(images)):
        m = -magnitude if (signed and signs[i]) else magnitude
        expected = _apply_op(images[i], name, m, InterpolationMode.NEAREST, None)
        assert torch.equal(out[i], expected), f"{name} image {i}"


def augment_with_choices(augment, images, op_index, negative):
    """Runs randaugment_step with the op and sign draws replaced by the given ones."""
    draws = iter([op_index, negative])
    original = torch.randint
    try:
        torch.randint = lambda *a, **k: next(draws)
        return augment.randaugment_step(images, torch.Generator().manual_seed(0))
    finally:
        torch.randint = original


def test_op_and_sign_frequencies_are_uniform_per_image():
    augment = Augment(only(randaug_n=1))
    seen = torch.zeros(len(augment.ops))
    images = torch.zeros(2000, 3, 32, 32, dtype=torch.uint8)
    counts = []
    original = augment.randaugment_step.__func__

    def record(self, batch, generator):
        state = generator.get_state()
        op_index = torch.randint(len(self.ops), (len(batch),), generator=generator)
        negative = torch.randint(2, (len(batch),), generator=generator)
        counts.append((op_index, negative))
        generator.set_state(state)
        return original(self, batch, generator)

    Augment.randaugment_step = record
    try:
        for seed in range(5):
            augment(images, torch.Generator().manual_seed(seed))
    finally:
        Augment.randaugment_step = original
    ops = torch.cat([c[0] for c in counts])
    signs = torch.cat([c[1] for c in counts]).float()
    seen = torch.bincount(ops, minlength=14).float()
    expected = len(ops) / 14
    chi2 = ((seen - expected) ** 2 / expected).sum().item()
    assert chi2 < 36.1, f"op counts {seen.tolist()} not uniform (chi2={chi2:.1f}, 13 dof, p=0.001)"
    assert abs(signs.mean().item() - 0.5) < 0.02
    assert len(torch.unique(ops[:100])) > 5  # drawn per image, not one op for the batch


def test_crop_matches_torchvision_resized_crop(images):
    top, left, side = torch.tensor([0, 3, 4]), torch.tensor([4, 0, 2]), 28
    members = torch.tensor([0, 5, 9])
    crops = TF.resize(crop_each(images, members, top, left, side), [32, 32], InterpolationMode.BILINEAR, antialias=True)
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
    out = augment.random_resized_crop(images, torch.Generator().manual_seed(1))
    assert out.shape == images.shape and out.dtype == torch.uint8


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
