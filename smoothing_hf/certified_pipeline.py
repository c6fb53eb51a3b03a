"""The ``"certified-image-classification"`` task of transformers' ``pipeline()``: certified predictions for images.

``pipeline("certified-image-classification", model=folder_or_repo_id)`` works after ``import smoothing_hf``
(``smoothing_hf.registration`` registers the task when ``transformers.pipelines`` is imported). It takes what the
image-classification pipeline takes (a PIL image, a path, a URL, a base64 string, a numpy array, or a list of
them), resizes and rescales each image to [0, 1] pixels with the model's ``image_transform()`` (its image
processor, or its ``certify_size``), and answers with Cohen's CERTIFY through the model's own ``Smoother``:

    {"label": "7", "score": 0.93, "certified_radius": 0.61, "abstain": False}

``score`` is the share of the n estimation draws that went to the top class, ``certified_radius`` the l2 radius
in [0, 1] pixels of the model's certification space (0.0 when abstaining, ``label`` then None). With
``mode="predict"``, Cohen's PREDICT instead: no radius (``certified_radius`` None). The images of one call share
forward batches, and the answers are ``model.certify``'s on the stacked pixels with the same seed: one image
gets ``seed`` itself, image i of a list gets ``smoothing_hf.derive_seed(seed, i)`` (a list of seeds gives one
per image).

Importing this module registers the task. It imports no model code at import time (``SmoothedImageClassifier``
loads on first use), so the registration costs little inside someone else's ``import transformers.pipelines``.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image
from transformers.image_utils import load_image
from transformers.pipelines.base import Pipeline

from .certification import certificates_from_counts, predictions_from_counts
from .checks import check_alpha, check_choice, check_int, check_number, check_positive_int, check_seed
from .noise import NOISE_CHUNK_SIZE, Phase, chunk_sizes, image_seeds, noise_chunk

if TYPE_CHECKING:  # for type hints only: the model loads on first use
    from .modeling import SmoothedImageClassifier

TASK = "certified-image-classification"
MODES = ("certify", "predict")
DEFAULTS = {"n0": 100, "n": 10_000, "alpha": 0.001, "batch_size": 1_000, "seed": 0, "mode": "certify"}
"""The call arguments' defaults. Papers certify with n = 100,000 (``n=100_000``), which raises the largest
certifiable radius, sigma * Phi^-1(alpha^(1/n)), from 3.2 sigma to 3.8 sigma at alpha = 0.001."""
INPUT_KINDS = ("a PIL image, a path, an http(s) URL or a base64 string, a numpy array [H, W] or [H, W, C] (uint8 "
               "0-255, or floats in [0, 1]), a float torch tensor [C, H, W] of pixels in [0, 1] at the model's size "
               "(taken as it is, as model.certify takes it), or a list of them")


class SmoothedModelLoader:
    """What ``pipeline()`` loads a folder or Hub id with for this task: ``SmoothedImageClassifier.from_pretrained``,
    one code path for both (its Hub arguments, ``revision``, ``token``, ..., pass through)."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str, **kwargs: Any) -> SmoothedImageClassifier:
        from .modeling import SmoothedImageClassifier

        kwargs.pop("_from_pipeline", None)  # transformers' own marker of a pipeline load
        return SmoothedImageClassifier.from_pretrained(pretrained_model_name_or_path, **kwargs)


