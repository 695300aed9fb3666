"""What a figure was measured on: the GPU's name, or the CPU's model, cores and threads."""

from __future__ import annotations

import os
import platform

import torch

from trainer.wording import plural


def hardware_name(device) -> str:
    if torch.device(device).type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = cpuinfo("model name") or platform.processor() or platform.machine()
    return f"CPU {cpu} ({os.cpu_count()} cores)"


def cpuinfo(field: str) -> str | None:
    """A field of /proc/cpuinfo for the first core (e.g. 'model name', 'flags'), or None where there is none."""
    try:
        return next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith(field))
    except (OSError, StopIteration, IndexError):
        return None


def describe(accelerator) -> str:
    """e.g. '2 x CPU AMD EPYC (2 cores), 1 thread each' or '1 x NVIDIA H100 80GB HBM3'."""
    threads = f", {plural(torch.get_num_threads(), 'thread')} each" if accelerator.device.type == "cpu" else ""
    return f"{accelerator.num_processes} x {hardware_name(accelerator.device)}{threads}"
