"""A trained run explored one image at a time: what `python -m trainer.app` shows, without the user interface.

An image's top classes (the run's own evaluation: trainer/trained_run.py) and its CAM map for any method, mixer
block and class; the run's test images; its mistakes, filtered by true and predicted class, most confident first.
"""

from __future__ import annotations

import csv
import threading
from dataclasses import dataclass

import numpy as np
import torch

from trainer.data import decode_split, load_hf_dataset
from trainer.errors import ConfigError, DataError
from trainer.plots import Mistake, enlarge
from trainer.trained_run import Evaluation, TrainedRun


@dataclass
class Classified:
    probabilities: dict  # class name -> probability, every class
    predicted: int
    shown: np.ndarray  # H x W x 3 uint8: the image under its CAM map, enlarged plots.ZOOM times


class Explorer:
    def __init__(self, run: TrainedRun):
        self.run = run
        self.names = run.class_names
        self.evaluation = Evaluation(run)
        self.lock = threading.Lock()  # grad-cam hooks the model: one map at a time, whichever page asks
        self.test, self.missing_data = self.read_test_split()
        self.mistakes = self.find_mistakes() if self.test is not None else []

    def read_test_split(self):
        """(the run's test split, None), or (None, why not) when its data cannot be read here."""
        data = self.run.config.data
        try:
            return decode_split(load_hf_dataset(data.name)["test"], data, data.test_limit), None
        except (ConfigError, DataError, KeyError, OSError) as error:
            return None, f"The run's test images are not available here ({' '.join(str(error).split())})"

    def find_mistakes(self) -> list:
        """Every misclassified test image, most confident first: the run's explain/misclassified.csv when these are
        the run's final weights, else evaluated now."""
        folder = self.run.folder
        if self.run.weights == folder.weights and (folder.explain / "misclassified.csv").is_file():
            with open(folder.explain / "misclassified.csv", newline="") as f:
                rows = [Mistake(int(r["row_index"]), r["true"], r["predicted"], float(r["confidence"]))
                        for r in csv.DictReader(f)]
        else:
            p = self.evaluation.predict(self.test)
            wrong = (p.preds != p.labels).nonzero().squeeze(1).tolist()
            rows = [Mistake(int(p.indices[i]), self.names[p.labels[i]], self.names[p.preds[i]],
                            float(p.confidence[i])) for i in wrong]
        return sorted(rows, key=lambda m: -m.confidence)

    def mistakes_where(self, true: str | None = None, predicted: str | None = None) -> list:
        return [m for m in self.mistakes if true in (None, m.true) and predicted in (None, m.predicted)]

    def test_image(self, row: int) -> np.ndarray:
        """Test image `row`, 3 x 32 x 32 uint8."""
        return self.test.images[row].numpy()

    def classify(self, image: np.ndarray, method: str, block: int, target: str | None = None,
                 opacity: float = 0.5) -> Classified:
        """A 3 x 32 x 32 uint8 image's class probabilities, and the CAM map of `target` (a class name; None: the
        predicted class)."""
        predictions = self.evaluation.predict_images(torch.from_numpy(image)[None])
        predicted = int(predictions.preds[0])
        probabilities = {name: float(p) for name, p in zip(self.names, predictions.probs[0])}
        cls = predicted if target is None else self.names.index(target)
        return Classified(probabilities, predicted, self.map_of(image, cls, method, block, opacity))

    def map_of(self, image: np.ndarray, cls: int, method: str, block: int, opacity: float = 0.5) -> np.ndarray:
        """The image (3 x 32 x 32 uint8) under `method`'s map for class `cls` at `block`, enlarged plots.ZOOM times."""
        with self.lock:
            shown = self.evaluation.cam_overlays(torch.from_numpy(image)[None], [cls], method, block, opacity)[0]
        return enlarge(shown)
