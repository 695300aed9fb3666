"""The reference's training augmentation, applied to whole uint8 batches on any device.

Reference pipeline (torchvision, one PIL image at a time):
    RandomResizedCrop(32, scale=(0.75, 1), ratio=(1, 1)) -> RandomHorizontalFlip ->
    RandAugment(n=1, m=8) -> ColorJitter(0.1, 0.1, 0.1) -> ToTensor -> Normalize -> RandomErasing(0.25)

Every random choice is still made per image, with the same distributions, in two stages:
- `Augment.draw` makes all of a batch's random choices on the CPU, from a generator the caller seeds (so a batch
  depends only on (seed, epoch, step, rank): resuming needs no RNG state, and CPU and GPU agree). Images that drew
  the same crop size or the same RandAugment op are sorted into groups there, so group sizes are Python ints.
- `Augment.apply` runs on the images' device with no host synchronisation: the draws arrive in one copy
  (`trainer.transfer.send`), each group is one batched call of torchvision's own tensor functions, and the
  geometric ops are gathers through pixel maps that torchvision itself computed once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torchvision.transforms.functional as F
import torchvision.transforms.v2.functional as F2
from torchvision.transforms import InterpolationMode, RandAugment
from torchvision.transforms.autoaugment import _apply_op  # RandAugment's own per-op code

from trainer.transfer import send

RANDAUGMENT_BINS = 31  # torchvision's default num_magnitude_bins
ERASING_SCALE, ERASING_RATIO, ERASING_TRIES = (0.02, 0.33), (0.3, 3.3), 10  # RandomErasing's defaults
GEOMETRIC_OPS = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")


def randaugment_ops(magnitude_bin: int, image_size: int = 32) -> list:
    """[(op name, magnitude, signed)] exactly as torchvision's RandAugment draws them."""
    space = RandAugment()._augmentation_space(RANDAUGMENT_BINS, (image_size, image_size))
    return [
        (name, float(magnitudes[magnitude_bin]) if magnitudes.ndim > 0 else 0.0, signed)
        for name, (magnitudes, signed) in space.items()
    ]


@dataclass
class Groups:
    """A batch sorted so that images given the same transform sit together. `order` sorts the batch and `restore`
    undoes it; `keys` and `sizes` (Python ints, known on the CPU) name each group and its length."""

    order: torch.Tensor
    restore: torch.Tensor
    keys: list
    sizes: list

    @classmethod
    def by(cls, keys: torch.Tensor) -> "Groups":
        """Groups a CPU tensor of non-negative keys, one per image, with a stable sort."""
        order = torch.sort(keys, stable=True).indices
        counts = torch.bincount(keys)
        present = counts.nonzero().squeeze(1)  # on the CPU: no device is involved yet
        return cls(order, torch.argsort(order), present.tolist(), counts[present].tolist())

    def map(self, images: torch.Tensor, transform, *per_image: torch.Tensor) -> torch.Tensor:
        """transform(key, group's images, *group's per-image values) for each group, back in batch order."""
        columns = [t.index_select(0, self.order).split(self.sizes) for t in (images, *per_image)]
        parts = [transform(key, *group) for key, *group in zip(self.keys, *columns)]
        return torch.cat(parts).index_select(0, self.restore)


@dataclass
class Draws:
    """Every random choice of one batch (CPU tensors until `send` moves them)."""

    crop: Groups  # by square side
    crop_top: torch.Tensor
    crop_left: torch.Tensor
    flip: torch.Tensor  # bool
    randaugment: list  # one Groups per RandAugment round, keyed by (op, sign) variant
    jitter_factors: torch.Tensor  # 3 x N: brightness, contrast, saturation
    jitter_order: torch.Tensor  # N x 3: the order of the three adjustments
    erase: torch.Tensor  # bool
    erase_box: torch.Tensor  # N x 4: top, left, height, width


class Normalize:
    """ToTensor + Normalize for uint8 batches, its constants placed on the device once rather than per call."""

    def __init__(self, mean, std, device="cpu"):
        self.mean = torch.tensor(mean, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=device).view(1, 3, 1, 1)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return (images.float() / 255 - self.mean) / self.std


