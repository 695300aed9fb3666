"""Launched with 2 processes by test_distributed.py: one step of 5 images, which the processes share as 3 and 2 and
take in passes of 2 (rank 0: 2 + 1, with DDP's no_sync between them). The gradient they average must be the one
process's gradient of all 5 images. A model without BatchNorm, whose math allows the comparison; equal to float
rounding, not bit for bit, as the processes sum in another order."""

import copy

import torch
import torch.nn.functional as F
from accelerate import Accelerator

from trainer.config import TrainConfig
from trainer.errors import exit_cleanly
from trainer.steps import train_step


def main() -> int:
    accelerator = Accelerator(cpu=not torch.cuda.is_available())  # GPUs with NCCL in bench/multi_gpu_check.sh
    rank, world = accelerator.process_index, accelerator.num_processes
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    images, labels = torch.randn(5, 3, 2, 2), torch.tensor([0, 1, 2, 1, 0])
    whole = copy.deepcopy(model)
    F.cross_entropy(whole(images), labels).backward()  # one process, the whole step
    before = [p.detach().clone() for p in model.parameters()]
    model, optimizer = accelerator.prepare(model, torch.optim.SGD(model.parameters(), lr=1.0))
    mine = [t[rank::world].to(accelerator.device) for t in (images, labels)]
    train_step(accelerator, model, optimizer, *mine, TrainConfig(micro_batch_size=2), global_batch=len(images))
    # lr 1: the step is the gradient
    averaged = [old - new.detach().cpu() for old, new in zip(before, model.parameters())]
    error = max((a - p.grad).abs().max().item() for a, p in zip(averaged, whole.parameters()))
    print(f"rank {rank}: largest difference from one process's gradient {error:.1e}", flush=True)
    assert error < 1e-5, error  # float32 rounding; weighting each process by its own share gives 1e-1
    return 0


# Ends through the trainer's exit: a gloo process group left to the interpreter's teardown sometimes aborts the
# process ("terminate called without an active exception"), which failed this test in CI.
exit_cleanly(main)
