"""Mixup and CutMix (augment.mixup, augment.cutmix; timm's --mixup, --cutmix), after the reference augmentation.

As timm's `Mixup` in its default batch mode: a step's batch (on each process, its share) is mixed, with probability
augment.mix_prob, with the same batch in reverse order, by one ratio lam ~ Beta(alpha, alpha):

    Mixup    images = lam * x + (1 - lam) * x.flip(0)
    CutMix   a box of x.flip(0) pasted into x, of (1 - lam) of the area, centred anywhere, clipped at the edges;
             lam is then the share of the image left unchanged

and the targets are lam * one_hot(y) + (1 - lam) * one_hot(y.flip(0)). With both on, CutMix is chosen with
probability augment.mix_switch_prob. Every draw comes from the step's seeded CPU generator, after the reference
augmentation's draws (which mixing therefore leaves as they were): nothing waits for the device, and a resumed run
redraws the same. From epoch augment.mix_off_epoch on, no batch is mixed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass
class MixDraw:
    lam: float  # the share of each image's own target
    box: tuple | None  # CutMix: (top, bottom, left, right) of the pasted box; None for Mixup


class Mixing:
    def __init__(self, augment_config, num_classes: int, image_size: int = 32):
        self.config, self.num_classes, self.size = augment_config, num_classes, image_size

    def active(self, epoch: int) -> bool:
        a = self.config
        return (a.mixup > 0 or a.cutmix > 0) and (a.mix_off_epoch is None or epoch < a.mix_off_epoch)

    def draw(self, generator: torch.Generator, epoch: int) -> MixDraw | None:
        """This step's mixing, drawn from `generator`; None: the batch is not mixed."""
        if not self.active(epoch):
            return None
        a = self.config
        mix, switch = torch.rand(2, generator=generator).tolist()
        # numpy's Beta, from a seed drawn from the step's generator: torch has no seeded Beta sampler.
        rng = np.random.default_rng(int(torch.randint(2**62, (1,), generator=generator)))
        if mix >= a.mix_prob:
            return None
        cutmix = a.cutmix > 0 and (a.mixup <= 0 or switch < a.mix_switch_prob)
        lam = float(rng.beta(*(2 * [a.cutmix if cutmix else a.mixup])))
        if not cutmix:
            return MixDraw(lam, None)
        # timm's rand_bbox: a box of side sqrt(1 - lam) times the image's, its centre uniform, clipped.
        side = int(self.size * math.sqrt(1 - lam))
        cy, cx = (int(v) for v in rng.integers(0, self.size, 2))
        top, bottom = max(cy - side // 2, 0), min(cy + side // 2, self.size)
        left, right = max(cx - side // 2, 0), min(cx + side // 2, self.size)
        return MixDraw(1 - (bottom - top) * (right - left) / self.size**2, (top, bottom, left, right))

    def apply(self, images: torch.Tensor, labels: torch.Tensor, draw: MixDraw) -> tuple:
        """(mixed images, soft targets N x classes) on the images' device; `images` normalized, as Augment gives."""
        partners = images.flip(0)
        if draw.box is None:
            images = images.lerp(partners, 1 - draw.lam)
        else:
            top, bottom, left, right = draw.box
            images = images.clone()
            images[..., top:bottom, left:right] = partners[..., top:bottom, left:right]
        one_hot = F.one_hot(labels, self.num_classes).float()
        return images, one_hot.lerp(one_hot.flip(0), 1 - draw.lam)
