"""Explains the model's mistakes on the test set with grad-cam's CAM methods: which mistakes, where the model looked
(the gallery, with explain.method), and which methods and blocks give faithful maps for this model (ROAD on the
explained mistakes, against random and Sobel edge maps). Pure analysis, returning one `Explanation`;
`trainer/explain_outputs.py` writes it to files and `trainer/tracking.py` to W&B.

It runs at the end of training on the last evaluation's predictions (trainer/main.py), or on its own for a finished
run folder or checkpoint: `python -m trainer.explain` (trainer/explain.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from trainer.augment import Normalize
from trainer.cam_methods import (NO_BLOCK, ROAD_PERCENTILES, CamMaps, MethodScore, cam_maps, random_maps, road,
                                 sobel_maps)
from trainer.model import build_model
from trainer.steps import Predictions


@dataclass
class Explanation:
    """The explained mistakes of one model on one test set."""

    predictions: Predictions  # every test image, in test order
    chosen: torch.Tensor  # positions (into predictions) of the explained mistakes, in the selection's order
    originals: torch.Tensor  # their images, uint8 N x 3 x H x W
    grid: torch.Tensor  # positions of the mistakes shown in the grid of originals
    grid_originals: torch.Tensor
    selection: str
    method: str = ""  # the gallery's method and block (None: FullGrad's all layers); empty when there is no mistake
    block: int | None = None
    cam_pred: CamMaps | None = None  # its maps for the predicted class (None when there is no mistake)
    cam_true: CamMaps | None = None  # and for the true class
    comparison: list = field(default_factory=list)  # MethodScore rows, best ROAD first, the baselines among them
    compared_maps: dict = field(default_factory=dict)  # (method, block) -> shown maps for the predicted class

    @property
    def mistakes(self) -> int:
        return int((self.predictions.preds != self.predictions.labels).sum())

    @property
    def rows(self) -> torch.Tensor:
        """Row indices, in the test split, of the explained mistakes."""
        return self.predictions.indices[self.chosen]

    @property
    def method_name(self) -> str:
        return self.method if self.block is None else f"{self.method} at block {self.block}"

    def confusion(self, num_classes: int) -> torch.Tensor:
        """confusion[true, predicted] counts."""
        p = self.predictions
        counts = torch.zeros(num_classes, num_classes, dtype=torch.long)
        return counts.index_put_((p.labels, p.preds), torch.ones_like(p.labels), accumulate=True)

    def per_class_accuracy(self, names: list) -> dict:
        confusion = self.confusion(len(names))
        totals = confusion.sum(1)
        return {names[c]: (confusion[c, c] / totals[c]).item() if totals[c] else None for c in range(len(names))}

    def score(self, method: str, block: int | None = None) -> float:
        return next(float(row.road.mean()) for row in self.comparison if (row.method, row.block) == (method, block))

    def faithfulness(self) -> dict:
        """ROAD of the gallery's maps next to the two baselines."""
        if not self.comparison:
            return {}
        return {"method": self.method, "block": self.block, "road_combined": self.score(self.method, self.block),
                "road_combined_random": self.score("random"), "road_combined_sobel": self.score("sobel"),
                "road_percentiles": ROAD_PERCENTILES, "images": len(self.chosen)}

    def summary(self, names: list) -> dict:
        return {"test_accuracy": self.predictions.accuracy, "misclassified": self.mistakes,
                "explained": len(self.chosen), "selection": self.selection,
                "per_class_accuracy": self.per_class_accuracy(names), "faithfulness": self.faithfulness(),
                "methods": [row.row() for row in self.comparison]}


def explain(model, predictions: Predictions, test_images: torch.Tensor, config) -> Explanation:
    """Picks the mistakes to explain, compares the CAM methods on them by ROAD, and computes the gallery's maps for
    the predicted and the true class, in fp32 on the model's device. `test_images`: the test split's uint8 images;
    `model`: unwrapped, without mixed-precision autocast."""
    e, a = config.explain, config.augment
    chosen = select_mistakes(predictions, e.num_images, e.select, config.seed)
    grid = select_mistakes(predictions, e.grid_size ** 2, e.select, config.seed)
    explanation = Explanation(predictions, chosen, test_images[predictions.indices[chosen]].cpu(), grid,
                              test_images[predictions.indices[grid]].cpu(), e.select)
    if not len(chosen):
        return explanation
    model = plain_copy(model, config.model)
    images = Normalize(a.mean, a.std)(explanation.originals)
    preds, labels = predictions.preds[chosen], predictions.labels[chosen]
    comparison, maps = compare_methods(model, images, explanation.originals, preds, config)
    method, block = gallery_method(e.method, comparison, config.model.depth)
    explanation.method, explanation.block, explanation.comparison = method, block, comparison
    explanation.compared_maps = {key: cam.shown for key, cam in maps.items()}
    explanation.cam_pred = maps[(method, block)]
    explanation.cam_true = cam_maps(model, images, labels, method, -1 if block is None else block)
    return explanation


def plain_copy(model, model_config):
    """The model's weights in a plain ConvMixer: the trainer's CPU kernels swap module classes, which grad-cam's
    FullGrad would not recognize."""
    plain = build_model(model_config).to(next(model.parameters()).device)
    plain.load_state_dict(model.state_dict())
    return plain.float().eval()


def candidates(explain_config, depth: int) -> list:
    """(method, block) pairs to compare: explain.methods x explain.blocks, and the gallery's method at the last block
    when it is named."""
    e = explain_config
    pairs = [(m, None if m in NO_BLOCK else b) for m in e.method_names() for b in e.block_indices(depth)]
    if e.method != "best":
        pairs.append((e.method, None if e.method in NO_BLOCK else depth - 1))
    return list(dict.fromkeys(pairs))


def compare_methods(model, images: torch.Tensor, originals: torch.Tensor, classes: torch.Tensor, config) -> tuple:
    """Each candidate's maps for `classes` and their ROAD scores, with the random and Sobel baselines; returns the
    MethodScore rows, best first, and the maps by (method, block)."""
    scores, maps = [], {}
    for method, block in candidates(config.explain, config.model.depth):
        started = time.perf_counter()
        maps[(method, block)] = cam_maps(model, images, classes, method, -1 if block is None else block)
        seconds = time.perf_counter() - started
        scores.append(MethodScore(method, block, road(model, images, classes, maps[(method, block)].shown,
                                                      config.seed), seconds))
    for name, baseline in (("random", lambda: random_maps(len(images), images.shape[-1], config.seed)),
                           ("sobel", lambda: sobel_maps(originals))):
        started = time.perf_counter()
        shown = baseline()
        seconds = time.perf_counter() - started
        maps[(name, None)] = CamMaps(raw=shown, shown=shown)
        scores.append(MethodScore(name, None, road(model, images, classes, shown, config.seed), seconds, baseline=True))
    scores.sort(key=lambda row: -row.road.mean())  # stable: ties keep the order of explain.methods
    return scores, maps


def gallery_method(choice: str, comparison: list, depth: int) -> tuple:
    """(method, block) of the gallery: explain.method at the last block, or the best-scoring method (not a
    baseline)."""
    if choice == "best":
        best = next(row for row in comparison if not row.baseline)
        return best.method, best.block
    return choice, None if choice in NO_BLOCK else depth - 1


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

