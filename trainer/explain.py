"""Explains the model's mistakes on the test set with Grad-CAM.

Runs at the end of training, or on its own for a finished run folder or checkpoint:

    python -m trainer.explain runs/<run>                      # or: accelerate launch -m trainer.explain ...
    python -m trainer.explain runs/<run>/checkpoints/last.safetensors explain.num_images=20

Every process evaluates its share of the test set; the main process gathers all
predictions, picks `explain.num_images` mistakes and writes `<run>/explain/`:
gallery.png, misclassified_grid.png, misclassified.csv, per_class_accuracy.csv,
confusion_matrix.png and gradcam.npz, plus a W&B table when W&B is on.
"""

from __future__ import annotations

import argparse
import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from trainer import plots
from trainer.augment import Normalize
from trainer.checkpoint import LAST, read_weights
from trainer.config import ConfigError
from trainer.loop import Predictions, predict
from trainer.model import build_model

EXPLAIN_DIR = "explain"


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


def grad_cam(model, images: torch.Tensor, classes: torch.Tensor) -> CamMaps:
    """Grad-CAM at the last mixer block for one class per image, in fp32 and eval mode."""
    model = model.float().eval()
    # The last block feeds global average pooling and the linear head, so the raw map
    # summed over positions is logit(class) - bias(class).
    with RawGradCAM(model=model, target_layers=[model.blocks[-1]]) as cam:  # hooks removed on exit
        shown = cam(input_tensor=on_model_device(model, images), targets=[ClassifierOutputTarget(int(c)) for c in classes])
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
    metric = ROADCombined(percentiles=[20, 40, 60, 80])
    rng = np.random.default_rng(seed)
    model = model.float().eval()
    images = on_model_device(model, images)  # grad-cam's ROAD calls the model on the images as given
    with torch.no_grad():
        cam_score = metric(images, maps, targets, model)
        random_score = metric(images, rng.random(maps.shape).astype(np.float32), targets, model)
    return {"road_combined_gradcam": float(np.mean(cam_score)), "road_combined_random": float(np.mean(random_score)),
            "road_percentiles": [20, 40, 60, 80], "images": len(images)}


def denormalize(images: torch.Tensor, mean, std) -> np.ndarray:
    """Normalized N x 3 x H x W -> N x H x W x 3 in [0, 1], for display."""
    mean, std = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    return (images.cpu() * std + mean).clamp(0, 1).permute(0, 2, 3, 1).numpy()


def run_explain(accelerator, model, data, config, run_dir: Path, log_to_wandb=None) -> dict:
    """Gathers predictions from every process; the main process writes the explanations. Returns a summary."""
    e, a = config.explain, config.augment
    predictions = predict(accelerator, model, data.test, config.train.batch_size, Normalize(a.mean, a.std, accelerator.device),
                          False)
    if not accelerator.is_main_process:
        return {}
    out = run_dir / EXPLAIN_DIR
    out.mkdir(parents=True, exist_ok=True)
    names = data.class_names
    write_misclassified_csv(out / "misclassified.csv", predictions, names)
    per_class = write_per_class(out, predictions, names)

    chosen = select_mistakes(predictions, e.num_images, e.select, config.seed)
    mistakes = int((predictions.preds != predictions.labels).sum())
    if mistakes == 0:
        print("explain: the model makes no mistakes on this test set; nothing to explain (accuracy and "
              f"confusion matrix are in {out}).")
    elif mistakes < e.num_images:
        print(f"explain: only {mistakes} misclassified test images, fewer than explain.num_images={e.num_images}; "
              f"explaining all of them.")
    rows = predictions.indices[chosen]
    images = Normalize(a.mean, a.std)(data.test.images[rows])
    plain = accelerator.unwrap_model(model, keep_fp32_wrapper=False)  # no mixed-precision autocast: fp32 maps
    preds, labels = predictions.preds[chosen], predictions.labels[chosen]
    confidence = predictions.confidence[chosen]
    summary = {"test_accuracy": predictions.accuracy, "misclassified": mistakes, "explained": len(chosen),
               "selection": e.select, "per_class_accuracy": per_class}
    if len(chosen):
        cam_pred, cam_true = grad_cam(plain, images, preds), grad_cam(plain, images, labels)
        np.savez(out / "gradcam.npz", indices=rows.numpy(), labels=labels.numpy(), preds=preds.numpy(),
                 probs=confidence.numpy(), cam_pred_raw=cam_pred.raw, cam_true_raw=cam_true.raw,
                 cam_pred=cam_pred.shown, cam_true=cam_true.shown)
        originals = denormalize(images, a.mean, a.std)
        captions = [f"#{r}  true: {names[t]} / predicted: {names[p]} ({c:.2f})"
                    for r, t, p, c in zip(rows.tolist(), labels.tolist(), preds.tolist(), confidence.tolist())]
        plots.gallery(out / "gallery.png", originals, cam_pred.shown, cam_true.shown, captions)
        summary["faithfulness"] = faithfulness(plain, images, preds, cam_pred.shown, config.seed)
        if log_to_wandb:
            log_to_wandb(rows, originals, cam_pred.shown, cam_true.shown, labels, preds, confidence, names, out)
    grid_rows = select_mistakes(predictions, e.grid_size ** 2, e.select, config.seed)
    if len(grid_rows):
        grid_images = data.test.images[predictions.indices[grid_rows]].permute(0, 2, 3, 1).numpy()
        grid_captions = [f"{names[t]} -> {names[p]}" for t, p in
                         zip(predictions.labels[grid_rows].tolist(), predictions.preds[grid_rows].tolist())]
        plots.grid(out / "misclassified_grid.png", grid_images, grid_captions, e.grid_size)
    return summary


