"""Runs the real trainer (launched as trainer/main.py) and presses Ctrl-C at a chosen point, the same at every run:
`STOP_AT="step N"` just before its N-th optimizer step (counting from 0, over the whole run), `STOP_AT="checkpoint N"`
just after its N-th checkpoint (counting from 0). Ctrl-C is SIGINT to the process group, which holds the launcher
too, as a terminal does it."""

import os
import signal
import sys

import trainer.main
from trainer.cli import train_command

point, number = os.environ["STOP_AT"].split()
calls = {"step": 0, "checkpoint": 0}


def ctrl_c_at(kind: str, original):
    def wrapped(*args, **kwargs):
        if kind == "step" and calls[kind] == int(number) and point == kind:
            os.killpg(os.getpgrp(), signal.SIGINT)
        result = original(*args, **kwargs)
        if kind == "checkpoint" and calls[kind] == int(number) and point == kind:
            os.killpg(os.getpgrp(), signal.SIGINT)
        calls[kind] += 1
        return result

    return wrapped


trainer.main.train_step = ctrl_c_at("step", trainer.main.train_step)
trainer.main.save_progress = ctrl_c_at("checkpoint", trainer.main.save_progress)
sys.argv[0] = "trainer/main.py"
train_command()
