"""`python -m trainer.app RUN [--host 127.0.0.1] [--port 7860]`: a trained run in the browser (Gradio; install with
`pip install -e ".[app]"`).

    Classify   upload an image, or pick one of the test images: the top classes, and the CAM map of the method,
               mixer block and class you choose
    Mistakes   the run's misclassified test images, filtered by true and predicted class, most confident first, with
               the maps of the predicted and the true class
    Report     the training curves, the confusion matrix and the accuracy of each class

It listens on 127.0.0.1 unless told otherwise, and needs no internet: no analytics, fonts or scripts from outside.
The work behind each page is trainer/explorer.py.
"""

import argparse
import atexit
import csv
import hashlib
import importlib.util
import io
import os
import shutil
import socket
import tempfile
from pathlib import Path

from trainer.errors import ConfigError, exit_cleanly

PICKS = 40  # test images offered on the Classify page
SHOWN_MISTAKES = 60  # the most confident of those that match the filters
ANY = "any"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m trainer.app", description=__doc__.splitlines()[0].split(": ", 1)[1])
    p.add_argument("run", type=Path, help="a run folder, or a .safetensors weights file or checkpoint inside one")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only; "
                                                        "0.0.0.0 opens it to the network)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # read when gradio is imported: no calls home
    if importlib.util.find_spec("gradio") is None:
        raise ConfigError("The app needs Gradio, which is not installed; install it with pip install -e \".[app]\" "
                          "(or pip install gradio).")
    check_free(args.host, args.port)
    from trainer.explorer import Explorer
    from trainer.trained_run import open_run

    explorer = Explorer(open_run(args.run))
    if explorer.missing_data:
        print(f"{explorer.missing_data}: the app classifies uploaded images only. Run it where data.name is "
              f"readable to browse the test images.")
    build(explorer).launch(server_name=args.host, server_port=args.port, show_error=True)
    return 0


class ServedImages:
    """Images handed to Gradio as PNG files, one per content, each written once and renamed into place. Given an
    array, Gradio rewrites the cached file of that content in place, so a browser still fetching the same image
    from an earlier output (a test image in both galleries) gets it cut short; a file it copies atomically."""

    def __init__(self):
        self.folder = Path(tempfile.mkdtemp(prefix="convmixer-app-"))  # the system's temp folder: Gradio serves it
        atexit.register(shutil.rmtree, self.folder, True)

    def __call__(self, pixels) -> str:
        """The path of a PNG of `pixels` (H x W x 3 uint8)."""
        from PIL import Image

        png = io.BytesIO()
        Image.fromarray(pixels).save(png, format="PNG")
        path = self.folder / f"{hashlib.sha256(png.getvalue()).hexdigest()}.png"
        if not path.exists():
            fd, staging = tempfile.mkstemp(dir=self.folder, suffix=".tmp")
            with os.fdopen(fd, "wb") as f:
                f.write(png.getvalue())
            os.replace(staging, path)
        return str(path)


