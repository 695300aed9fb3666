"""Every setting of a run, with the reference recipe's values as defaults.

This file is the one place where defaults live: `configs/*.yaml` only list what they change, and the command line
overrides any key as `section.key=value`. The reference is locuslab/convmixer-cifar10 `train.py` (ConvMixer-256/8,
k5, p2). The dataclasses are the schema of OmegaConf structured configs: OmegaConf merges the YAML file and the
command line into them and rejects unknown keys and wrong types; each section's `problems` checks its values.
Every error is one paragraph saying what to change, raised before any data is loaded.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from trainer.errors import ConfigError

IMAGE_SIZE = 32  # CIFAR-10
CPU_MICRO_BATCH_SIZE = 64  # train.micro_batch_size on the CPU when it is null
COMPILE_CACHE = "~/.cache/convmixer-trainer/compiled"  # train.compile_cache
COMPILE_CHOICES = (None, "no", "blocks", "model")  # train.compile
# explain.methods: grad-cam's methods that apply to ConvMixer (trainer/cam_methods.py maps them to its classes)
CAM_METHODS = ("gradcam", "hirescam", "gradcam++", "xgradcam", "layercam", "gradcamelementwise", "eigencam",
               "eigengradcam", "kpcacam", "fem", "shapleycam", "fullgrad", "ablationcam", "scorecam")
# Within about a minute for 10 images of ConvMixer-256/8 on 2 CPU cores: all but the perturbation methods, which
# take 12 and 23 s each (README, Explanations).
DEFAULT_CAM_METHODS = ("gradcam", "hirescam", "gradcam++", "xgradcam", "layercam", "gradcamelementwise", "eigencam",
                       "eigengradcam", "fullgrad")


def setting(default, help: str):
    """A setting's default and what it means (shown by --help)."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class ModelConfig:
    dim: int = setting(256, "channels of every layer")
    depth: int = setting(8, "mixer blocks")
    kernel_size: int = setting(5, "the depthwise convolution's kernel size")
    patch_size: int = setting(2, "the stem's patch size (divides 32)")
    num_classes: int = setting(10, "outputs of the head")

    def problems(self) -> list:
        found = []
        if self.patch_size < 1 or IMAGE_SIZE % self.patch_size != 0:
            found.append(f"model.patch_size={self.patch_size} does not divide the {IMAGE_SIZE}x{IMAGE_SIZE} image; "
                         f"use one of 1, 2, 4, 8, 16, 32.")
        for key in ("dim", "depth", "kernel_size", "num_classes"):
            if getattr(self, key) < 1:
                found.append(f"model.{key} must be at least 1, got {getattr(self, key)}.")
        return found


@dataclass
class DataConfig:
    name: str = setting("uoft-cs/cifar10", "a hub id, or a local folder in the hub layout "
                                           "(e.g. ../shared/datasets/cifar10)")
    image_column: str = setting("img", "the column of images")
    label_column: str = setting("label", "the column of class indices")
    train_limit: typing.Optional[int] = setting(None, "take only the first N training rows (null: all)")
    test_limit: typing.Optional[int] = setting(None, "take only the first N test rows (null: all)")
    cache_dir: str = setting("~/.cache/convmixer-trainer", "decoded uint8 arrays are cached here, by the dataset's "
                                                            "fingerprint")
    val_size: int = setting(0, "training images held out as a validation split (chosen with the seed), evaluated "
                               "every epoch and used to pick best.safetensors; 0: none, as the reference (the best "
                               "epoch is then picked on the test set)")

    def problems(self) -> list:
        found = [f"data.{key} must be at least 1 or null (the whole split), got {getattr(self, key)}."
                 for key in ("train_limit", "test_limit") if getattr(self, key) is not None and getattr(self, key) < 1]
        if self.val_size < 0:
            found.append(f"data.val_size must be 0 (no validation split) or more, got {self.val_size}.")
        return found


