"""An exponential moving average of the model's weights (train.ema_decay; timm's --model-ema), evaluated next to the
weights themselves.

After optimizer step n (counted from 0 over the whole run) every floating-point tensor of the state dict (weights
and BatchNorm's running statistics) moves towards the model's:

    ema = d_n * ema + (1 - d_n) * weights,   d_n = min(decay, (1 + n) / (10 + n))

The warm-up (TensorFlow's ExponentialMovingAverage with num_updates) lets the average follow the fast early changes
instead of holding on to the random start. One fused update on the device per step, with no host sync; integer
buffers (BatchNorm's batch count) are copied.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def ema_decay_at(step: int, decay: float) -> float:
    return min(decay, (1 + step) / (10 + step))


class WeightAverage:
    def __init__(self, model: nn.Module, decay: float):
        """Starts from `model`'s weights; `model` (the plain model, as trained in place) is the one it follows."""
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        pairs = list(zip(self.model.state_dict().values(), model.state_dict().values()))
        self.floats = [pair for pair in pairs if pair[0].is_floating_point()]
        self.others = [pair for pair in pairs if not pair[0].is_floating_point()]

    def agree(self, accelerator) -> None:
        """Process 0's average on every process. The weights are the same everywhere, but each process's BatchNorm
        statistics follow its own images (DDP hands out process 0's at every forward), and so would the averages of
        them: before an evaluation, all take process 0's, the one a checkpoint keeps, so a resume is exact."""
        if accelerator.num_processes > 1:
            for buffer in self.model.buffers():
                torch.distributed.broadcast(buffer, src=0)

    @torch.no_grad()
    def update(self, step: int) -> None:
        """After optimizer step `step` of the run (0, 1, ...)."""
        averaged, current = zip(*self.floats)
        torch._foreach_lerp_(list(averaged), list(current), 1 - ema_decay_at(step, self.decay))
        for mine, theirs in self.others:
            mine.copy_(theirs)
