"""`python -m trainer.explain RUN [section.key=value ...]`: explains a finished run or a checkpoint again, e.g. with
other explain.* settings. It evaluates the test set as the run's own evaluation did (its precision, passes and memory
format), then writes over the run's explain/ folder, summary and report for its final weights (model.safetensors),
or into explain-<weights>/ beside them for other weights (best.safetensors, a checkpoint). Also on several processes:

    python -m trainer.explain runs/<run>                      # or: accelerate launch -m trainer.explain ...
    python -m trainer.explain runs/<run>/checkpoints/last.safetensors explain.num_images=20

The analysis is trainer/explanations.py. torch and grad-cam take seconds to import, so they are imported after the
command line is read: --help and bad settings answer at once.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from trainer.errors import exit_cleanly


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.explain",
                                     description="CAM explanations of a trained run's test-set mistakes, and the CAM "
                                                 "methods compared on them.")
    parser.add_argument("target", type=Path, help="a run folder, or a .safetensors checkpoint inside one")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value",
                        help="e.g. explain.num_images=20 explain.methods=all explain.blocks=all")
    args = parser.parse_intermixed_args(argv)

    from trainer.trained_run import Evaluation, open_run

    run = open_run(args.target, args.overrides)
    evaluation = Evaluation(run)  # checks the settings for this machine and number of processes

    from trainer.data import load_cifar
    from trainer.explain_outputs import write_explanation
    from trainer.explanations import explain
    from trainer.report import write_report

    accelerator, config, folder = evaluation.accelerator, evaluation.config, run.folder
    with accelerator.local_main_process_first():  # one decode per machine, as in training
        data = load_cifar(config.data, config.model.num_classes)
    predictions = evaluation.predict(data.test)
    if accelerator.is_main_process:
        explanation = explain(evaluation.plain_model, predictions, data.test.images, config)
        # The run's explain/ and report describe its final weights; other weights (best.safetensors, a checkpoint)
        # get a folder of their own beside it.
        final = run.weights == folder.weights
        out = folder.explain if final else folder.path / f"explain-{run.weights.stem}"
        replacing = out.exists()
        write_explanation(out, explanation, data.class_names, config.explain)
        updated = final and folder.summary.is_file()
        if updated:
            folder.write_summary({**folder.read_summary(), "explain": explanation.summary(data.class_names)})
        if final and folder.config.is_file():
            write_report(folder)
        print(f"Test accuracy {predictions.accuracy:.4f} on {len(predictions.labels):,} images, "
              f"{explanation.mistakes:,} misclassified. Explanations of {run.weights.name} written to {out}"
              + (" (replacing the earlier ones)" if replacing else "")
              + (f"; {folder.summary} and {folder.report.name} updated" if updated else "") + ".")
    return 0


if __name__ == "__main__":
    exit_cleanly(main)