@dataclass
class AugmentConfig:
    scale_min: float = setting(0.75, "RandomResizedCrop(32, scale=(scale_min, 1), ratio=(1, 1))")
    hflip: float = setting(0.5, "RandomHorizontalFlip's probability")
    randaug_n: int = setting(1, "RandAugment(num_ops=n); 0 turns it off")
    randaug_m: int = setting(8, "RandAugment(magnitude=m), 0..30")
    jitter: float = setting(0.1, "ColorJitter(brightness, contrast, saturation), all = jitter")
    erasing: float = setting(0.25, "RandomErasing(p=erasing)")
    mixup: float = setting(0.0, "Mixup's alpha (timm's --mixup; 0.8 there): a batch mixed with itself reversed, by a "
                                "ratio drawn from Beta(alpha, alpha); 0: off, as the reference")
    cutmix: float = setting(0.0, "CutMix's alpha (timm's --cutmix; 1.0 there): a box of the reversed batch pasted "
                                 "in; 0: off, as the reference")
    mix_prob: float = setting(1.0, "with mixup or cutmix: the probability that a step's batch is mixed")
    mix_switch_prob: float = setting(0.5, "with both: the probability of CutMix rather than Mixup for a batch")
    mix_off_epoch: typing.Optional[int] = setting(None, "with mixup or cutmix: no mixing from this epoch on (timm's "
                                                        "--mixup-off-epoch); null: every epoch")
    mean: typing.List[float] = setting([0.4914, 0.4822, 0.4465], "Normalize's mean, per channel")
    std: typing.List[float] = setting([0.2471, 0.2435, 0.2616], "Normalize's std, per channel")

    def problems(self) -> list:
        found = []
        if not 0 < self.scale_min <= 1:
            found.append(f"augment.scale_min must be in (0, 1], got {self.scale_min}.")
        for key in ("mixup", "cutmix"):
            if getattr(self, key) < 0:
                found.append(f"augment.{key} is an alpha of Beta(alpha, alpha): positive, or 0 for off; got "
                             f"{getattr(self, key)}.")
        for key in ("hflip", "erasing", "mix_prob", "mix_switch_prob"):
            if not 0 <= getattr(self, key) <= 1:
                found.append(f"augment.{key} is a probability in [0, 1], got {getattr(self, key)}.")
        if not 0 <= self.randaug_m <= 30 or self.randaug_n < 0:
            found.append("augment.randaug_m must be in 0..30 (RandAugment's 31 bins) and augment.randaug_n >= 0.")
        if not 0 <= self.jitter < 1:
            found.append(f"augment.jitter must be in [0, 1), got {self.jitter}.")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std, default=0) <= 0:
            found.append("augment.mean and augment.std need three values each, std positive.")
        return found


