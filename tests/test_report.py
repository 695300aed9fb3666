"""Every run's report.md: the assignment's pieces, links that resolve, and what is missing said; the W&B Report."""

import re
import shutil

import wandb_workspaces.reports.v2 as wr

from trainer import plots
from trainer.config import load_config
from trainer.report import main as report_main, trained
from trainer.run_folder import RunFolder

LINK = re.compile(r"\]\(([^)]+)\)")


def links_resolve(folder: RunFolder) -> list:
    """The report's relative links; each must name a file in the run folder (so the folder can be zipped as is)."""
    links = LINK.findall(folder.report.read_text())
    missing = [link for link in links if not (folder.path / link).is_file()]
    assert links and not missing, missing
    return links


def test_a_finished_run_reports_the_assignment(trained_run):
    folder = RunFolder(trained_run[0])
    text = folder.report.read_text()
    for line in folder.train_log.read_text().splitlines():  # the training log in the seed's format
        assert line in text
    summary = folder.read_summary()
    assert f"{summary['parameters']:,} parameters" in text and "multiply-adds" in text and "Total params" in text
    assert "**Finished**" in text and f"{summary['final_test_acc']:.2%}" in text
    links = links_resolve(folder)
    for needed in ("model.py", "config.yaml", "curves.png", "explain/gallery.png", "explain/confusion_matrix.png",
                   "explain/methods.png"):
        assert needed in links, needed
    assert "ROAD combined" in text and "random maps" in text and "| sobel (baseline) |" in text
    assert "`model.dim` | 32 | 256" in text  # a setting that differs from the reference recipe


def test_the_curves_have_one_point_per_epoch(trained_run, tmp_path):
    folder = RunFolder(trained_run[0])
    rows = folder.metric_rows()
    assert folder.curves.is_file() and len(rows) == load_config(str(folder.config)).train.epochs
    drawn = plots.curves(tmp_path / "curves.png", rows)  # what curves.png was drawn from
    assert drawn["epoch"] == [0, 1]
    for key in ("train_acc", "test_acc", "train_loss", "test_loss", "lr"):
        assert drawn[key] == [row[key] for row in rows], key
    # and the run's curves.png is that very plot: matplotlib draws the same series to the same bytes
    assert folder.curves.read_bytes() == (tmp_path / "curves.png").read_bytes()


def test_an_old_run_folder_gets_a_report_from_the_command_line(trained_run, tmp_path, capsys):
    old = tmp_path / "old"
    shutil.copytree(trained_run[0], old, ignore=shutil.ignore_patterns("wandb", "report.md", "curves.png", "run.json",
                                                                       "model.py"))
    assert report_main([str(old)]) == 0
    folder = RunFolder(old)
    links_resolve(folder)
    text = folder.report.read_text()
    assert "was not saved with this run" in text and folder.curves.is_file()


def test_the_wandb_report_is_built_and_validated_offline(trained_run):
    from trainer.wandb_report import build_report

    folder = RunFolder(trained_run[0])
    config = load_config(str(folder.config))
    report = build_report(folder, config, "someone", trained(folder, config))  # pydantic checks each field
    assert report.entity == "someone" and report.project == "convmixer-cifar10"
    # Each block and panel turns into the report's wire format as save() would send it (a runset alone looks its
    # project up on the server, so the panel grids are converted panel by panel here).
    for block in report.blocks:
        for part in (block.panels if isinstance(block, wr.PanelGrid) else [block]):
            assert part._to_model() is not None
    plotted = {tuple(panel.y) for block in report.blocks if isinstance(block, wr.PanelGrid)
               for panel in block.panels if isinstance(panel, wr.LinePlot)}
    assert plotted == {("train_acc", "test_acc"), ("train_loss", "test_loss"), ("lr",)}
    table = next(b for b in report.blocks if isinstance(b, wr.WeaveBlockArtifactVersionedFile))
    assert table.artifact == f"explain-{folder.wandb_run_id.read_text().strip()}"
    text = next(b for b in report.blocks if isinstance(b, wr.MarkdownBlock)).text
    assert "parameters" in text and "model.dim" in text


def test_the_wandb_report_command_offline_says_what_to_do_and_online_saves(trained_run, tmp_path, monkeypatch,
                                                                           capsys):
    run = tmp_path / "run"
    shutil.copytree(trained_run[0], run)
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert report_main([str(run), "--wandb"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1].startswith("W&B is offline") and "wandb sync" in lines[-1]
    saved = []
    monkeypatch.setattr(wr.Report, "save", lambda self, **kwargs: saved.append(self) or self)  # no server here
    monkeypatch.setenv("WANDB_MODE", "online")
    assert report_main([str(run), "--wandb", "--entity", "someone"]) == 0
    assert len(saved) == 1 and saved[0].title.endswith(run.name)
