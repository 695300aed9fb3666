"""Launched with 2 processes by test_train.py: predict() must return every test row exactly once, and
data.val_size holds out the same rows on both processes."""

import sys

import torch
from accelerate import Accelerator

from trainer.augment import Normalize
from trainer.config import DataConfig
from trainer.data import hold_out, load_cifar
from trainer.errors import exit_cleanly
from trainer.model import ConvMixer
from trainer.steps import predict


def main() -> int:
    accelerator = Accelerator(cpu=True)
    data = load_cifar(DataConfig(name=sys.argv[1], cache_dir=sys.argv[2], val_size=100), seed=3)
    # data.val_size: every process holds out the same rows (each draws them; nothing is sent between them)
    held_out = accelerator.gather(torch.cat([data.val.images.flatten(), data.val.labels.to(torch.uint8)])[None])
    torch.manual_seed(0)
    model = ConvMixer(16, 1).eval()
    reference = model(((data.test.images.float() / 255) - 0.5) / 0.25).argmax(1)
    normalize = Normalize([0.5] * 3, [0.25] * 3)
    result = predict(accelerator, accelerator.prepare(model), data.test, 64, normalize, channels_last=False)
    if accelerator.is_main_process:
        assert accelerator.num_processes == 2, accelerator.num_processes
        assert torch.equal(result.indices, torch.arange(len(data.test))), "every row exactly once, in order"
        assert torch.equal(result.labels, data.test.labels)
        assert torch.equal(result.preds, reference), "same predictions as one process"
        assert torch.equal(held_out[0], held_out[1]), "the same validation rows on both processes"
        whole = load_cifar(DataConfig(name=sys.argv[1], cache_dir=sys.argv[2])).train
        assert torch.equal(data.val.images, hold_out(whole, 100, 3)[1].images), "the rows the seed chooses"
        assert not torch.equal(data.val.images, hold_out(whole, 100, 4)[1].images), "another seed, other rows"
        print(f"OK {len(result.indices)} rows; the same {len(data.val)} validation rows on both processes")
    accelerator.wait_for_everyone()
    return 0


# Ends through the trainer's exit: a gloo process group left to the interpreter's teardown sometimes aborts the
# process ("terminate called without an active exception"), which failed this test in CI.
exit_cleanly(main)