@dataclass
class TrainConfig:
    epochs: int = setting(25, "passes over the training set")
    batch_size: int = setting(512, "the global batch: split across processes, the same steps per epoch on any number")
    lr_max: float = setting(0.01, "the peak of the one-cycle LR schedule (AdamW)")
    weight_decay: float = setting(0.01, "AdamW's weight decay")
    clip_norm: typing.Optional[float] = setting(None, "clip the gradient norm (the reference's --clip-norm: 1.0)")
    mixed_precision: typing.Optional[str] = setting(
        None, "no / fp16 / bf16. null: what suits the device: bf16 on a GPU from Ampere on, fp16 with a loss scaler "
              "before; bf16 on a CPU with native bf16 (AVX512-BF16, AMX), else no; a precision given to `accelerate "
              "launch --mixed_precision` wins where it is not no")
    micro_batch_size: typing.Optional[int] = setting(
        None, "images per forward/backward pass, gradients summed to the batch; BatchNorm normalizes over each "
              "pass. null: 64 on the CPU (about 2x faster there), the whole per-process batch on a GPU")
    sync_batchnorm: bool = setting(False, "with several processes, BatchNorm's statistics over the pass of every "
                                          "process together (nn.SyncBatchNorm: one all-reduce per BatchNorm and pass) "
                                          "rather than each process's own images; off, as the reference's "
                                          "DataParallel did not sync them either")
    fast_depthwise_grad: bool = setting(True, "on the CPU, a faster weight gradient for the depthwise convs: a C "
                                              "kernel in fp32, TorchInductor's in bf16 (4-6x oneDNN's; needs a C "
                                              "compiler; off with train.compile)")
    fast_pointwise_grad: bool = setting(True, "on the CPU in fp32, the pointwise (1 x 1) convs' weight gradient as one "
                                              "matrix product on the channels-last view (about 2x oneDNN's; off with "
                                              "train.compile)")
    fused_gelu_norm: bool = setting(True, "on the CPU in fp32, GELU and training-mode BatchNorm in C kernels (two "
                                          "passes over memory where eager PyTorch takes five; needs a C compiler; "
                                          "off with train.compile)")
    channels_last: bool = setting(True, "channels_last memory format for the model and its inputs")
    compile: typing.Optional[str] = setting(
        None, "torch.compile: no; blocks (one MixerBlock compiled, its code reused by every block: regional "
              "compilation); model (the whole model). null: no on every device, until a 25-epoch run shows a compiled "
              "variant faster with its compile time included (bench/gpu_speed.sh, python -m trainer.bench)")
    label_smoothing: float = setting(0.0, "cross-entropy against targets smoothed by this much (timm's --smoothing; "
                                          "airbench uses 0.2); 0: off, as the reference")
    ema_decay: typing.Optional[float] = setting(None, "keep an exponential moving average of the weights with this "
                                                      "decay, e.g. 0.999, warmed up as min(decay, (1 + n) / (10 + n)) "
                                                      "after step n, and evaluate it every epoch next to the weights "
                                                      "(timm's --model-ema); null: off, as the reference")
    ema_weights: str = setting("ema", "with train.ema_decay: the weights that model.safetensors, best.safetensors, the "
                                      "final figures and the end-of-training hooks use: ema (the average) or raw")
    tta: bool = setting(False, "test-time augmentation: every evaluation averages the logits of each image and of its "
                               "horizontal mirror (timm's validate.py --tta); off, as the reference")
    cudnn_benchmark: bool = setting(True, "on a GPU, cuDNN times its kernels for each new shape and keeps the fastest")
    compile_cache: str = setting(COMPILE_CACHE, "compiled code kept between runs (TorchInductor's caches, the CPU's C "
                                                "kernel), so that a second run starts warm; TORCHINDUCTOR_CACHE_DIR "
                                                "wins when set")

    @property
    def reports_average(self) -> bool:
        """Whether the run's figures, best epoch, final weights and hooks are those of the weights' average."""
        return self.ema_decay is not None and self.ema_weights == "ema"

    @property
    def reported_prefix(self) -> str:
        """The prefix of the reported weights' columns in metrics.csv: "ema_" for the average, "" for the weights."""
        return "ema_" if self.reports_average else ""

    def problems(self, num_processes: int) -> list:
        found = []
        if self.epochs < 1:
            found.append(f"train.epochs must be at least 1, got {self.epochs}.")
        if self.batch_size < max(1, num_processes):
            found.append(f"train.batch_size={self.batch_size} is the global batch and must be at least the number "
                         f"of processes ({num_processes}); raise it or launch fewer processes.")
        if self.micro_batch_size is not None and self.micro_batch_size < 1:
            found.append(f"train.micro_batch_size must be at least 1 or null, got {self.micro_batch_size}.")
        if self.sync_batchnorm and self.micro_batch_size is not None:
            found.append("train.sync_batchnorm needs train.micro_batch_size=null (one pass per process and step): "
                         "processes with unequal shares of a step would make unequal numbers of passes, and "
                         "SyncBatchNorm's exchanges would not pair up.")
        if self.lr_max <= 0 or self.weight_decay < 0:
            found.append("train.lr_max must be positive and train.weight_decay non-negative.")
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            found.append(f"train.ema_decay must be in (0, 1), e.g. 0.999, or null (off); got {self.ema_decay}.")
        if self.ema_weights not in ("ema", "raw"):
            found.append(f"train.ema_weights must be ema or raw, got {self.ema_weights!r}.")
        if not 0 <= self.label_smoothing < 1:
            found.append(f"train.label_smoothing must be in [0, 1), got {self.label_smoothing}.")
        if self.clip_norm is not None and self.clip_norm <= 0:
            found.append(f"train.clip_norm must be positive or null, got {self.clip_norm}.")
        if self.compile not in COMPILE_CHOICES:
            found.append(f"train.compile must be no, blocks, model or null, got {self.compile!r}.")
        if self.mixed_precision not in (None, "no", "fp16", "bf16"):
            found.append(f"train.mixed_precision must be no, fp16, bf16 or null, got {self.mixed_precision!r}.")
        return found


