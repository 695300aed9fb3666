"""`python -m trainer.export RUN OUT [--push REPO_ID]`: a trained run as a folder in the Hugging Face Hub's model
layout, which also runs as a Gradio Space:

    model.safetensors, config.json   huggingface_hub's PyTorchModelHubMixin: ConvMixer.from_pretrained(OUT)
    model.py, image_files.py         the model's code and the image preprocessing, as the run used them
    app.py, requirements.txt         a Gradio app (trainer/space_app.py): upload an image, top classes, Grad-CAM
    README.md                        the model card: the Hub's metadata header, accuracy, cost, training log, gallery,
                                     intended use and limits, how to load it (also into timm's ConvMixer)
    gallery.png, train.log           from the run

--push uploads the folder to the Hub with huggingface_hub; without a connection it says so in one line and keeps
the folder.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

from trainer.errors import ConfigError, exit_cleanly

PACKAGE = Path(__file__).resolve().parent
REQUIREMENTS = ["torch", "einops", "huggingface_hub", "safetensors", "numpy", "pillow", "matplotlib", "grad-cam",
                "gradio"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.export", description=__doc__.splitlines()[0].split(": ")[1])
    parser.add_argument("run", type=Path, help="a run folder, or a .safetensors weights file or checkpoint inside one")
    parser.add_argument("out", type=Path, help="the folder to write (created; an existing one must be empty)")
    parser.add_argument("--push", metavar="REPO_ID", help="also upload it to the Hugging Face Hub, e.g. you/convmixer")
    args = parser.parse_args(argv)
    if args.out.exists() and (not args.out.is_dir() or any(args.out.iterdir())):
        raise ConfigError(f"{args.out} exists and is not an empty folder; give a new folder to export into (nothing "
                          f"was written).")
    if args.out.exists() and args.out.samefile(Path.cwd()):
        raise ConfigError(f"{args.out} is the folder you are in, and export replaces its folder with the one it "
                          f"writes; give a new one, such as ./export (nothing was written).")
    from trainer.trained_run import open_run

    run = open_run(args.run)
    write_folder(run, args.out)
    print(f"Exported {run.weights} to {args.out}: load it with ConvMixer.from_pretrained({str(args.out)!r}), run "
          f"its app with python {args.out / 'app.py'}.")
    return push(args.out, args.push) if args.push else 0


def write_folder(run, out: Path) -> None:
    """Writes the folder aside, then renames it into place (over `out` if that is an empty folder): a failure
    leaves no half-written export."""
    from trainer.checkpoint import current_umask

    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        config = model_config(run)
        run.model.save_pretrained(staging, config=config)
        for source, name in ((PACKAGE / "model.py", "model.py"), (PACKAGE / "image_files.py", "image_files.py"),
                             (PACKAGE / "space_app.py", "app.py"), (run.folder.gallery, "gallery.png"),
                             (run.folder.train_log, "train.log")):
            if source.is_file():
                shutil.copyfile(source, staging / name)
        (staging / "requirements.txt").write_text("\n".join(REQUIREMENTS) + "\n")
        model_card(run, config, staging).save(staging / "README.md")
        staging.chmod(0o777 & ~current_umask())  # mkdtemp's folder is private; an export is for sharing
        try:
            os.replace(staging, out)  # POSIX: replaces an empty folder in one step
        except OSError as error:  # a file appeared in it meanwhile, or it is a mount point
            raise ConfigError(f"{out} could not be replaced by the export ({error.strerror}); give a new folder "
                              f"(nothing was written).") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def model_config(run) -> dict:
    """config.json: ConvMixer's arguments (what from_pretrained reads), and what the app and a reader need."""
    m, a = run.config.model, run.config.augment
    return {"dim": m.dim, "depth": m.depth, "kernel_size": m.kernel_size, "patch_size": m.patch_size,
            "num_classes": m.num_classes, "class_names": run.class_names, "image_size": 32, "mean": a.mean,
            "std": a.std, "test_accuracy": run.test_accuracy, "test_accuracy_with_flip_tta": run.config.train.tta,
            "title": f"ConvMixer-{m.dim}/{m.depth} on CIFAR-10"}


