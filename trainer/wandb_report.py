"""A W&B Report of one run, built with the `wandb-workspaces` package (`pip install -e ".[report]"`): the run's
accuracy, loss and learning-rate panels, the Grad-CAM gallery and table, the model's cost and the settings that
differ from the reference recipe. `python -m trainer.report <run> --wandb` saves it when W&B is online.
"""

from __future__ import annotations

from trainer.config import Config, ConfigError
from trainer.run_folder import RunFolder
from trainer.tracking import wandb_mode


def build_report(folder: RunFolder, config: Config, entity: str, what_was_trained: list):
    """The report object, validated by wandb-workspaces' own field checks; nothing is sent. `what_was_trained`: the
    run report's lines of that section (trainer/report.py)."""
    try:
        import wandb_workspaces.reports.v2 as wr
    except ImportError:
        raise ConfigError("A W&B Report needs the wandb-workspaces package: pip install -e \".[report]\".") from None
    if not folder.wandb_run_id.is_file():
        raise ConfigError(f"{folder.path} was not tracked with W&B (tracker=none): there is no W&B run to report on.")
    run_id, project = folder.wandb_run_id.read_text().strip(), config.wandb_project
    info = folder.read_summary() or folder.read_run_info()
    runset = wr.Runset(entity=entity, project=project, name=folder.path.name, query=folder.path.name)
    curves = [wr.LinePlot(title="Accuracy", y=["train_acc", "test_acc"], title_x="epoch"),
              wr.LinePlot(title="Loss", y=["train_loss", "test_loss"], title_x="epoch"),
              wr.LinePlot(title="Learning rate (end of epoch)", y=["lr"], title_x="epoch")]
    cost = (f"**{info['parameters']:,} parameters, {info['mult_adds_per_image'] / 1e6:.1f} M multiply-adds per "
            f"image**; trained on {info.get('hardware', 'unknown hardware')}." if info.get("parameters") else "")
    blocks = [
        wr.MarkdownBlock(text="\n".join(what_was_trained[2:]).replace("[model.py](model.py)", "`model.py`")
                         .replace("[config.yaml](config.yaml)", "`config.yaml`") + "\n\n" + cost),
        wr.H2(text="Training"),
        wr.PanelGrid(runsets=[runset], panels=curves),
        wr.H2(text="Mistakes, explained with Grad-CAM"),
        wr.PanelGrid(runsets=[runset], panels=[wr.MediaBrowser(title="Grad-CAM gallery", media_keys=["explain/gallery"]),
                                               wr.MediaBrowser(title="Confusion matrix",
                                                               media_keys=["explain/confusion_matrix"])]),
        wr.WeaveBlockArtifactVersionedFile(entity=entity, project=project, artifact=f"explain-{run_id}",
                                           version="latest", file="misclassified.table.json"),
    ]
    return wr.Report(project=project, entity=entity, title=f"{config.name} run {folder.path.name}",
                     description="Training curves, model cost, settings and the Grad-CAM explanations of the "
                                 "misclassified test images.", blocks=blocks)


def publish(folder: RunFolder, config: Config, entity: str | None, what_was_trained: list) -> None:
    """Saves the report to W&B, or says in one line what to do first."""
    mode = wandb_mode()
    if mode != "online":
        print(f"W&B is {mode}, and a W&B Report shows a run that is on the server: sync it with credentials set "
              f"(wandb sync {folder.wandb}/offline-run-*), then run this command again.")
        return
    if entity is None:
        import wandb

        entity = wandb.Api().default_entity
    build_report(folder, config, entity, what_was_trained).save()  # prints the report's URL
