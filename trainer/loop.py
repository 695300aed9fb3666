"""The training loop: one epoch of AdamW steps on the reference LR schedule, then a full test pass.

Each process trains on its slice of every global batch (batch_size images, split
across processes), so the number of optimizer steps per epoch and the LR schedule
do not depend on the number of processes. Shuffling and augmentation are seeded by
(seed, epoch, step), which makes a resumed run continue exactly where it stopped.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from trainer.augment import Augment, Normalize
from trainer.batches import BatchSource
from trainer.checkpoint import LAST, save_checkpoint
from trainer.depthwise import use_fast_weight_grad


def lr_at(epochs_done: float, epochs: int, lr_max: float) -> float:
    """Piecewise linear through (0, 0), (2/5, lr_max), (4/5, lr_max / 20), (end, 0), as the reference."""
    knots = [0, epochs * 2 // 5, epochs * 4 // 5, epochs]
    return float(np.interp(epochs_done, knots, [0, lr_max, lr_max / 20.0, 0]))


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
def predict(accelerator, model, split, batch_size: int, normalize: Normalize, channels_last: bool) -> Predictions:
    """Evaluates every image of `split` (on any device) exactly once across processes (each takes rows rank::world)."""
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
    return accelerator.unwrap_model(model).head.out_features


class StopRequest:
    """Turns SIGINT, SIGTERM and SIGUSR1 (Slurm's warning before a time limit or preemption)
    into a request to checkpoint after the current step; a second Ctrl-C stops at once."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)

    def __init__(self, check_every: int = 1):
        self.received = None
        self.previous = {}
        self.calls, self.check_every, self.agreed_to_stop = 0, check_every, False

    def __enter__(self):
        for sig in self.SIGNALS:
            self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame):
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name
        print(f"\n{self.received} received: saving a checkpoint after this step, then stopping.", file=sys.stderr, flush=True)

    def agreed(self, accelerator, now: bool = False) -> bool:
        """True on every process once any process got a signal. With several processes this takes an all-reduce
        and, on a GPU, a host sync, so they agree only every `check_every` calls (or `now`), all at the same one."""
        self.calls += 1
        if accelerator.num_processes == 1:
            return self.received is not None
        if not self.agreed_to_stop and (now or self.calls % self.check_every == 0):
            flag = torch.tensor(float(self.received is not None), device=accelerator.device)
            self.agreed_to_stop = accelerator.reduce(flag, "sum").item() > 0
        return self.agreed_to_stop


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

    def global_sums(self, accelerator) -> dict:
        sums = accelerator.reduce(torch.stack([self.correct, self.loss_sum, self.seen]), "sum").tolist()
        return dict(zip(("correct", "loss_sum", "seen"), sums), seconds=self.seconds)


def prepare_training(accelerator, model, train_config):
    """The model and AdamW as the loop trains them: channels_last, the CPU depthwise gradient, Accelerate's prepare."""
    if train_config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if train_config.fast_depthwise_grad:
        use_fast_weight_grad(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=train_config.lr_max, weight_decay=train_config.weight_decay,
                                  fused=True)  # one kernel for all parameters, on the GPU and the CPU
    model, optimizer = accelerator.prepare(model, optimizer)
    if train_config.compile:  # after DDP's wrapper, as Accelerate's own dynamo option does it
        model = torch.compile(model)
    return model, optimizer


def batch_source(accelerator, data, config) -> BatchSource:
    """This process's training batches, with the training split and the augmentation on its device."""
    augment = Augment(config.augment, accelerator.device)
    return BatchSource(data.train.to(accelerator.device), augment, config, accelerator.process_index,
                       accelerator.num_processes)


def evaluate(accelerator, model, split, config, normalize: Normalize) -> Predictions:
    """predict() with the run's settings; in passes of micro_batch_size too: on the CPU 64 images at a time run
    twice as fast as 512."""
    t = config.train
    return predict(accelerator, model, split, t.micro_batch_size or t.batch_size, normalize, t.channels_last)


