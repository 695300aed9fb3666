"""The command lines: training (`python -m trainer`, `accelerate launch trainer/main.py`, `convmixer-train`) and
explaining a trained run (`python -m trainer.explain`). Bad input ends in one clear paragraph and exit status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import textwrap
from pathlib import Path

import torch

from trainer.checkpoint import CheckpointError
from trainer.config import Config, ConfigError, load_config, settings
from trainer.data import DataError
from trainer.run_folder import RunFolder, atomic_write


def train_command(argv=None) -> None:
    exit_cleanly(lambda: train_main(argv))


def train_main(argv=None) -> int:
    from trainer.main import Launch, train

    args = train_parser().parse_args(argv)
    config = resolve_config(args)
    if args.summary:
        from trainer.model import build_model, model_cost

        print(model_cost(build_model(config.model)).table)
        return 0
    on_cpu = args.cpu or not torch.cuda.is_available()
    return train(config, Launch(cpu=on_cpu, check_only=args.check, command=restart_command(args.cpu)))


def train_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"{restart_command(False)}", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train ConvMixer on CIFAR-10; the defaults are the reference recipe.",
        epilog="settings, as section.key=value (e.g. train.epochs=5 data.name=../shared/datasets/cifar10):\n"
               + settings_help())
    parser.add_argument("--config", help="a YAML file of settings to change, e.g. configs/tuned.yaml")
    parser.add_argument("--cpu", action="store_true", help="train on the CPU even if a GPU is present")
    parser.add_argument("--summary", action="store_true", help="print the model's cost table and exit")
    parser.add_argument("--check", action="store_true",
                        help="check the settings, the data and (for resume=) the checkpoint, then exit; writes nothing")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value")
    return parser


def settings_help() -> str:
    lines = []
    for key, _, default, meaning in settings():
        shown = "null" if default is None else str(default).lower() if isinstance(default, bool) else str(default)
        setting_text = f"  {key}={shown}"
        wrapped = textwrap.wrap(meaning, width=118 - 44)
        first = wrapped.pop(0) if len(setting_text) < 43 else ""
        lines.append(f"{setting_text:<44}{first}".rstrip())
        lines += [" " * 44 + line for line in wrapped]
    return "\n".join(lines)


def resolve_config(args) -> Config:
    """The settings of this run: defaults <- --config <- overrides; for resume=, the run's own config.yaml first."""
    config = load_config(args.config, args.overrides)
    if not config.resume:
        return config
    folder = RunFolder(config.resume)
    if folder.status() == "new":
        raise ConfigError(f"resume={config.resume}: no run folder with config.yaml and {folder.checkpoint.name} "
                          f"there; give the folder of an earlier run (its output_dir).")
    # The run's own settings, then this command's (e.g. a longer train.epochs).
    return load_config(str(folder.config), [*args.overrides, f"output_dir={folder.path}", f"resume={folder.path}"])


def restart_command(cpu: bool) -> str:
    """How this process was started, as a command a user can run again."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if "ACCELERATE_MIXED_PRECISION" in os.environ or world > 1:  # `accelerate launch` sets these
        flags = f"--multi_gpu --num_processes {world} " if world > 1 else ""
        return f"accelerate launch {flags}trainer/main.py"
    script = Path(sys.argv[0])
    command = ("python -m trainer" if script.name == "__main__.py" else
               f"python {sys.argv[0]}" if script.suffix == ".py" else script.name)
    return command + (" --cpu" if cpu else "")


def explain_command(argv=None) -> None:
    exit_cleanly(lambda: explain_main(argv))


def explain_main(argv=None) -> int:
    """Explains a finished run or a checkpoint again, e.g. with other explain.* settings."""
    from accelerate import Accelerator

    from trainer import tracking
    from trainer.augment import Normalize
    from trainer.checkpoint import read_weights
    from trainer.config import validate
    from trainer.data import load_cifar
    from trainer.explain import explain
    from trainer.explain_outputs import write_explanation
    from trainer.model import build_model
    from trainer.steps import plain_model, predict

    parser = argparse.ArgumentParser(prog="python -m trainer.explain",
                                     description="Grad-CAM explanations of a trained run's test-set mistakes.")
    parser.add_argument("target", type=Path, help="a run folder, or a .safetensors checkpoint inside one")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value", help="e.g. explain.num_images=20")
    args = parser.parse_args(argv)
    folder, weights = explain_target(args.target)
    config = load_config(str(folder.config) if folder.config.is_file() else None, args.overrides)
    state, model_config = read_weights(weights)
    model = build_model(config.model)
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise ConfigError(f"{weights} does not fit the model in {folder.config} ({model_config or 'unknown'} vs "
                          f"{dataclasses.asdict(config.model)}): {str(error).splitlines()[0]} Give matching model.* "
                          f"settings.") from None
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    validate(config, accelerator.num_processes)
    with accelerator.main_process_first():
        data = load_cifar(config.data)
    a = config.augment
    predictions = predict(accelerator, accelerator.prepare(model), data.test, config.train.batch_size,
                          Normalize(a.mean, a.std, accelerator.device), False)
    if accelerator.is_main_process:
        explanation = explain(plain_model(accelerator, model, autocast=False), predictions, data.test.images, config)
        write_explanation(folder.explain, explanation, data.class_names, config.explain)
        tracking.log_explanation(accelerator, explanation, data.class_names, folder.explain)
        atomic_write(folder.explain / "summary.json", json.dumps(explanation.summary(data.class_names), indent=2) + "\n")
        print(f"Explanations written to {folder.explain}")
    return 0


def explain_target(target: Path) -> tuple:
    """(RunFolder, weights file) for a run folder or a checkpoint/weights file inside one."""
    if target.is_dir():
        folder = RunFolder(target)
        for candidate in (folder.weights, folder.checkpoint):
            if candidate.is_file():
                return folder, candidate
        raise ConfigError(f"{target} has no weights ({folder.weights.name} or checkpoints/{folder.checkpoint.name}); "
                          f"train first, or give the path of a weights file.")
    if not target.is_file():
        raise ConfigError(f"{target} does not exist; give a run folder or a .safetensors file in one.")
    return RunFolder(target.parent.parent if target.parent.name == "checkpoints" else target.parent), target


def exit_cleanly(entry) -> None:
    """Runs `entry()`: clear one-paragraph errors for bad input, and a clean exit from multi-process runs."""
    try:
        code = entry()
    except (ConfigError, DataError, CheckpointError) as error:
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
