"""Train ConvMixer on CIFAR-10: `accelerate launch trainer/main.py [--config FILE] [section.key=value ...]`.

`train` is one run, top to bottom: config -> data + model -> loop -> hooks -> outputs. Everything that can fail on
bad input (settings, data, the checkpoint to resume) fails before the run folder is written; the command line that
leads here is trainer/cli.py's (and trainer/__main__.py's for `python -m trainer`).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list

from trainer import checkpoint, tracking
from trainer import model as model_module
from trainer.augment import Augment
from trainer.batches import BatchSource
from trainer.checkpoint import TrainState
from trainer.cli import Launch, training_request
from trainer.config import Config, config_yaml, for_device, load_config, validate
from trainer.data import DataError, load_cifar
from trainer.ema import WeightAverage
from trainer.errors import exit_cleanly
from trainer.explanations import explain
from trainer.explain_outputs import write_explanation
from trainer.hardware import describe
from trainer.model import build_model, model_cost
from trainer.report import write_report
from trainer.run_folder import RunFolder
from trainer.progress import EpochProgress
from trainer.steps import (EpochCounts, StopRequest, describe_schedule_change, evaluate, lr_at, plain_model,
                           prepare_training, schedule_change, set_lr, train_step)
from trainer.wording import plural


def train(config: Config, launch: Launch) -> int:
    """Trains and explains one run; returns the process's exit code."""
    saved_config = config  # nulls kept in config.yaml: a resume on another device picks that device's values
    config = dataclasses.replace(config, train=for_device(config.train, launch.cpu))
    t = config.train
    # cpu=True also on a machine without a GPU: that is what makes Accelerate form a
    # multi-process CPU group (gloo) under `accelerate launch --multi_gpu` or torchrun.
    accelerator = Accelerator(cpu=launch.cpu, mixed_precision=t.mixed_precision,
                              log_with="wandb" if config.tracker == "wandb" else None)
    device = accelerator.device
    validate(config, accelerator.num_processes)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = t.cudnn_benchmark

    # Data, model and optimizer; a resumed run's checkpoint. Bad input fails here, before anything is written.
    # The first process of each machine decodes and caches; the others read the cache. Per machine, not once for the
    # job: a cache on a machine's own disk is not seen by the others, which would all decode at once.
    with accelerator.local_main_process_first():
        try:
            data, failure = load_cifar(config.data, config.model.num_classes, config.seed), None
        except DataError as error:  # raised after the barrier, so that every process stops with the same message
            data, failure = None, error
    if failure:
        raise failure
    batches = BatchSource(data.train.to(device), Augment(config.augment, device), config, accelerator.process_index,
                          accelerator.num_processes)
    test, val = data.test.to(device), data.val.to(device) if data.val else None
    folder = RunFolder(config.output_dir) if config.output_dir else None  # a new run's folder is made as it starts
    torch.manual_seed(config.seed)
    model = build_model(config.model)
    cost = model_cost(model)
    model, optimizer = prepare_training(accelerator, model, t)
    ema = WeightAverage(plain_model(accelerator, model), t.ema_decay) if t.ema_decay else None
    reported = ema.model if t.reports_average else model  # whose figures, best epoch and final weights the run keeps
    state = TrainState()
    if config.resume:
        state = checkpoint.load_checkpoint(folder.checkpoint, plain_model(accelerator, model), optimizer,
                                           accelerator.scaler, ema.model if ema else None)
        before = load_config(str(folder.config))  # the run's own settings: where its LR schedule stood
    if launch.check_only:
        checked = "settings, data and checkpoint" if config.resume else "settings and data"
        accelerator.print(f"The {checked} are fine; nothing was written.")
        return 0
    if config.resume and folder.status() == "finished" and state.epoch == t.epochs:
        accelerator.print(f"Nothing to train: {folder.path} has finished its {plural(t.epochs, 'epoch')} (test "
                          f"accuracy {state.last_test_acc:.4f}); nothing was changed. To train longer, resume with "
                          f"train.epochs={t.epochs + 5} (any number above {t.epochs}); to explain it again: "
                          f"python -m trainer.explain {folder.path}")
        return 0
    change = schedule_change(state, before.train, t, len(batches)) if config.resume else None

    with StopRequest(accelerator) as stop:  # from the first write to the run folder to the last
        # The first write to the run folder: everything above has been checked.
        folder = folder or RunFolder(agreed(accelerator, RunFolder.claim_new(config.name)
                                            if accelerator.is_main_process else None))
        if accelerator.is_main_process:
            folder.start(config_yaml(saved_config), cost.table, Path(model_module.__file__), {
                "hardware": describe(accelerator), "num_processes": accelerator.num_processes,
                "mixed_precision": accelerator.mixed_precision, "micro_batch_size": t.micro_batch_size,
                "compile": t.compile, "data": config.data.name, "test_format": data.test_format,
                "parameters": cost.parameters, "mult_adds_per_image": cost.mult_adds, "command": launch.command,
                "class_names": data.class_names,
                "schedule_changes": (folder.read_run_info().get("schedule_changes", []) if config.resume else [])
                                    + ([change] if change else [])})
            folder.keep_epochs(state.epoch, config.name)  # the epochs the checkpoint covers; none for a new run
        accelerator.wait_for_everyone()
        if config.resume:
            accelerator.print(f"Model: {cost.parameters:,} parameters, {cost.mult_adds / 1e6:.1f} M multiply-adds per "
                              f"image (the table is in {folder.model_summary}).")
        else:
            accelerator.print(cost.table)
        accelerator.print(f"Run folder: {folder.path}  |  {describe(accelerator)}  |  mixed precision: "
                          f"{accelerator.mixed_precision}  |  micro-batch: {t.micro_batch_size or 'whole batch'}")
        if config.resume:
            accelerator.print(f"Resuming {folder.path} at epoch {state.epoch}, step {state.step}." if state.epoch < t.epochs
                              else f"Resuming {folder.path}: its {plural(t.epochs, 'epoch')} are trained; running the "
                                   f"end-of-training hooks.")
        if change:
            accelerator.print(describe_schedule_change(change))
        if config.tracker == "wandb":
            tracking.start_tracker(accelerator, {**dataclasses.asdict(config), "parameters": cost.parameters,
                                                 "mult_adds_per_image": cost.mult_adds,
                                                 "num_processes": accelerator.num_processes}, folder,
                                   config.wandb_project)

        # The loop: epochs of optimizer steps on the one-cycle schedule, each followed by a full test pass. Stop
        # signals are handled until the last file of the run is written (checkpoint, report, the command that
        # continues).
        predictions = None  # the last evaluation, which the explain hook reuses
        for epoch in range(state.epoch, t.epochs):
            first_step = state.step if epoch == state.epoch else 0
            steps_done = first_step
            counts = EpochCounts.start(device, state.epoch_sums if accelerator.is_main_process else None)
            epoch_started = time.perf_counter()
            progress = EpochProgress(epoch, len(batches), first_step, t.batch_size, config.progress_every,
                                     accelerator.is_main_process)
            model.train()
            for step, images, labels in batches.epoch(epoch, first_step):
                set_lr(optimizer, lr_at(epoch + (step + 1) / len(batches), t.epochs, t.lr_max))
                step_counts = train_step(accelerator, model, optimizer, images, labels, t, stop,
                                         batches.global_batch(step))
                if step_counts is not None:  # None: abandoned for a stop request, the checkpoint comes sooner
                    counts.add(step_counts)
                    if ema:
                        ema.update(epoch * len(batches) + step)
                    steps_done = step + 1
                    progress.update(steps_done)
                if stop.requested() and steps_done < len(batches):
                    break
            progress.close()
            sums = counts.global_sums(accelerator)  # waits for the epoch's last step: the time below is real
            train_seconds = sums["seconds"] + time.perf_counter() - epoch_started  # with the part before a resume
            # Stopped mid-epoch, or (one process, which a launcher kills 5 s after relaying the stop) before the test
            # pass: the checkpoint records the steps taken, and a resume goes on from there.
            if steps_done < len(batches) or stop.abandons_step:
                state = dataclasses.replace(state, epoch=epoch, step=steps_done,
                                            epoch_sums={**sums, "seconds": train_seconds})
                save_progress(accelerator, model, optimizer, folder, state, config, ema)
                break
            # The test set, and the validation split, with the weights and with their average. The run's figures
            # (best epoch, final accuracy, the explain hook) are those of the weights train.ema_weights names.
            if ema:
                ema.agree(accelerator)
            scores = evaluate_epoch(accelerator, {"": model, "ema_": ema.model if ema else None},
                                    {"test": test, "val": val}, config, batches.augment.normalize)
            used = t.reported_prefix
            predictions = scores[used + "test"]
            row = {"epoch": epoch, "lr": lr_at(epoch + 1, t.epochs, t.lr_max),
                   "train_loss": sums["loss_sum"] / sums["seen"], "train_acc": sums["correct"] / sums["seen"],
                   **{f"{name}_{what}": value for name, p in scores.items()
                      for what, value in (("loss", p.loss), ("acc", p.accuracy))},
                   "seconds": sums["seconds"] + time.perf_counter() - epoch_started,  # the test passes included
                   "images_per_second": sums["seen"] / max(train_seconds, 1e-9)}
            score = scores[used + ("val" if val is not None else "test")].accuracy
            best = state.best_score is None or score > state.best_score
            if accelerator.is_main_process:
                if best:  # before the checkpoint that records it
                    checkpoint.save_weights(folder.best_weights, plain_model(accelerator, reported),
                                            vars(config.model))
                accelerator.print(folder.append_epoch(config.name, row))
            state = TrainState(epoch + 1, 0, max(state.best_test_acc, predictions.accuracy), predictions.accuracy,
                               epoch if best else state.best_epoch, score if best else state.best_score)
            save_progress(accelerator, model, optimizer, folder, state, config, ema)
            # After the checkpoint: a crash between the two must not leave W&B a step that the resumed run, redoing
            # the epoch, would log again (W&B drops a step that does not increase).
            accelerator.log(row, step=epoch)
            if stop.requested(now=True):
                break

        if state.epoch == t.epochs and not stop.requested(now=True):
            # The end-of-training hooks: final weights, the explanations of the mistakes, the summary, the report.
            stop.plan = ("finishing the end-of-training hooks (a resume runs them again if they are cut short), then "
                         "stopping")
            finish(accelerator, reported, folder, config, state, predictions, data, batches.augment.normalize)
            accelerator.end_training()
            return 0
        where = ("before the end-of-training hooks" if state.epoch == t.epochs
                 else f"the checkpoint is saved at epoch {state.epoch}, step {state.step}")
        accelerator.print(f"Stopped by {stop.signal.name}; {where}. Continue with: {launch.command} "
                          f"resume={folder.path}")
        if accelerator.is_main_process:
            write_report(folder)  # what exists so far; after the line above, which a launcher's SIGKILL must not cut
        accelerator.end_training()
        return stop.exit_code