def model_card(run, config: dict, folder: Path):
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    info = {**run.folder.read_run_info(), **run.folder.read_summary()}
    data = info.get("data") or run.config.data.name
    info = {**info, "data": data, "jpeg": stored_as_jpeg(info, data)}  # once: it reads the data for older runs
    accuracy = run.test_accuracy
    card = ModelCardData(
        library_name="pytorch", pipeline_tag="image-classification", datasets=["uoft-cs/cifar10"],
        tags=["image-classification", "convmixer", "cifar10", "pytorch_model_hub_mixin", "model_hub_mixin",
              "grad-cam"], metrics=["accuracy"], model_name=config["title"],
        eval_results=[EvalResult(task_type="image-classification", dataset_type="uoft-cs/cifar10",
                                 dataset_name="CIFAR-10" + (" (stored as JPEG)" if info["jpeg"] else ""),
                                 dataset_split="test", metric_type="accuracy",
                                 metric_name="accuracy (flip TTA)" if run.config.train.tta else "accuracy",
                                 metric_value=round(accuracy, 4))] if accuracy is not None else None)
    # A Space made from this folder runs app.py with Gradio.
    header = card.to_yaml() + "\nsdk: gradio\napp_file: app.py"
    return ModelCard(f"---\n{header}\n---\n\n" + "\n".join(card_text(run, config, info, folder)))


def card_text(run, config: dict, info: dict, folder: Path) -> list:
    from trainer.report import changed_settings

    m, t, accuracy = run.config.model, run.config.train, run.test_accuracy
    log = run.folder.train_log.read_text().strip() if run.folder.train_log.is_file() else "(no training log)"
    lines = [f"# {config['title']}", "",
             f"ConvMixer (\"Patches Are All You Need?\", Trockman & Kolter) with {m.dim} channels, {m.depth} blocks, "
             f"kernel {m.kernel_size}, patch {m.patch_size}, trained on CIFAR-10 by convmixer-trainer (the "
             f"recipe of [locuslab/convmixer-cifar10](https://github.com/locuslab/convmixer-cifar10) as reusable "
             f"code)" + (f"; **test accuracy {accuracy:.2%}**" if accuracy is not None else "")
             + (" with flip test-time augmentation (`train.tta`: the mean of the logits of each image and of its "
                "mirror; `from_pretrained`, timm and app.py take the image alone)" if accuracy is not None and t.tta
                else "") + ".",
             *which_weights(run, info), "",
             "## Use", "", "```python",
             "from model import ConvMixer            # model.py, in this folder",
             "model = ConvMixer.from_pretrained(\".\")  # or the repo id on the Hub",
             "```", "",
             "Inputs: 32 x 32 RGB images scaled to [0, 1] and normalized with `mean` and `std` from config.json; "
             "`image_files.as_cifar` turns any image into one (centre-cropped to a square, resized with bicubic "
             "filtering). Outputs: logits of the classes in config.json's `class_names`. `python app.py` starts a "
             "Gradio app (top classes and a Grad-CAM map); this folder also runs as a Hugging Face Space.", "",
             "In timm: the same weights load into `timm.models.convmixer.ConvMixer` and give identical logits:", "",
             "```python", "import timm.models.convmixer", "from safetensors.torch import load_file",
             "from model import timm_state_dict", "",
             f"model = timm.models.convmixer.ConvMixer(dim={m.dim}, depth={m.depth}, kernel_size={m.kernel_size}, "
             f"patch_size={m.patch_size}, num_classes={m.num_classes})",
             "model.load_state_dict(timm_state_dict(load_file(\"model.safetensors\")))", "```", "",
             "## Cost", "",
             f"{info.get('parameters', 0):,} parameters, {info.get('mult_adds_per_image', 0) / 1e6:.1f} M "
             f"multiply-adds per 32 x 32 image.", "",
             "## Training", "",
             f"{t.epochs} epochs, global batch {t.batch_size}, AdamW with a one-cycle learning rate peaking at "
             f"{t.lr_max}, weight decay {t.weight_decay}; RandAugment({run.config.augment.randaug_n}, "
             f"{run.config.augment.randaug_m}). Hardware: {info.get('hardware', 'not recorded')}; mixed precision "
             f"{info.get('mixed_precision', 'not recorded')}"
             + (f"; wall time {info['wall_seconds']:.0f} s." if "wall_seconds" in info else "."),
             "", "Settings that differ from the reference recipe:", "", *changed_settings(run.config, recipe_keys()),
             "", "Training log (the reference's format):", "", "```", log, "```", ""]
    if (folder / "gallery.png").is_file():
        lines += ["## Its most confident mistakes", "",
                  "Test images it got wrong, with the CAM map for the predicted and the true class:", "",
                  "![gallery](gallery.png)", ""]
    lines += ["## Intended use and limits", "",
              "A small model for learning and experiments: the ten CIFAR-10 classes, on tiny 32 x 32 images. It is "
              "not meant for decisions about people or for images unlike CIFAR-10's (other classes, other scales, "
              "medical or aerial images): every image gets one of the ten classes, however unlike them it is.",
              f"It was trained and tested on the CIFAR-10 copy at `{info['data']}`"
              + (" (its images are stored as JPEG, whose artefacts the original lossless CIFAR-10 images do not "
                 "have: accuracy on the original images can differ)." if info["jpeg"] else ".")]
    return lines