def train_step(accelerator, model, optimizer, images, labels, lr: float, train_config, counts: EpochCounts) -> None:
    """One optimizer step on this process's images, in micro-batches when train.micro_batch_size is set."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    micro = train_config.micro_batch_size or len(images)
    chunks = list(zip(images.split(micro), labels.split(micro)))
    for i, (x, y) in enumerate(chunks):
        last = i == len(chunks) - 1
        # Gradients of all micro-batches are summed locally and all-reduced once, on the last.
        with (accelerator.no_sync(model) if not last else contextlib.nullcontext()):
            logits = model(x)
            loss = F.cross_entropy(logits.float(), y)
            accelerator.backward(loss * (len(x) / len(images)))
        counts.correct += (logits.argmax(1) == y).sum()
        counts.loss_sum += loss.detach() * len(x)
        counts.seen += len(x)
    if train_config.clip_norm:
        accelerator.clip_grad_norm_(model.parameters(), train_config.clip_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def fit(accelerator, model, optimizer, data, config, run_log, run_dir, progress: dict, tracker_log, progress_bar):
    """Trains from `progress` (epoch, step) to the last epoch.

    Returns ('finished' or the name of the signal that stopped it, the progress saved in the last checkpoint).
    """
    t, rank = config.train, accelerator.process_index
    batches = batch_source(accelerator, data, config)
    test = data.test.to(accelerator.device)
    steps = len(batches)
    checkpoint_path = run_dir / "checkpoints" / LAST
    model_config = vars(config.model)
    best = progress.get("best_test_acc", 0.0)
    saved = progress
    with StopRequest(check_every=1 if accelerator.device.type == "cpu" else 16) as stop:
        for epoch in range(progress["epoch"], t.epochs):
            first_step = progress["step"] if epoch == progress["epoch"] else 0
            counts = EpochCounts.start(accelerator.device, progress.get("counts") if rank == 0 and first_step else None)
            model.train()
            started = time.perf_counter()
            bar = progress_bar(total=steps, initial=first_step, desc=f"epoch {epoch}")
            for step, images, labels in batches.epoch(epoch, first_step):
                lr = lr_at(epoch + (step + 1) / steps, t.epochs, t.lr_max)
                train_step(accelerator, model, optimizer, images, labels, lr, t, counts)
                bar.update(1)
                if stop.agreed(accelerator) and step + 1 < steps:
                    counts.seconds += time.perf_counter() - started
                    saved = {"epoch": epoch, "step": step + 1, "counts": counts.global_sums(accelerator), "best_test_acc": best}
                    _save(accelerator, model, optimizer, checkpoint_path, saved, model_config)
                    bar.close()
                    return stop.received, saved
            bar.close()
            sums = counts.global_sums(accelerator)  # waits for the epoch's last step: the time below is real
            train_seconds = counts.seconds + time.perf_counter() - started
            result = evaluate(accelerator, model, test, config, batches.augment.normalize)
            best = max(best, result.accuracy)
            row = {
                "epoch": epoch, "lr": lr_at(epoch + 1, t.epochs, t.lr_max),
                "train_loss": sums["loss_sum"] / sums["seen"], "train_acc": sums["correct"] / sums["seen"],
                "test_loss": result.loss, "test_acc": result.accuracy,
                "seconds": counts.seconds + time.perf_counter() - started,
                "images_per_second": sums["seen"] / max(train_seconds, 1e-9),
            }
            if accelerator.is_main_process:
                accelerator.print(run_log.append(row))
            tracker_log(row)
            saved = {"epoch": epoch + 1, "step": 0, "best_test_acc": best, "last_test_acc": result.accuracy}
            _save(accelerator, model, optimizer, checkpoint_path, saved, model_config)
            if stop.agreed(accelerator, now=True) and epoch + 1 < t.epochs:
                return stop.received, saved
    return "finished", saved


def _save(accelerator, model, optimizer, path, progress: dict, model_config: dict) -> None:
    if accelerator.is_main_process:
        save_checkpoint(path, accelerator.unwrap_model(model), optimizer, accelerator.scaler, progress, model_config)
    accelerator.wait_for_everyone()
