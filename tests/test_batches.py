"""BatchSource: every process takes its own slice of each global batch, and no process gets an empty one."""

import torch

from trainer.augment import Augment
from trainer.batches import BatchSource, steps_per_epoch
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
