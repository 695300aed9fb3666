"""Run outputs on disk (train.log, metrics.csv, summary.json) and W&B through Accelerate's tracker.

W&B is a convenience, never a reason to stop training: without credentials it runs
offline into `<run>/wandb/` (upload later with `wandb sync`), and any failure to start
it leaves a warning and a run without the tracker.
"""

from __future__ import annotations

import csv
import json
import os
import platform
import uuid
import warnings
from pathlib import Path

import torch

METRIC_FIELDS = ["epoch", "lr", "train_loss", "train_acc", "test_loss", "test_acc", "seconds", "images_per_second"]


def epoch_line(name: str, row: dict) -> str:
    """The reference's one-line epoch summary."""
    return (
        f"{name}: Epoch: {row['epoch']} | Train Acc: {row['train_acc']:.4f}, Test Acc: {row['test_acc']:.4f}, "
        f"Time: {row['seconds']:.1f}, lr: {row['lr']:.6f}"
    )


class RunLog:
    """train.log and metrics.csv of one run folder; main process only."""

    def __init__(self, run_dir: Path, name: str):
        self.run_dir, self.name = run_dir, name
        self.log_path, self.csv_path = run_dir / "train.log", run_dir / "metrics.csv"

    def truncate_to(self, epochs_done: int) -> None:
        """On resume, drop rows of epochs the checkpoint does not contain (written after it, before a crash)."""
        if self.csv_path.exists():
            with open(self.csv_path) as f:
                rows = [r for r in csv.DictReader(f) if int(r["epoch"]) < epochs_done]
            _atomic_write(self.csv_path, _csv_text(rows))
        if self.log_path.exists():
            kept = [line for line in self.log_path.read_text().splitlines(keepends=True)
                    if _epoch_of(line) is None or _epoch_of(line) < epochs_done]
            _atomic_write(self.log_path, "".join(kept))

    def append(self, row: dict) -> str:
        line = epoch_line(self.name, row)
        with open(self.log_path, "a") as f:
            f.write(line + "\n")
        new_file = not self.csv_path.exists()
        with open(self.csv_path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=METRIC_FIELDS)
            if new_file:
                writer.writeheader()
            writer.writerow({k: row[k] for k in METRIC_FIELDS})
        return line


def _epoch_of(line: str):
    marker = "| Train Acc"
    if ": Epoch: " not in line or marker not in line:
        return None
    return int(line.split(": Epoch: ")[1].split(" ")[0])


def _csv_text(rows: list) -> str:
    import io

    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=METRIC_FIELDS)
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def hardware_name(device) -> str:
    """The GPU's name, or the CPU's model and core count: what a throughput figure was measured on."""
    if torch.device(device).type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"CPU {cpu} ({os.cpu_count()} cores)"


def write_json(path: Path, values: dict) -> None:
    _atomic_write(path, json.dumps(values, indent=2) + "\n")


def wandb_mode() -> str:
    """online when W&B has credentials, else offline (unless WANDB_MODE says otherwise)."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    try:
        import netrc

        hosts = netrc.netrc().hosts
        return "online" if any("wandb" in host for host in hosts) else "offline"
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return "offline"


def start_tracker(accelerator, config: dict, run_dir: Path, project: str, run_name: str) -> None:
    """Starts W&B (on the main process, through Accelerate); on any failure, carries on without it."""
    mode = wandb_mode()
    # Artifacts (the explain table and its images) are staged here, inside the run folder,
    # rather than in the home folder, so that an offline run is complete for `wandb sync`.
    os.environ.setdefault("WANDB_DATA_DIR", str((run_dir / "wandb" / "data").resolve()))
    run_id_file = run_dir / "wandb_run_id"
    if accelerator.is_main_process and not run_id_file.exists():
        run_id_file.write_text(uuid.uuid4().hex[:12])  # kept so that a resumed run continues the same W&B run
    accelerator.wait_for_everyone()
    init = {"dir": str(run_dir), "mode": mode, "name": run_name, "id": run_id_file.read_text().strip(), "resume": "allow"}
    try:
        accelerator.init_trackers(project, config=config, init_kwargs={"wandb": init})
    except Exception as error:  # W&B trouble must not stop training
        accelerator.trackers = []
        if accelerator.is_main_process:
            warnings.warn(f"W&B could not start ({type(error).__name__}: {error}); training goes on without it.")
        return
    if accelerator.is_main_process and mode == "offline":
        print(f"W&B is offline (no credentials or WANDB_MODE=offline); the run is saved in {run_dir / 'wandb'}. "
              f"Upload it later with: wandb sync {run_dir / 'wandb'}/offline-run-*")


def wandb_run(accelerator):
    """The wandb.Run behind Accelerate's tracker, or None when W&B is off."""
    for tracker in accelerator.trackers:
        if tracker.name == "wandb":
            return tracker.run
    return None


def wandb_explain_logger(accelerator):
    """A function that logs the explain hook's results to W&B, or None when W&B is off."""
    run = wandb_run(accelerator)
    if run is None:
        return None

    def log(rows, originals, cam_pred, cam_true, labels, preds, confidence, names, out_dir: Path) -> None:
        import wandb

        from trainer.plots import overlay

        def picture(array):  # 32 px is too small to see in the W&B table: upscale 4x, nearest
            return wandb.Image((array.repeat(4, 0).repeat(4, 1) * 255).astype("uint8"))

        try:
            table = wandb.Table(columns=["row_index", "image", "gradcam_predicted", "gradcam_true", "true", "predicted",
                                         "confidence"])
            for k, row in enumerate(rows.tolist()):
                table.add_data(row, picture(originals[k]), picture(overlay(originals[k], cam_pred[k])),
                               picture(overlay(originals[k], cam_true[k])), names[labels[k]], names[preds[k]],
                               round(float(confidence[k]), 4))
            # A table logged straight to an offline run keeps the word "Image" instead of its images
            # (wandb issue 4611); inside an artifact its images are files, which `wandb sync` uploads.
            artifact = wandb.Artifact(f"explain-{run.id}", type="explanations")
            artifact.add(table, "misclassified")
            run.log_artifact(artifact)
            run.log({"explain/gallery": wandb.Image(str(out_dir / "gallery.png")),
                     "explain/confusion_matrix": wandb.Image(str(out_dir / "confusion_matrix.png"))})
        except Exception as error:  # W&B trouble must not lose the files already written
            warnings.warn(f"W&B logging of the explanations failed ({type(error).__name__}: {error}).")

    return log
