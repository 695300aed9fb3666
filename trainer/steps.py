"""The building blocks of the training loop in `trainer/main.py`, shared with the benchmark: the reference's LR
schedule, the model and optimizer as the loop trains them, one optimizer step, a pass over the test set, the running
train metrics of an epoch, and the stop request that turns a signal into a checkpoint.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from trainer.augment import Normalize
from trainer.cpu_kernels import keep_freed_memory, use_compile_cache
from trainer.conv_grads import use_fast_weight_grad
from trainer.fused_norm import use_fused_gelu_norm


def lr_at(epochs_done: float, epochs: int, lr_max: float) -> float:
    """Piecewise linear through (0, 0), (2/5, lr_max), (4/5, lr_max / 20), (end, 0), as the reference."""
    knots = [0, epochs * 2 // 5, epochs * 4 // 5, epochs]
    return float(np.interp(epochs_done, knots, [0, lr_max, lr_max / 20.0, 0]))


def schedule_change(state, before, now, steps_per_epoch: int) -> dict | None:
    """A resume that changes train.epochs or train.lr_max (`before` and `now` are TrainConfigs) goes on with the
    one-cycle schedule of the new settings from where the run stands, so the LR jumps there; returns that jump, which
    the log and the report state. None when the schedule is the same."""
    if (before.epochs, before.lr_max) == (now.epochs, now.lr_max):
        return None
    position = state.epoch + (state.step + 1) / steps_per_epoch  # the next step's
    return {"epoch": state.epoch, "step": state.step, "epochs_before": before.epochs, "epochs": now.epochs,
            "lr_max_before": before.lr_max, "lr_max": now.lr_max,
            "lr_before": lr_at(position, before.epochs, before.lr_max), "lr_after": lr_at(position, now.epochs, now.lr_max)}


def describe_schedule_change(change: dict) -> str:
    c = change
    settings = [f"train.{key} {c[key + '_before']} -> {c[key]}" for key in ("epochs", "lr_max")
                if c[key + "_before"] != c[key]]
    return (f"The LR schedule changes at epoch {c['epoch']}, step {c['step']} ({', '.join(settings)}): training goes on "
            f"with the one-cycle schedule of {c['epochs']} epochs (peak {c['lr_max']}) from this point, so the next "
            f"step's LR is {c['lr_after']:.6f} where the earlier schedule had {c['lr_before']:.6f}.")


@dataclass
class Predictions:
    """Model outputs on a split, one row per image, in dataset order, gathered from every process."""

    indices: torch.Tensor  # row index in the split
    labels: torch.Tensor
    preds: torch.Tensor
    probs: torch.Tensor  # softmax, N x classes
    loss_sum: float

    @property
    def accuracy(self) -> float:
        return (self.preds == self.labels).float().mean().item()

    @property
    def loss(self) -> float:
        return self.loss_sum / len(self.labels)

    @property
    def confidence(self) -> torch.Tensor:
        return self.probs.gather(1, self.preds[:, None]).squeeze(1)


@torch.no_grad()
def predict(accelerator, model, split, batch_size: int, normalize: Normalize, channels_last: bool,
            tta: bool = False) -> Predictions:
    """Evaluates every image of `split` (on any device) exactly once across processes (each takes rows rank::world);
    with `tta`, each image's logits are the mean of its own and its horizontal mirror's."""
    model.eval()
    device = accelerator.device
    rows = torch.arange(accelerator.process_index, len(split), accelerator.num_processes, device=device)
    images_of, labels_of = split.images.to(device), split.labels.to(device)  # no copy when already there
    logits, loss_sum = [], torch.zeros((), device=device)
    for batch in rows.split(batch_size):
        images = normalize(images_of.index_select(0, batch))
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        out = model(images).float()
        if tta:
            out = (out + model(images.flip(3)).float()) / 2
        loss_sum += F.cross_entropy(out, labels_of.index_select(0, batch), reduction="sum")
        logits.append(out)
    logits = torch.cat(logits) if logits else torch.zeros(0, model_num_classes(accelerator, model), device=device)
    # Shards differ in length by at most one row: pad, gather, then drop the padding by its index -1.
    indices = accelerator.pad_across_processes(rows, pad_index=-1)
    probs = accelerator.pad_across_processes(logits.softmax(1), pad_index=0)
    indices, probs = accelerator.gather(indices).cpu(), accelerator.gather(probs).cpu()
    loss_sum = accelerator.reduce(loss_sum, "sum").item()
    keep = indices >= 0
    indices, probs = indices[keep], probs[keep]
    order = indices.argsort()
    indices, probs = indices[order], probs[order]
    return Predictions(indices, split.labels.cpu()[indices], probs.argmax(1), probs, loss_sum)


def model_num_classes(accelerator, model) -> int:
    return plain_model(accelerator, model).head.out_features


def plain_model(accelerator, model):
    """The ConvMixer inside Accelerate's and torch.compile's wrappers (its state dict has the model's own keys). Its
    forward keeps the mixed precision: Accelerate would strip it in place, and the model's evaluation with it. For
    CAM maps in fp32, explanations.plain_copy copies the weights into a new model."""
    return accelerator.unwrap_model(model, keep_torch_compile=False)


class StopRequest:
    """Turns SIGINT, SIGTERM and SIGUSR1 (Slurm's warning before a time limit or preemption) into a request to stop:
    the loop checkpoints after the current step, writes the report and the command that continues, and exits.
    Installed from the run folder's first write to its last, so that no signal in between kills the run silently.

    One request per run, named by its first signal, with one message (from the first process of each machine).
    Launchers relay a Ctrl-C within moments (Accelerate's one-process launcher as SIGTERM, followed by SIGKILL 5 s
    later; torchrun as SIGINT), so signals within SAME_REQUEST_SECONDS of the first belong to it; a Ctrl-C after
    that stops at once. The Ctrl-C that stops the run may stop a `| tee` too: from then on, output to a pipe that has
    no reader any more is dropped rather than failing the run before its checkpoint.

    With several processes a signal may reach some of them only, or at different steps, so they agree: an
    all-reduce of the signal's number at every step, over a CPU (gloo) group: on a GPU the default (NCCL) group would
    make the CPU wait for the GPU's queue of work at every check.
    A single process needs no agreement and abandons the step in progress (see train_step), to be quick.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)
    SAME_REQUEST_SECONDS = 2.0

    def __init__(self, accelerator, check_every: int = 1):
        self.accelerator = accelerator
        self.check_every = check_every
        self.group = None  # the default group where it is gloo already (processes on the CPU)
        if accelerator.num_processes > 1 and accelerator.device.type != "cpu":
            self.group = torch.distributed.new_group(backend="gloo")  # every process makes it, here, together
        self.received = None  # the first signal this process got
        self.received_at = 0.0
        self.signal = None  # the signal every process agreed to stop for
        self.plan = "saving a checkpoint after this step, then stopping"  # what the message says will happen
        self.calls, self.previous = 0, {}

    def __enter__(self):
        self.stdout = sys.stdout
        for sig in self.SIGNALS:
            self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        sys.stdout = self.stdout

    def _handle(self, signum, frame):
        now = time.monotonic()
        if self.received is None:
            self.received, self.received_at = signal.Signals(signum), now
            sys.stdout = OutputThatMayLoseItsReader(sys.stdout)
            if self.accelerator.is_local_main_process:
                # Straight to stdout's file: print() could re-enter a write the signal interrupted. Not stderr: a
                # launcher stopping on the same Ctrl-C may no longer relay its workers' stderr.
                sys.stdout.write_now(f"\n{self.received.name} received: {self.plan}.\n")
        elif signum == signal.SIGINT and now - self.received_at > self.SAME_REQUEST_SECONDS:
            raise KeyboardInterrupt  # a second Ctrl-C

    @property
    def abandons_step(self) -> bool:
        """True when a single process got a signal: its step in progress can be dropped without asking others."""
        return self.received is not None and self.accelerator.num_processes == 1

    def requested(self, now: bool = False) -> bool:
        """True on every process, at the same call, once any process got a signal (`now`: check at this call)."""
        self.calls += 1
        if self.signal is None and self.accelerator.num_processes == 1:
            self.signal = self.received
        elif self.signal is None and (now or self.calls % self.check_every == 0):
            number = torch.tensor([self.received.value if self.received else 0])  # on the CPU, also beside a GPU
            torch.distributed.all_reduce(number, torch.distributed.ReduceOp.MAX, group=self.group)
            agreed = int(number.item())
            self.signal = signal.Signals(agreed) if agreed else None
        return self.signal is not None

    @property
    def exit_code(self) -> int:
        return 128 + self.signal.value  # as the shell reports a process ended by that signal


class OutputThatMayLoseItsReader:
    """sys.stdout, except that a write to a pipe whose reader has gone (a `| tee` stopped by the same Ctrl-C) sends
    the rest of the output to /dev/null instead of raising BrokenPipeError."""

    def __init__(self, stream):
        self.stream = stream

    def _drop_output(self) -> None:  # after an OSError, most often BrokenPipeError
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, self.stream.fileno())
        os.close(devnull)

    def write(self, text: str) -> int:
        try:
            return self.stream.write(text)
        except OSError:
            self._drop_output()
            return len(text)

    def flush(self) -> None:
        try:
            self.stream.flush()
        except OSError:
            self._drop_output()

    def write_now(self, text: str) -> None:
        """Unbuffered, as a signal handler must write."""
        try:
            os.write(self.stream.fileno(), text.encode())
        except OSError:
            self._drop_output()

    def __getattr__(self, name):
        return getattr(self.stream, name)