@dataclass
class ExplainConfig:
    enabled: bool = setting(True, "run the Grad-CAM hook when training ends")
    num_images: int = setting(10, "misclassified test images to explain")
    select: str = setting("most_confident", "which mistakes: most_confident, first (test order) or random (seeded)")
    grid_size: int = setting(5, "the second gallery: a grid_size x grid_size grid of misclassified originals")
    methods: typing.List[str] = setting(list(DEFAULT_CAM_METHODS), f"grad-cam's methods compared by ROAD on the "
                                        f"explained mistakes, or all: {', '.join(CAM_METHODS)} (scorecam and "
                                        f"ablationcam run 256 forward passes per image and block)")
    blocks: typing.List[str] = setting(["last"], "the mixer blocks each method is compared at: indices from 0, last, "
                                                 "or all")
    method: str = setting("gradcam", "the gallery's method (at the last block), or best: the highest ROAD score of "
                                     "the comparison, at its block")

    def method_names(self) -> list:
        """explain.methods with `all` expanded, in the order given."""
        return list(CAM_METHODS) if self.methods == ["all"] else list(dict.fromkeys(self.methods))

    def block_indices(self, depth: int) -> list:
        """explain.blocks as block indices (0 .. depth - 1), in the order given."""
        if self.blocks == ["all"]:
            return list(range(depth))
        return list(dict.fromkeys(depth - 1 if block == "last" else int(block) % depth for block in self.blocks))

    def problems(self) -> list:
        found = []
        if self.select not in ("most_confident", "first", "random"):
            found.append(f"explain.select must be most_confident, first or random, got {self.select!r}.")
        unknown = [name for name in self.methods if name not in CAM_METHODS and self.methods != ["all"]]
        if unknown or not self.methods:
            close = {near for name in unknown for near in difflib.get_close_matches(name.lower(), CAM_METHODS, n=1)}
            found.append(f"explain.methods must be all or a list of {', '.join(CAM_METHODS)}; got "
                         f"{', '.join(map(repr, unknown)) or 'an empty list'}"
                         + (f" (did you mean {', '.join(sorted(close))}?)." if close else ".")
                         + " Example: explain.methods=gradcam,layercam")
        if self.method not in (*CAM_METHODS, "best"):
            close = difflib.get_close_matches(self.method.lower(), CAM_METHODS, n=1)
            found.append(f"explain.method must be best or one of {', '.join(CAM_METHODS)}, got {self.method!r}"
                         + (f" (did you mean {close[0]}?)." if close else "."))
        if not self.blocks or (self.blocks != ["all"] and not all(b == "last" or b.lstrip("-").isdigit()
                                                                  for b in self.blocks)):
            found.append(f"explain.blocks must be all or a list of block indices (from 0) and last, got "
                         f"{self.blocks}. Example: explain.blocks=0,3,last")
        if not 1 <= self.num_images <= 100 or not 1 <= self.grid_size <= 20:
            found.append(f"explain.num_images must be in 1..100 and explain.grid_size in 1..20 (figures of a readable "
                         f"size), got {self.num_images} and {self.grid_size}.")
        return found


@dataclass
class Config:
    name: str = setting("ConvMixer", "the prefix of every epoch line, as in the reference's logs")
    seed: int = setting(0, "weights, shuffling and augmentation")
    output_dir: typing.Optional[str] = setting(None, "the run folder (null: a new folder under runs/)")
    resume: typing.Optional[str] = setting(None, "a run folder to continue from its last checkpoint")
    tracker: str = setting("wandb", "wandb or none")
    wandb_project: str = setting("convmixer-cifar10", "the W&B project")
    progress_every: float = setting(60.0, "seconds between progress lines inside an epoch when the output is not a "
                                          "terminal (Slurm's log, a pipe); on a terminal a progress bar. 0: none")
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    explain: ExplainConfig = field(default_factory=ExplainConfig)

    def problems(self) -> list:
        found = [f"tracker must be wandb or none, got {self.tracker!r}."] if self.tracker not in ("wandb", "none") else []
        if self.progress_every < 0:
            found.append(f"progress_every must be 0 (no progress lines) or a number of seconds, got "
                         f"{self.progress_every}.")
        depth = self.model.depth
        blocks = [b for b in self.explain.blocks if b.lstrip("-").isdigit() and not -depth <= int(b) < depth]
        if blocks:
            found.append(f"explain.blocks {', '.join(blocks)} out of range: the model has {depth} blocks (0 .. "
                         f"{depth - 1}; -1 is the last).")
        if not 0 <= self.seed < 2**32:
            found.append(f"seed must be in 0 .. 2**32 - 1, got {self.seed}: torch's CPU generator keeps 32 bits of a "
                         f"seed, so a larger one would repeat the run of a smaller one.")
        return found


