"""Launched with 2 processes by test_distributed.py: a signal that reaches only rank 1 stops both ranks at the same
check, the first one after it (here check_every=4; the trainer checks every step), with rank 1's signal."""

import os
import signal

import torch
from accelerate import Accelerator

from trainer.errors import exit_cleanly
from trainer.steps import StopRequest


def main() -> int:
    accelerator = Accelerator(cpu=not torch.cuda.is_available())  # on GPUs: the gloo group beside NCCL
    answers = []
    with StopRequest(accelerator, check_every=4) as stop:
        for call in range(1, 10):
            if accelerator.process_index == 1 and call == 2:
                os.kill(os.getpid(), signal.SIGUSR1)
            answers.append(stop.requested())
    print(f"rank {accelerator.process_index}: {''.join('T' if a else 'F' for a in answers)} {stop.signal.name} "
          f"{stop.exit_code}", flush=True)
    accelerator.wait_for_everyone()
    return 0


# Ends through the trainer's exit: a gloo process group left to the interpreter's teardown sometimes aborts the
# process ("terminate called without an active exception"), which failed this test in CI.
exit_cleanly(main)
