"""The reference's training augmentation, applied to whole uint8 batches on any device.

Reference pipeline (torchvision, one PIL image at a time):
    RandomResizedCrop(32, scale=(0.75, 1), ratio=(1, 1)) -> RandomHorizontalFlip ->
    RandAugment(n=1, m=8) -> ColorJitter(0.1, 0.1, 0.1) -> ToTensor -> Normalize -> RandomErasing(0.25)

Here every random choice is still made per image, with the same distributions, but
images that drew the same crop size or the same RandAugment op are transformed
together with torchvision's own tensor functions. All random numbers come from a
CPU generator seeded by the caller, so a batch's augmentation depends only on
(seed, epoch, step, rank): resuming needs no RNG state, and CPU and GPU agree.
"""

from __future__ import annotations

import math

import torch
import torchvision.transforms.functional as F
from torchvision.transforms import InterpolationMode, RandAugment
from torchvision.transforms.autoaugment import _apply_op  # RandAugment's own per-op code

RANDAUGMENT_BINS = 31  # torchvision's default num_magnitude_bins
ERASING_SCALE, ERASING_RATIO, ERASING_TRIES = (0.02, 0.33), (0.3, 3.3), 10  # RandomErasing's defaults


def randaugment_ops(magnitude_bin: int, image_size: int = 32) -> list:
    """[(op name, magnitude, signed)] exactly as torchvision's RandAugment draws them."""
    space = RandAugment()._augmentation_space(RANDAUGMENT_BINS, (image_size, image_size))
    return [
        (name, float(magnitudes[magnitude_bin]) if magnitudes.ndim > 0 else 0.0, signed)
        for name, (magnitudes, signed) in space.items()
    ]