class Augment:
    def __init__(self, augment_config, device="cpu", image_size: int = 32):
        self.config = augment_config
        self.image_size = image_size
        self.normalize = Normalize(augment_config.mean, augment_config.std, device)
        # One variant per (op, sign): a signed op's negative magnitude is a variant of its own.
        self.variants, variant_of = [], []
        for name, magnitude, signed in randaugment_ops(augment_config.randaug_m, image_size):
            first = len(self.variants)
            self.variants += [(name, magnitude), (name, -magnitude)] if signed else [(name, magnitude)]
            variant_of.append([first, first + signed])
        self.variant_of = torch.tensor(variant_of)  # [op index, negative] -> variant
        self.pixel_maps = {v: pixel_map(name, magnitude, image_size, device)
                           for v, (name, magnitude) in enumerate(self.variants) if name in GEOMETRIC_OPS}
        self.smoothing = smoothing_kernel().to(device)

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """uint8 B x 3 x H x W -> normalized float32 B x 3 x H x W."""
        return self.apply(images, send(self.draw(len(images), generator), images.device))

    def draw(self, n: int, generator: torch.Generator) -> Draws:
        """All random choices for n images, on the CPU, in a fixed order of draws from `generator`."""
        c, size = self.config, self.image_size
        # RandomResizedCrop with ratio (1, 1): torchvision's first try always fits, a square of side
        # round(sqrt(area * U(scale_min, 1))) at a uniform position.
        area = size * size * (c.scale_min + (1 - c.scale_min) * torch.rand(n, generator=generator, dtype=torch.float64))
        sides = area.sqrt().round().long()
        top = (torch.rand(n, generator=generator, dtype=torch.float64) * (size - sides + 1)).long()
        left = (torch.rand(n, generator=generator, dtype=torch.float64) * (size - sides + 1)).long()
        flip = torch.rand(n, generator=generator) < c.hflip
        randaugment = []
        for _ in range(c.randaug_n):
            op_index = torch.randint(len(self.variant_of), (n,), generator=generator)
            negative = torch.randint(2, (n,), generator=generator)
            randaugment.append(Groups.by(self.variant_of[op_index, negative]))
        # ColorJitter(b, c, s): factors in [1 - j, 1 + j]; torchvision permutes four ops (hue included, a
        # no-op here): keep the order of the other three.
        j = c.jitter
        jitter_factors = (1 - j + 2 * j * torch.rand(3, n, generator=generator, dtype=torch.float64)).float()
        order = torch.rand(n, 4, generator=generator).argsort(1)
        jitter_order = order[order < 3].view(n, 3)
        erase, erase_box = self.draw_erasing(n, generator)
        return Draws(Groups.by(sides), top, left, flip, randaugment, jitter_factors, jitter_order, erase, erase_box)

    def draw_erasing(self, n: int, generator: torch.Generator) -> tuple:
        """RandomErasing(p, scale=(0.02, 0.33), ratio=(0.3, 3.3)): torchvision's 10 tries per image."""
        h_img = w_img = self.image_size
        tries = (n, ERASING_TRIES)
        erase_area = h_img * w_img * (ERASING_SCALE[0] + (ERASING_SCALE[1] - ERASING_SCALE[0])
                                      * torch.rand(tries, generator=generator))
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
        return erase, torch.stack([top, left, h, w], 1)

    def apply(self, images: torch.Tensor, draws: Draws) -> torch.Tensor:
        """The augmentation of `images` (uint8, on any device) by `draws` (on the same device)."""
        c = self.config
        images = draws.crop.map(images, self.resized_crop, draws.crop_top, draws.crop_left)
        images = torch.where(draws.flip[:, None, None, None], images.flip(-1), images)
        for groups in draws.randaugment:
            images = groups.map(images, self.randaugment_variant)
        if c.jitter > 0:
            images = color_jitter(images, draws.jitter_factors, draws.jitter_order)
        images = self.normalize(images)
        if c.erasing > 0:
            images = erase_boxes(images, draws.erase, draws.erase_box)
        return images

    def resized_crop(self, side: int, images: torch.Tensor, top: torch.Tensor, left: torch.Tensor) -> torch.Tensor:
        crops = crop_each(images, top, left, side)
        if side == self.image_size:
            return crops
        return F.resize(crops, [self.image_size] * 2, InterpolationMode.BILINEAR, antialias=True)

    def randaugment_variant(self, variant: int, images: torch.Tensor) -> torch.Tensor:
        name, magnitude = self.variants[variant]
        if variant in self.pixel_maps:
            return self.pixel_maps[variant](images)
        if name == "AutoContrast":
            return autocontrast(images)
        if name == "Equalize":
            return F2.equalize(images)  # batched; torchvision's v1 equalize loops over images and channels
        if name == "Sharpness":
            return sharpen(images, 1.0 + magnitude, self.smoothing)
        return _apply_op(images, name, magnitude, InterpolationMode.NEAREST, None)


