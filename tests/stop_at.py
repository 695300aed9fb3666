"""Runs the real trainer (launched as trainer/main.py) and presses Ctrl-C at a chosen point, the same at every run:
`STOP_AT="before-step N"` or `"after-step N"` around its N-th optimizer step (counting from 0 over the whole run),
`"after-checkpoint N"` after its N-th checkpoint. Ctrl-C is SIGINT to the process group, which holds the launcher too,
as a terminal sends it."""

import os
import signal
import sys

import trainer.main
from trainer.__main__ import command as train_command

point, number = os.environ["STOP_AT"].split()
calls = {"step": 0, "checkpoint": 0}


def ctrl_c_around(kind: str, original):
    def wrapped(*args, **kwargs):
        now = calls[kind] == int(number)
        if now and point == f"before-{kind}":
            os.killpg(os.getpgrp(), signal.SIGINT)
        result = original(*args, **kwargs)
        if now and point == f"after-{kind}":
            os.killpg(os.getpgrp(), signal.SIGINT)
        calls[kind] += 1
        return result

    return wrapped


trainer.main.train_step = ctrl_c_around("step", trainer.main.train_step)
trainer.main.save_progress = ctrl_c_around("checkpoint", trainer.main.save_progress)
sys.argv[0] = "trainer/main.py"
train_command()
