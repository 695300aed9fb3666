"""Every setting of a run, with the reference recipe's values as defaults.

This file is the one place where defaults live: `configs/*.yaml` only list what
they change, and the command line overrides any key as `section.key=value`.
The reference is locuslab/convmixer-cifar10 `train.py` (ConvMixer-256/8, k5, p2).
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

IMAGE_SIZE = 32  # CIFAR-10
CPU_MICRO_BATCH_SIZE = 64  # train.micro_batch_size on the CPU when it is null


class ConfigError(ValueError):
    """A setting is unknown, of the wrong type, or impossible; the message says how to fix it."""


@dataclass
class ModelConfig:
    dim: int = 256
    depth: int = 8
    kernel_size: int = 5
    patch_size: int = 2
    num_classes: int = 10


@dataclass
class DataConfig:
    # A hub id, or a local folder in the hub layout (e.g. ../shared/datasets/cifar10).
    name: str = "uoft-cs/cifar10"
    image_column: str = "img"
    label_column: str = "label"
    train_limit: typing.Optional[int] = None  # take only the first N training rows
    test_limit: typing.Optional[int] = None
    # Decoded uint8 arrays are cached here, keyed by the dataset's fingerprint.
    cache_dir: str = "~/.cache/convmixer-trainer"


@dataclass
class AugmentConfig:
    scale_min: float = 0.75  # RandomResizedCrop(32, scale=(scale_min, 1), ratio=(1, 1))
    hflip: float = 0.5
    randaug_n: int = 1  # RandAugment(num_ops=n, magnitude=m); n=0 turns it off
    randaug_m: int = 8
    jitter: float = 0.1  # ColorJitter(brightness, contrast, saturation) all = jitter
    erasing: float = 0.25  # RandomErasing(p=erasing)
    mean: typing.List[float] = field(default_factory=lambda: [0.4914, 0.4822, 0.4465])
    std: typing.List[float] = field(default_factory=lambda: [0.2471, 0.2435, 0.2616])


@dataclass
class TrainConfig:
    epochs: int = 25
    batch_size: int = 512  # global: split across processes, same steps per epoch on any number
    lr_max: float = 0.01
    weight_decay: float = 0.01
    clip_norm: typing.Optional[float] = None  # the reference's --clip-norm flag clips at 1.0
    # no / fp16 / bf16. null: what suits the device: bf16 on a GPU that supports it (Ampere and newer), fp16 with
    # the loss scaler on older GPUs, bf16 on a CPU with native bf16 (AVX512-BF16 or AMX), else no; a precision
    # given to `accelerate launch --mixed_precision` (or its config file) is used instead where it is not "no".
    mixed_precision: typing.Optional[str] = None
    # Images per forward/backward pass; the optimizer still steps once per batch_size, on the summed
    # gradients. null: CPU_MICRO_BATCH_SIZE on the CPU (small passes stay in its caches: about 2x faster),
    # the whole per-process batch on a GPU. BatchNorm normalizes over each pass, not the whole batch.
    micro_batch_size: typing.Optional[int] = None
    # On the CPU, the depthwise convs' weight gradient compiled by TorchInductor (trainer/depthwise.py),
    # about 6x faster than oneDNN's; it needs a C++ compiler and falls back with a warning without one.
    fast_depthwise_grad: bool = True
    channels_last: bool = True
    # torch.compile of the whole model. null: off on every device until a 25-epoch GPU run shows it faster with
    # its compile time included (python -m trainer.bench prints both); true turns it on.
    compile: typing.Optional[bool] = None
    cudnn_benchmark: bool = True  # on a GPU, let cuDNN time its kernels for each new shape and keep the fastest


@dataclass
class ExplainConfig:
    enabled: bool = True  # run the Grad-CAM hook when training ends
    num_images: int = 10
    # Which mistakes to explain: most_confident, first (test order) or random (with the seed).
    select: str = "most_confident"
    grid_size: int = 5  # the second gallery: a grid_size x grid_size grid of misclassified originals


@dataclass
class Config:
    name: str = "ConvMixer"  # the prefix of every epoch line, as in the reference's logs
    seed: int = 0
    output_dir: typing.Optional[str] = None  # null: a new folder under runs/
    resume: typing.Optional[str] = None  # a run folder to continue from its last checkpoint
    tracker: str = "wandb"  # wandb or none
    wandb_project: str = "convmixer-cifar10"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    explain: ExplainConfig = field(default_factory=ExplainConfig)


def to_dict(config) -> dict:
    return dataclasses.asdict(config)


def from_dict(values: dict, cls=Config, prefix: str = ""):
    """Builds `cls` from nested dicts, checking every key and type."""
    if not isinstance(values, dict):
        raise ConfigError(f"'{prefix.rstrip('.') or 'config'}' must be a mapping of keys to values, got {values!r}.")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        dotted = prefix + key
        if key not in known:
            _unknown_key(dotted)
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = from_dict(value, hint, dotted + ".")
        else:
            kwargs[key] = _check_type(dotted, value, hint)
    return cls(**kwargs)


def _all_keys(cls=Config, prefix: str = "") -> list:
    keys = []
    for f in dataclasses.fields(cls):
        hint = typing.get_type_hints(cls)[f.name]
        if dataclasses.is_dataclass(hint):
            keys += _all_keys(hint, prefix + f.name + ".")
        else:
            keys.append(prefix + f.name)
    return keys


def _unknown_key(dotted: str):
    close = difflib.get_close_matches(dotted, _all_keys(), n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise ConfigError(
        f"Unknown setting '{dotted}'.{hint} The settings and their defaults are in trainer/config.py; "
        f"override one as section.key=value, e.g. train.epochs=5."
    )


def _check_type(dotted: str, value, hint):
    optional = typing.get_origin(hint) is typing.Union and type(None) in typing.get_args(hint)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"'{dotted}' cannot be null; give it a value (see its default in trainer/config.py).")
    base = next(a for a in typing.get_args(hint) if a is not type(None)) if optional else hint
    if typing.get_origin(base) is list:
        (item,) = typing.get_args(base)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"'{dotted}' must be a list like [0.5, 0.5, 0.5], got {value!r}.")
        return [_check_type(f"{dotted}[{i}]", v, item) for i, v in enumerate(value)]
    if base is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if base is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)  # e.g. output_dir=2024 on the command line
    if base is str and isinstance(value, bool):
        raise ConfigError(f"'{dotted}' must be a string, got {value!r}: YAML reads an unquoted yes/no/on/off as true "
                          f"or false, so quote it in YAML files ({dotted.split('.')[-1]}: 'no').")
    if not isinstance(value, base) or (base is int and isinstance(value, bool)):
        raise ConfigError(
            f"'{dotted}' must be {'null or ' if optional else ''}{_KIND_NAMES.get(base, base.__name__)}, got {value!r} "
            f"({type(value).__name__}). Example: {dotted}={_example(base)}."
        )
    return value


_KIND_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def _example(kind) -> str:
    return {int: "8", float: "0.01", bool: "true", str: "text"}.get(kind, "...")


def _deep_update(base: dict, update: dict) -> dict:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _deep_update(base[key], value)
        else:
            base[key] = value
    return base


def parse_overrides(pairs: typing.Sequence[str]) -> dict:
    """['train.epochs=5', 'data.name=../x'] -> {'train': {'epochs': 5}, 'data': {'name': '../x'}}."""
    nested: dict = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(
                f"Cannot read the argument '{pair}': overrides are section.key=value, e.g. train.epochs=5 "
                f"(see trainer/config.py for every key)."
            )
        dotted, raw = pair.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else None
        except yaml.YAMLError:
            value = raw
        if isinstance(value, bool) and raw.strip().lower() not in ("true", "false"):
            value = raw  # YAML 1.1 reads no/yes/on/off as booleans: keep train.mixed_precision=no a string
        node = nested
        *parents, leaf = dotted.strip().split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"'{dotted}' sets a key inside '{part}', which is not a section.")
        node[leaf] = value
    return nested


def load_config(config_file: typing.Optional[str] = None, overrides: typing.Sequence[str] = ()) -> Config:
    """Defaults <- the YAML file (if any) <- command-line overrides, then validated."""
    values = to_dict(Config())
    if config_file:
        path = Path(config_file)
        if not path.is_file():
            raise ConfigError(f"Config file '{config_file}' does not exist. The shipped ones are in configs/.")
        loaded = yaml.safe_load(path.read_text()) or {}
        _deep_update(values, from_dict_checked(loaded, f"in {config_file}"))
    _deep_update(values, from_dict_checked(parse_overrides(overrides), "on the command line"))
    config = from_dict(values)
    validate(config)
    return config


def from_dict_checked(values: dict, where: str) -> dict:
    """Checks keys and types of a partial config so the error can say where it came from."""
    try:
        from_dict(values)
    except ConfigError as error:
        raise ConfigError(f"{error} (The setting was given {where}.)") from None
    return values


def validate(config: Config, num_processes: int = 1) -> None:
    """Impossible values stop the run here, before any data is loaded."""
    m, t, a, e = config.model, config.train, config.augment, config.explain
    problems = []
    if IMAGE_SIZE % m.patch_size != 0 or m.patch_size < 1:
        problems.append(
            f"model.patch_size={m.patch_size} does not divide the {IMAGE_SIZE}x{IMAGE_SIZE} image; "
            f"use one of 1, 2, 4, 8, 16, 32."
        )
    for key in ("dim", "depth", "kernel_size", "num_classes"):
        if getattr(m, key) < 1:
            problems.append(f"model.{key} must be at least 1, got {getattr(m, key)}.")
    if t.epochs < 1:
        problems.append(f"train.epochs must be at least 1, got {t.epochs}.")
    if t.batch_size < max(1, num_processes):
        problems.append(
            f"train.batch_size={t.batch_size} is the global batch and must be at least the number of "
            f"processes ({num_processes}); raise it or launch fewer processes."
        )
    if t.micro_batch_size is not None and t.micro_batch_size < 1:
        problems.append(f"train.micro_batch_size must be at least 1 or null, got {t.micro_batch_size}.")
    if t.lr_max <= 0 or t.weight_decay < 0:
        problems.append("train.lr_max must be positive and train.weight_decay non-negative.")
    if t.mixed_precision not in (None, "no", "fp16", "bf16"):
        problems.append(f"train.mixed_precision must be no, fp16, bf16 or null, got {t.mixed_precision!r}.")
    for limit in ("train_limit", "test_limit"):
        value = getattr(config.data, limit)
        if value is not None and value < 1:
            problems.append(f"data.{limit} must be at least 1 or null (the whole split), got {value}.")
    if not 0 < a.scale_min <= 1:
        problems.append(f"augment.scale_min must be in (0, 1], got {a.scale_min}.")
    for key in ("hflip", "erasing"):
        if not 0 <= getattr(a, key) <= 1:
            problems.append(f"augment.{key} is a probability in [0, 1], got {getattr(a, key)}.")
    if not 0 <= a.randaug_m <= 30 or a.randaug_n < 0:
        problems.append("augment.randaug_m must be in 0..30 (RandAugment's 31 bins) and augment.randaug_n >= 0.")
    if not 0 <= a.jitter < 1:
        problems.append(f"augment.jitter must be in [0, 1), got {a.jitter}.")
    if len(a.mean) != 3 or len(a.std) != 3 or min(a.std) <= 0:
        problems.append("augment.mean and augment.std need three values each, std positive.")
    if config.tracker not in ("wandb", "none"):
        problems.append(f"tracker must be wandb or none, got {config.tracker!r}.")
    if e.select not in ("most_confident", "first", "random"):
        problems.append(f"explain.select must be most_confident, first or random, got {e.select!r}.")
    if e.num_images < 1 or e.grid_size < 1:
        problems.append("explain.num_images and explain.grid_size must be at least 1.")
    if problems:
        raise ConfigError("Invalid settings: " + " ".join(problems))


def for_device(train: TrainConfig, on_cpu: bool) -> TrainConfig:
    """Fills the settings whose null means "what suits this device" (see TrainConfig)."""
    micro = train.micro_batch_size or (CPU_MICRO_BATCH_SIZE if on_cpu else None)
    return dataclasses.replace(train, micro_batch_size=micro, mixed_precision=device_precision(train, on_cpu),
                               compile=bool(train.compile), fast_depthwise_grad=train.fast_depthwise_grad and on_cpu)


def device_precision(train: TrainConfig, on_cpu: bool) -> str:
    import torch

    if train.mixed_precision is not None:
        return train.mixed_precision
    launcher = os.environ.get("ACCELERATE_MIXED_PRECISION", "no")  # what `accelerate launch` was told
    if launcher != "no":
        return launcher
    if on_cpu:
        return "bf16" if torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported() else "no"
    return "bf16" if torch.cuda.get_device_capability() >= (8, 0) else "fp16"  # bf16 tensor cores from Ampere on


def save_config(config: Config, path: Path) -> None:
    path.write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