def validate(config: Config, num_processes: int = 1) -> None:
    """Impossible values stop the run here, before any data is loaded."""
    problems = (config.problems() + config.model.problems() + config.data.problems() + config.augment.problems()
                + config.train.problems(num_processes) + config.explain.problems())
    if problems:
        raise ConfigError("Invalid settings: " + " ".join(problems))


def load_config(config_file: typing.Optional[str] = None, overrides: typing.Sequence[str] = (),
                run_file: typing.Optional[str] = None) -> Config:
    """Defaults <- a resumed run's config.yaml (if any) <- the YAML file (if any) <- command-line overrides, then
    validated."""
    merged = OmegaConf.structured(Config)
    if run_file:
        merged = _merge(merged, _read_yaml(run_file), f"in {run_file}")
    if config_file:
        merged = _merge(merged, _read_yaml(config_file), f"in {config_file}")
    merged = _merge(merged, _dotlist(overrides), "on the command line")
    try:
        config = OmegaConf.to_object(merged)  # resolves ${...} interpolations
    except OmegaConfBaseException as error:
        raise ConfigError(f"Cannot resolve '{getattr(error, 'full_key', '')}': {str(error).splitlines()[0]} (a "
                          f"${{...}} in a value is an OmegaConf interpolation; write \\${{...}} for the literal text).") from None
    validate(config)
    return config


def config_yaml(config: Config) -> str:
    """The settings as config.yaml holds them (nulls kept)."""
    return OmegaConf.to_yaml(OmegaConf.structured(config))


def value_at(config: Config, dotted: str):
    """The value of the setting `dotted` (e.g. train.epochs)."""
    for part in dotted.split("."):
        config = getattr(config, part)
    return config


def settings(cls=Config, prefix: str = "") -> list:
    """[(dotted key, type hint, default, help)] for every setting, in schema order."""
    found = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            found += settings(hints[f.name], f"{prefix}{f.name}.")
        else:
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            found.append((prefix + f.name, hints[f.name], default, f.metadata.get("help", "")))
    return found


def shown(value) -> str:
    """A setting's value as it is written on the command line and in YAML."""
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def _kind(dotted: str):
    """(base type, optional) of a setting; a dataclass type for a section; None for an unknown key."""
    cls, hint = Config, None
    for part in dotted.split("."):
        hints = typing.get_type_hints(cls) if dataclasses.is_dataclass(cls) else {}
        if part not in hints:
            return None
        cls = hint = hints[part]
    optional = typing.get_origin(hint) is typing.Union and type(None) in typing.get_args(hint)
    return (next(a for a in typing.get_args(hint) if a is not type(None)) if optional else hint), optional


def _dotlist(overrides: typing.Sequence[str]):
    """The command line as OmegaConf's dotlist, with what YAML parsing would get wrong settled first: a string
    setting takes its text as it is (train.mixed_precision=no stays "no"), a switch takes only true or false."""
    pairs = []
    for pair in overrides:
        if "=" not in pair:
            raise ConfigError(f"Cannot read the argument '{pair}': overrides are section.key=value, e.g. "
                              f"train.epochs=5 (python -m trainer --help lists every key).")
        dotted, raw = (part.strip() for part in pair.split("=", 1))
        kind = _kind(dotted)
        if kind and dataclasses.is_dataclass(kind[0]):
            raise ConfigError(f"'{dotted}' is a section of settings, not a setting; set one of its keys, e.g. "
                              f"{dotted}.{dataclasses.fields(kind[0])[0].name}=...")
        if kind and kind[0] is str and not (kind[1] and raw in ("", "null")):
            raw = json.dumps(raw)
        elif kind and kind[0] == typing.List[str] and not raw.startswith("["):  # a,b,c: a list of text
            raw = json.dumps([item.strip() for item in raw.split(",")])
        elif kind and kind[0] is bool and raw.lower() not in ("true", "false"):
            raise ConfigError(f"'{dotted}' must be true or false, got {raw!r}. Example: {dotted}=true.")
        try:
            yaml.safe_load(raw)
        except yaml.YAMLError as error:
            raise ConfigError(f"Cannot read the value of '{pair}' ({getattr(error, 'problem', None) or 'not YAML'}); "
                              f"write lists as [0.5, 0.5, 0.5] and quote text with YAML's special characters.") from None
        pairs.append(f"{dotted}={raw}")
    return OmegaConf.from_dotlist(pairs)