class PixelMap:
    """A geometric op as a gather: output pixel p is input pixel source[p], or 0 where `inside[p]` is 0."""

    def __init__(self, source: torch.Tensor, inside: torch.Tensor):
        self.source, self.inside = source, inside

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        n, c, h, w = images.shape
        moved = images.reshape(n, c, h * w).index_select(2, self.source).view(n, c, h, w)
        return moved * self.inside.view(1, 1, h, w)


def pixel_map(name: str, magnitude: float, size: int, device) -> PixelMap:
    """Runs torchvision's own op (nearest interpolation, zero fill) once on an image whose pixels hold their
    coordinates, and reads off where each output pixel comes from: bit-identical to the op on any image."""
    rows, cols = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    coordinates = torch.stack([rows + 1, cols + 1, torch.full_like(rows, 255)]).to(torch.uint8)  # 0 marks the fill
    moved = _apply_op(coordinates, name, magnitude, InterpolationMode.NEAREST, None).long()
    inside = moved[2] == 255
    source = torch.where(inside, (moved[0] - 1) * size + (moved[1] - 1), 0).flatten()
    return PixelMap(source.to(device), inside.to(torch.uint8).to(device))


def crop_each(images: torch.Tensor, top: torch.Tensor, left: torch.Tensor, side: int) -> torch.Tensor:
    """images[i, :, top[i]:top[i]+side, left[i]:left[i]+side] for every image i, at once."""
    offsets = torch.arange(side, device=images.device)
    rows, cols = top[:, None] + offsets, left[:, None] + offsets  # N x side
    channels, width = images.shape[1], images.shape[3]
    picked = images.gather(2, rows[:, None, :, None].expand(-1, channels, -1, width))
    return picked.gather(3, cols[:, None, None, :].expand(-1, channels, side, -1))


def autocontrast(images: torch.Tensor) -> torch.Tensor:
    """torchvision's autocontrast with torch.where instead of boolean-mask assignment (a host sync on CUDA)."""
    minimum = images.amin(dim=(-2, -1), keepdim=True).float()
    maximum = images.amax(dim=(-2, -1), keepdim=True).float()
    scale = 255.0 / (maximum - minimum)
    flat = ~torch.isfinite(scale)
    minimum, scale = torch.where(flat, 0.0, minimum), torch.where(flat, 1.0, scale)
    return ((images - minimum) * scale).clamp(0, 255).to(images.dtype)


def smoothing_kernel() -> torch.Tensor:
    """torchvision's 3 x 3 smoothing kernel for Sharpness, computed as it computes it."""
    kernel = torch.ones(3, 3)
    kernel[1, 1] = 5.0
    return kernel / kernel.sum()


def sharpen(images: torch.Tensor, factor: float, kernel: torch.Tensor) -> torch.Tensor:
    """torchvision's adjust_sharpness with the kernel made once: torchvision builds it on the images' device at
    every call, and its `kernel[1, 1] = 5.0` is a blocking host-to-device copy on CUDA."""
    channels = images.shape[-3]
    smooth = torch.nn.functional.conv2d(images.float(), kernel.expand(channels, 1, 3, 3), groups=channels)
    degenerate = images.clone()
    degenerate[..., 1:-1, 1:-1] = smooth.round().to(images.dtype)  # the border keeps its pixels
    return (factor * images + (1.0 - factor) * degenerate).clamp(0, 255).to(images.dtype)


def color_jitter(images: torch.Tensor, factors: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """ColorJitter(b, c, s) with per-image factors, applied in each image's own order."""
    adjust = (adjust_brightness, adjust_contrast, adjust_saturation)
    pick = torch.arange(len(images), device=images.device)
    for position in range(3):
        candidates = torch.stack([fn(images, factors[k]) for k, fn in enumerate(adjust)])
        images = candidates[order[:, position], pick]
    return images


def erase_boxes(images: torch.Tensor, erase: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
    """Sets each chosen image's box (top, left, height, width) to 0, as RandomErasing(value=0) does."""
    top, left, height, width = box.unbind(1)
    rows = torch.arange(images.shape[-2], device=images.device)
    cols = torch.arange(images.shape[-1], device=images.device)
    inside_rows = (rows >= top[:, None]) & (rows < (top + height)[:, None])
    inside_cols = (cols >= left[:, None]) & (cols < (left + width)[:, None])
    mask = erase[:, None, None] & inside_rows[:, :, None] & inside_cols[:, None, :]
    return images.masked_fill(mask[:, None], 0.0)


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