def finish(accelerator, model, folder: RunFolder, config: Config, state: TrainState, predictions, data,
           normalize) -> None:
    """Saves the final weights, explains the mistakes of the last evaluation, writes summary.json and the report."""
    hooks_started = time.time()
    if accelerator.is_main_process:
        checkpoint.save_weights(folder.weights, plain_model(accelerator, model), vars(config.model))
    explanation = None
    if config.explain.enabled:
        if predictions is None:  # resumed after the last epoch, e.g. when the hook failed or was stopped before
            predictions = evaluate(accelerator, model, data.test.to(accelerator.device), config, normalize)
        if accelerator.is_main_process:
            explanation = explain(plain_model(accelerator, model), predictions, data.test.images, config)
            write_explanation(folder.explain, explanation, data.class_names, config.explain)
    if accelerator.is_main_process:
        folder.write_summary({
            **folder.read_run_info(), "final_test_acc": state.last_test_acc, "best_test_acc": state.best_test_acc,
            "epochs": config.train.epochs,
            # the epochs with their test passes (of every start of a resumed run) and these hooks
            "wall_seconds": round(sum(row["seconds"] for row in folder.metric_rows()) + time.time() - hooks_started,
                                  1),
            "best": {"epoch": state.best_epoch, "weights": folder.best_weights.name,
                     "selected_by": "validation accuracy" if data.val else "test accuracy", "score": state.best_score},
            "explain": explanation.summary(data.class_names) if explanation else {},
        })
        write_report(folder)
        tracking.log_results(accelerator, folder, explanation, data.class_names)
    average = " of the average of the weights" if config.train.reports_average else ""
    accelerator.print(f"Done: test accuracy {state.last_test_acc:.4f}{average} (best {state.best_test_acc:.4f}) after "
                      f"{plural(config.train.epochs, 'epoch')}. Run folder: {folder.path}"
                      + (f"; Grad-CAM gallery: {folder.gallery}" if explanation and folder.gallery.exists() else ""))


def agreed(accelerator, path: Path | None) -> Path:
    """The main process's `path`, on every process (the others give None)."""
    chosen = [str(path)]
    broadcast_object_list(chosen)
    return Path(chosen[0])


def evaluate_epoch(accelerator, models: dict, splits: dict, config: Config, normalize) -> dict:
    """Predictions of each model (by the prefix of its metrics: "" for the weights, "ema_" for their average; None:
    not kept) on each split (None: not held out), by "<prefix><split>"."""
    return {prefix + name: evaluate(accelerator, model, split, config, normalize)
            for prefix, model in models.items() if model is not None
            for name, split in splits.items() if split is not None}


def save_progress(accelerator, model, optimizer, folder: RunFolder, state: TrainState, config: Config,
                  ema=None) -> None:
    if accelerator.is_main_process:
        checkpoint.save_checkpoint(folder.checkpoint, plain_model(accelerator, model), optimizer, accelerator.scaler,
                                   state, vars(config.model), ema.model if ema else None)
    accelerator.wait_for_everyone()


if __name__ == "__main__":  # accelerate launch trainer/main.py: the command line is trainer/cli.py's
    exit_cleanly(lambda: train(*request) if (request := training_request()) else 0)
