"""The figures of the explain hook (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def overlay(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """An H x W x 3 image in [0, 1] under a jet-coloured heatmap in [0, 1]."""
    coloured = plt.get_cmap("jet")(heatmap)[..., :3]
    return (1 - alpha) * image + alpha * coloured


def gallery(path: Path, originals: np.ndarray, cam_pred: np.ndarray, cam_true: np.ndarray, captions: list) -> None:
    """One row per image: the original, Grad-CAM for the predicted class, Grad-CAM for the true class."""
    rows = len(originals)
    fig, axes = plt.subplots(rows, 3, figsize=(7.5, 2.6 * rows), squeeze=False)
    for r in range(rows):
        panels = (originals[r], overlay(originals[r], cam_pred[r]), overlay(originals[r], cam_true[r]))
        for c, (panel, title) in enumerate(zip(panels, ("image", "Grad-CAM: predicted", "Grad-CAM: true"))):
            axes[r, c].imshow(panel, interpolation="nearest")  # 32 px upscaled as blocks, not blurred
            axes[r, c].set_axis_off()
            if r == 0:
                axes[r, c].set_title(title, fontsize=10)
        axes[r, 0].text(0, -0.08, captions[r], transform=axes[r, 0].transAxes, fontsize=9, va="top")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


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
