"""A run folder, and the one place that knows its layout:

    config.yaml                    every setting of the run (nulls kept: a resume on another device picks its values)
    run.json                       how it runs: hardware, processes, precision, model cost, the command to resume
    model.py                       the model's code as it ran (a copy of trainer/model.py)
    model_summary.txt              the torchinfo table
    train.log                      one line per epoch, in the reference's format
    metrics.csv                    one row per epoch: epoch, lr, train_loss, train_acc, test_loss, test_acc, seconds,
                                   images_per_second; with data.val_size also val_loss and val_acc, with
                                   train.ema_decay the same of the average (ema_test_loss, ...), before seconds
    checkpoints/last.safetensors   the resumable checkpoint
    model.safetensors              the final weights
    best.safetensors               the weights of the best epoch (by validation accuracy, else test accuracy)
    summary.json                   final figures; written when the run is complete
    explain/                       the Grad-CAM outputs
    report.md, curves.png          the run's report (trainer/report.py)
    wandb/, wandb_run_id           W&B's files, and the id a resumed run continues

Training, explain, the benchmark and `launch/` (through `python -m trainer.run_folder RUN`, which prints new,
resumable or finished) all go through `RunFolder`. Only the main process writes.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import os
import sys
from datetime import datetime
from pathlib import Path


def epoch_line(name: str, row: dict) -> str:
    """The reference's one-line epoch summary."""
    return (
        f"{name}: Epoch: {row['epoch']} | Train Acc: {row['train_acc']:.4f}, Test Acc: {row['test_acc']:.4f}, "
        f"Time: {row['seconds']:.1f}, lr: {row['lr']:.6f}"
    )


class RunFolder:
    def __init__(self, path):
        self.path = Path(path)
        self.config = self.path / "config.yaml"
        self.run_info = self.path / "run.json"
        self.model_source = self.path / "model.py"
        self.model_summary = self.path / "model_summary.txt"
        self.train_log = self.path / "train.log"
        self.metrics = self.path / "metrics.csv"
        self.checkpoint = self.path / "checkpoints" / "last.safetensors"
        self.weights = self.path / "model.safetensors"
        self.best_weights = self.path / "best.safetensors"
        self.summary = self.path / "summary.json"
        self.explain = self.path / "explain"
        self.gallery = self.explain / "gallery.png"
        self.confusion_matrix = self.explain / "confusion_matrix.png"
        self.per_class_accuracy = self.explain / "per_class_accuracy.csv"
        self.explain_summary = self.explain / "summary.json"
        self.report = self.path / "report.md"
        self.curves = self.path / "curves.png"
        self.wandb = self.path / "wandb"
        self.wandb_run_id = self.path / "wandb_run_id"

    @staticmethod
    def claim_new(name: str) -> Path:
        """Creates and returns runs/<date>-<time>-<name>, or, when another run took that in the same second,
        <...>-2, -3, and so on: two runs never share a folder."""
        base = Path("runs") / f"{datetime.now():%Y%m%d-%H%M%S}-{name.lower()}"
        base.parent.mkdir(parents=True, exist_ok=True)
        for attempt in itertools.count(1):
            path = base if attempt == 1 else base.with_name(f"{base.name}-{attempt}")
            try:
                path.mkdir()  # atomic: of two runs creating it, one fails
                return path
            except FileExistsError:
                continue

    def start(self, config_yaml: str, model_summary: str, model_source: Path, run_info: dict) -> None:
        """A run starts or resumes: its settings, how it runs, the model's code and cost. Until the run is complete
        again, it has no summary.json (e.g. a finished run given more epochs)."""
        self.checkpoint.parent.mkdir(parents=True, exist_ok=True)
        self.summary.unlink(missing_ok=True)
        atomic_write(self.config, config_yaml)
        atomic_write(self.run_info, json.dumps(run_info, indent=2) + "\n")
        atomic_write(self.model_source, model_source.read_text())  # the model's code as it ran, for the report
        atomic_write(self.model_summary, model_summary + "\n")

    def status(self) -> str:
        """new (nothing to resume), resumable (a checkpoint, not complete) or finished (summary.json written)."""
        if self.summary.is_file():
            return "finished"
        return "resumable" if self.checkpoint.is_file() and self.config.is_file() else "new"

    def append_epoch(self, name: str, row: dict) -> str:
        """Adds one epoch to train.log and metrics.csv; returns its log line."""
        line = epoch_line(name, row)
        with open(self.train_log, "a") as f:
            f.write(line + "\n")
        new_file = not self.metrics.exists()
        with open(self.metrics, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(row))
            if new_file:
                writer.writeheader()
            writer.writerow(row)
        return line

    def metric_rows(self) -> list:
        if not self.metrics.exists():
            return []
        rows = []
        with open(self.metrics) as f:
            for row in csv.DictReader(f):
                try:
                    rows.append({k: int(v) if k == "epoch" else float(v) for k, v in row.items()})
                except (TypeError, ValueError):  # a row cut short by a crash while it was written
                    break
        return rows

    def keep_epochs(self, epochs_done: int, name: str) -> None:
        """On resume: keeps the metrics.csv rows the checkpoint covers (later ones were written after it, before a
        crash) and writes train.log anew from them."""
        rows = [row for row in self.metric_rows() if row["epoch"] < epochs_done]
        if not rows:  # the first epoch's row writes the header, with the run's columns
            self.metrics.unlink(missing_ok=True)
            atomic_write(self.train_log, "")
            return
        table = io.StringIO()
        writer = csv.DictWriter(table, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
        atomic_write(self.metrics, table.getvalue())
        atomic_write(self.train_log, "".join(epoch_line(name, row) + "\n" for row in rows))

    def read_run_info(self) -> dict:
        return json.loads(self.run_info.read_text()) if self.run_info.is_file() else {}

    def read_summary(self) -> dict:
        return json.loads(self.summary.read_text()) if self.summary.is_file() else {}

    def write_summary(self, values: dict) -> None:
        atomic_write(self.summary, json.dumps(values, indent=2) + "\n")


def atomic_write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    durable_replace(tmp, path)


def durable_replace(tmp, path: Path) -> None:
    """Renames the written file `tmp` over `path` so that a crash of the machine leaves the old file or the new one,
    never an empty one: the data reaches the disk before the rename, and the folder's new entry after it (ext4's
    defaults mostly do this on their own; XFS, Lustre and NFS do not)."""
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    folder = os.open(Path(path).parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    except OSError:  # some file systems (FUSE, CIFS) refuse to flush a folder; the file itself is on disk
        pass
    finally:
        os.close(folder)


if __name__ == "__main__":
    print(RunFolder(sys.argv[1]).status())