def check_free(host: str, port: int) -> None:
    """Says now, not after loading the model and the data, that the address cannot be listened on."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: a restart within a minute works
        try:
            probe.bind((host, port))
        except OSError as error:
            raise ConfigError(f"Cannot listen on {host}:{port} ({error.strerror}); another program may be using the "
                              f"port: give another with --port.") from None


def build(explorer):
    """The app's three pages, wired to `explorer`."""
    import gradio as gr

    from trainer.config import CAM_METHODS
    from trainer.plots import enlarge
    from trainer.image_files import as_cifar

    run, names = explorer.run, explorer.names
    served = ServedImages()
    folder, depth = run.folder, run.config.model.depth
    method, block = run.gallery_method
    accuracy = run.test_accuracy

    with gr.Blocks(title="ConvMixer explorer", analytics_enabled=False) as app:
        gr.Markdown(f"## ConvMixer-{run.config.model.dim}/{depth}: `{run.weights}`"
                    + (f" (test accuracy {accuracy:.2%})" if accuracy is not None else ""))
        with gr.Row():
            method_choice = gr.Dropdown(list(CAM_METHODS), value=method, label="CAM method")
            block_choice = gr.Dropdown([str(b) for b in range(depth)], value=str(depth - 1 if block is None else block),
                                       label="mixer block (FullGrad uses them all)")
            opacity = gr.Slider(0, 1, value=0.5, step=0.05, label="map opacity")

        with gr.Tab("Classify"):
            with gr.Row():
                with gr.Column():
                    image = gr.Image(type="pil", image_mode="RGB", sources=["upload", "clipboard"],
                                     label="an image: centre-cropped and resized to 32 x 32, as CIFAR-10's",
                                     elem_id="upload")
                    target = gr.Dropdown(["predicted"] + names, value="predicted", label="map of the class")
                    picks = gr.Gallery([(served(enlarge(explorer.test_image(r))), names[int(explorer.test.labels[r])])
                                        for r in range(min(PICKS, len(explorer.test)))] if explorer.test is not None
                                       else None, label="or pick a test image", columns=8, height=260,
                                       allow_preview=False, visible=explorer.test is not None)
                with gr.Column():
                    top = gr.Label(num_top_classes=5, label="top classes", elem_id="top-classes")
                    cam = gr.Image(label="CAM map", interactive=False, elem_id="cam")

        with gr.Tab("Mistakes"):
            if explorer.missing_data:
                gr.Markdown(explorer.missing_data + ".")
            with gr.Row():
                true_filter = gr.Dropdown([ANY] + names, value=ANY, label="true class")
                predicted_filter = gr.Dropdown([ANY] + names, value=ANY, label="predicted class")
            found = gr.Markdown()
            mistakes = gr.Gallery(label="true class as predicted class, confidence; most confident first", columns=8,
                                  height=360, allow_preview=False, elem_id="mistakes")
            shown_rows = gr.State([])
            with gr.Row():
                predicted_map = gr.Image(label="map of the predicted class", interactive=False, elem_id="predicted-map")
                true_map = gr.Image(label="map of the true class", interactive=False, elem_id="true-map")

        with gr.Tab("Report"):
            report_page(gr, folder)

        def classify(picture, method, block, target, opacity):
            if picture is None:
                return None, None
            result = explorer.classify(as_cifar(picture), method, int(block),
                                       None if target == "predicted" else target, opacity)
            return result.probabilities, served(result.shown)

        def pick(event: gr.SelectData):
            from PIL import Image

            return Image.fromarray(explorer.test_image(event.index).transpose(1, 2, 0))

        def filter_mistakes(true, predicted):
            matching = explorer.mistakes_where(None if true == ANY else true, None if predicted == ANY else predicted)
            shown = matching[:SHOWN_MISTAKES]
            gallery = [(served(enlarge(explorer.test_image(m.row))),
                        f"{m.true} as {m.predicted}, {m.confidence:.0%}") for m in shown]
            count = f"{len(matching):,} of {len(explorer.mistakes):,} mistakes" + (
                f"; the {len(shown)} most confident shown" if len(matching) > len(shown) else "")
            return gallery, count, [m.row for m in shown], None, None

        def show_mistake(rows, method, block, opacity, event: gr.SelectData):
            m = next(m for m in explorer.mistakes if m.row == rows[event.index])
            image = explorer.test_image(m.row)
            return (gr.Image(served(explorer.map_of(image, names.index(m.predicted), method, int(block), opacity)),
                             label=f"map of the predicted class: {m.predicted} ({m.confidence:.0%})"),
                    gr.Image(served(explorer.map_of(image, names.index(m.true), method, int(block), opacity)),
                             label=f"map of the true class: {m.true}"))

        settings = [method_choice, block_choice, target, opacity]
        gr.on([image.change] + [s.change for s in settings], classify, [image] + settings, [top, cam])
        picks.select(pick, None, image)
        gr.on([app.load, true_filter.change, predicted_filter.change], filter_mistakes, [true_filter, predicted_filter],
              [mistakes, found, shown_rows, predicted_map, true_map])
        mistakes.select(show_mistake, [shown_rows, method_choice, block_choice, opacity], [predicted_map, true_map])
    return app


def report_page(gr, folder) -> None:
    """The run's curves, confusion matrix and per-class accuracy, as its report wrote them."""
    if not folder.curves.is_file() and not folder.confusion_matrix.is_file():
        gr.Markdown(f"No report in {folder.path} yet: `python -m trainer.report {folder.path}` writes it.")
    if folder.curves.is_file():
        gr.Image(str(folder.curves), label="training curves", interactive=False)
    with gr.Row():
        if folder.confusion_matrix.is_file():
            gr.Image(str(folder.confusion_matrix), label="confusion matrix", interactive=False)
        if folder.per_class_accuracy.is_file():
            with open(folder.per_class_accuracy, newline="") as f:
                rows = list(csv.reader(f))
            gr.Dataframe(rows[1:], headers=rows[0], label="accuracy of each class", interactive=False)


if __name__ == "__main__":
    exit_cleanly(main)
