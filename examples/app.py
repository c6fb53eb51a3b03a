"""A demo page for certified predictions (Gradio): upload or pick an image, get the smoothed classifier's
certified class and l2 radius, the votes of the n noisy copies, a few of those copies, and optionally the same
image attacked by SmoothAdv at a chosen l2 radius, certified beside it.

    pip install -e ".[demo]"
    python examples/app.py                                     # the main job's model, runs/embedded/vit-lora-0.25
    python examples/app.py --model user/vit-lora-smoothing-0.25 --port 7860

The model is a smoothing folder or Hub id (``--model``, or the environment variable SMOOTHING_MODEL), loaded by
``pipeline("certified-image-classification", ...)``. The page runs unchanged as a Hugging Face Space's app.py
(set SMOOTHING_MODEL in the Space's settings; Spaces set the host and port through GRADIO_SERVER_NAME/_PORT).
Radii are l2 distances between [0, 1] pixel images at the model's certification size.
"""

from __future__ import annotations

import os
import sys
import tempfile
from dataclasses import dataclass, field

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # the page asks nothing of the network

import gradio as gr
import pandas as pd
import torch
from PIL import Image
from transformers import HfArgumentParser, pipeline

import smoothing_hf  # noqa: F401  (registers the "certified-image-classification" task)
from smoothing_hf.analysis.attacks import smooth_adv
from smoothing_hf.data import load_image_dataset

DEFAULT_MODEL = "runs/embedded/vit-lora-0.25"
SHOWN_NOISY = 8
DISPLAY_SIZE = 112  # noisy copies are enlarged (nearest neighbour) so that 28 x 28 digits are visible


@dataclass
class AppArguments:
    model: str = field(default_factory=lambda: os.environ.get("SMOOTHING_MODEL", DEFAULT_MODEL), metadata={
        "help": "A smoothing folder or Hub id (save_pretrained / push_to_hub). Default: $SMOOTHING_MODEL, else the "
                "main job's model, runs/embedded/vit-lora-0.25 (bash examples/embedded_default.sh makes it)."})
    examples_dataset: str | None = field(default="embedded:mnist", metadata={
        "help": "A dataset whose first validation images are offered as examples (embedded:mnist needs no network); "
                "'none' for no examples."})
    num_examples: int = field(default=6, metadata={"help": "How many example images to offer."})
    n0: int = field(default=100, metadata={"help": "Selection draws per image."})
    alpha: float = field(default=0.001, metadata={"help": "Error probability of each certificate, in (0, 1)."})
    batch_size: int = field(default=1000, metadata={"help": "Noisy samples per forward pass."})
    host: str | None = field(default=None, metadata={"help": "Address to serve on (default: Gradio's, 127.0.0.1)."})
    port: int | None = field(default=None, metadata={"help": "Port to serve on (default: Gradio's, 7860)."})


def load_pipeline(model: str):
    """The certified-image-classification pipeline of ``model``, or exit with what to do when the default model
    has not been made yet."""
    if model == DEFAULT_MODEL and not os.path.isdir(model):
        sys.exit(f"{model} does not exist: make it with `bash examples/embedded_default.sh` (about 5 minutes on 2 "
                 "CPU cores, offline), or pass --model (or set SMOOTHING_MODEL) to a smoothing folder or Hub id")
    return pipeline("certified-image-classification", model=model)


def example_images(arguments: AppArguments, folder: str) -> list[str]:
    """The first ``num_examples`` validation images of ``examples_dataset``, saved as PNGs in ``folder``."""
    if arguments.examples_dataset in (None, "none") or arguments.num_examples < 1:
        return []
    validation = load_image_dataset(arguments.examples_dataset)["validation"]
    paths = []
    for i in range(min(arguments.num_examples, len(validation))):
        paths.append(os.path.join(folder, f"example-{i}-label-{validation[i]['label']}.png"))
        validation[i]["image"].save(paths[-1])
    return paths