def _read_yaml(config_file: str):
    path = Path(config_file)
    if not path.is_file():
        raise ConfigError(f"Config file '{config_file}' does not exist. The shipped ones are in configs/.")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{config_file} is not valid YAML ({str(error).splitlines()[0]}).") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{config_file} must hold a mapping of sections and keys, e.g. 'train:\\n  epochs: 5'.")
    _check_yaml_strings(values, config_file)
    return OmegaConf.create(values)


def _check_yaml_strings(values: dict, config_file: str, prefix: str = "") -> None:
    """YAML reads an unquoted yes/no/on/off as true or false; in a string setting that is never what was meant."""
    for key, value in values.items():
        dotted, kind = f"{prefix}{key}", _kind(f"{prefix}{key}")
        if isinstance(value, dict):
            _check_yaml_strings(value, config_file, dotted + ".")
        elif kind and kind[0] is str and isinstance(value, bool):
            raise ConfigError(f"'{dotted}' must be a string, got {value!r}: YAML reads an unquoted yes/no/on/off as "
                              f"true or false, so quote it in {config_file} ({key}: 'no').")


_KIND_NAMES = {int: ("an integer", "8"), float: ("a number", "0.01"), bool: ("true or false", "true"),
               str: ("a string", "text")}


def _merge(base, update, where: str):
    try:
        return OmegaConf.merge(base, update)
    except ConfigKeyError as error:
        close = difflib.get_close_matches(error.full_key, [key for key, *_ in settings()], n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"Unknown setting '{error.full_key}'.{hint} Every setting and its default: python -m "
                          f"trainer --help; override one as section.key=value, e.g. train.epochs=5 (the setting was "
                          f"given {where}).") from None
    except OmegaConfBaseException as error:
        key = getattr(error, "full_key", "") or "a setting"
        kind = _kind(key) if key != "a setting" else None
        value = _plain(getattr(error, "value", None))
        if kind and kind[0] in _KIND_NAMES:
            name, example = _KIND_NAMES[kind[0]]
            wanted = f"must be {'null or ' if kind[1] else ''}{name}"
            example = f" Example: {key}={example}."
        elif kind and typing.get_origin(kind[0]) is list:
            wanted, example = "must be a list like [0.5, 0.5, 0.5]", ""
        else:
            wanted, example = f"cannot take this value ({str(error).splitlines()[0]})", ""
        raise ConfigError(f"'{key}' {wanted}, got {value!r} ({type(value).__name__}).{example} (The setting was "
                          f"given {where}.)") from None


def _plain(value):
    """A value as it was written, not as OmegaConf wraps it."""
    if OmegaConf.is_config(value):
        return OmegaConf.to_container(value)
    return value._value() if hasattr(value, "_value") else value


def for_device(train: TrainConfig, on_cpu: bool) -> TrainConfig:
    """Fills the settings whose null means "what suits this device" (see TrainConfig)."""
    if train.sync_batchnorm and on_cpu:
        raise ConfigError("train.sync_batchnorm=true needs GPUs: PyTorch's SyncBatchNorm runs only on CUDA. On the CPU "
                          "leave it off (each process then normalizes over its own images).")
    micro = train.micro_batch_size or (CPU_MICRO_BATCH_SIZE if on_cpu else None)
    compile = train.compile or "no"
    own_kernels = on_cpu and compile == "no"  # TorchInductor cannot trace into them; it fuses what they fuse itself
    return dataclasses.replace(train, micro_batch_size=micro, mixed_precision=device_precision(train, on_cpu),
                               compile=compile, fast_depthwise_grad=train.fast_depthwise_grad and own_kernels,
                               fast_pointwise_grad=train.fast_pointwise_grad and own_kernels,
                               fused_gelu_norm=train.fused_gelu_norm and own_kernels)


def device_precision(train: TrainConfig, on_cpu: bool) -> str:
    import torch

    launcher = os.environ.get("ACCELERATE_MIXED_PRECISION", "no")  # what `accelerate launch` was told
    if train.mixed_precision is not None or launcher != "no":
        precision = train.mixed_precision or launcher
    elif on_cpu:
        precision = "bf16" if torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported() else "no"
    else:
        precision = "bf16" if torch.cuda.get_device_capability() >= (8, 0) else "fp16"  # bf16 tensor cores: Ampere on
    if precision == "fp16" and on_cpu:
        raise ConfigError("Mixed precision fp16 needs a GPU (train.mixed_precision or accelerate launch "
                          "--mixed_precision); on the CPU use bf16, no, or null for what suits this CPU.")
    return precision
