"""Explains the model's mistakes on the test set with Grad-CAM: which mistakes, where the model looked, and whether
those maps mean something (ROAD faithfulness against random maps). Pure analysis, returning one `Explanation`;
`trainer/explain_outputs.py` writes it to files and `trainer/tracking.py` to W&B.

It runs at the end of training on the last evaluation's predictions, or on its own for a finished run folder or
checkpoint (the command line is in trainer/cli.py):

    python -m trainer.explain runs/<run>                      # or: accelerate launch -m trainer.explain ...
    python -m trainer.explain runs/<run>/checkpoints/last.safetensors explain.num_images=20
"""

from __future__ import annotations

if __name__ == "__main__":  # python -m trainer.explain: the command line (trainer/cli.py) answers --help and bad
    # settings before torch and grad-cam are imported, which takes seconds; it imports this module to explain.
    from trainer.cli import explain_command

    explain_command()  # exits

from dataclasses import dataclass

import numpy as np
import torch
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from trainer.augment import Normalize
from trainer.steps import Predictions

ROAD_PERCENTILES = [20, 40, 60, 80]


class RawGradCAM(GradCAM):
    """grad-cam's GradCAM, also keeping the raw map: the channel-weighted sum, before ReLU and scaling."""

    def get_cam_image(self, *args, **kwargs):
        raw = super().get_cam_image(*args, **kwargs)
        self.raw_maps = raw
        return raw


@dataclass
class CamMaps:
    raw: np.ndarray  # N x h x w at the target layer's resolution
    shown: np.ndarray  # N x H x W in [0, 1]: ReLU, min-max scaled, upsampled to the image


@dataclass
class Explanation:
    """The explained mistakes of one model on one test set."""

    predictions: Predictions  # every test image, in test order
    chosen: torch.Tensor  # positions (into predictions) of the explained mistakes, in the selection's order
    originals: torch.Tensor  # their images, uint8 N x 3 x H x W
    cam_pred: CamMaps | None  # Grad-CAM for the predicted class (None when there is no mistake)
    cam_true: CamMaps | None  # Grad-CAM for the true class
    faithfulness: dict
    grid: torch.Tensor  # positions of the mistakes shown in the grid of originals
    grid_originals: torch.Tensor
    selection: str

    @property
    def mistakes(self) -> int:
        return int((self.predictions.preds != self.predictions.labels).sum())

    @property
    def rows(self) -> torch.Tensor:
        """Row indices, in the test split, of the explained mistakes."""
        return self.predictions.indices[self.chosen]

    def confusion(self, num_classes: int) -> torch.Tensor:
        """confusion[true, predicted] counts."""
        p = self.predictions
        counts = torch.zeros(num_classes, num_classes, dtype=torch.long)
        return counts.index_put_((p.labels, p.preds), torch.ones_like(p.labels), accumulate=True)

    def per_class_accuracy(self, names: list) -> dict:
        confusion = self.confusion(len(names))
        totals = confusion.sum(1)
        return {names[c]: (confusion[c, c] / totals[c]).item() if totals[c] else None for c in range(len(names))}

    def summary(self, names: list) -> dict:
        return {"test_accuracy": self.predictions.accuracy, "misclassified": self.mistakes,
                "explained": len(self.chosen), "selection": self.selection,
                "per_class_accuracy": self.per_class_accuracy(names), "faithfulness": self.faithfulness}


def explain(model, predictions: Predictions, test_images: torch.Tensor, config) -> Explanation:
    """Picks the mistakes to explain and computes their Grad-CAM maps and faithfulness, in fp32 on the model's device.
    `test_images`: the test split's uint8 images; `model`: unwrapped, without mixed-precision autocast."""
    e, a = config.explain, config.augment
    chosen = select_mistakes(predictions, e.num_images, e.select, config.seed)
    grid = select_mistakes(predictions, e.grid_size ** 2, e.select, config.seed)
    originals = test_images[predictions.indices[chosen]].cpu()
    cam_pred = cam_true = None
    faithful = {}
    if len(chosen):
        images = Normalize(a.mean, a.std)(originals)
        cam_pred = grad_cam(model, images, predictions.preds[chosen])
        cam_true = grad_cam(model, images, predictions.labels[chosen])
        faithful = faithfulness(model, images, predictions.preds[chosen], cam_pred.shown, config.seed)
    return Explanation(predictions, chosen, originals, cam_pred, cam_true, faithful, grid,
                       test_images[predictions.indices[grid]].cpu(), e.select)


def grad_cam(model, images: torch.Tensor, classes: torch.Tensor) -> CamMaps:
    """Grad-CAM at the last mixer block for one class per image, in fp32 and eval mode."""
    model = model.float().eval()
    # The last block feeds global average pooling and the linear head, so the raw map
    # summed over positions is logit(class) - bias(class).
    with RawGradCAM(model=model, target_layers=[model.blocks[-1]]) as cam:  # hooks removed on exit
        shown = cam(input_tensor=on_model_device(model, images),
                    targets=[ClassifierOutputTarget(int(c)) for c in classes])
        return CamMaps(raw=cam.raw_maps.astype(np.float32), shown=shown.astype(np.float32))


def on_model_device(model, images: torch.Tensor) -> torch.Tensor:
    return images.float().to(next(model.parameters()).device)


def select_mistakes(predictions: Predictions, count: int, rule: str, seed: int) -> torch.Tensor:
    """Positions (into predictions) of `count` misclassified images.

    most_confident: highest confidence in the wrong class first; first: in test-set order;
    random: a uniform sample drawn with the run's seed. Ties break by test-set order.
    """
    wrong = (predictions.preds != predictions.labels).nonzero().squeeze(1)
    if rule == "most_confident":
        order = torch.sort(-predictions.confidence[wrong], stable=True).indices
        wrong = wrong[order]
    elif rule == "random":
        wrong = wrong[torch.randperm(len(wrong), generator=torch.Generator().manual_seed(seed))]
    return wrong[:count]


def faithfulness(model, images: torch.Tensor, classes: torch.Tensor, maps: np.ndarray, seed: int) -> dict:
    """grad-cam's ROAD combined score of the maps (higher: removing what the map marks hurts the
    prediction more than removing what it does not), next to the same score for random maps."""
    from pytorch_grad_cam.metrics.road import ROADCombined

    if len(images) == 0:
        return {}
    targets = [ClassifierOutputTarget(int(c)) for c in classes]
    metric = ROADCombined(percentiles=ROAD_PERCENTILES)
    rng = np.random.default_rng(seed)
    model = model.float().eval()
    images = on_model_device(model, images)  # grad-cam's ROAD calls the model on the images as given
    with torch.no_grad():
        cam_score = metric(images, maps, targets, model)
        random_score = metric(images, rng.random(maps.shape).astype(np.float32), targets, model)
    return {"road_combined_gradcam": float(np.mean(cam_score)), "road_combined_random": float(np.mean(random_score)),
            "road_percentiles": ROAD_PERCENTILES, "images": len(images)}

