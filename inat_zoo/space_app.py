"""Gradio app of a Hugging Face Space that serves one inat_zoo model from the Hub.

This file is a template: ``inat-zoo push --space`` (:mod:`inat_zoo.space`) copies it into the Space as ``app.py``
with the constants below filled in. It must stay standalone: a Space cannot ``pip install inat_zoo`` (it is not on
PyPI), so it imports only torch, timm, Pillow and gradio, and registers an ``inat_*`` architecture with timm by
importing the model file the Space carries next to it (``ARCHITECTURE_MODULES``) before ``timm.create_model``.
gradio is imported only to build the page, so the model part runs (and is tested) without it.
"""

import importlib

import timm
import torch
from PIL import Image, ImageOps

MODEL_ID = "hf-hub:USER/NAME"  # filled in by inat_zoo.space
ARCHITECTURE_MODULES = []  # filled in by inat_zoo.space: model files beside app.py that register inat_* with timm
TITLE = "inat_zoo model"  # filled in by inat_zoo.space
DESCRIPTION = ""  # filled in by inat_zoo.space (Markdown under the title)
TOP_K = 5

for _module in ARCHITECTURE_MODULES:
    importlib.import_module(_module)  # runs its @register_model entry points: timm can now build the architecture

model = timm.create_model(MODEL_ID, pretrained=True).eval()
data_config = timm.data.resolve_model_data_config(model)
transform = timm.data.create_transform(**data_config, is_training=False)
labels = model.pretrained_cfg.get("label_names") or [f"class_{i}" for i in range(model.num_classes)]


def classify(image_path):
    """``{label: probability}`` of the top 5 for an image file (EXIF orientation applied, the model's own
    evaluation transform, float32 softmax)."""
    if not image_path:
        return {}
    with Image.open(image_path) as image:
        rgb = ImageOps.exif_transpose(image).convert("RGB")
    with torch.no_grad():
        probabilities = model(transform(rgb).unsqueeze(0)).softmax(-1)[0]
    top = probabilities.topk(min(TOP_K, len(labels)))
    return {labels[i]: float(p) for p, i in zip(top.values.tolist(), top.indices.tolist(), strict=True)}


def build_demo():
    """The page: a photo in, the top-5 labels out (``/classify`` endpoint)."""
    import gradio as gr

    with gr.Blocks(title=TITLE) as demo:
        gr.Markdown(f"# {TITLE}\n{DESCRIPTION}")
        with gr.Row():
            image = gr.Image(type="filepath", image_mode=None, label="Photo")
            top = gr.Label(num_top_classes=TOP_K, label=f"Top {TOP_K}")
        gr.Button("Classify", variant="primary").click(classify, inputs=image, outputs=top, api_name="classify")
    return demo


if __name__ == "__main__":
    build_demo().launch()
