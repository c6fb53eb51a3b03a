"""``SmoothedImageClassifier``: any ``AutoModelForImageClassification`` made a smoothed classifier.

It takes un-normalized pixels in [0, 1] (the space the noise and the certified radius live in), passes them
through its input module if it has one (a denoiser or a black-box coordinator, ``smoothing_hf.input_modules``),
normalizes them with the base model's mean/std, and runs the base model (with its PEFT adapter, if any).
``predict``/``certify`` delegate to ``Smoother`` at the model's own sigma; saving and loading (folders, Hub
repos, merged export) to ``smoothing_hf.serialization``.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from huggingface_hub import CommitInfo
from peft import PeftConfig, PeftModel
from transformers import PreTrainedModel
from transformers.modeling_outputs import ImageClassifierOutput
from transformers.utils import logging

from . import serialization, space
from .certification import Certificate, Smoother
from .config import SmoothingConfig
from .hub import certification_record, push_folder
from .input_modules import InputModule
from .methods import NotMergeable, merge_adapter
from .transforms import PixelTransform

logger = logging.get_logger(__name__)


class SmoothedImageClassifier(torch.nn.Module):
    """A base image classifier and a noise level sigma: the smoothed classifier g of randomized smoothing.

    Args:
        model: the base ``PreTrainedModel`` (or a ``PeftModel`` around one) for image classification.
        config: sigma and the normalization the base model expects.
        image_processor: the base model's image processor, used for ``image_transform`` and saved with it.
        input_module: a pixel-to-pixel ``InputModule`` run on the (noisy) pixels before the base model: a
            denoiser or a black-box coordinator; ``config.input_module`` records it.
    """

    def __init__(
        self,
        model: PreTrainedModel | PeftModel,
        config: SmoothingConfig,
        image_processor: Any = None,
        input_module: InputModule | None = None,
    ) -> None:
        super().__init__()
        if input_module is not None and not isinstance(input_module, InputModule):
            raise TypeError(
                "`input_module` must be a smoothing_hf.input_modules.InputModule or None, got "
                f"{type(input_module).__name__}"
            )
        if not isinstance(model, (PreTrainedModel, PeftModel)):
            raise TypeError(
                f"`model` must be a transformers PreTrainedModel or a peft PeftModel, got {type(model).__name__}"
            )
        if not isinstance(config, SmoothingConfig):
            raise TypeError(f"`config` must be a SmoothingConfig, got {type(config).__name__}")
        num_channels = getattr(model.config, "num_channels", len(config.image_mean))
        if len(config.image_mean) != num_channels:
            raise ValueError(
                f"`config.image_mean`/`image_std` must have one value per input channel ({num_channels}), got "
                f"{len(config.image_mean)}"
            )
        module_sigma = getattr(input_module, "sigma", None)  # a denoiser made for one noise level
        if module_sigma is not None and float(module_sigma) != config.sigma:
            raise ValueError(
                f"the {input_module.module_type} input module denoises sigma={module_sigma}, but the model's sigma is "
                f"{config.sigma}: build the module for the model's sigma"
            )
        self.model = model
        self.config = config
        self.image_processor = image_processor
        self.input_module = input_module
        self.config.input_module = input_module.record() if input_module is not None else None
        self.register_buffer("image_mean", torch.tensor(config.image_mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("image_std", torch.tensor(config.image_std).view(1, -1, 1, 1), persistent=False)

    @property
    def sigma(self) -> float:
        return self.config.sigma

    @property
    def num_labels(self) -> int:
        return self.model.config.num_labels

    @property
    def num_channels(self) -> int:
        return len(self.config.image_mean)

    @property
    def device(self) -> torch.device:
        """Where the model's weights are (transformers' ``Pipeline`` places its inputs there)."""
        return next(self.parameters()).device

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        *,
        sigma: float | None = None,
        method: str | None = None,
        method_options: dict[str, Any] | None = None,
        peft_config: PeftConfig | None = None,
        new_labels: Sequence[str] | None = None,
        image_mean: Sequence[float] | None = None,
        image_std: Sequence[float] | None = None,
        input_module: InputModule | None = None,
        certify_size: int | Sequence[int] | None = None,
        resize_interpolation: str = "bilinear",
        **model_kwargs: Any,
    ) -> SmoothedImageClassifier:
        """Load a smoothed classifier, or smooth a base classifier at ``sigma``. Hub ids and local folders
        take one code path.

        A folder or repo with ``smoothing_config.json`` (written by ``save_pretrained``) is loaded whole:
        its base model, its adapter and its sigma (``sigma``, if given, must agree). Anything else is a base
        ``AutoModelForImageClassification``: its normalization comes from ``AutoImageProcessor``
        (``image_mean``/``image_std`` override it, and are required when there is no processor), and
        ``method`` (a ``smoothing_hf.methods.METHODS`` name, with ``method_options``) or a ``peft_config``
        prepares it for fine-tuning; or ``input_module`` (a denoiser, a black-box coordinator) goes in front of
        the base model, which is then frozen whole. ``certify_size`` ([H, W] or an int, at most the base
        model's input size) makes the model certify in that space: noise is added and radii measured at that
        size, and the forward resizes the noisy pixels to the input size with ``resize_interpolation``
        (``smoothing_hf.space``); a saved model brings its own. ``new_labels`` (class names) gives the base a
        new, freshly initialized classification head for a downstream label set (joint adaptation).
        ``model_kwargs`` go to the model loader; the Hub arguments among them (revision, token, cache_dir,
        local_files_only, ...) go to every file download. See ``smoothing_hf.serialization.load``.
        """
        return cls(*serialization.load(
            pretrained_model_name_or_path, sigma=sigma, method=method, method_options=method_options,
            peft_config=peft_config, new_labels=new_labels, image_mean=image_mean, image_std=image_std,
            input_module=input_module, certify_size=certify_size, resize_interpolation=resize_interpolation,
            **model_kwargs,
        ))

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        *,
        merge_adapter: bool = False,
        model_card: bool = True,
        model_id: str | None = None,
    ) -> None:
        """Write this model so that ``from_pretrained(save_directory)`` restores it: the adapter as its method's
        registry row says (``smoothing_hf.methods.Saved``: peft's files, ``smoothing_weights.safetensors`` for
        ours, the whole model for ``full``), the image processor, ``smoothing_config.json`` (with the trainable
        parameter count, and the latest certification when recorded) and a ``README.md`` model card
        (``smoothing_hf.hub.model_card``; its loading snippet loads ``model_id``, default ``save_directory``).

        With ``merge_adapter`` the folder holds the whole model with the adapter folded into its weights
        instead: plain ``transformers`` loads it (``AutoModelForImageClassification``); for the methods whose
        registry row is ``mergeable`` only (bottleneck adapters, prompts and input modules are not weights of the
        base architecture). An input module is saved whole (frozen parts included) as
        ``input_module.safetensors``.

        Files are written to a temporary folder and moved in one by one, the config last, so a folder with a
        config is complete. Safetensors only. See ``smoothing_hf.serialization.save``."""
        parts = serialization.Parts(self.model, self.config, self.image_processor, self.input_module)
        serialization.save(parts, save_directory, merge=merge_adapter, model_card=model_card, model_id=model_id)

    def push_to_hub(
        self,
        repo_id: str,
        *,
        commit_message: str | None = None,
        commit_description: str | None = None,
        private: bool | None = None,
        token: str | bool | None = None,
        revision: str | None = None,
        create_pr: bool = False,
        merge_adapter: bool = False,
    ) -> CommitInfo:
        """Upload what ``save_pretrained`` writes (adapter, image processor, config, model card) to the Hub repo
        ``repo_id`` in one commit, creating the repo (``private``) and the branch ``revision`` when needed;
        ``create_pr`` opens a pull request. Returns ``huggingface_hub.CommitInfo``. See
        ``smoothing_hf.hub.push_folder``."""
        with tempfile.TemporaryDirectory(prefix="smoothing-push-") as folder:
            self.save_pretrained(folder, merge_adapter=merge_adapter, model_id=repo_id)
            return push_folder(
                folder, repo_id, commit_message=commit_message, commit_description=commit_description,
                private=private, token=token, revision=revision, create_pr=create_pr, rewrite_card=False,
            )

    def record_certification(
        self, summary: dict, *, dataset_name: str | None = None, split: str | None = None
    ) -> None:
        """Keep the results of ``smoothing_hf.pipeline.certify`` (its returned summary or ``summary.json``) in
        ``config.certification``, for the next ``save_pretrained``/``push_to_hub`` (config and model card).
        The summary must come from certify mode, a whole run, this model and its sigma."""
        self.config.certification = certification_record(self.config, summary, dataset_name=dataset_name, split=split)

    def record_training(self, *, dataset_name: str | None = None, **details: Any) -> None:
        """Note how the model was trained in ``config.training`` for its model card: ``dataset_name`` and
        ``details`` among ``smoothing_hf.config.TRAINING_KEYS`` (steps, epochs, num_noise_samples, ...)."""
        training = {**(self.config.training or {}), **details}
        if dataset_name is not None:
            training["dataset"] = dataset_name
        self.config.training = SmoothingConfig(**{**self.config.to_dict(), "training": training}).training

    def train(self, mode: bool = True) -> SmoothedImageClassifier:
        """Set training mode; frozen BatchNorm layers stay in eval mode, so a frozen backbone's running
        statistics are not changed by training an adapter (they would not be saved with it)."""
        super().train(mode)
        if mode:
            for module in self.modules():
                if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and not any(
                    p.requires_grad for p in module.parameters(recurse=False)
                ):
                    module.eval()
        return self

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None) -> ImageClassifierOutput:
        """Classify [B, C, H, W] pixels on the [0, 1] scale (noisy pixels may leave [0, 1]; they are not
        clipped), at ``config.certify_size`` when the model certifies below its input size: after the input
        module (a denoiser works where the noise is), they are resized to the base model's input size with the
        recorded interpolation (``smoothing_hf.space``), normalized and classified. Returns an
        ``ImageClassifierOutput``: the logits [B, num_labels] transformers predicts with
        (for a distilled two-head model, the mean of its heads), and, when ``labels`` [B] are given, their
        cross-entropy as the loss, for every base model alike (distilled ones return none of their own)."""
        if pixel_values.dim() != 4 or pixel_values.shape[1] != self.num_channels or 0 in pixel_values.shape:
            raise ValueError(
                f"`pixel_values` must have shape [B, {self.num_channels}, H, W] with B, H, W >= 1, got "
                f"{tuple(pixel_values.shape)}"
            )
        certify_size = self.config.certify_size
        if certify_size is not None and list(pixel_values.shape[-2:]) != certify_size:
            raise ValueError(
                f"this model certifies in {self.config.space(self.num_channels)} (`certify_size`), got pixels of "
                f"shape {tuple(pixel_values.shape)}: transform the data with `model.image_transform()`"
            )
        if self.input_module is not None:
            shape = pixel_values.shape
            pixel_values = self.input_module(pixel_values)
            if pixel_values.shape != shape:
                raise ValueError(
                    f"the {self.config.input_module['type']} input module must return pixels of its input's shape "
                    f"{tuple(shape)}, got {tuple(pixel_values.shape)}"
                )
        if certify_size is not None:  # one fixed map from the certification space to the base model's input
            pixel_values = space.resize(pixel_values, self.config.model_input_size, self.config.resize_interpolation)
        logits = self.base_logits(pixel_values)
        loss = None if labels is None else F.cross_entropy(logits.float(), labels)
        return ImageClassifierOutput(loss=loss, logits=logits)

    def base_logits(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The base model's logits [B, num_labels] on [B, C, H, W] pixels in [0, 1], normalized here; no input
        module. A classifier whose output has no ``logits`` (PP-LCNet returns its class scores as
        ``last_hidden_state``) is read from that field."""
        normalized = (pixel_values - self.image_mean) / self.image_std
        dtype = next(self.model.parameters()).dtype
        output = self.model(pixel_values=normalized.to(dtype), return_dict=True)
        logits = getattr(output, "logits", None)
        if logits is None:
            logits = getattr(output, "last_hidden_state", None)
        if not isinstance(logits, torch.Tensor) or logits.shape != (len(pixel_values), self.num_labels):
            raise ValueError(
                f"{type(self.model).__name__} returned no class scores of shape [B, num_labels="
                f"{self.num_labels}] (as `logits`, or `last_hidden_state`), got {type(output).__name__}"
            )
        return logits

    def inference_model(self) -> SmoothedImageClassifier:
        """This model for certification: a PEFT adapter is merged into a copy of the weights
        (``smoothing_hf.methods.merge_adapter``), so an adapter costs nothing per forward pass; without one, ``self``.
        Where the adapter cannot be folded exactly (see ``smoothing_hf.methods.merged_copy``), ``self``,
        unmerged, which computes the same classifier; the reason is logged once."""
        try:
            merged = merge_adapter(self.model)
        except NotMergeable as error:
            logger.warning_once(f"certifying the unmerged {type(self.model.get_base_model()).__name__}: {error}")
            return self
        if merged is self.model:
            return self
        return SmoothedImageClassifier(merged, self.config, self.image_processor, self.input_module)

    def smoother(
        self, merge_adapter: bool = True, *, precision: str = "fp32", channels_last: bool = False, compile: bool = False
    ) -> Smoother:
        """A ``Smoother`` over this model at its sigma; with ``merge_adapter``, over ``inference_model()``.
        Build it once when certifying many batches: merging copies the weights. ``precision`` ("fp32", "bf16",
        "fp16"), ``channels_last`` and ``compile`` set how its forward pass runs (``Smoother``); channels-last
        converts the merged copy (or, unmerged, this model) in place."""
        model = self.inference_model() if merge_adapter else self
        return Smoother(
            model, num_classes=self.num_labels, sigma=self.sigma, num_channels=self.num_channels,
            precision=precision, channels_last=channels_last, compile=compile,
        )

    def predict(
        self, x: torch.Tensor, n: int, alpha: float, batch_size: int, seed: int | Sequence[int] = 0
    ) -> int | list[int]:
        """Cohen's PREDICT for [C, H, W] or [B, C, H, W] pixels in [0, 1]; see ``Smoother.predict``."""
        return self.smoother().predict(x, n=n, alpha=alpha, batch_size=batch_size, seed=seed)

    def certify(
        self, x: torch.Tensor, n0: int, n: int, alpha: float, batch_size: int, seed: int | Sequence[int] = 0,
        **options: Any,
    ) -> Certificate | list[Certificate]:
        """Cohen's CERTIFY for [C, H, W] or [B, C, H, W] pixels in [0, 1]; see ``Smoother.certify``, whose keyword
        ``options`` (``tolerance``, ``growth``, ``confidence``, ``bound_seed``) pass through."""
        return self.smoother().certify(x, n0=n0, n=n, alpha=alpha, batch_size=batch_size, seed=seed, **options)

    def image_transform(self) -> PixelTransform:
        """The dataset transform for this model: pixels in [0, 1] at ``config.certify_size`` when the model
        certifies below its input size, else resized with the base model's processor; never normalized
        (``forward`` normalizes)."""
        if self.config.certify_size is not None:
            return PixelTransform(size=self.config.certify_size)
        if self.image_processor is None:
            raise ValueError("this model has no image processor; build it with one to get its image transform")
        return PixelTransform(self.image_processor)
