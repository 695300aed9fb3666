"""Progress inside an epoch. On a terminal, a tqdm bar; elsewhere (Slurm's job log, `| tee`, CI) a line every
`progress_every` seconds, since a bar written to a file is one endless line:

    epoch 3: step 40/98, 61.2 img/s, 0:01:12 left in this epoch
"""

from __future__ import annotations

import datetime
import sys
import time

from tqdm.auto import tqdm


class EpochProgress:
    def __init__(self, epoch: int, steps: int, first_step: int, images_per_step: int, every: float, main: bool):
        self.epoch, self.steps, self.first_step, self.images_per_step = epoch, steps, first_step, images_per_step
        self.every = every if main else 0  # only the main process reports
        on_terminal = main and sys.stderr.isatty()
        self.bar = tqdm(total=steps, initial=first_step, desc=f"epoch {epoch}", leave=False) if on_terminal else None
        self.started = self.last_line = time.perf_counter()

    def update(self, steps_done: int) -> None:
        if self.bar is not None:
            self.bar.update(1)
            return
        now = time.perf_counter()
        if self.every and now - self.last_line >= self.every and steps_done < self.steps:
            self.last_line = now
            print(self.line(steps_done, now - self.started), flush=True)

    def line(self, steps_done: int, seconds: float) -> str:
        """The progress line after `steps_done` steps of the epoch, `seconds` after this start of it."""
        per_step = seconds / max(steps_done - self.first_step, 1)
        left = datetime.timedelta(seconds=round(per_step * (self.steps - steps_done)))
        return (f"epoch {self.epoch}: step {steps_done}/{self.steps}, {self.images_per_step / per_step:.1f} img/s, "
                f"{left} left in this epoch")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
