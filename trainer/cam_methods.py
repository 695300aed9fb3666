"""grad-cam's CAM methods by name (explain.methods), at any mixer block of ConvMixer, and ROAD, the faithfulness
score that ranks them, with its two baselines: random maps and a Sobel edge map of the image.

ConvMixer is isotropic: every block's output has the same 16 x 16 resolution, so each block is a candidate layer.
grad-cam's tutorial "CAM Metrics and Tuning" scores methods with ROAD and warns that random maps are sometimes not
far behind; an edge map is a second baseline that knows the image but not the model.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass

import numpy as np
import pytorch_grad_cam as gc
import torch
from pytorch_grad_cam.ablation_layer import AblationLayer
from pytorch_grad_cam.metrics.road import ROADCombined
from pytorch_grad_cam.sobel_cam import sobel_cam
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from trainer.config import CAM_METHODS

CLASSES = {"gradcam": gc.GradCAM, "hirescam": gc.HiResCAM, "gradcam++": gc.GradCAMPlusPlus, "xgradcam": gc.XGradCAM,
           "layercam": gc.LayerCAM, "gradcamelementwise": gc.GradCAMElementWise, "eigencam": gc.EigenCAM,
           "eigengradcam": gc.EigenGradCAM, "kpcacam": gc.KPCA_CAM, "fem": gc.FEM, "shapleycam": gc.ShapleyCAM,
           "fullgrad": gc.FullGrad, "ablationcam": gc.AblationCAM, "scorecam": gc.ScoreCAM}
assert tuple(CLASSES) == CAM_METHODS, "trainer/config.py's CAM_METHODS and these classes name the same methods"
# FullGrad sums the gradients of every bias in the model: it has no block to choose.
NO_BLOCK = {"fullgrad"}
# These maps do not depend on the class asked for (principal components or strong activations of the block).
CLASS_AGNOSTIC = {"eigencam", "kpcacam", "fem"}
ROAD_PERCENTILES = [20, 40, 60, 80]


@dataclass
class CamMaps:
    raw: np.ndarray  # N x h x w before ReLU and scaling: at the block's resolution (FullGrad: at the image's)
    shown: np.ndarray  # N x H x W in [0, 1]: ReLU, min-max scaled, upsampled to the image


def recording(method: str):
    """grad-cam's class for `method`, also keeping its raw maps (`raw_maps`)."""

    class Recording(CLASSES[method]):
        def get_cam_image(self, *args, **kwargs):
            self.raw_maps = super().get_cam_image(*args, **kwargs)
            return self.raw_maps

        def compute_cam_per_layer(self, *args, **kwargs):
            self.raw_maps = None
            layers = super().compute_cam_per_layer(*args, **kwargs)
            if self.raw_maps is None:  # FullGrad: its own sum of gradient maps, at the image's size
                self.raw_maps = np.asarray(layers)[:, 0]
            return layers

    return Recording


class ZeroAblation(AblationLayer):
    """AblationCAM's ablation as its paper defines it: the channel set to zero.

    grad-cam's own layer sets it to min(activations) - 1e7 where activations can be negative (ConvMixer's can:
    BatchNorm comes last), and takes that minimum after the copies before it in the batch were set, so the i-th
    channel of each batch of 32 is pushed (i + 1) x 1e7 down: channel weights up to 32 times apart for no reason in
    the model (tests/test_cam_methods.py has the closed form)."""

    def __call__(self, x):
        for i in range(self.activations.size(0)):
            self.activations[i, self.indices[i], :] = 0
        return self.activations


def cam_maps(model, images: torch.Tensor, classes: torch.Tensor, method: str = "gradcam", block: int = -1) -> CamMaps:
    """`method`'s maps at mixer block `block` for one class per image, in fp32 and eval mode. `model`: a plain
    ConvMixer (grad-cam's FullGrad finds the biases of nn.Conv2d and nn.BatchNorm2d by their exact type)."""
    model = model.float().eval()
    layers = [] if method in NO_BLOCK else [model.blocks[block]]
    targets = [ClassifierOutputTarget(int(c)) for c in classes]
    # ScoreCAM and AblationCAM draw progress bars on stderr: 256 lines per image in a log.
    options = {"ablation_layer": ZeroAblation()} if method == "ablationcam" else {}
    with (recording(method)(model=model, target_layers=layers, **options) as cam,
          contextlib.redirect_stderr(io.StringIO())):
        shown = cam(input_tensor=on_model_device(model, images), targets=targets)  # hooks removed on exit
        return CamMaps(raw=np.asarray(cam.raw_maps, dtype=np.float32), shown=shown.astype(np.float32))


def on_model_device(model, images: torch.Tensor) -> torch.Tensor:
    return images.float().to(next(model.parameters()).device)


def road(model, images: torch.Tensor, classes: torch.Tensor, maps: np.ndarray, seed: int) -> np.ndarray:
    """grad-cam's ROAD combined score of each image's map (higher: removing the pixels the map marks hurts the
    class's logit more than removing the others), averaged over ROAD_PERCENTILES.

    ROAD fills the removed pixels by linear interpolation plus noise drawn from torch's global generator; it is drawn
    here from a generator seeded with `seed` (and the caller's generator left as it was), so that a score repeats
    exactly, and every method is scored with the same noise."""
    targets = [ClassifierOutputTarget(int(c)) for c in classes]
    model = model.float().eval()
    images = on_model_device(model, images)  # grad-cam's ROAD calls the model on the images as given
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.default_generator.manual_seed(seed)
        return np.asarray(ROADCombined(percentiles=ROAD_PERCENTILES)(images, maps, targets, model), dtype=np.float64)


def random_maps(count: int, size: int, seed: int) -> np.ndarray:
    """The first baseline: uniform noise, drawn with `seed`."""
    return np.random.default_rng(seed).random((count, size, size)).astype(np.float32)


def sobel_maps(originals: torch.Tensor) -> np.ndarray:
    """The second baseline: the edge strength of each uint8 N x 3 x H x W image (grad-cam's sobel_cam), in [0, 1]."""
    edges = np.stack([sobel_cam(np.ascontiguousarray(image.permute(1, 2, 0).numpy())) for image in originals])
    return (edges / np.maximum(edges.max(axis=(1, 2), keepdims=True), 1)).astype(np.float32)


@dataclass
class MethodScore:
    """One row of the comparison: a method at a block (None: no block, as FullGrad and the baselines)."""

    method: str
    block: int | None
    road: np.ndarray  # per image
    seconds: float  # computing the maps (ROAD's own time is the same for every row)
    baseline: bool = False

    @property
    def name(self) -> str:
        return self.method if self.block is None else f"{self.method} @ block {self.block}"

    def row(self) -> dict:
        return {"method": self.method, "block": self.block, "road_mean": float(self.road.mean()),
                "road_std": float(self.road.std()), "seconds": round(self.seconds, 2), "baseline": self.baseline}

