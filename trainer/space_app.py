"""A Gradio app for one exported ConvMixer (python -m trainer.export writes it as app.py, with model.py,
image_files.py, config.json and model.safetensors): upload an image, get the top classes and a Grad-CAM map of the
predicted class. It runs as a Hugging Face Space from that folder, or locally with `python app.py`.

It imports nothing from the trainer: the folder is all it needs (requirements.txt lists the packages).
"""

import json
from pathlib import Path

import gradio as gr
import numpy as np
import torch
from matplotlib import colormaps
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from image_files import as_cifar
from model import ConvMixer

HERE = Path(__file__).resolve().parent
CONFIG = json.loads((HERE / "config.json").read_text())
MODEL = ConvMixer.from_pretrained(str(HERE)).eval()
NAMES = CONFIG["class_names"]


def classify(image, opacity: float = 0.5):
    """({class: probability}, the 32 x 32 image under its Grad-CAM map, enlarged 8x) for a PIL image."""
    if image is None:  # submitted before an image was given
        return None, None
    pixels = torch.from_numpy(as_cifar(image))[None]
    mean, std = (torch.tensor(CONFIG[key]).view(1, 3, 1, 1) for key in ("mean", "std"))
    inputs = (pixels / 255.0 - mean) / std
    with torch.no_grad():
        probs = MODEL(inputs).softmax(1)[0]
    predicted = int(probs.argmax())
    with GradCAM(model=MODEL, target_layers=[MODEL.blocks[-1]]) as cam:
        heatmap = cam(input_tensor=inputs, targets=[ClassifierOutputTarget(predicted)])[0]
    rgb = pixels[0].permute(1, 2, 0).numpy() / 255.0
    shown = (1 - opacity) * rgb + opacity * colormaps["jet"](heatmap)[..., :3]
    shown = np.kron(shown, np.ones((8, 8, 1)))  # 32 px is too small to see: 8x, as blocks
    return {NAMES[k]: float(p) for k, p in enumerate(probs)}, (shown * 255).astype(np.uint8)


def description() -> str:
    accuracy = CONFIG.get("test_accuracy")
    if accuracy is None:
        return f"Classes: {', '.join(NAMES)}."
    how = " (with flip TTA; this app takes the image alone)" if CONFIG.get("test_accuracy_with_flip_tta") else ""
    return f"Test accuracy {accuracy:.2%} on CIFAR-10{how}; classes: {', '.join(NAMES)}."


demo = gr.Interface(
    fn=classify,
    inputs=[gr.Image(type="pil", label="an image (made 32 x 32, as CIFAR-10's)"),
            gr.Slider(0, 1, value=0.5, label="map opacity")],
    outputs=[gr.Label(num_top_classes=3, label="classes"), gr.Image(label="Grad-CAM of the predicted class")],
    title=CONFIG.get("title", "ConvMixer on CIFAR-10"),
    description=description(),
    flagging_mode="never",
)

if __name__ == "__main__":
    demo.launch()
