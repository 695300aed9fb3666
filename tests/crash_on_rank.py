"""Runs the real trainer (trainer/main.py) with one process raising an error at a given step, as a bug or a bad
node would: `accelerate launch ... tests/crash_on_rank.py RANK STEP [section.key=value ...]`."""

import sys

import trainer.main
from trainer.__main__ import command as train_command

crash_rank, crash_step = int(sys.argv[1]), int(sys.argv[2])
del sys.argv[1:3]
original_train_step = trainer.main.train_step
calls = 0


def failing_train_step(accelerator, *args, **kwargs):
    global calls
    calls += 1
    if accelerator.process_index == crash_rank and calls > crash_step:
        raise RuntimeError(f"injected failure on rank {crash_rank} at step {calls}")
    return original_train_step(accelerator, *args, **kwargs)


trainer.main.train_step = failing_train_step
train_command()
