"""Weights & Biases, through Accelerate's tracker: the run's settings, every epoch's metrics, and the explanations.

W&B is a convenience, never a reason to stop training: without credentials it runs offline into `<run>/wandb/`
(upload later with `wandb sync`), and any failure to start it or to log to it leaves a warning and a run without it.
"""

from __future__ import annotations

import os
import uuid
import warnings

from trainer.explanations import Explanation


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


def start_tracker(accelerator, settings: dict, folder, project: str) -> None:
    """Starts W&B (on the main process, through Accelerate) for the run in `folder` (a RunFolder)."""
    mode = wandb_mode()
    # Artifacts (the explain table and its images) are staged here, inside the run folder,
    # rather than in the home folder, so that an offline run is complete for `wandb sync`.
    os.environ.setdefault("WANDB_DATA_DIR", str((folder.wandb / "data").resolve()))
    run_id = None  # only the main process starts the W&B run
    if accelerator.is_main_process:
        if not folder.wandb_run_id.exists():
            folder.wandb_run_id.write_text(uuid.uuid4().hex[:12])  # a resumed run continues the same W&B run
        run_id = folder.wandb_run_id.read_text().strip()
    init = {"dir": str(folder.path), "mode": mode, "name": folder.path.name, "id": run_id, "resume": "allow"}
    try:
        accelerator.init_trackers(project, config=settings, init_kwargs={"wandb": init})
    except Exception as error:  # W&B trouble must not stop training
        accelerator.trackers = []
        if accelerator.is_main_process:
            warnings.warn(f"W&B could not start ({type(error).__name__}: {error}); training goes on without it.")
        return
    if accelerator.is_main_process and mode == "offline":
        print(f"W&B is offline (no credentials or WANDB_MODE=offline); the run is saved in {folder.wandb}. "
              f"Upload it later with: wandb sync {folder.wandb}/offline-run-*")


def wandb_run(accelerator):
    """The wandb.Run behind Accelerate's tracker, or None when W&B is off."""
    if not any(tracker.name == "wandb" for tracker in accelerator.trackers):
        return None
    return accelerator.get_tracker("wandb", unwrap=True)


def log_results(accelerator, folder, explanation: Explanation | None, names: list) -> None:
    """The end of a run in W&B: the training curves, and the explained mistakes as a table with the gallery and
    confusion matrix (from the files in `folder`, a RunFolder)."""
    run = wandb_run(accelerator)
    if run is None:
        return
    import wandb

    try:
        images = {"report/curves": folder.curves, "explain/gallery": folder.gallery,
                  "explain/confusion_matrix": folder.confusion_matrix, "explain/methods": folder.explain / "methods.png"}
        run.log({key: wandb.Image(str(path)) for key, path in images.items() if path.exists()})
        if explanation is not None and explanation.comparison:
            rows = [row.row() for row in explanation.comparison]
            run.log({"explain/method_comparison": wandb.Table(columns=list(rows[0]), data=[list(r.values()) for r in rows])})
        if explanation is not None and explanation.cam_pred is not None:
            # A table logged straight to an offline run keeps the word "Image" instead of its images
            # (wandb issue 4611); inside an artifact its images are files, which `wandb sync` uploads.
            artifact = wandb.Artifact(f"explain-{run.id}", type="explanations")
            artifact.add(explanation_table(explanation, names), "misclassified")
            run.log_artifact(artifact)
    except Exception as error:  # W&B trouble must not lose the files already written
        warnings.warn(f"W&B logging of the results failed ({type(error).__name__}: {error}).")


def explanation_table(explanation: Explanation, names: list):
    import wandb

    from trainer.explain_outputs import display
    from trainer.plots import overlay

    def picture(array):  # 32 px is too small to see in the W&B table: upscale 4x, nearest
        return wandb.Image((array.repeat(4, 0).repeat(4, 1) * 255).astype("uint8"))

    p, chosen = explanation.predictions, explanation.chosen
    originals = display(explanation.originals)
    table = wandb.Table(columns=["row_index", "image", "cam_predicted", "cam_true", "true", "predicted",
                                 "confidence"])
    for k, row in enumerate(explanation.rows.tolist()):
        table.add_data(row, picture(originals[k]), picture(overlay(originals[k], explanation.cam_pred.shown[k])),
                       picture(overlay(originals[k], explanation.cam_true.shown[k])), names[p.labels[chosen[k]]],
                       names[p.preds[chosen[k]]], round(float(p.confidence[chosen[k]]), 4))
    return table
