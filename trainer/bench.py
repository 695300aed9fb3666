"""Side-by-side speed of a plain PyTorch loop of the reference recipe and of this trainer, on one machine.

    python -m trainer.bench --data ../shared/datasets/cifar10

(a) "plain": the reference train.py as it runs: its nn.Sequential ConvMixer (trainer/reference.py), torchvision's
    PIL transforms in a DataLoader, AdamW with the per-step LR schedule, CUDA AMP (fp16 with a GradScaler) on a GPU
    and eager fp32 on the CPU, and its per-step `.item()` metrics. On a GPU it runs twice: with the reference's 2
    DataLoader workers and with one worker per CPU core.
(b) "trainer": this project's own code path with its defaults for the device (trainer/config.py `for_device`):
    uint8 data in device memory, batched augmentation (trainer/augment.py), the loop's train_step and evaluate.
    Each trainer variant runs in two fresh processes that share an empty compile cache: the first compiles (cold),
    the second finds the cache (warm) and is timed. On a GPU it also times train.compile=blocks and =model.

Both train on the same images with the same recipe (global batch 512, the same augmentation distribution and LR
schedule); throughput is images per second of whole optimizer steps, data loading and augmentation included, after
warm-up steps. Evaluation throughput is a pass over the test images. It prints both, the ratio of the trainer to
the faster plain variant (with --rounds N, each side N times in turn and the median ratio: on a shared VM the speed
drifts by 10-30% within minutes), and for the trainer the warm-up time (compilation, cuDNN's autotuning) and what 25
epochs of the full data set with a test pass each would take at the measured speeds.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import time

import torch
import torch.nn.functional as F

from trainer import reference
from trainer.config import Config, for_device, load_config
from trainer.data import load_cifar
from trainer.augment import Augment
from trainer.batches import BatchSource
from trainer.hardware import hardware_name
from trainer.run_folder import RunFolder
from trainer.steps import EpochCounts, evaluate, lr_at, prepare_training, set_lr, train_step

RECIPE = {"epochs": 25, "train_images": 50_000, "test_images": 10_000}  # for the projection of a full run


# ---- (a) the plain loop, written from the reference recipe ----

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


@dataclasses.dataclass
class Timing:
    """What to time: `steps` optimizer steps after `warmup` (steps=None: config.train.epochs whole epochs)."""

    warmup: int
    steps: int | None


def bench_plain(config: Config, data, device: torch.device, workers: int, timing: Timing) -> dict:
    t, m = config.train, config.model
    torch.manual_seed(config.seed)
    model = reference.ConvMixer(m.dim, m.depth, m.kernel_size, m.patch_size, m.num_classes).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=t.lr_max, weight_decay=t.weight_decay)
    amp = device.type == "cuda"  # the reference's torch.cuda.amp: fp16 autocast and a GradScaler
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    loader = torch.utils.data.DataLoader(PilDataset(data.train, reference_transforms(config, True)), batch_size=t.batch_size,
                                         shuffle=True, num_workers=workers, drop_last=timing.steps is not None)
    steps_per_epoch = len(loader)
    total = timing.warmup + timing.steps if timing.steps is not None else t.epochs * steps_per_epoch
    timer, step, train_correct = Timer(device), 0, 0
    model.train()
    while step < total:
        for images, labels in loader:
            if step == timing.warmup:
                timer.start()
            if step == total:
                break
            images, labels = images.to(device), labels.to(device)
            for group in optimizer.param_groups:
                group["lr"] = lr_at((step + 1) / steps_per_epoch, t.epochs, t.lr_max)
            optimizer.zero_grad()
            with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
                output = model(images)
                loss = F.cross_entropy(output, labels)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            train_correct += (output.argmax(1) == labels).sum().item()  # the reference's running metrics
            step += 1
    train_seconds = timer.stop()

    test_loader = torch.utils.data.DataLoader(PilDataset(data.test, reference_transforms(config, False)),
                                              batch_size=t.batch_size, num_workers=workers)
    model.eval()
    correct = 0
    timer.start()
    with torch.no_grad():
        for images, labels in test_loader:
            with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
                output = model(images.to(device))
            correct += (output.argmax(1) == labels.to(device)).sum().item()
    eval_seconds = timer.stop()
    timed_images = timing.steps * t.batch_size if timing.steps is not None else len(data.train) * t.epochs
    return {"train_images_per_second": timed_images / train_seconds, "eval_images_per_second": len(data.test) / eval_seconds,
            "test_acc": correct / len(data.test),
            "settings": f"{'CUDA AMP fp16' if amp else 'eager fp32'}, PIL transforms, {workers}-worker DataLoader, "
                        f"batch {t.batch_size}"}


# ---- (b) this trainer's code path ----

def bench_trainer(config: Config, data, timing: Timing, on_cpu: bool) -> dict:
    from accelerate import Accelerator

    from trainer.model import build_model

    config = dataclasses.replace(config, train=for_device(config.train, on_cpu))
    t = config.train
    accelerator = Accelerator(cpu=on_cpu, mixed_precision=t.mixed_precision)
    if accelerator.device.type == "cuda":
        torch.backends.cudnn.benchmark = t.cudnn_benchmark
    torch.manual_seed(config.seed)
    model, optimizer = prepare_training(accelerator, build_model(config.model), t)
    device = accelerator.device
    batches = BatchSource(data.train.to(device), Augment(config.augment, device), config)
    test = data.test.to(device)
    counts = EpochCounts.start(accelerator.device)
    model.train()
    timer = Timer(accelerator.device)
    timer.start()
    for step, images, labels in batches.epoch(0):
        if step == timing.warmup:
            # The first evaluation compiles too (eval mode, another batch size): keep it out of the timed steps.
            evaluate(accelerator, model, test, config, batches.augment.normalize)
            model.train()
            warmup_seconds = timer.stop()
            timer.start()
        if step == timing.warmup + timing.steps:
            break
        set_lr(optimizer, lr_at(0.5, t.epochs, t.lr_max))
        counts.add(train_step(accelerator, model, optimizer, images, labels, t))
    train_seconds = timer.stop()
    timer.start()
    evaluate(accelerator, model, test, config, batches.augment.normalize)
    eval_seconds = timer.stop()
    train_ips, eval_ips = timing.steps * t.batch_size / train_seconds, len(test) / eval_seconds
    return {"train_images_per_second": train_ips, "eval_images_per_second": eval_ips, "compile": t.compile,
            "warmup_seconds": warmup_seconds,
            "projected_recipe_seconds": warmup_seconds + RECIPE["epochs"] * (
                RECIPE["train_images"] / train_ips + RECIPE["test_images"] / eval_ips),
            "settings": f"mixed precision {accelerator.mixed_precision}, micro-batch {t.micro_batch_size or 'none'}, "
                        f"channels_last {t.channels_last}, compile {t.compile}, fast weight grads: depthwise "
                        f"{t.fast_depthwise_grad}, pointwise {t.fast_pointwise_grad}, fused GELU + BatchNorm "
                        f"{t.fused_gelu_norm}, batch {t.batch_size}"}


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
                   f"seed={args.seed}", *args.overrides,
                   "tracker=none", "explain.enabled=false", f"output_dir={folder}/run"]
        started = time.perf_counter()
        subprocess.run(command, check=True)
        seconds = time.perf_counter() - started
        summary = RunFolder(f"{folder}/run").read_summary()
    return {"test_acc": summary["final_test_acc"], "wall_seconds": seconds,
            "settings": f"mixed precision {summary['mixed_precision']}, micro-batch {summary['micro_batch_size']}"}


def variants(on_cpu: bool, workers: int | None, compiled: list) -> list:
    """(side, name, option): the plain loop with each DataLoader worker count, then the trainer (and compiled)."""
    counts = [workers] if workers else sorted({2, len(os.sched_getaffinity(0))}) if not on_cpu else [2]
    plain = [("plain", f"plain loop, {n} workers", n) for n in counts]
    return plain + [("trainer", "this trainer", "no")] + [("trainer", f"train.compile={c}", c) for c in compiled]


def trainer_cold_and_warm(args, variant: str) -> dict:
    """bench_trainer of one variant in two fresh processes sharing an empty compile cache: the first compiles
    everything (cold), the second finds it cached (warm) and is the one timed."""
    import subprocess
    import sys
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        runs = []
        for steps in (1, args.steps):  # the cold run only needs its warm-up
            command = [sys.executable, "-m", "trainer.bench", "--data", args.data, "--only", "trainer", "--variant",
                       variant, "--steps", str(steps), "--warmup", str(args.warmup), "--seed", str(args.seed),
                       "--test-images", str(args.test_images), "--json", f"{folder}/result.json",
                       *(["--cpu"] if args.cpu else []), *args.overrides]
            subprocess.run(command, check=True, env={**os.environ, "TORCHINDUCTOR_CACHE_DIR": f"{folder}/cache"})
            with open(f"{folder}/result.json") as f:
                runs.append(json.load(f)["runs"][0])
    cold, warm = runs
    return {key: value for key, value in warm.items() if key not in ("side", "name")} | {
        "warmup_seconds_cold": cold["warmup_seconds"]}


def speedup(runs: list, round_: int) -> dict | None:
    """The trainer's throughput over the faster plain loop's, in one round, for training and evaluation."""
    plain = [r for r in runs if r["side"] == "plain" and r["round"] == round_]
    trainer = next((r for r in runs if r["name"] == "this trainer" and r["round"] == round_), None)
    if not plain or trainer is None:
        return None
    return {kind: trainer[f"{kind}_images_per_second"] / max(r[f"{kind}_images_per_second"] for r in plain)
            for kind in ("train", "eval")}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="a hub id or a local folder in the hub layout")
    parser.add_argument("--steps", type=int, help="timed optimizer steps of 512 images, after warm-up "
                                                   "(default 6 on the CPU, 40 on a GPU)")
    parser.add_argument("--warmup", type=int, help="untimed steps first: DataLoader start, compilation, autotuning "
                                                   "(default 2 on the CPU, 5 on a GPU)")
    parser.add_argument("--test-images", type=int, help="test images for the evaluation pass "
                                                        "(default 2048 on the CPU, all on a GPU)")
    parser.add_argument("--epochs", type=int, default=0,
                        help="instead of timing steps, train both this many epochs and compare test accuracy")
    parser.add_argument("--train-images", type=int, help="with --epochs: train on the first N training images")
    parser.add_argument("--seed", type=int, default=0, help="seed of both sides (weights, shuffling, augmentation)")
    parser.add_argument("--cpu", action="store_true", help="benchmark the CPU even if a GPU is present")
    parser.add_argument("--workers", type=int, help="DataLoader workers of the plain loop (default: 2, and on a GPU "
                                                    "also one per CPU core)")
    parser.add_argument("--compile", type=lambda text: [value for value in text.split(",") if value],
                        help="also time the trainer with these train.compile values, e.g. blocks,model (default: "
                             "none on the CPU, where compiling takes minutes; blocks,model on a GPU)")
    parser.add_argument("--only", choices=("plain", "trainer"), help="run one side only")
    parser.add_argument("--variant", choices=("no", "blocks", "model"),
                        help="time only the trainer with this train.compile, in this process (the benchmark runs each "
                             "variant so, twice: cold, then warm)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="time every variant this many times, in turn, and report the median speed-up: a shared "
                             "VM's speed drifts by 10-30%% within minutes, which one round mistakes for a difference")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value",
                        help="settings for both sides, e.g. model.dim=32 model.depth=2 for a quick dry run")
    args = parser.parse_intermixed_args(argv)

    on_cpu = args.cpu or not torch.cuda.is_available()
    device = torch.device("cpu" if on_cpu else "cuda")
    args.warmup = args.warmup if args.warmup is not None else 2 if on_cpu else 5
    args.steps = args.steps if args.steps is not None else 6 if on_cpu else 40
    args.test_images = args.test_images or (2048 if on_cpu else 10_000)
    compiled = args.compile if args.compile is not None else [] if on_cpu else ["blocks", "model"]
    if args.rounds < 1:
        raise SystemExit(f"error: --rounds must be at least 1, got {args.rounds}.")
    if not set(compiled) <= {"blocks", "model"}:
        raise SystemExit(f"error: --compile takes blocks and model (e.g. --compile blocks,model), got {compiled}.")
    timing = Timing(args.warmup, args.steps)
    config = load_config(None, [*args.overrides, f"seed={args.seed}", f"data.name={args.data}",
                                f"data.test_limit={args.test_images}", f"data.train_limit={args.train_images or 'null'}",
                                *([f"train.epochs={args.epochs}"] if args.epochs else [])])
    data = load_cifar(config.data)
    needed = (timing.warmup + timing.steps) * config.train.batch_size
    if not args.epochs and needed > len(data.train):
        raise SystemExit(f"error: --warmup + --steps need {needed} training images; the data has {len(data.train)}.")
    results = {"hardware": hardware_name(device), "threads": torch.get_num_threads(), "data": args.data,
               "train_images": len(data.train), "test_images": len(data.test), "runs": []}
    if args.variant:  # one trainer variant, in this process
        run_config = dataclasses.replace(config, train=dataclasses.replace(config.train, compile=args.variant))
        results["runs"].append({"side": "trainer", "name": args.variant, **bench_trainer(run_config, data, timing,
                                                                                          on_cpu)})
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
        return
    rounds = range(1 if args.epochs else args.rounds)
    sides = variants(on_cpu, args.workers, [] if args.epochs else compiled)
    for round_ in rounds:
        if len(rounds) > 1:
            print(f"round {round_ + 1} of {len(rounds)}", flush=True)
        for side, name, option in sides:
            if args.only not in (None, side):
                continue
            if args.epochs:
                result = (bench_plain(config, data, device, option, Timing(0, None)) if side == "plain"
                          else trainer_accuracy(args, len(data.train), len(data.test)))
                print(f"{name:<22} test accuracy {result['test_acc']:.4f} after {args.epochs} epochs on "
                      f"{len(data.train)} images   ({result['settings']})", flush=True)
            else:
                result = (bench_plain(config, data, device, option, timing) if side == "plain"
                          else trainer_cold_and_warm(args, option))
                print(f"{name:<22} train {result['train_images_per_second']:9.1f} img/s   eval "
                      f"{result['eval_images_per_second']:9.1f} img/s   ({result['settings']})", flush=True)
                if side == "trainer":
                    print(f"{'':<22} warm-up (first steps and evaluation, compilation included): cold "
                          f"{result['warmup_seconds_cold']:.1f} s, warm {result['warmup_seconds']:.1f} s; 25 epochs of "
                          f"50,000 images with a 10,000-image test pass each, at these speeds: "
                          f"{result['projected_recipe_seconds']:.0f} s", flush=True)
            results["runs"].append({"side": side, "name": name, "round": round_, **result})
    speedups = [speedup(results["runs"], round_) for round_ in rounds]
    if all(speedups) and not args.epochs:
        for kind in ("train", "eval"):
            results[f"{kind}_speedups"] = [figures[kind] for figures in speedups]
            results[f"{kind}_speedup"] = statistics.median(results[f"{kind}_speedups"])
        each = lambda kind: (f" (rounds: {', '.join(f'{x:.2f}' for x in results[f'{kind}_speedups'])})"
                             if len(rounds) > 1 else "")
        print(f"speed-up      train {results['train_speedup']:.2f}x{each('train')}   eval "
              f"{results['eval_speedup']:.2f}x{each('eval')}   ({'the median of ' if len(rounds) > 1 else ''}this "
              f"trainer against the faster plain loop) on {results['hardware']}, {results['threads']} threads, steps "
              f"of {config.train.batch_size} images")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