def as_picture(pixels: torch.Tensor) -> Image.Image:
    """[C, H, W] pixels as an enlarged PIL image, clipped to [0, 1] for display only (the model got them
    unclipped)."""
    array = (pixels.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    picture = Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array)
    return picture.resize((DISPLAY_SIZE, DISPLAY_SIZE * picture.height // picture.width), Image.NEAREST)


def certificate_text(answer: dict, n: int) -> str:
    if answer["abstain"]:
        return f"Abstain: no class is certified (the selected class got {answer['score']:.1%} of the {n:,} votes)"
    return (f"Certified class: {answer['label']} | radius {answer['certified_radius']:.3f} "
            f"(l2, [0, 1] pixels) | {answer['score']:.1%} of the {n:,} votes")


def build_demo(classifier, arguments: AppArguments, examples: list[str]) -> gr.Blocks:
    """The page: image and settings on the left, the certificate, votes and noisy copies on the right."""
    model = classifier.model
    num_labels = len(classifier.id2label)
    space = model.config.space(model.num_channels) or "l2 in [0, 1] pixels at the model's input size"

    def certify(image, n, seed, epsilon):
        if image is None:
            raise gr.Error("Upload or pick an image first")
        n, seed = int(n), int(seed)
        settings = dict(n0=arguments.n0, n=n, alpha=arguments.alpha, batch_size=arguments.batch_size, seed=seed)
        ranked = classifier(image, top_k=num_labels, **settings)
        votes = pd.DataFrame({"class": [entry["label"] or "abstain" for entry in ranked],
                              "votes": [round(entry["score"] * n) for entry in ranked]})
        noisy = [as_picture(p) for p in classifier.noisy_samples(image, count=min(SHOWN_NOISY, n), n=n, seed=seed)]
        attacked_picture, attacked_text = None, "Set an attack radius above 0 to attack the image."
        if epsilon > 0:
            pixels = classifier.preprocess(image)
            target = ranked[0]["label"] or ranked[1]["label"]  # the certified class, or the top-voted one
            label = {name: c for c, name in classifier.id2label.items()}[target]
            attacked = smooth_adv(model, pixels[None], [label], float(epsilon), seed=seed,
                                  batch_size=arguments.batch_size)[0]
            answer = classifier(attacked, **settings)
            attacked_picture = as_picture(attacked)
            distance = float((attacked - pixels).norm())
            attacked_text = (f"SmoothAdv at l2 radius {epsilon:g} (moved {distance:.3f}) against class {target}. "
                             + certificate_text(answer, n))
        return certificate_text(ranked[0], n), votes, noisy, attacked_picture, attacked_text

    with gr.Blocks(title="Certified image classification") as demo:
        gr.Markdown(
            f"# Certified image classification\nModel `{arguments.model}`: randomized smoothing at sigma = "
            f"{model.sigma:g}; radii are {space}. With probability at least 1 - alpha = "
            f"{1 - arguments.alpha:g} over the noise, the certified class holds for every image within the radius."
        )
        with gr.Row():
            with gr.Column():
                image = gr.Image(type="pil", label="Image", height=280, elem_id="image")
                if examples:
                    gr.Examples(examples=examples, inputs=image, label="Held-out digits")
                n = gr.Slider(100, 100_000, value=10_000, step=100, label="n (noisy copies counted)", elem_id="n")
                seed = gr.Number(value=0, precision=0, minimum=0, label="noise seed", elem_id="seed")
                epsilon = gr.Slider(0, 2, value=0, step=0.05, label="SmoothAdv attack radius (l2; 0 = no attack)",
                                    elem_id="epsilon")
                button = gr.Button("Certify", variant="primary", elem_id="certify")
            with gr.Column():
                certificate = gr.Textbox(label="Certificate", elem_id="certificate", interactive=False)
                votes = gr.BarPlot(x="class", y="votes", label="Votes of the n noisy copies", sort="-y",
                                   elem_id="votes")
                noisy = gr.Gallery(label=f"The first {SHOWN_NOISY} noisy copies the model classified (shown clipped "
                                   "to [0, 1])", columns=SHOWN_NOISY // 2, height=300, elem_id="noisy")
                with gr.Row():
                    attacked = gr.Image(label="Attacked image", interactive=False, height=200, elem_id="attacked")
                    attacked_text = gr.Textbox(label="Attacked image's certificate", interactive=False,
                                               elem_id="attacked-certificate")
        button.click(certify, [image, n, seed, epsilon], [certificate, votes, noisy, attacked, attacked_text])
    return demo


def main() -> None:
    (arguments,) = HfArgumentParser(AppArguments).parse_args_into_dataclasses()
    classifier = load_pipeline(arguments.model)
    folder = tempfile.mkdtemp(prefix="certified-demo-examples-")
    demo = build_demo(classifier, arguments, example_images(arguments, folder))
    demo.launch(server_name=arguments.host, server_port=arguments.port, allowed_paths=[folder])


if __name__ == "__main__":
    main()