def write_misclassified_csv(path: Path, predictions: Predictions, names: list) -> None:
    wrong = (predictions.preds != predictions.labels).nonzero().squeeze(1)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["row_index", "true", "predicted", "confidence"])
        for i in wrong.tolist():
            writer.writerow([int(predictions.indices[i]), names[predictions.labels[i]], names[predictions.preds[i]],
                             f"{predictions.confidence[i].item():.4f}"])


def write_per_class(out: Path, predictions: Predictions, names: list) -> dict:
    k = len(names)
    confusion = torch.zeros(k, k, dtype=torch.long)
    confusion.index_put_((predictions.labels, predictions.preds), torch.ones_like(predictions.labels), accumulate=True)
    totals = confusion.sum(1)
    accuracy = {names[c]: (confusion[c, c] / totals[c]).item() if totals[c] else None for c in range(k)}
    with open(out / "per_class_accuracy.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["class", "accuracy", "images"])
        for c in range(k):
            writer.writerow([names[c], "" if accuracy[names[c]] is None else f"{accuracy[names[c]]:.4f}", int(totals[c])])
    plots.confusion_matrix(out / "confusion_matrix.png", confusion.numpy(), names)
    return accuracy


def load_for_explain(target: Path):
    """(run folder, weights file) for a run folder or a checkpoint/weights file inside one."""
    if target.is_dir():
        for candidate in (target / "model.safetensors", target / "checkpoints" / LAST):
            if candidate.is_file():
                return target, candidate
        raise ConfigError(f"{target} has no weights (model.safetensors or checkpoints/{LAST}); "
                          f"train first, or give the path of a weights file.")
    if not target.is_file():
        raise ConfigError(f"{target} does not exist; give a run folder or a .safetensors file in one.")
    run_dir = target.parent.parent if target.parent.name == "checkpoints" else target.parent
    return run_dir, target


def main(argv=None) -> int:
    from accelerate import Accelerator

    from trainer.config import load_config, validate
    from trainer.data import load_cifar

    parser = argparse.ArgumentParser(description="Grad-CAM explanations of a trained run's test-set mistakes.")
    parser.add_argument("target", type=Path, help="a run folder, or a .safetensors checkpoint inside one")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value", help="e.g. explain.num_images=20")
    args = parser.parse_args(argv)
    run_dir, weights = load_for_explain(args.target)
    config_file = run_dir / "config.yaml"
    config = load_config(str(config_file) if config_file.is_file() else None, args.overrides)
    state, model_config = read_weights(weights)
    model = build_model(config.model)
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise ConfigError(f"{weights} does not fit the model in {config_file} ({model_config or 'unknown'} vs "
                          f"{vars(config.model)}): {str(error).splitlines()[0]} Give matching model.* settings.") from None
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    validate(config, accelerator.num_processes)
    with accelerator.main_process_first():
        data = load_cifar(config.data)
    summary = run_explain(accelerator, accelerator.prepare(model), data, config, run_dir)
    if accelerator.is_main_process:
        from trainer.tracking import write_json

        write_json(run_dir / EXPLAIN_DIR / "summary.json", summary)
        print(f"Explanations written to {run_dir / EXPLAIN_DIR}")
    return 0


if __name__ == "__main__":
    from trainer.main import exit_cleanly

    exit_cleanly(main)