@dataclass
class EpochCounts:
    """Running sums for the train metrics of one epoch (device tensors: no host sync per step)."""

    correct: torch.Tensor
    loss_sum: torch.Tensor
    seen: torch.Tensor
    seconds: float = 0.0

    @classmethod
    def start(cls, device, saved: dict | None = None):
        saved = saved or {}
        return cls(*(torch.full((), float(saved.get(k, 0.0)), device=device) for k in ("correct", "loss_sum", "seen")),
                   seconds=saved.get("seconds", 0.0))

    def add(self, step: tuple) -> None:
        correct, loss_sum, seen = step
        self.correct += correct
        self.loss_sum += loss_sum
        self.seen += seen

    def global_sums(self, accelerator) -> dict:
        sums = accelerator.reduce(torch.stack([self.correct, self.loss_sum, self.seen]), "sum").tolist()
        return dict(zip(("correct", "loss_sum", "seen"), sums), seconds=self.seconds)


def prepare_training(accelerator, model, train_config):
    """The model and AdamW as the loop trains them: channels_last, the CPU kernels, compilation, Accelerate's
    prepare."""
    if train_config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if train_config.sync_batchnorm and accelerator.num_processes > 1:  # before the CPU kernels, which then leave it
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    use_compile_cache(train_config.compile_cache)
    if accelerator.device.type == "cpu":
        keep_freed_memory()
    use_fast_weight_grad(model, depthwise=train_config.fast_depthwise_grad, pointwise=train_config.fast_pointwise_grad)
    if train_config.fused_gelu_norm:
        use_fused_gelu_norm(model)
    if train_config.compile == "blocks":  # in place, so DDP and the state dict see the model's own modules
        for block in model.blocks:
            block.compile()
    optimizer = torch.optim.AdamW(model.parameters(), lr=train_config.lr_max, weight_decay=train_config.weight_decay,
                                  fused=True)  # one kernel for all parameters, on the GPU and the CPU
    model, optimizer = accelerator.prepare(model, optimizer)
    if train_config.compile == "model":  # after DDP's wrapper, as Accelerate's own dynamo option does it
        model = torch.compile(model)
    return model, optimizer


