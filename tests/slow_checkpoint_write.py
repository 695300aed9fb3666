"""Runs the real trainer with every checkpoint write after the first made slow enough to kill it mid-write: half of
the temporary file is written and flushed, "WRITING CHECKPOINT <n>" is printed, and the write pauses for a minute
before the rest. `python tests/slow_checkpoint_write.py [section.key=value ...]`"""

import sys
import time

from safetensors.torch import save

import trainer.checkpoint
from trainer.__main__ import command as train_command

writes = 0


def slow_save_file(tensors, filename, metadata=None):
    global writes
    writes += 1
    data = save(tensors, metadata=metadata)
    with open(filename, "wb") as f:
        f.write(data[:len(data) // 2])
        f.flush()
        if writes > 1:
            print(f"WRITING CHECKPOINT {writes} to {filename}", flush=True)
            time.sleep(60)
        f.write(data[len(data) // 2:])


trainer.checkpoint.save_file = slow_save_file
sys.argv[0] = "trainer/main.py"
train_command()
