"""A run's own report: `report.md` and `curves.png` in its folder, one page that renders on GitHub with relative
links, so the folder can be zipped or committed as it is. It holds what the assignment asks for (the model's code
and cost, the training log, Grad-CAM images of misclassified test images) and what a reviewer looks at next.

Written when training ends or is stopped by a signal, and for any run folder, old ones included, by

    python -m trainer.report runs/<run>            # report.md and curves.png
    python -m trainer.report runs/<run> --wandb    # also a W&B Report (pip install -e ".[report]"; online)

It reads only the run folder's files, and says what is missing (explanations turned off, an interrupted run)
rather than leaving it out.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

from trainer import plots
from trainer.checkpoint import CheckpointError, read_train_state
from trainer.config import Config, ConfigError, load_config, settings, shown, value_at
from trainer.errors import exit_cleanly
from trainer.steps import describe_schedule_change
from trainer.run_folder import RunFolder, atomic_write


def write_report(folder: RunFolder) -> Path:
    """Writes curves.png (when an epoch has finished) and report.md; returns the report's path."""
    rows = folder.metric_rows()
    if rows:
        plots.curves(folder.curves, rows)
    atomic_write(folder.report, "\n".join(report_lines(folder, rows)) + "\n")
    return folder.report


def report_lines(folder: RunFolder, rows: list) -> list:
    config = run_config(folder)
    info, summary = folder.read_run_info(), folder.read_summary()
    command = info.get("command", "python -m trainer")
    what = (trained(folder, config) if config else
            ["## What was trained", "", "The settings in [config.yaml](config.yaml) cannot be read by this version "
                                        "of the trainer (a run of an older version?): see the file itself."])
    config = config or Config()
    return [f"# {config.name} run `{folder.path.name}`", "", *status(folder, config, rows, summary, command), "",
            *what, "", *cost(folder, info, summary), "", *training_log(folder, rows, info), "",
            *results(folder, rows, info, summary, config), "", *explanations(folder, config, summary)]


def run_config(folder: RunFolder) -> Config | None:
    """The run's settings, or None where its config.yaml is missing or not of this version's schema."""
    try:
        return load_config(str(folder.config))
    except ConfigError:
        return None


def status(folder: RunFolder, config: Config, rows: list, summary: dict, command: str) -> list:
    epochs = config.train.epochs
    if summary:
        weights = " of the average of the weights (`train.ema_weights=ema`)" if config.train.reports_average else ""
        return [f"**Finished**: {epochs} epochs, final test accuracy{weights} **{summary['final_test_acc']:.2%}** "
                f"(its highest after any epoch: {summary['best_test_acc']:.2%})."] + best_epoch(summary.get("best"))
    try:
        state, _ = read_train_state(folder.checkpoint)
        where = f"at epoch {state.epoch}, step {state.step}"
    except CheckpointError:
        where = "before its first checkpoint"
    return [f"**Not finished**: training stopped {where} of {epochs} epochs, after {len(rows)} whole epoch(s); "
            f"what follows is what exists so far. Continue with `{command} resume={folder.path}`."]


def best_epoch(best: dict | None) -> list:
    """Which epoch best.safetensors holds, and whether it was chosen on the test set (an optimistic choice)."""
    if not best or best.get("epoch") is None:
        return []
    line = (f"Best epoch: {best['epoch']}, by {best['selected_by']} ({best['score']:.2%}); its weights are "
            f"[{best['weights']}]({best['weights']}).")
    if best["selected_by"] == "test accuracy":
        line += (" **Chosen on the test set**, so its test accuracy flatters it; hold out a validation split "
                 "(`data.val_size`) to choose fairly.")
    return ["", line]


def trained(folder: RunFolder, config: Config) -> list:
    m = config.model
    code = ("the model's code as it ran: [model.py](model.py)" if folder.model_source.exists()
            else "the model's code was not saved with this run (see trainer/model.py)")
    lines = ["## What was trained", "",
             f"ConvMixer-{m.dim}/{m.depth}, kernel {m.kernel_size}, patch {m.patch_size}, {m.num_classes} classes; "
             f"{code}. Every setting is in [config.yaml](config.yaml); those that differ from the reference recipe:", ""]
    return lines + changed_settings(config)


