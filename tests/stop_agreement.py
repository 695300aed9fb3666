"""Launched with 2 processes by test_distributed.py: a signal that reaches only rank 1 stops both ranks at the same
check, the first one after it (check_every=4, as on a GPU every 16 steps)."""

import os
import signal

from accelerate import Accelerator

from trainer.loop import StopRequest

accelerator = Accelerator(cpu=True)
answers = []
with StopRequest(check_every=4) as stop:
    for call in range(1, 10):
        if accelerator.process_index == 1 and call == 2:
            os.kill(os.getpid(), signal.SIGUSR1)
        answers.append(stop.agreed(accelerator))
print(f"rank {accelerator.process_index}: {''.join('T' if a else 'F' for a in answers)}", flush=True)
accelerator.wait_for_everyone()