def recipe_keys() -> set:
    """The settings that made the model (not where the run kept its files and logs, nor how fast it ran): a card is
    public, and local paths have no place in it."""
    from trainer.config import settings

    machine = ("data.name", "data.cache_dir", "data.image_column", "data.label_column", "train.micro_batch_size",
               "train.fast_depthwise_grad", "train.fast_pointwise_grad", "train.fused_gelu_norm",
               "train.channels_last", "train.compile", "train.cudnn_benchmark", "train.compile_cache")
    return {key for key, *_ in settings()
            if key.split(".")[0] in ("seed", "model", "data", "augment", "train") and key not in machine}


def which_weights(run, info: dict) -> list:
    """A line naming the weights when they are not the run's final ones."""
    best = info.get("best") or {}
    if run.weights == run.folder.weights:
        return []
    if run.weights == run.folder.best_weights and best.get("epoch") is not None:
        return ["", f"The weights are those of the run's best epoch, {best['epoch']}, chosen by {best['selected_by']}"
                    + (" (an optimistic choice: the accuracy above is on the set that chose it)."
                       if best["selected_by"] == "test accuracy" else ".")]
    return ["", f"The weights are `{run.weights.name}` of the run; no accuracy is claimed for them."]


def stored_as_jpeg(info: dict, data: str) -> bool:
    """Whether the run's test images were stored as JPEG: as its run.json says, or (a run older than that record)
    as a local dataset in the hub layout at `data` keeps them."""
    if "test_format" in info:
        return info["test_format"] == "JPEG"
    files = sorted(Path(data).expanduser().glob("**/test-*.parquet")) if Path(data).expanduser().is_dir() else []
    if not files:
        return False
    import pyarrow.parquet as pq

    column = pq.read_table(files[0]).column(0)
    first = column[0].as_py() if len(column) else None
    return isinstance(first, dict) and (first.get("bytes") or b"")[:3] == b"\xff\xd8\xff"


def push(folder: Path, repo_id: str) -> int:
    """Uploads the folder; offline or unreachable, one line and exit status 1 (the folder stays)."""
    from huggingface_hub import HfApi
    from huggingface_hub.constants import HF_HUB_OFFLINE

    later = f"the folder is kept at {folder}; push it later with: hf upload {repo_id} {folder} ."
    if HF_HUB_OFFLINE:
        print(f"Not pushed: HF_HUB_OFFLINE is set; {later}", file=sys.stderr)
        return 1
    try:
        api = HfApi()
        api.create_repo(repo_id, exist_ok=True)
        url = api.upload_folder(folder_path=str(folder), repo_id=repo_id, commit_message="Export from convmixer-trainer")
    except Exception as error:  # no connection, no credentials, no rights: the same advice
        reason = " ".join(str(error).split())[:160]
        print(f"Not pushed: the Hugging Face Hub could not be reached or refused ({type(error).__name__}: {reason}); "
              f"{later}", file=sys.stderr)
        return 1
    print(f"Pushed to {url}")
    return 0


if __name__ == "__main__":
    exit_cleanly(main)