def changed_settings(config: Config, shown_keys=None) -> list:
    """The settings that differ from the reference recipe (of `shown_keys` only, when given), as a Markdown table:
    the report's, the model card's."""
    changed = [(key, value_at(config, key), default) for key, _, default, _ in settings()
               if value_at(config, key) != default and key not in ("output_dir", "resume")
               and (shown_keys is None or key in shown_keys)]
    if not changed:
        return ["none: this is the reference recipe."]
    return ["| setting | this run | default |", "| --- | --- | --- |",
            *[f"| `{key}` | {shown(value)} | {shown(default)} |" for key, value, default in changed]]


def cost(folder: RunFolder, info: dict, summary: dict) -> list:
    figures = info or summary
    lines = ["## Model cost", ""]
    if figures.get("parameters"):
        lines += [f"**{figures['parameters']:,} parameters, {figures['mult_adds_per_image'] / 1e6:.1f} M multiply-adds "
                  f"per 32 x 32 image** (torchinfo, [model_summary.txt](model_summary.txt)).", ""]
    if folder.model_summary.exists():
        return lines + ["```", folder.model_summary.read_text().rstrip(), "```"]
    return lines + ["The torchinfo table was not written for this run."]


def training_log(folder: RunFolder, rows: list, info: dict) -> list:
    lines = ["## Training log", ""]
    changes = info.get("schedule_changes") or []
    if changes:
        lines += ["The run was resumed with other schedule settings, so its LR jumps where they took effect:", "",
                  *[f"- {describe_schedule_change(change)}" for change in changes], ""]
    if not rows or not folder.train_log.exists():
        return lines + ["No epoch has finished yet."]
    return lines + ["```", folder.train_log.read_text().rstrip(), "```", "",
                    "![Accuracy, loss and learning rate per epoch](curves.png)", "",
                    "Every figure per epoch: [metrics.csv](metrics.csv)."]


def results(folder: RunFolder, rows: list, info: dict, summary: dict, config: Config) -> list:
    lines = ["## Results", ""]
    if rows:
        average = config.train.reports_average  # the figures of the run are its weight average's
        column = config.train.reported_prefix + "test_acc"
        final, best = rows[-1][column], max(row[column] for row in rows)
        speeds = sorted(row["images_per_second"] for row in rows)
        seconds = summary.get("wall_seconds") or sum(row["seconds"] for row in rows)
        lines += [f"Test accuracy{' of the average of the weights' if average else ''} after the last epoch: "
                  f"**{final:.2%}** (its highest after any epoch: {best:.2%}). Training speed: "
                  f"{speeds[len(speeds) // 2]:,.0f} images per second (median over epochs; augmentation included). "
                  f"Wall time: {seconds:,.0f} s{' in all' if summary else ' of epochs so far'}."]
    hardware = summary.get("hardware") or info.get("hardware")
    if hardware:
        precision = summary.get("mixed_precision") or info.get("mixed_precision")
        lines += ["", f"Hardware: {hardware}; mixed precision {precision}; data: {info.get('data') or summary.get('data')}."]
    if folder.per_class_accuracy.exists():
        with open(folder.per_class_accuracy) as f:
            table = list(csv.DictReader(f))
        lines += ["", "| class | test accuracy | images |", "| --- | --- | --- |",
                  *[f"| {row['class']} | {float(row['accuracy']):.2%} | {row['images']} |" if row["accuracy"]
                    else f"| {row['class']} | - | {row['images']} |" for row in table],
                  "", "[per_class_accuracy.csv](explain/per_class_accuracy.csv)"]
    return lines