class CertifiedImageClassificationPipeline(Pipeline):
    """Certified image classification with a ``SmoothedImageClassifier`` (randomized smoothing).

    Call with one image or a list (see ``INPUT_KINDS``) and, optionally: ``n0`` (selection draws), ``n``
    (estimation draws, or PREDICT's draws), ``alpha`` (error probability in (0, 1)), ``batch_size`` (noisy
    samples per forward pass), ``seed`` (an int >= 0, or one per image), ``mode`` ("certify" or "predict"),
    ``top_k`` (also the top_k - 1 classes with the most votes after the answer) and ``timeout`` (seconds to fetch
    a URL). Defaults: ``DEFAULTS``; arguments given to ``pipeline(...)`` become this pipeline's defaults.

    Returns, per image, the answer dict ``{"label", "score", "certified_radius", "abstain"}`` (module docstring);
    with ``top_k``, a list of ``top_k`` dicts: the answer, then ``{"label", "score"}`` of the classes with the
    most of the n votes, the answer's class left out. One image gives one answer, a list a list of answers.
    With probability at least 1 - alpha over the noise, each non-abstaining certified label holds for every
    image within l2 distance ``certified_radius`` of the input (pixels in [0, 1], at the model's
    ``certify_size``).
    """

    _load_processor = False
    _load_image_processor = False  # the model brings its own (``image_transform``)
    _load_feature_extractor = False
    _load_tokenizer = False

    def __init__(self, model: SmoothedImageClassifier, **kwargs: Any) -> None:
        from .modeling import SmoothedImageClassifier

        if not isinstance(model, SmoothedImageClassifier):
            raise TypeError(
                f"`model` must be a SmoothedImageClassifier (or the folder or Hub id of one, saved with "
                f"save_pretrained: it has smoothing_config.json), got {type(model).__name__}"
            )
        if kwargs.get("image_processor") is not None:
            raise ValueError(
                "`image_processor` must not be given: the pipeline resizes and rescales with the model's own "
                "image_transform() (its processor, or its certify_size), as model.certify expects"
            )
        batch_size = kwargs.pop("batch_size", None)  # ours (noisy samples per forward), not the DataLoader's
        super().__init__(model=model, **kwargs)
        if batch_size is not None:
            self._forward_params.update(self._sanitize_parameters(batch_size=batch_size)[1])
        self.pixel_transform = model.image_transform()
        self.smoother = model.smoother()  # the adapter merged into a copy of the weights, once
        self.id2label = {int(k): str(v) for k, v in model.model.config.id2label.items()}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(sigma={self.smoother.sigma:g}, device={self.device})"

    def _sanitize_parameters(
        self,
        n0: int | None = None,
        n: int | None = None,
        alpha: float | None = None,
        batch_size: int | None = None,
        seed: int | Sequence[int] | None = None,
        mode: str | None = None,
        top_k: int | None = None,
        timeout: float | None = None,
        **unknown: Any,
    ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        if unknown:
            allowed = "n0, n, alpha, batch_size, seed, mode, top_k, timeout"
            raise TypeError(f"unknown argument(s) {sorted(unknown)} for the {TASK} pipeline; it takes {allowed}")
        forward = {"n0": n0, "n": n, "alpha": alpha, "batch_size": batch_size, "seed": seed, "mode": mode}
        forward = {key: value for key, value in forward.items() if value is not None}
        for key in ("n0", "n", "batch_size"):
            if key in forward:
                forward[key] = check_positive_int(forward[key], key)
        if "alpha" in forward:
            forward["alpha"] = check_alpha(forward["alpha"])
        if "mode" in forward:
            check_choice(forward["mode"], "mode", MODES)
        if "seed" in forward:
            forward["seed"] = _check_seeds(forward["seed"])
        preprocess = {} if timeout is None else {"timeout": check_number(timeout, "timeout", minimum=0,
                                                                         strict_minimum=True, unit="seconds")}
        postprocess = {} if top_k is None else {"top_k": check_positive_int(top_k, "top_k")}
        return preprocess, forward, postprocess

    def __call__(self, inputs: Any = None, **kwargs: Any) -> dict[str, Any] | list:
        """Certify ``inputs``, one image or a list of them (``INPUT_KINDS``); the keyword arguments are the
        class docstring's. All images are certified together (``model.certify`` on their stacked pixels)."""
        if "images" in kwargs:  # as the image-classification pipeline
            inputs = kwargs.pop("images")
        if inputs is None:
            raise ValueError(f"`inputs` must be given: {INPUT_KINDS}")
        preprocess, forward, postprocess = self._sanitize_parameters(**kwargs)
        preprocess = {**self._preprocess_params, **preprocess}
        forward = {**DEFAULTS, **self._forward_params, **forward}
        postprocess = {"mode": forward["mode"], **self._postprocess_params, **postprocess}
        single = not isinstance(inputs, (list, tuple))
        images = [inputs] if single else list(inputs)
        if not images:
            raise ValueError(f"`inputs` must hold at least one image, got an empty {type(inputs).__name__}")
        pixels = [self.preprocess(image, **preprocess) for image in images]
        shapes = sorted({tuple(p.shape) for p in pixels})
        if len(shapes) > 1:
            raise ValueError(f"`inputs` became pixels of several shapes {shapes}; the model's transform must give one")
        outputs = self.forward({"pixel_values": pixels[0] if single else torch.stack(pixels)}, **forward)
        answers = [self.postprocess({key: value[i] for key, value in outputs.items()}, **postprocess)
                   for i in range(len(images))]
        return answers[0] if single else answers

    def preprocess(self, image: Any, timeout: float | None = None) -> torch.Tensor:
        """One image as [C, H, W] pixels in [0, 1] at the model's size, not normalized (the model normalizes).
        Paths, URLs, base64 strings and PIL images are read with transformers' ``load_image`` and converted to the
        model's channels; uint8 arrays go the same way (through PIL); float arrays must already be in [0, 1] with the
        model's channels; tensors are the model's pixels already (not resized)."""
        channels = self.model.num_channels
        if isinstance(image, np.ndarray) and not np.issubdtype(image.dtype, np.floating):
            if image.dtype != np.uint8:
                raise TypeError(f"`inputs`: an integer array must be uint8 (0-255), got {image.dtype}")
            image = Image.fromarray(image)
        if isinstance(image, (str, Image.Image)):
            image = load_image(image, timeout=timeout)  # RGB, EXIF orientation applied
            image = image.convert("L") if channels == 1 else image
        elif isinstance(image, np.ndarray):
            got = 1 if image.ndim == 2 else image.shape[-1] if image.ndim == 3 else None
            if got != channels:
                raise ValueError(f"`inputs`: a float array must be [H, W] (1 channel) or [H, W, C] with C = "
                                 f"{channels}, the model's channels, got shape {image.shape}")
        elif isinstance(image, torch.Tensor):
            if image.dim() != 3 or image.shape[0] != channels or not image.is_floating_point():
                raise ValueError(f"`inputs`: a tensor must be float [C, H, W] pixels with C = {channels}, got "
                                 f"{image.dtype} {tuple(image.shape)}")
            return image  # pixels at the model's size, as model.certify takes them (checked there)
        else:
            raise TypeError(f"`inputs` must be {INPUT_KINDS}; got {type(image).__name__}")
        return self.pixel_transform(image)

    def _forward(
        self, model_inputs: dict[str, torch.Tensor], n0: int, n: int, alpha: float, batch_size: int,
        seed: int | list[int], mode: str,
    ) -> dict[str, torch.Tensor]:
        """Counts and decisions for [C, H, W] (one image) or [B, C, H, W] pixels: ``votes`` [B, K] (the n
        estimation draws, or PREDICT's), ``prediction`` [B] (-1 for ABSTAIN), ``count`` [B] (votes of the
        answer's class: the class the n0 draws selected, also when abstaining) and ``radius`` [B] (NaN for PREDICT).
        The steps of ``Smoother.certify`` / ``predict``, kept apart so that the votes of every class come back."""
        pixels = model_inputs["pixel_values"]
        images, seeds, _ = self.smoother.prepare(pixels, seed)
        _warn_if_n_too_small(mode, n, alpha)
        if mode == "certify":
            selection = self.smoother.sample_counts(images, seeds, Phase.SELECTION, n0, batch_size)
            votes = self.smoother.sample_counts(images, seeds, Phase.ESTIMATION, n, batch_size)
            certificates = certificates_from_counts(selection, votes, alpha, self.smoother.sigma)
            prediction = [c.prediction for c in certificates]
            count = [c.count for c in certificates]
            radius = [c.radius for c in certificates]
        else:
            votes = self.smoother.sample_counts(images, seeds, Phase.PREDICTION, n, batch_size)
            prediction = predictions_from_counts(votes, alpha)
            count = votes.max(axis=1).tolist()
            radius = [math.nan] * len(images)
        return {"votes": torch.as_tensor(votes), "prediction": torch.tensor(prediction), "count": torch.tensor(count),
                "radius": torch.tensor(radius, dtype=torch.float64)}

    def postprocess(self, outputs: dict[str, torch.Tensor], mode: str = "certify", top_k: int | None = None
                    ) -> dict[str, Any] | list[dict[str, Any]]:
        """One image's answer dict (class docstring); with ``top_k``, the answer then the runner-up classes."""
        votes = outputs["votes"].numpy()
        total = int(votes.sum())
        prediction = int(outputs["prediction"])
        abstain = prediction < 0
        answer = {
            "label": None if abstain else self.id2label[prediction],
            "score": int(outputs["count"]) / total,
            "certified_radius": float(outputs["radius"]) if mode == "certify" else None,
            "abstain": abstain,
        }
        if top_k is None:
            return answer
        ranked = [int(c) for c in np.argsort(-votes, kind="stable") if int(c) != prediction]
        others = [{"label": self.id2label[c], "score": int(votes[c]) / total} for c in ranked]
        return [answer, *others[: min(top_k, len(self.id2label)) - 1]]

    def noisy_samples(self, image: Any, count: int = 8, n: int = DEFAULTS["n"], seed: int = 0) -> torch.Tensor:
        """The first ``count`` of the ``n`` noisy copies of ``image`` that certifying it alone with ``seed`` shows the
        model (its estimation draws): [count, C, H, W] pixels at the model's certification size, unclipped."""
        n, seed = check_positive_int(n, "n"), check_seed(seed)
        count = check_int(count, "count", minimum=1, maximum=n)
        pixels = self.preprocess(image).to(self.device, torch.float32)
        sizes = chunk_sizes(n)[: math.ceil(count / NOISE_CHUNK_SIZE)]  # whole chunks, as certification draws them
        noise = [noise_chunk(seed, Phase.ESTIMATION, chunk, size, tuple(pixels.shape), self.smoother.sigma, self.device)
                 for chunk, size in enumerate(sizes)]
        return (torch.cat(noise)[:count] + pixels).cpu()


def _check_seeds(seed: Any) -> int | list[int]:
    if isinstance(seed, numbers.Integral):
        return check_seed(seed)
    if isinstance(seed, Sequence) and not isinstance(seed, (str, bytes)):
        return image_seeds(seed, len(seed))  # each checked, as the smoother checks them
    raise TypeError(f"`seed` must be an int >= 0 or a list of them (one per image), got {type(seed).__name__}")


def _warn_if_n_too_small(mode: str, n: int, alpha: float) -> None:
    """The warnings of ``Smoother``: n too small for alpha to ever certify (or, for PREDICT, to ever decide)."""
    needed = math.log2(1 / alpha) if mode == "certify" else math.log2(2 / alpha)
    if (n <= needed) if mode == "certify" else (n < needed):
        warnings.warn(f"n={n} is too small for alpha={alpha}: {mode} abstains on every input unless n "
                      f"{'>' if mode == 'certify' else '>='} {needed:.1f}", stacklevel=3)


def register_pipeline() -> None:
    """Register the task with transformers' ``PIPELINE_REGISTRY``; importing this module does it."""
    from transformers.pipelines import PIPELINE_REGISTRY

    PIPELINE_REGISTRY.register_pipeline(
        TASK, pipeline_class=CertifiedImageClassificationPipeline, pt_model=SmoothedModelLoader, type="image"
    )


register_pipeline()
