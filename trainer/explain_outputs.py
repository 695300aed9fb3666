"""An `Explanation` written to files, the explain/ folder of a run:

    gallery.png              each explained mistake: the image, the gallery method's map (explain.method) for the
                             predicted and for the true class
    methods.png              a few mistakes as rows, each compared method (at its best block) as a column
    misclassified_grid.png   a grid of misclassified originals, captioned true -> predicted
    misclassified.csv        every mistake: row index, true, predicted, confidence
    per_class_accuracy.csv   accuracy and image count per class
    confusion_matrix.png
    gradcam.npz              indices, labels, preds, probs, raw and displayed maps for the predicted and true class,
                             and the gallery's method and block
    summary.json             accuracy, mistakes, per-class accuracy, faithfulness and the methods' comparison
                             (Explanation.summary)
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np

from trainer import plots
from trainer.explanations import Explanation


def write_explanation(folder: Path, explanation: Explanation, names: list, explain_config) -> None:
    """Writes the files into a new folder, then swaps it for `folder`: earlier outputs are replaced whole, never
    mixed with these, also when the writing is interrupted."""
    staging = folder.with_name(folder.name + ".new")
    shutil.rmtree(staging, ignore_errors=True)
    write_files(staging, explanation, names, explain_config)
    previous = folder.with_name(folder.name + ".old")
    shutil.rmtree(previous, ignore_errors=True)
    if folder.exists():
        folder.rename(previous)
    staging.rename(folder)
    shutil.rmtree(previous, ignore_errors=True)


def write_files(folder: Path, explanation: Explanation, names: list, explain_config) -> None:
    folder.mkdir(parents=True)
    if explanation.mistakes == 0:
        print(f"explain: the model makes no mistakes on this test set; nothing to explain (accuracy and confusion "
              f"matrix are in {folder}).")
    elif explanation.mistakes < explain_config.num_images:
        print(f"explain: only {explanation.mistakes} misclassified test images, fewer than explain.num_images="
              f"{explain_config.num_images}; explaining all of them.")
    (folder / "summary.json").write_text(json.dumps(explanation.summary(names), indent=2) + "\n")
    write_misclassified_csv(folder / "misclassified.csv", explanation, names)
    write_per_class_csv(folder / "per_class_accuracy.csv", explanation, names)
    plots.confusion_matrix(folder / "confusion_matrix.png", explanation.confusion(len(names)).numpy(), names)
    p, chosen = explanation.predictions, explanation.chosen
    if explanation.cam_pred is not None:
        np.savez(folder / "gradcam.npz", indices=explanation.rows.numpy(), labels=p.labels[chosen].numpy(),
                 preds=p.preds[chosen].numpy(), probs=p.confidence[chosen].numpy(),
                 cam_pred_raw=explanation.cam_pred.raw, cam_true_raw=explanation.cam_true.raw,
                 cam_pred=explanation.cam_pred.shown, cam_true=explanation.cam_true.shown,
                 method=explanation.method, block=-1 if explanation.block is None else explanation.block)
        plots.gallery(folder / "gallery.png", display(explanation.originals), explanation.cam_pred.shown,
                      explanation.cam_true.shown, mistakes(explanation, names), explanation.method_name)
        write_methods_figure(folder / "methods.png", explanation, names)
    if len(explanation.grid):
        grid_captions = [f"{names[t]} -> {names[q]}" for t, q in
                         zip(p.labels[explanation.grid].tolist(), p.preds[explanation.grid].tolist())]
        plots.grid(folder / "misclassified_grid.png", display(explanation.grid_originals), grid_captions,
                   explain_config.grid_size)


def write_methods_figure(path: Path, explanation: Explanation, names: list, rows: int = 4) -> None:
    """The first `rows` mistakes; a column per method at its best block (the comparison is best first), then the
    Sobel baseline."""
    columns, seen = [], set()
    for score in explanation.comparison:
        if score.method not in seen and score.method != "random":
            seen.add(score.method)
            where = "" if score.block is None else f"block {score.block}, "
            columns.append((f"{score.method}\n{where}ROAD {score.road.mean():.2f}",
                            explanation.compared_maps[(score.method, score.block)][:rows]))
    p, chosen = explanation.predictions, explanation.chosen[:rows]
    captions = [f"{names[t]} \u2192 {names[q]}" for t, q in zip(p.labels[chosen].tolist(), p.preds[chosen].tolist())]
    plots.methods(path, display(explanation.originals[:rows]), columns, captions)


def display(images) -> np.ndarray:
    """uint8 N x 3 x H x W -> N x H x W x 3 in [0, 1]."""
    return images.permute(0, 2, 3, 1).numpy() / 255.0


def mistakes(explanation: Explanation, names: list) -> list:
    p, chosen = explanation.predictions, explanation.chosen
    return [plots.Mistake(r, names[t], names[q], c) for r, t, q, c in
            zip(explanation.rows.tolist(), p.labels[chosen].tolist(), p.preds[chosen].tolist(),
                p.confidence[chosen].tolist())]


def write_misclassified_csv(path: Path, explanation: Explanation, names: list) -> None:
    p = explanation.predictions
    wrong = (p.preds != p.labels).nonzero().squeeze(1)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["row_index", "true", "predicted", "confidence"])
        for i in wrong.tolist():
            writer.writerow([int(p.indices[i]), names[p.labels[i]], names[p.preds[i]], f"{p.confidence[i].item():.4f}"])


def write_per_class_csv(path: Path, explanation: Explanation, names: list) -> None:
    accuracy = explanation.per_class_accuracy(names)
    totals = explanation.confusion(len(names)).sum(1).tolist()
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["class", "accuracy", "images"])
        for name, total in zip(names, totals):
            writer.writerow([name, "" if accuracy[name] is None else f"{accuracy[name]:.4f}", total])