def explanations(folder: RunFolder, config: Config, summary: dict) -> list:
    lines = ["## Mistakes, explained with Grad-CAM", ""]
    if not config.explain.enabled:
        return lines + ["Not computed: this run had `explain.enabled=false`. Run `python -m trainer.explain "
                        f"{folder.path}` to explain its mistakes."]
    explained = summary.get("explain") or read_json(folder.explain_summary)
    if not explained:
        return lines + ["Not computed yet: the explanations are made when training ends."]
    faithful = explained.get("faithfulness") or {}
    method = faithful.get("method", "gradcam")  # runs before the comparison used Grad-CAM at the last block
    where = {None: "", "last": " at the last mixer block"}.get(faithful.get("block", "last"),
                                                              f" at mixer block {faithful.get('block')}")
    lines += [f"{explained['explained']} of the {explained['misclassified']:,} misclassified test images, chosen "
              f"`{explained['selection']}`: each image, then the `{method}` map{where} for the predicted and for the "
              f"true class.", ""]
    if folder.gallery.exists():
        lines += ["![CAM maps of the misclassified test images](explain/gallery.png)", ""]
    if explained.get("methods"):
        lines += methods_table(explained["methods"], faithful)
        if (folder.explain / "methods.png").exists():
            lines += ["![Each method's map for a few of the mistakes](explain/methods.png)", ""]
    elif faithful:  # a summary written before the comparison
        lines += [f"Faithfulness (grad-cam's ROAD combined score over {faithful['images']} images, percentiles "
                  f"{faithful['road_percentiles']}; higher means that removing what the map marks hurts the prediction "
                  f"more than removing the rest): **{faithful['road_combined_gradcam']:.3f}** for these Grad-CAM maps, "
                  f"against {faithful['road_combined_random']:.3f} for random maps.", ""]
    if folder.confusion_matrix.exists():
        lines += ["![Confusion matrix](explain/confusion_matrix.png)", ""]
    files = [(name, f"explain/{name}") for name in ("misclassified_grid.png", "misclassified.csv", "gradcam.npz")
             if (folder.explain / name).exists()]
    return lines + (["More: " + ", ".join(f"[{name}]({link})" for name, link in files) + "."] if files else [])


def methods_table(rows: list, faithful: dict) -> list:
    """The comparison of CAM methods, best first, as summary.json holds it."""
    lines = ["### Which maps to trust: the CAM methods compared", "",
             f"ROAD combined (grad-cam's `ROADCombined`, percentiles {faithful['road_percentiles']}) of each method's "
             f"maps for the predicted class of the {faithful['images']} explained mistakes: higher means that removing "
             f"the pixels the map marks lowers the class's logit more than removing the others. Two baselines: random "
             f"maps and a Sobel edge map of the image. Mean and standard deviation over the images; seconds to compute "
             f"the maps.", "", "| method | block | ROAD combined | seconds |", "| --- | --- | --- | --- |"]
    for row in rows:
        name = f"{row['method']} (baseline)" if row["baseline"] else row["method"]
        if (row["method"], row["block"]) == (faithful.get("method"), faithful.get("block")):
            name += " (gallery)"
        block = "-" if row["block"] is None else row["block"]
        lines.append(f"| {name} | {block} | {row['road_mean']:.3f} \u00b1 {row['road_std']:.3f} | {row['seconds']:.2f} |")
    return lines + [""]


def read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.report", description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a run folder")
    parser.add_argument("--wandb", action="store_true", help="also build a W&B Report (saved when W&B is online)")
    parser.add_argument("--entity", help="the W&B entity (default: your W&B default entity)")
    args = parser.parse_args(argv)
    folder = RunFolder(args.run)
    if not folder.config.is_file():
        raise ConfigError(f"{args.run} is no run folder (it has no config.yaml); give the folder of a run.")
    print(f"Report written to {write_report(folder)}")
    if args.wandb:
        from trainer.wandb_report import publish

        config = run_config(folder)
        if config is None:
            raise ConfigError(f"{folder.config} cannot be read by this version of the trainer; no W&B Report.")
        publish(folder, config, args.entity, trained(folder, config))
    return 0


if __name__ == "__main__":
    exit_cleanly(main)
