"""The training command line (`python -m trainer`, `accelerate launch trainer/main.py`, `convmixer-train`): its
arguments, `--help` from the settings schema, and the checks of a new run or a resume before anything is loaded.
trainer/main.py runs what it asks for; bad input ends in one clear paragraph and exit status 2 (trainer/errors.py).

torch, datasets and Accelerate take seconds to import, so they are imported where they are needed: `--help` and a
mistyped setting answer at once.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import textwrap
from pathlib import Path

from trainer.config import Config, ModelConfig, load_config, settings, shown, value_at
from trainer.errors import CheckpointError, ConfigError
from trainer.run_folder import RunFolder


@dataclasses.dataclass
class Launch:
    """How this run was started: on the CPU or not, only to check the settings, and the command that resumes it."""

    cpu: bool = False
    check_only: bool = False
    command: str = "python -m trainer"


def training_request(argv=None) -> tuple | None:
    """(config, Launch) of the training command line, or None when it asked only for the model's cost (printed)."""
    args = train_parser().parse_intermixed_args(argv)  # options may come between the settings
    config = resolve_config(args)
    if args.summary:
        from trainer.model import build_model, model_cost

        print(model_cost(build_model(config.model)).table)
        return None
    import torch

    on_cpu = args.cpu or not torch.cuda.is_available()
    return config, Launch(cpu=on_cpu, check_only=args.check, command=restart_command(args.cpu))


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
        setting_text = f"  {key}={shown(default)}"
        wrapped = textwrap.wrap(meaning, width=118 - 44)
        first = wrapped.pop(0) if len(setting_text) < 43 else ""
        lines.append(f"{setting_text:<44}{first}".rstrip())
        lines += [" " * 44 + line for line in wrapped]
    return "\n".join(lines)


def resolve_config(args) -> Config:
    """The settings of this run: defaults <- --config <- overrides; for resume=, the run's own config.yaml first,
    checked against its checkpoint before anything is loaded or written."""
    config = load_config(args.config, args.overrides)
    if not config.resume:
        check_new_folder(config.output_dir)
        return config
    folder = RunFolder(config.resume)
    if folder.status() == "new":
        raise ConfigError(f"resume={config.resume}: no run folder with config.yaml and checkpoints/"
                          f"{folder.checkpoint.name} there; give the folder of an earlier run (its output_dir).")
    run = load_config(str(folder.config), [f"output_dir={folder.path}", f"resume={folder.path}"])
    # The run's own settings, then this command's (e.g. a longer train.epochs).
    config = load_config(args.config, [*args.overrides, f"output_dir={folder.path}", f"resume={folder.path}"],
                         run_file=str(folder.config))
    changed = model_changes(config.model, run.model)
    if changed:
        raise ConfigError(f"resume={folder.path}: {', '.join(changed)} in {folder.config}. A run's model cannot "
                          f"change when it resumes: drop those model.* settings to continue it, or start a new run.")
    from trainer.checkpoint import read_train_state

    state, trained = read_train_state(folder.checkpoint)
    changed = model_changes(config.model, ModelConfig(**(trained or {})))
    if changed:
        raise CheckpointError(f"resume={folder.path}: the checkpoint {folder.checkpoint} holds another model than "
                              f"{folder.config} describes ({', '.join(changed)} in the checkpoint); was config.yaml "
                              f"edited? Set model.* back to the checkpoint's values, or start a new run.")
    check_continuation(config, run, state, folder.read_run_info().get("num_processes", 1))
    refuse_changed_evaluations(run, config)
    return config


def check_new_folder(output_dir) -> None:
    """A new run never writes into a file, nor over a run that has made progress."""
    if output_dir is None:
        return
    folder = RunFolder(output_dir)
    if folder.path.exists() and not folder.path.is_dir():
        raise ConfigError(f"output_dir={output_dir} is a file; give a folder for the run (it is created).")
    if folder.checkpoint.exists() or folder.summary.exists():
        raise ConfigError(f"output_dir={output_dir} already holds a run; continue it with resume={output_dir}, or "
                          f"give another output_dir. Nothing was changed there.")


def check_continuation(config: Config, run: Config, state, ran_on: int) -> None:
    """A resume goes on from the checkpoint: the epochs done must fit train.epochs, and the rest of a half-done
    epoch must see the batches its first half was drawn from, split among as many processes (`ran_on`) as before."""
    problems = []
    processes = int(os.environ.get("WORLD_SIZE", 1))  # what accelerate launch and torchrun start
    if state.step > 0 and processes != ran_on:
        problems.append(f"this start runs {processes} process(es) where the run ran {ran_on} (its checkpoint is in "
                        f"the middle of an epoch, whose other steps are split among as many processes; a resume at an "
                        f"epoch's end may change the number)")
    if config.train.epochs < state.epoch + (state.step > 0):
        problems.append(f"train.epochs={config.train.epochs}, but the run has trained {state.epoch} epoch(s)"
                        f"{' and part of the next' if state.step else ''}")
    if state.step > 0:
        problems += [f"{key}={value_at(config, key)} where the run has {value_at(run, key)} (its checkpoint is in "
                     f"the middle of an epoch, whose other batches depend on it)"
                     for key in ("seed", "train.batch_size", "data.train_limit")
                     if value_at(config, key) != value_at(run, key)]
    if problems:
        raise ConfigError(f"resume={config.resume}: " + "; ".join(problems) + ". Drop those settings (or start as "
                          "many processes as before) to continue the run, or start a new one; nothing was changed in "
                          "it.")


def refuse_changed_evaluations(before: Config, now: Config) -> None:
    """A resume keeps the validation split, the weight average and how epochs are scored: changing them would move
    images between training and validation, drop the average mid-run, change the columns of metrics.csv, or compare
    the best epoch so far with another measure."""
    kept = ["data.val_size", "train.ema_decay", "train.ema_weights", "train.tta"]
    if before.data.val_size:  # the held-out rows are drawn with the seed from the (limited) training split
        kept += ["seed", "data.train_limit"]
    for key in kept:
        old, new = value_at(before, key), value_at(now, key)
        if old != new:
            raise ConfigError(f"resume={now.resume}: {key} was {shown(old)} in this run and is {shown(new)} now; a "
                              f"resume keeps it. Resume with {key}={shown(old)}, or start a new run for the new "
                              f"setting; nothing was changed in it.")


def model_changes(wanted, existing) -> list:
    """['model.dim=128 where the run has 64', ...] for the model settings that differ."""
    return [f"model.{key}={getattr(wanted, key)} where the run has {getattr(existing, key)}"
            for key in dataclasses.asdict(wanted) if getattr(wanted, key) != getattr(existing, key)]


def restart_command(cpu: bool) -> str:
    """How this process was started, as a command a user can run again."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if "ACCELERATE_MIXED_PRECISION" in os.environ or world > 1:  # `accelerate launch` sets these
        flags = f"--multi_gpu --num_processes {world} " if world > 1 else ""
        return f"accelerate launch {flags}trainer/main.py" + (" --cpu" if cpu else "")
    script = Path(sys.argv[0])
    command = ("python -m trainer" if script.name == "__main__.py" else
               f"python {sys.argv[0]}" if script.suffix == ".py" else script.name)
    return command + (" --cpu" if cpu else "")
