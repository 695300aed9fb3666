"""Side-by-side speed of a plain PyTorch loop of the reference recipe and of this trainer, on one machine.

    python -m trainer.bench --data ../shared/datasets/cifar10

(a) "plain": the reference train.py as most people would write it: an nn.Sequential ConvMixer, torchvision's PIL
    transforms in a 2-worker DataLoader, AdamW with the per-step LR schedule, eager fp32.
(b) "trainer": this project's own code path with its defaults for the device (trainer/config.py `for_device`):
    uint8 data in device memory, batched augmentation (trainer/augment.py), the loop's train_batch and evaluate.

Both train on the same images with the same recipe (global batch 512, the same augmentation distribution and LR
schedule); throughput is images per second of whole optimizer steps, data loading and augmentation included, after
warm-up steps. Evaluation throughput is a pass over the test images. It prints both, and the ratio.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import torch
import torch.nn.functional as F
from torch import nn

from trainer.config import Config, DataConfig, for_device
from trainer.data import load_cifar
from trainer.loop import EpochCounts, epoch_order, evaluate, lr_at, prepare_training, train_batch
from trainer.tracking import hardware_name


# ---- (a) the plain loop, written from the reference recipe ----

class Residual(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x) + x


def reference_convmixer(dim, depth, kernel_size=5, patch_size=2, n_classes=10):
    """locuslab/convmixer-cifar10 train.py, verbatim."""
    return nn.Sequential(
        nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size),
        nn.GELU(),
        nn.BatchNorm2d(dim),
        *[nn.Sequential(
            Residual(nn.Sequential(
                nn.Conv2d(dim, dim, kernel_size, groups=dim, padding="same"),
                nn.GELU(),
                nn.BatchNorm2d(dim),
            )),
            nn.Conv2d(dim, dim, kernel_size=1),
            nn.GELU(),
            nn.BatchNorm2d(dim),
        ) for _ in range(depth)],
        nn.AdaptiveAvgPool2d((1, 1)),
        nn.Flatten(),
        nn.Linear(dim, n_classes),
    )


class PilDataset(torch.utils.data.Dataset):
    """uint8 arrays served as PIL images, as torchvision.datasets.CIFAR10 does."""

    def __init__(self, split, transform):
        self.images = split.images.permute(0, 2, 3, 1).numpy()  # N x H x W x C
        self.labels = split.labels.tolist()
        self.transform = transform

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i])), self.labels[i]


def reference_transforms(config: Config, train: bool):
    import torchvision.transforms as T

    a = config.augment
    to_tensor = [T.ToTensor(), T.Normalize(a.mean, a.std)]
    if not train:
        return T.Compose(to_tensor)
    return T.Compose([
        T.RandomResizedCrop(32, scale=(a.scale_min, 1.0), ratio=(1.0, 1.0)), T.RandomHorizontalFlip(p=a.hflip),
        T.RandAugment(num_ops=a.randaug_n, magnitude=a.randaug_m), T.ColorJitter(a.jitter, a.jitter, a.jitter),
        *to_tensor, T.RandomErasing(p=a.erasing),
    ])


def bench_plain(config: Config, data, device: torch.device, workers: int, warmup: int, steps: int | None) -> dict:
    """Times `steps` optimizer steps after `warmup`; steps=None trains config.train.epochs whole epochs instead."""
    t, m = config.train, config.model
    torch.manual_seed(config.seed)
    model = reference_convmixer(m.dim, m.depth, m.kernel_size, m.patch_size, m.num_classes).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=t.lr_max, weight_decay=t.weight_decay)
    loader = torch.utils.data.DataLoader(PilDataset(data.train, reference_transforms(config, True)), batch_size=t.batch_size,
                                         shuffle=True, num_workers=workers, drop_last=steps is not None)
    steps_per_epoch = len(loader)
    total = warmup + steps if steps is not None else t.epochs * steps_per_epoch
    timer, step = Timer(device), 0
    model.train()
    while step < total:
        for images, labels in loader:
            if step == warmup:
                timer.start()
            if step == total:
                break
            images, labels = images.to(device), labels.to(device)
            for group in optimizer.param_groups:
                group["lr"] = lr_at((step + 1) / steps_per_epoch, t.epochs, t.lr_max)
            loss = F.cross_entropy(model(images), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
    train_seconds = timer.stop()

    test_loader = torch.utils.data.DataLoader(PilDataset(data.test, reference_transforms(config, False)),
                                              batch_size=t.batch_size, num_workers=workers)
    model.eval()
    correct = 0
    timer.start()
    with torch.no_grad():
        for images, labels in test_loader:
            correct += (model(images.to(device)).argmax(1) == labels.to(device)).sum().item()
    eval_seconds = timer.stop()
    timed_images = (total - warmup) * t.batch_size if steps is not None else len(data.train) * t.epochs
    return {"train_images_per_second": timed_images / train_seconds, "eval_images_per_second": len(data.test) / eval_seconds,
            "test_acc": correct / len(data.test),
            "settings": f"eager fp32, PIL transforms, {workers}-worker DataLoader, batch {t.batch_size}"}


# ---- (b) this trainer's code path ----

def bench_trainer(config: Config, data, warmup: int, steps: int, on_cpu: bool) -> dict:
    from accelerate import Accelerator

    from trainer.augment import Augment
    from trainer.model import build_model

    config = dataclasses.replace(config, train=for_device(config.train, on_cpu))
    t = config.train
    accelerator = Accelerator(cpu=on_cpu, mixed_precision=t.mixed_precision)
    torch.manual_seed(config.seed)
    model, optimizer = prepare_training(accelerator, build_model(config.model), t)
    train, augment = data.train.to(accelerator.device), Augment(config.augment)
    order, counts = epoch_order(len(train), config.seed, 0), EpochCounts.start(accelerator.device)
    model.train()
    timer = Timer(accelerator.device)
    for step in range(warmup + steps):
        if step == warmup:
            timer.start()
        train_batch(accelerator, model, optimizer, train, order, augment, config, 0, step, counts)
    train_seconds = timer.stop()
    timer.start()
    evaluate(accelerator, model, data.test, config)
    eval_seconds = timer.stop()
    return {"train_images_per_second": steps * t.batch_size / train_seconds,
            "eval_images_per_second": len(data.test) / eval_seconds,
            "settings": f"mixed precision {accelerator.mixed_precision}, micro-batch {t.micro_batch_size or 'none'}, "
                        f"channels_last {t.channels_last}, compiled depthwise grad {t.fast_depthwise_grad}, "
                        f"batch {t.batch_size}"}


class Timer:
    """Wall-clock seconds, waiting for queued GPU work at both ends."""

    def __init__(self, device):
        self.sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)

    def start(self):
        self.sync()
        self.started = time.perf_counter()

    def stop(self) -> float:
        self.sync()
        return time.perf_counter() - self.started


def trainer_accuracy(args, train_images: int, test_images: int) -> dict:
    """A real `python -m trainer` run (defaults for this device) of args.epochs on the same images."""
    import subprocess
    import sys
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        command = [sys.executable, "-m", "trainer", *(["--cpu"] if args.cpu else []), f"data.name={args.data}",
                   f"data.train_limit={train_images}", f"data.test_limit={test_images}", f"train.epochs={args.epochs}",
                   f"seed={args.seed}",
                   "tracker=none", "explain.enabled=false", f"output_dir={folder}/run"]
        started = time.perf_counter()
        subprocess.run(command, check=True)
        seconds = time.perf_counter() - started
        with open(f"{folder}/run/summary.json") as f:
            summary = json.load(f)
    return {"test_acc": summary["final_test_acc"], "wall_seconds": seconds,
            "settings": f"mixed precision {summary['mixed_precision']}, micro-batch {summary['micro_batch_size']}"}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="a hub id or a local folder in the hub layout")
    parser.add_argument("--steps", type=int, default=6, help="timed optimizer steps of 512 images, after warm-up")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (DataLoader start, compilation)")
    parser.add_argument("--test-images", type=int, default=2048, help="test images for the evaluation pass")
    parser.add_argument("--epochs", type=int, default=0,
                        help="instead of timing steps, train both this many epochs and compare test accuracy")
    parser.add_argument("--train-images", type=int, help="with --epochs: train on the first N training images")
    parser.add_argument("--seed", type=int, default=0, help="seed of both sides (weights, shuffling, augmentation)")
    parser.add_argument("--cpu", action="store_true", help="benchmark the CPU even if a GPU is present")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of the plain loop")
    parser.add_argument("--only", choices=("plain", "trainer"), help="run one side only")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)

    on_cpu = args.cpu or not torch.cuda.is_available()
    device = torch.device("cpu" if on_cpu else "cuda")
    config = Config(seed=args.seed, data=DataConfig(name=args.data, test_limit=args.test_images, train_limit=args.train_images))
    if args.epochs:
        config = dataclasses.replace(config, train=dataclasses.replace(config.train, epochs=args.epochs))
    data = load_cifar(config.data)
    needed = (args.warmup + args.steps) * config.train.batch_size
    if not args.epochs and needed > len(data.train):
        raise SystemExit(f"error: --warmup + --steps need {needed} training images; the data has {len(data.train)}.")
    results = {"hardware": hardware_name(device), "threads": torch.get_num_threads(), "data": args.data,
               "train_images": len(data.train), "test_images": len(data.test)}
    sides = [side for side in ("plain", "trainer") if args.only in (None, side)]
    for side in sides:
        if args.epochs and side == "plain":
            result = bench_plain(config, data, device, args.workers, 0, None)
        elif args.epochs:
            result = trainer_accuracy(args, len(data.train), len(data.test))
        elif side == "plain":
            result = bench_plain(config, data, device, args.workers, args.warmup, args.steps)
        else:
            result = bench_trainer(config, data, args.warmup, args.steps, on_cpu)
        results[side] = result
        name = "plain loop  " if side == "plain" else "this trainer"
        if args.epochs:
            print(f"{name}  test accuracy {result['test_acc']:.4f} after {args.epochs} epochs on {len(data.train)} images"
                  f"   ({result['settings']})", flush=True)
        else:
            print(f"{name}  train {result['train_images_per_second']:8.1f} img/s   eval "
                  f"{result['eval_images_per_second']:8.1f} img/s   ({result['settings']})", flush=True)
    if len(sides) == 2 and not args.epochs:
        for kind in ("train", "eval"):
            results[f"{kind}_speedup"] = (results["trainer"][f"{kind}_images_per_second"]
                                          / results["plain"][f"{kind}_images_per_second"])
        print(f"speed-up      train {results['train_speedup']:.2f}x   eval {results['eval_speedup']:.2f}x   "
              f"on {results['hardware']}, {results['threads']} threads, steps of {config.train.batch_size} images")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
