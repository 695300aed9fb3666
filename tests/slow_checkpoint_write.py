"""Runs the real trainer with every checkpoint write (checkpoints/last.safetensors; not the weights files) after the
first made slow enough to kill it mid-write: half of the temporary file is written and flushed, "WRITING CHECKPOINT
<n>" is printed, and the write pauses for a minute before the rest. `python tests/slow_checkpoint_write.py [section.key=value ...]`"""

import sys
import time
from pathlib import Path

from safetensors.torch import save

import trainer.checkpoint
from trainer.__main__ import command as train_command

writes = 0


def slow_save_file(tensors, filename, metadata=None):
    global writes
    checkpoint = Path(filename).name.startswith("last.safetensors")  # not best.safetensors or model.safetensors
    writes += checkpoint
    data = save(tensors, metadata=metadata)
    with open(filename, "wb") as f:
        f.write(data[:len(data) // 2])
        f.flush()
        if checkpoint and writes > 1:
            print(f"WRITING CHECKPOINT {writes} to {filename}", flush=True)
            time.sleep(60)
        f.write(data[len(data) // 2:])


trainer.checkpoint.save_file = slow_save_file
sys.argv[0] = "trainer/main.py"
train_command()