class Augment:
    def __init__(self, augment_config, image_size: int = 32):
        self.config = augment_config
        self.image_size = image_size
        self.ops = randaugment_ops(augment_config.randaug_m, image_size)

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """uint8 B x 3 x H x W -> normalized float32 B x 3 x H x W."""
        c = self.config
        images = self.random_resized_crop(images, generator)
        flip = torch.rand(len(images), generator=generator) < c.hflip
        images = torch.where(flip.to(images.device)[:, None, None, None], images.flip(-1), images)
        for _ in range(c.randaug_n):
            images = self.randaugment_step(images, generator)
        if c.jitter > 0:
            images = self.color_jitter(images, generator)
        images = normalize(images, c.mean, c.std)
        if c.erasing > 0:
            images = self.random_erasing(images, generator)
        return images

    def random_resized_crop(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        # With ratio (1, 1) torchvision's first try always fits: a square of side
        # round(sqrt(area * U(scale_min, 1))) at a uniform position.
        n, size = len(images), self.image_size
        area = size * size * (self.config.scale_min + (1 - self.config.scale_min) * torch.rand(n, generator=generator, dtype=torch.float64))
        sides = area.sqrt().round().long()
        top = (torch.rand(n, generator=generator, dtype=torch.float64) * (size - sides + 1)).long()
        left = (torch.rand(n, generator=generator, dtype=torch.float64) * (size - sides + 1)).long()
        out = torch.empty_like(images)
        for side in sides.unique().tolist():
            members = (sides == side).nonzero().squeeze(1)
            crops = crop_each(images, members, top[members], left[members], side)
            if side != size:
                crops = F.resize(crops, [size, size], InterpolationMode.BILINEAR, antialias=True)
            out[members.to(images.device)] = crops
        return out

    def randaugment_step(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n = len(images)
        op_index = torch.randint(len(self.ops), (n,), generator=generator)
        negative = torch.randint(2, (n,), generator=generator).bool()
        out = images.clone()
        for index, (name, magnitude, signed) in enumerate(self.ops):
            for sign in ((1.0, -1.0) if signed else (1.0,)):
                chosen = op_index == index
                if signed:
                    chosen &= negative == (sign < 0)
                members = chosen.nonzero().squeeze(1)
                if len(members):
                    on_device = members.to(images.device)
                    out[on_device] = _apply_op(images[on_device], name, sign * magnitude, InterpolationMode.NEAREST, None)
        return out

    def color_jitter(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """ColorJitter(b, c, s): per image, factors in [1 - j, 1 + j] applied in a random order."""
        n, j = len(images), self.config.jitter
        factors = 1 - j + 2 * j * torch.rand(3, n, generator=generator, dtype=torch.float64)
        # torchvision permutes four ops (hue included, a no-op here): keep the order of the other three.
        order = torch.rand(n, 4, generator=generator).argsort(1)
        order = order[order < 3].view(n, 3)
        adjust = (adjust_brightness, adjust_contrast, adjust_saturation)
        factors, order = factors.to(images.device), order.to(images.device)
        for position in range(3):
            step = order[:, position]
            candidates = torch.stack([fn(images, factors[k]) for k, fn in enumerate(adjust)])
            images = candidates[step, torch.arange(n, device=images.device)]
        return images

    def random_erasing(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """RandomErasing(p, scale=(0.02, 0.33), ratio=(0.3, 3.3), value=0), torchvision's 10 tries per image."""
        n, (h_img, w_img) = len(images), images.shape[-2:]
        area = h_img * w_img
        tries = (n, ERASING_TRIES)
        erase_area = area * (ERASING_SCALE[0] + (ERASING_SCALE[1] - ERASING_SCALE[0]) * torch.rand(tries, generator=generator))
        log_lo, log_hi = math.log(ERASING_RATIO[0]), math.log(ERASING_RATIO[1])
        aspect = torch.exp(log_lo + (log_hi - log_lo) * torch.rand(tries, generator=generator))
        h = (erase_area * aspect).sqrt().round().long()
        w = (erase_area / aspect).sqrt().round().long()
        fits = (h < h_img) & (w < w_img)
        first_fit = torch.where(fits.any(1), fits.float().argmax(1), 0)
        pick = torch.arange(n)
        h, w = h[pick, first_fit], w[pick, first_fit]
        top = (torch.rand(n, generator=generator) * (h_img - h + 1)).long()
        left = (torch.rand(n, generator=generator) * (w_img - w + 1)).long()
        erase = (torch.rand(n, generator=generator) < self.config.erasing) & fits.any(1)
        rows, cols = torch.arange(h_img), torch.arange(w_img)
        inside_rows = (rows >= top[:, None]) & (rows < (top + h)[:, None])
        inside_cols = (cols >= left[:, None]) & (cols < (left + w)[:, None])
        mask = erase[:, None, None] & inside_rows[:, :, None] & inside_cols[:, None, :]
        return images.masked_fill(mask.to(images.device)[:, None], 0.0)


def crop_each(images: torch.Tensor, members: torch.Tensor, top: torch.Tensor, left: torch.Tensor, side: int) -> torch.Tensor:
    """images[m, :, top:top+side, left:left+side] for each member m, at once."""
    offsets = torch.arange(side)
    rows = (top[:, None] + offsets).to(images.device)  # members x side
    cols = (left[:, None] + offsets).to(images.device)
    picked = images[members.to(images.device)]  # members x C x H x W
    picked = picked.gather(2, rows[:, None, :, None].expand(-1, picked.shape[1], -1, picked.shape[3]))
    return picked.gather(3, cols[:, None, None, :].expand(-1, picked.shape[1], side, -1))


def _blend(images: torch.Tensor, other: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
    """torchvision's _blend with one ratio per image (same float32 rounding, so the same uint8 result)."""
    ratio = ratio.view(-1, 1, 1, 1)
    mixed = ratio.float() * images + (1.0 - ratio).float() * other
    return mixed.clamp(0, 255).to(images.dtype)


def grayscale(images: torch.Tensor) -> torch.Tensor:
    r, g, b = images.unbind(dim=-3)
    return (0.2989 * r + 0.587 * g + 0.114 * b).to(images.dtype).unsqueeze(-3)


def adjust_brightness(images, factors):
    return _blend(images, torch.zeros_like(images), factors)


def adjust_contrast(images, factors):
    mean = grayscale(images).float().mean(dim=(-3, -2, -1), keepdim=True)
    return _blend(images, mean, factors)


def adjust_saturation(images, factors):
    return _blend(images, grayscale(images), factors)


def normalize(images: torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 -> float in [0, 1] (ToTensor) -> (x - mean) / std (Normalize)."""
    mean = torch.tensor(mean, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(std, device=images.device).view(1, 3, 1, 1)
    return (images.float() / 255 - mean) / std
