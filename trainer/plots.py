"""The figures of a run: the Grad-CAM gallery, the grid of mistakes, the confusion matrix and the training curves
(matplotlib, no display needed)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def overlay(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """An H x W x 3 image in [0, 1] under a jet-coloured heatmap in [0, 1]."""
    coloured = plt.get_cmap("jet")(heatmap)[..., :3]
    return (1 - alpha) * image + alpha * coloured


ZOOM = 8  # 32 x 32 pixels are too small to see: shown as 8 x 8 blocks


def enlarge(image: np.ndarray, zoom: int = ZOOM) -> np.ndarray:
    """H x W x 3 (or 3 x H x W) -> zoom H x zoom W x 3, each pixel a block."""
    image = image.transpose(1, 2, 0) if image.shape[0] == 3 else image
    return image.repeat(zoom, axis=0).repeat(zoom, axis=1)


@dataclass
class Mistake:
    row: int  # in the test split
    true: str
    predicted: str
    confidence: float


def gallery(path: Path, originals: np.ndarray, cam_pred: np.ndarray, cam_true: np.ndarray, mistakes: list,
            method: str) -> None:
    """One block per mistake, its caption above it where the eye lands: the image, then the CAM `method`'s map (e.g.
    "gradcam at block 7") for the predicted and for the true class. Up to 5 mistakes in one column of blocks, more in
    two, so that 10 fit one page."""
    columns = 1 if len(mistakes) <= 5 else 2
    rows = -(-len(mistakes) // columns)
    fig = plt.figure(figsize=(7.4 * columns, 2.95 * rows + 0.7), layout="constrained")
    fig.suptitle(f"{method}\nred: what raised the score of the class named above each map", fontsize=11)
    blocks = list(np.atleast_1d(fig.subfigures(rows, columns, wspace=0.05, hspace=0.02)).flat)
    for block, mistake, image, pred_map, true_map in zip(blocks, mistakes, originals, cam_pred, cam_true):
        block.suptitle(f"true: {mistake.true}  \u2192  predicted: {mistake.predicted} ({mistake.confidence:.1%})",
                       fontsize=13, fontweight="bold")
        panels = (image, overlay(image, pred_map), overlay(image, true_map))
        titles = (f"test image #{mistake.row}", f"map for \u201c{mistake.predicted}\u201d (predicted)",
                  f"map for \u201c{mistake.true}\u201d (true)")
        for ax, panel, title in zip(block.subplots(1, 3), panels, titles):
            ax.imshow(panel, interpolation="nearest")  # 32 px upscaled as blocks, not blurred
            ax.set_title(title, fontsize=10)
            ax.set_axis_off()
    for block in blocks[len(mistakes):]:  # the empty place when an odd number is split in two columns
        block.set_visible(False)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def methods(path: Path, originals: np.ndarray, columns: list, captions: list) -> None:
    """Rows of mistakes (image, then one map per column), columns of CAM methods: `columns` is [(title, maps)], maps
    N x H x W in [0, 1], drawn on one colour scale."""
    fig, axes = plt.subplots(len(originals), len(columns) + 1, squeeze=False, layout="constrained",
                             figsize=(1.45 * (len(columns) + 1) + 0.8, 1.6 * len(originals) + 0.9))
    fig.suptitle("Each method's map for the predicted class (red: most relevant; each map scaled to [0, 1]), best "
                 "ROAD score first", fontsize=10)
    for row, (image, caption) in enumerate(zip(originals, captions)):
        axes[row, 0].imshow(image, interpolation="nearest")
        axes[row, 0].set_title(caption, fontsize=8)
        for column, (title, maps) in enumerate(columns, start=1):
            shown = axes[row, column].imshow(maps[row], cmap="jet", vmin=0, vmax=1, interpolation="nearest")
            if row == 0:
                axes[row, column].set_title(title, fontsize=8)
    for ax in axes.flat:
        ax.set_axis_off()
    fig.colorbar(shown, ax=axes, shrink=0.6, label="relevance")
    fig.savefig(path, dpi=100)
    plt.close(fig)


def curves(path: Path, rows: list) -> dict:
    """Accuracy, loss and learning rate per epoch from metrics.csv rows (with the validation split's and the weight
    average's where the run has them); returns the series it drew."""
    sets = ["train"] + [f"{weights}{split}" for weights in ("", "ema_") for split in ("test", "val")
                        if f"{weights}{split}_acc" in rows[0]]
    accuracies, losses = [f"{name}_acc" for name in sets], [f"{name}_loss" for name in sets]
    series = {key: [row[key] for row in rows] for key in ("epoch", *accuracies, *losses, "lr")}
    fig, (accuracy, loss, lr) = plt.subplots(1, 3, figsize=(14, 4), layout="constrained")
    for ax, keys, label in ((accuracy, accuracies, "accuracy"), (loss, losses, "cross-entropy loss"),
                            (lr, ("lr",), "learning rate")):
        for key in keys:
            ax.plot(series["epoch"], series[key], marker="o", markersize=3, label=key.replace("_", " "))
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    accuracy.set_ylim(0, 1)
    lr.set_title("at the end of each epoch", fontsize=9)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return series


def grid(path: Path, images: np.ndarray, captions: list, size: int) -> None:
    """Up to size x size uint8 images (N x H x W x 3), captioned 'true -> predicted'."""
    fig, axes = plt.subplots(size, size, figsize=(2 * size, 2.2 * size), squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if k < len(images):
            ax.imshow(images[k], interpolation="nearest")
            ax.set_title(captions[k], fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def confusion_matrix(path: Path, confusion: np.ndarray, names: list) -> None:
    fig, ax = plt.subplots(figsize=(7, 6))
    image = ax.imshow(confusion, cmap="Blues")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for (i, j), count in np.ndenumerate(confusion):
        ax.text(j, i, str(count), ha="center", va="center", fontsize=7,
                color="white" if count > confusion.max() / 2 else "black")
    fig.colorbar(image)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