def evaluate(accelerator, model, split, config, normalize: Normalize) -> Predictions:
    """predict() with the run's settings; in passes of micro_batch_size too: on the CPU 64 images at a time run
    twice as fast as 512."""
    t = config.train
    return predict(accelerator, model, split, t.micro_batch_size or t.batch_size, normalize, t.channels_last, t.tta)


def set_lr(optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def train_step(accelerator, model, optimizer, images, labels, train_config, stop: StopRequest | None = None,
               global_batch: int | None = None):
    """One optimizer step on this process's images, in micro-batches when train.micro_batch_size is set, of a step
    of `global_batch` images over all processes (default: as many on each as here). Returns (correct, loss sum,
    images) as device tensors, for EpochCounts.add: reading them would wait for the GPU.

    A stop request that `stop` may act on alone abandons the step between micro-batches and returns None: the model,
    its BatchNorm statistics and the optimizer are as before the step, so the checkpoint follows in a second (a
    launcher's SIGKILL may come 5 s after its SIGTERM) and a resumed run redoes the step exactly."""
    micro = train_config.micro_batch_size or len(images)
    chunks = list(zip(images.split(micro), labels.split(micro)))
    world = accelerator.num_processes
    global_batch = global_batch or len(images) * world
    buffers = [b.clone() for b in model.buffers()] if stop and len(chunks) > 1 and world == 1 else None
    correct, loss_sum = torch.zeros((), device=images.device), torch.zeros((), device=images.device)
    for i, (x, y) in enumerate(chunks):
        if buffers is not None and i > 0 and stop.abandons_step:
            for buffer, saved in zip(model.buffers(), buffers):
                buffer.copy_(saved)
            optimizer.zero_grad(set_to_none=True)
            return None
        last = i == len(chunks) - 1
        # Gradients of all micro-batches are summed locally and all-reduced once, on the last.
        with (accelerator.no_sync(model) if not last else contextlib.nullcontext()):
            logits = model(x)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=train_config.label_smoothing)
            # DDP averages the processes' gradients: each pass weighs its share of the whole step's images, so
            # that the average is the step's mean also when its images do not divide evenly among the processes.
            accelerator.backward(loss * (len(x) * world / global_batch))
        correct += (logits.argmax(1) == (y.argmax(1) if y.is_floating_point() else y)).sum()  # mixed: the larger share
        loss_sum += loss.detach() * len(x)
    if train_config.clip_norm:
        accelerator.clip_grad_norm_(model.parameters(), train_config.clip_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return correct, loss_sum, len(images)
