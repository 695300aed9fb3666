"""Train ConvMixer on CIFAR-10: `accelerate launch trainer/main.py [--config FILE] [section.key=value ...]`.

This file only wires the parts together: config -> data + model -> loop -> hooks -> outputs.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import signal
import sys
import time
from datetime import datetime
from pathlib import Path

import torch
from tqdm.auto import tqdm

from trainer import tracking
from trainer.config import Config, ConfigError, for_device, load_config, save_config, to_dict, validate
from trainer.data import DataError


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Train ConvMixer on CIFAR-10 (defaults: the reference recipe, see trainer/config.py).",
        epilog="Overrides: section.key=value, e.g. train.epochs=5 data.name=../shared/datasets/cifar10 tracker=none",
    )
    parser.add_argument("--config", help="a YAML file of settings to change, e.g. configs/tuned.yaml")
    parser.add_argument("--cpu", action="store_true", help="train on the CPU even if a GPU is present")
    parser.add_argument("--summary", action="store_true", help="print the model's cost table and exit")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value")
    return parser.parse_args(argv)


def resolve_config(args) -> Config:
    config = load_config(args.config, args.overrides)
    if config.resume:
        run_dir = Path(config.resume)
        saved = run_dir / "config.yaml"
        if not (run_dir / "checkpoints" / "last.safetensors").is_file() or not saved.is_file():
            raise ConfigError(
                f"resume={config.resume}: no run folder with config.yaml and checkpoints/last.safetensors there; "
                f"give the folder of an earlier run (its output_dir)."
            )
        # The run's own settings, then this command's overrides (e.g. a longer train.epochs).
        config = load_config(str(saved), [*args.overrides, f"output_dir={run_dir}", f"resume={run_dir}"])
    return config


def make_run_dir(config: Config, accelerator) -> Path:
    from accelerate.utils import broadcast_object_list

    name = [config.output_dir or f"runs/{datetime.now():%Y%m%d-%H%M%S}-{config.name.lower()}"]
    broadcast_object_list(name)  # every process must agree on one folder
    run_dir = Path(name[0])
    if accelerator.is_main_process:
        (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    return run_dir


def hardware(accelerator) -> str:
    threads = f", {torch.get_num_threads()} threads each" if accelerator.device.type == "cpu" else ""
    return f"{accelerator.num_processes} x {tracking.hardware_name(accelerator.device)}{threads}"


def main(argv=None) -> int:
    args = parse_args(argv)
    config = resolve_config(args)

    from accelerate import Accelerator

    from trainer import checkpoint
    from trainer.data import load_cifar
    from trainer.loop import fit, prepare_training
    from trainer.model import build_model, model_cost

    # cpu=True also on a machine without a GPU: that is what makes Accelerate form a
    # multi-process CPU group (gloo) under `accelerate launch --multi_gpu` or torchrun.
    on_cpu = args.cpu or not torch.cuda.is_available()
    saved_config, config = config, dataclasses.replace(config, train=for_device(config.train, on_cpu))
    accelerator = Accelerator(cpu=on_cpu, mixed_precision=config.train.mixed_precision,
                              log_with="wandb" if config.tracker == "wandb" else None)
    validate(config, accelerator.num_processes)
    if accelerator.device.type == "cuda":
        torch.backends.cudnn.benchmark = config.train.cudnn_benchmark
    torch.manual_seed(config.seed)
    model = build_model(config.model)
    cost = model_cost(model)
    if args.summary:
        accelerator.print(cost.table)
        return 0

    run_dir = make_run_dir(config, accelerator)
    if accelerator.is_main_process:
        save_config(saved_config, run_dir / "config.yaml")  # nulls kept: a resume on a GPU picks GPU values
        (run_dir / "model_summary.txt").write_text(cost.table + "\n")
        accelerator.print(cost.table)
        accelerator.print(f"Run folder: {run_dir}  |  {hardware(accelerator)}  |  mixed precision: {accelerator.mixed_precision}"
                          f"  |  micro-batch: {config.train.micro_batch_size or 'whole batch'}")

    with accelerator.main_process_first():  # the main process decodes and caches; the others read the cache
        data = load_cifar(config.data)
    model, optimizer = prepare_training(accelerator, model, config.train)

    progress = {"epoch": 0, "step": 0}
    run_log = tracking.RunLog(run_dir, config.name)
    if config.resume:
        progress = checkpoint.load_checkpoint(run_dir / "checkpoints" / checkpoint.LAST,
                                              accelerator.unwrap_model(model), optimizer, accelerator.scaler)
        accelerator.print(f"Resuming {run_dir} at epoch {progress['epoch']}, step {progress['step']}.")
        if accelerator.is_main_process:
            run_log.truncate_to(progress["epoch"])

    if config.tracker == "wandb":
        tracker_config = {**to_dict(config), "parameters": cost.parameters, "mult_adds_per_image": cost.mult_adds,
                          "num_processes": accelerator.num_processes}
        tracking.start_tracker(accelerator, tracker_config, run_dir, config.wandb_project, run_dir.name)

    started = time.time()
    bar = functools.partial(tqdm, disable=not (accelerator.is_main_process and sys.stderr.isatty()), leave=False)
    outcome, final = fit(accelerator, model, optimizer, data, config, run_log, run_dir, progress,
                          lambda row: accelerator.log(row, step=row["epoch"]), bar)

    if outcome != "finished":
        accelerator.print(f"Stopped by {outcome}; the checkpoint is saved. Continue with: "
                          f"accelerate launch trainer/main.py resume={run_dir}")
        accelerator.end_training()
        return 128 + signal.Signals[outcome].value

    if accelerator.is_main_process:
        checkpoint.save_weights(run_dir / "model.safetensors", accelerator.unwrap_model(model), vars(config.model))
    explained = {}
    if config.explain.enabled:
        from trainer.explain import run_explain

        explained = run_explain(accelerator, model, data, config, run_dir, tracking.wandb_explain_logger(accelerator))
    if accelerator.is_main_process:
        tracking.write_json(run_dir / "summary.json", {
            "final_test_acc": final["last_test_acc"], "best_test_acc": final["best_test_acc"],
            "epochs": config.train.epochs, "parameters": cost.parameters, "mult_adds_per_image": cost.mult_adds,
            "wall_seconds": round(time.time() - started, 1), "hardware": hardware(accelerator),
            "num_processes": accelerator.num_processes, "mixed_precision": accelerator.mixed_precision,
            "micro_batch_size": config.train.micro_batch_size,
            "data": config.data.name, "explain": explained,
        })
    accelerator.end_training()
    return 0


def exit_cleanly(entry) -> None:
    """Runs `entry()`: clear one-paragraph errors for bad input, and a clean exit from multi-process runs."""
    try:
        code = entry()
    except (ConfigError, DataError) as error:
        print(f"error: {error}", file=sys.stderr)
        code = 2
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        # Some gloo runs abort at interpreter exit ("terminate called without an active exception")
        # even after destroy_process_group(); leaving at once after it avoids that.
        torch.distributed.destroy_process_group()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


def run() -> None:
    exit_cleanly(main)


if __name__ == "__main__":
    run()
