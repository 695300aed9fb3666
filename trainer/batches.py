"""The training batches of one process: shuffled, split across processes, augmented on the device.

Each epoch has one shuffled order of the training split, the same on every process; global step s takes images
[s * batch_size, (s + 1) * batch_size) of it, and process r of w takes every w-th of those from r (the last, smaller
batch included, as the reference keeps it, when every process gets an image of it). Augmentation draws come from a CPU generator seeded by (seed, epoch,
step, rank), so any step can be rebuilt exactly: a resumed run continues where it stopped. Per step, the row
indices and the draws reach the device in one non-blocking copy, and nothing waits for the device.
"""

from __future__ import annotations

import hashlib

import torch

from trainer.data import DataError
from trainer.mixing import Mixing
from trainer.transfer import send


def seeded(*parts: int) -> torch.Generator:
    """A CPU generator whose stream depends only on `parts` (e.g. seed, epoch, step, rank), through a hash of all of
    them: no two lists of parts share a stream by construction (folding them into one number did: (0, e) and
    (0, 0, 0, e) gave the same). torch's CPU generator keeps 32 bits of its seed, so two given lists of parts share a
    stream with a chance of 2^-32."""
    digest = hashlib.blake2b(repr([int(part) for part in parts]).encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little"))


def epoch_order(num_images: int, seed: int, epoch: int) -> torch.Tensor:
    """The shuffled image order of one epoch, the same on every process."""
    return torch.randperm(num_images, generator=seeded(seed, epoch))


def steps_per_epoch(num_images: int, batch_size: int, world: int = 1) -> int:
    """The reference keeps the last, smaller batch; here too, unless it has fewer images than processes."""
    full, last = divmod(num_images, batch_size)
    return full + (last >= world)


class BatchSource:
    """Yields this process's (augmented images, labels) for each step of an epoch; labels are soft targets (N x
    classes) in a step that Mixup or CutMix mixed.

    `split` lives on the training device (uint8); `augment` is an `Augment` for that device.
    """

    def __init__(self, split, augment, config, rank: int = 0, world: int = 1):
        self.split, self.augment = split, augment
        self.seed, self.batch_size, self.channels_last = config.seed, config.train.batch_size, config.train.channels_last
        self.mixing = Mixing(config.augment, config.model.num_classes)
        self.rank, self.world = rank, world
        if len(self) == 0:
            raise DataError(f"{len(split)} training images cannot be shared by {world} processes; use more images "
                            f"(data.train_limit) or fewer processes.")

    def __len__(self) -> int:
        return steps_per_epoch(len(self.split), self.batch_size, self.world)

    def global_batch(self, step: int) -> int:
        """Images in global step `step`, over all processes (the last step of an epoch may have fewer)."""
        return min(self.batch_size, len(self.split) - step * self.batch_size)

    def epoch(self, epoch: int, first_step: int = 0):
        """(step, images, labels) for steps first_step .. the end of `epoch`."""
        order = epoch_order(len(self.split), self.seed, epoch)
        for step in range(first_step, len(self)):
            yield (step, *self.batch(order, epoch, step))

    def batch(self, order: torch.Tensor, epoch: int, step: int) -> tuple:
        rows = order[step * self.batch_size:(step + 1) * self.batch_size][self.rank::self.world]
        generator = seeded(self.seed, epoch, step, self.rank)
        draws = self.augment.draw(len(rows), generator)
        mix = self.mixing.draw(generator, epoch)  # after the reference's draws: they stay as they were
        rows, draws = send((rows, draws), self.split.images.device)
        images = self.augment.apply(self.split.images.index_select(0, rows), draws)
        labels = self.split.labels.index_select(0, rows)
        if mix:  # soft targets, N x classes
            images, labels = self.mixing.apply(images, labels, mix)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images, labels
