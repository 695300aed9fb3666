"""`python -m trainer.predict RUN_OR_WEIGHTS PATH... [--topk K] [--format csv|json] [--cam DIR]`: a trained model's
top-k classes for image files.

PATHs are image files or folders of them (any format and size PIL reads; trainer/image_files.py makes each CIFAR's
32 x 32). The images are evaluated as the run's own evaluation was (its device choice, mixed precision, passes,
memory format and normalization), so a CIFAR test image saved as PNG gets exactly the run's prediction. One row per
image, in the order given, on stdout. A file that is not an image gets one line on stderr and the others go on; the
exit status is then 1. --cam DIR writes each image with the map of the run's gallery method for its predicted class.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

from trainer.errors import ConfigError, exit_cleanly


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m trainer.predict", description=__doc__.splitlines()[0].split(": ", 1)[1])
    p.add_argument("run", type=Path, help="a run folder, or a .safetensors weights file or checkpoint inside one")
    p.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="image files, or folders of them")
    p.add_argument("--topk", type=int, default=3, help="classes per image, most probable first (default 3)")
    p.add_argument("--format", choices=("csv", "json"), default="csv", help="csv (default) or json, on stdout")
    p.add_argument("--cam", type=Path, metavar="DIR", help="also write <image>.cam.png into DIR: the image and the "
                                                           "map for its predicted class, 4x enlarged")
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    from trainer.image_files import read_images
    from trainer.trained_run import Evaluation, open_run

    run = open_run(args.run)
    classes = len(run.class_names)
    if not 1 <= args.topk <= classes:
        raise ConfigError(f"--topk {args.topk}: the model has {classes} classes; give 1 to {classes}.")
    files = read_images(args.paths)
    for path, why in files.failed:
        print(f"{path}: {why}; skipped.", file=sys.stderr)
    if not files.paths:
        raise ConfigError(f"No image could be read from {', '.join(map(str, args.paths))}; give image files (any "
                          f"format PIL reads) or folders of them.")
    evaluation = Evaluation(run)
    predictions = evaluation.predict_images(files.images)
    if not evaluation.accelerator.is_main_process:
        return 0
    # A stable sort: of two classes with the same probability (bf16 logits can tie), the first is the run's
    # prediction (argmax), and comes first here too; topk would order them either way.
    probs, order = predictions.probs.sort(dim=1, descending=True, stable=True)
    rows = [{"path": str(path), "top": [{"class": run.class_names[c], "probability": round(float(p), 6)}
                                        for c, p in zip(classes_[:args.topk], probs_[:args.topk])]}
            for path, classes_, probs_ in zip(files.paths, order.tolist(), probs.tolist())]
    write(rows, args.format, args.topk)
    if args.cam:
        write_cams(args.cam, run, evaluation, files, predictions.preds)
    return 1 if files.failed else 0


def write(rows: list, form: str, topk: int) -> None:
    if form == "json":
        print(json.dumps(rows, indent=2))
        return
    writer = csv.writer(sys.stdout)
    writer.writerow(["path"] + [f"{key}_{k}" for k in range(1, topk + 1) for key in ("class", "probability")])
    for row in rows:
        writer.writerow([row["path"]] + [value for guess in row["top"] for value in (guess["class"],
                                                                                     f"{guess['probability']:.6f}")])


def write_cams(folder: Path, run, evaluation, files, preds) -> None:
    import numpy as np
    from PIL import Image

    from trainer.plots import enlarge

    method, block = run.gallery_method
    overlays = evaluation.cam_overlays(files.images, preds, method, block)
    folder.mkdir(parents=True, exist_ok=True)
    used = set()
    for path, image, shown in zip(files.paths, files.images, overlays):
        name, k = f"{path.stem}.cam.png", 1
        while name in used:  # two images of the same name from different folders
            k += 1
            name = f"{path.stem}-{k}.cam.png"
        used.add(name)
        side_by_side = np.concatenate([image.permute(1, 2, 0).numpy(), shown], axis=1)
        Image.fromarray(enlarge(side_by_side, 4)).save(folder / name)
    print(f"CAM maps ({method}" + (f" at block {block}" if block is not None else "") + f") written to {folder}.",
          file=sys.stderr)


if __name__ == "__main__":
    exit_cleanly(main)
