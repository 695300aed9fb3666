"""BatchSource: every process takes its own slice of each global batch, and no process gets an empty one."""

import torch

from trainer.augment import Augment
from trainer.batches import BatchSource, seeded, steps_per_epoch
from trainer.config import AugmentConfig, Config
from trainer.data import Split

IDENTITY = AugmentConfig(scale_min=1.0, hflip=0.0, randaug_n=0, jitter=0.0, erasing=0.0, mean=[0.0] * 3,
                         std=[1 / 255] * 3)


def numbered_split(rows: int) -> Split:
    """Image i holds the number i in its first pixels, so a batch says which rows it took."""
    images = torch.zeros(rows, 3, 32, 32, dtype=torch.uint8)
    images[:, 0, 0, 0], images[:, 0, 0, 1] = torch.arange(rows) // 256, torch.arange(rows) % 256
    return Split(images, torch.arange(rows))


def rows_of(images: torch.Tensor) -> list:
    return (images[:, 0, 0, 0] * 256 + images[:, 0, 0, 1]).round().long().tolist()


def test_processes_split_every_global_batch_and_skip_a_last_batch_too_small_to_share():
    config = Config(augment=IDENTITY)
    config.train.batch_size, config.train.channels_last = 8, False
    split = numbered_split(8 * 3 + 1)  # the last batch holds one image: too few for 2 processes
    assert steps_per_epoch(25, 8, world=1) == 4 and steps_per_epoch(25, 8, world=2) == 3
    per_rank = [list(BatchSource(split, Augment(IDENTITY), config, rank, 2).epoch(epoch=0)) for rank in (0, 1)]
    assert [len(steps) for steps in per_rank] == [3, 3]
    for (step, images0, labels0), (_, images1, labels1) in zip(*per_rank):
        assert len(labels0) == len(labels1) == 4
        assert rows_of(images0) == labels0.tolist() and rows_of(images1) == labels1.tolist()
        assert not set(labels0.tolist()) & set(labels1.tolist())  # disjoint slices of one global batch
    one = list(BatchSource(split, Augment(IDENTITY), config).epoch(epoch=0))
    assert len(one) == 4 and len(one[-1][2]) == 1  # one process keeps the last image, as the reference does
    assert sorted(sum((labels.tolist() for _, _, labels in one), [])) == list(range(25))


def test_every_list_of_parts_has_its_own_stream():
    """The epoch's shuffle (seed, epoch) and a rank's augmentation draws (seed, epoch, step, rank) once shared streams:
    (0, e) and (0, 0, 0, e) gave the same numbers."""
    first = lambda *parts: tuple(torch.rand(4, generator=seeded(*parts)).tolist())
    assert all(first(0, e) != first(0, 0, 0, e) for e in range(1, 8))
    lists = [(seed, epoch) for seed in range(3) for epoch in range(25)]
    lists += [(seed, epoch, step, rank) for seed in range(3) for epoch in range(25) for step in range(8)
              for rank in range(4)]
    assert len({first(*parts) for parts in lists}) == len(lists)
    assert first(1, 2, 3) == first(1, 2, 3)  # and a list always gets the same stream
