"""``SmoothedImageClassifier``: any ``AutoModelForImageClassification`` made a smoothed classifier.

It takes un-normalized pixels in [0, 1] (the space the noise and the certified radius live in),
normalizes them with the base model's mean/std as its first step, and runs the base model (with its
PEFT adapter, if any). ``predict``/``certify`` delegate to ``Smoother`` at the model's own sigma.
"""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
from collections.abc import Sequence
from typing import Any

import torch
from peft import PeftConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageClassification, PreTrainedModel
from transformers.modeling_outputs import ImageClassifierOutput
from transformers.utils import cached_file

from .config import SMOOTHING_CONFIG_NAME, SmoothingConfig
from .core import Certificate, Smoother
from .methods import METHODS, apply_method, head_module_names
from .transforms import PixelTransform

HUB_KWARGS = ("revision", "token", "cache_dir", "local_files_only", "force_download", "proxies")
WEIGHTS_NAME = "smoothing_weights.safetensors"
"""Trainable weights of our own methods (adapter, vpt, linear): adapters, prompts, the head."""


class SmoothedImageClassifier(torch.nn.Module):
    """A base image classifier and a noise level sigma: the smoothed classifier g of randomized smoothing.

    Args:
        model: the base ``PreTrainedModel`` (or a ``PeftModel`` around one) for image classification.
        config: sigma and the normalization the base model expects.
        image_processor: the base model's image processor, used for ``image_transform`` and saved with it.
    """

    def __init__(self, model: PreTrainedModel | PeftModel, config: SmoothingConfig, image_processor: Any = None) -> None:
        super().__init__()
        if not isinstance(model, (PreTrainedModel, PeftModel)):
            raise TypeError(f"`model` must be a transformers PreTrainedModel or a peft PeftModel, got {type(model).__name__}")
        if not isinstance(config, SmoothingConfig):
            raise TypeError(f"`config` must be a SmoothingConfig, got {type(config).__name__}")
        num_channels = getattr(model.config, "num_channels", len(config.image_mean))
        if len(config.image_mean) != num_channels:
            raise ValueError(
                f"`config.image_mean`/`image_std` must have one value per input channel ({num_channels}), got "
                f"{len(config.image_mean)}"
            )
        self.model = model
        self.config = config
        self.image_processor = image_processor
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
        **model_kwargs: Any,
    ) -> SmoothedImageClassifier:
        """Load a smoothed classifier, or smooth a base classifier at ``sigma``. Hub ids and local folders
        take one code path.

        A folder or repo with ``smoothing_config.json`` (written by ``save_pretrained``) is loaded whole:
        its base model, its adapter and its sigma (``sigma``, if given, must agree). Anything else is a base
        ``AutoModelForImageClassification``: its normalization comes from ``AutoImageProcessor``
        (``image_mean``/``image_std`` override it, and are required when there is no processor), and
        ``method`` (a ``smoothing_hf.methods.METHODS`` name, with ``method_options``) or a ``peft_config``
        prepares it for fine-tuning. ``new_labels`` (class names) gives the base a new, freshly initialized
        classification head for a downstream label set (joint adaptation). ``model_kwargs`` go to the model
        loader; the Hub arguments among them (revision, token, cache_dir, local_files_only, ...) go to every
        file download.
        """
        hub_kwargs = {k: v for k, v in model_kwargs.items() if k in HUB_KWARGS}
        config_file = cached_file(
            pretrained_model_name_or_path, SMOOTHING_CONFIG_NAME, _raise_exceptions_for_missing_entries=False, **hub_kwargs
        )
        if config_file is not None:
            if method is not None or peft_config is not None:
                raise ValueError(
                    f"{pretrained_model_name_or_path!r} is a saved smoothing model; it brings its own method, so "
                    "`method`/`peft_config` must not be given"
                )
            return cls._from_smoothing_folder(pretrained_model_name_or_path, config_file, sigma, hub_kwargs)
        if sigma is None:
            raise ValueError(
                f"`sigma` is required: {pretrained_model_name_or_path!r} is a base model (no {SMOOTHING_CONFIG_NAME})"
            )
        if method is not None and peft_config is not None:
            raise ValueError("pass either `method` or `peft_config`, not both")
        if new_labels is not None:
            if not new_labels or len(set(new_labels)) != len(new_labels):
                raise ValueError(f"`new_labels` must be distinct class names, at least one, got {new_labels!r}")
            model_kwargs.update(
                num_labels=len(new_labels), id2label=dict(enumerate(new_labels)),
                label2id={name: i for i, name in enumerate(new_labels)}, ignore_mismatched_sizes=True,
            )
        model = AutoModelForImageClassification.from_pretrained(pretrained_model_name_or_path, **model_kwargs)
        if new_labels is not None:  # fresh even when the old head had the same shape
            for head in head_module_names(model):
                for module in model.get_submodule(head).modules():
                    if hasattr(module, "reset_parameters"):
                        module.reset_parameters()
        image_processor = _load_image_processor(pretrained_model_name_or_path, hub_kwargs)
        if image_processor is None and (image_mean is None or image_std is None):
            raise ValueError(
                f"{pretrained_model_name_or_path!r} has no image processor to take the normalization from; "
                "pass `image_mean` and `image_std` (per-channel, for [0, 1] pixels)"
            )
        num_channels = getattr(model.config, "num_channels", 3)
        if image_processor is not None and getattr(image_processor, "do_normalize", False):
            mean, std = _per_channel(image_processor.image_mean, num_channels), _per_channel(image_processor.image_std, num_channels)
        else:
            mean, std = [0.0] * num_channels, [1.0] * num_channels
        if peft_config is not None:
            method_name = str(peft_config.peft_type.value).lower()
            model = get_peft_model(model, peft_config)
        elif method is not None:
            method_name = method
            model = apply_method(model, method, **(method_options or {}))
        else:
            method_name = None
        config = SmoothingConfig(
            sigma=sigma,
            image_mean=list(image_mean) if image_mean is not None else mean,
            image_std=list(image_std) if image_std is not None else std,
            base_model_name_or_path=str(pretrained_model_name_or_path),
            base_model_revision=model_kwargs.get("revision") or getattr(model.config, "_commit_hash", None),
            peft_method=method_name,
            method_options=dict(method_options or {}) if peft_config is None else {},
        )
        return cls(model, config, image_processor)

    @classmethod
    def _from_smoothing_folder(
        cls, name_or_path: str | os.PathLike, config_file: str, sigma: float | None, hub_kwargs: dict[str, Any]
    ) -> SmoothedImageClassifier:
        config = SmoothingConfig.from_json_file(config_file)
        if sigma is not None and float(sigma) != config.sigma:
            raise ValueError(
                f"`sigma`={sigma} contradicts the saved sigma={config.sigma} of {name_or_path!r}; a smoothed model is "
                "certified at the sigma it was trained for: omit `sigma` or pass the saved value"
            )
        method = config.peft_method
        if method == "full":
            model = AutoModelForImageClassification.from_pretrained(name_or_path, **hub_kwargs)
        else:
            model = _load_base_model(config)
            if method is not None and method in METHODS and METHODS[method].is_peft:
                model = PeftModel.from_pretrained(model, name_or_path, **hub_kwargs)
            elif method is not None:
                model = apply_method(model, method, **config.method_options)
                weights = cached_file(name_or_path, WEIGHTS_NAME, **hub_kwargs)
                _load_trainable_state(model, load_file(weights), weights)
        return cls(model, config, _load_image_processor(name_or_path, hub_kwargs))

    def save_pretrained(self, save_directory: str | os.PathLike) -> None:
        """Write this model so that ``from_pretrained(save_directory)`` restores it: the adapter (peft's
        files for peft methods, ``smoothing_weights.safetensors`` for ours, the whole model for ``full``),
        the image processor, and ``smoothing_config.json``. Files are written to a temporary folder and moved
        in one by one, the config last, so a folder with a config is complete. Safetensors only."""
        os.makedirs(save_directory, exist_ok=True)
        config = copy.deepcopy(self.config)
        config.id2label = {str(k): str(v) for k, v in self.model.config.id2label.items()}
        with tempfile.TemporaryDirectory(dir=save_directory, prefix=".tmp-") as staging:
            if isinstance(self.model, PeftModel) or config.peft_method == "full":
                self.model.save_pretrained(staging)
            elif config.peft_method is not None:
                save_file({k: v.detach().contiguous() for k, v in _trainable_state(self.model).items()}, os.path.join(staging, WEIGHTS_NAME))
            if self.image_processor is not None:
                self.image_processor.save_pretrained(staging)
            config.to_json_file(os.path.join(staging, SMOOTHING_CONFIG_NAME))
            for name in sorted(os.listdir(staging), key=lambda n: n == SMOOTHING_CONFIG_NAME):
                os.replace(os.path.join(staging, name), os.path.join(save_directory, name))

    def train(self, mode: bool = True) -> SmoothedImageClassifier:
        """Set training mode; frozen BatchNorm layers stay in eval mode, so a frozen backbone's running
        statistics are not changed by training an adapter (they would not be saved with it)."""
        super().train(mode)
        if mode:
            for module in self.model.modules():
                if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and not any(
                    p.requires_grad for p in module.parameters(recurse=False)
                ):
                    module.eval()
        return self

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None) -> ImageClassifierOutput:
        """Classify [B, C, H, W] pixels on the [0, 1] scale (noisy pixels may leave [0, 1]; they are not
        clipped). Returns the base model's ``ImageClassifierOutput``: logits [B, num_labels], and the loss
        when ``labels`` [B] are given."""
        if pixel_values.dim() != 4 or pixel_values.shape[1] != self.num_channels:
            raise ValueError(
                f"`pixel_values` must have shape [B, {self.num_channels}, H, W], got {tuple(pixel_values.shape)}"
            )
        normalized = (pixel_values - self.image_mean) / self.image_std
        dtype = next(self.model.parameters()).dtype
        return self.model(pixel_values=normalized.to(dtype), labels=labels, return_dict=True)

    def inference_model(self) -> SmoothedImageClassifier:
        """This model for certification: a PEFT adapter is merged into a copy of the weights (peft's
        ``merge_and_unload``), so an adapter costs nothing per forward pass; without an adapter, ``self``."""
        if not isinstance(self.model, PeftModel):
            return self
        merged = copy.deepcopy(self.model).merge_and_unload()
        return SmoothedImageClassifier(merged, self.config, self.image_processor)

    def smoother(self, merge_adapter: bool = True) -> Smoother:
        """A ``Smoother`` over this model at its sigma; with ``merge_adapter``, over ``inference_model()``.
        Build it once when certifying many batches: merging copies the weights."""
        model = self.inference_model() if merge_adapter else self
        return Smoother(model, num_classes=self.num_labels, sigma=self.sigma, num_channels=self.num_channels)

    def predict(
        self, x: torch.Tensor, n: int, alpha: float, batch_size: int, seed: int | Sequence[int] = 0
    ) -> int | list[int]:
        """Cohen's PREDICT for [C, H, W] or [B, C, H, W] pixels in [0, 1]; see ``Smoother.predict``."""
        return self.smoother().predict(x, n=n, alpha=alpha, batch_size=batch_size, seed=seed)

    def certify(
        self, x: torch.Tensor, n0: int, n: int, alpha: float, batch_size: int, seed: int | Sequence[int] = 0
    ) -> Certificate | list[Certificate]:
        """Cohen's CERTIFY for [C, H, W] or [B, C, H, W] pixels in [0, 1]; see ``Smoother.certify``."""
        return self.smoother().certify(x, n0=n0, n=n, alpha=alpha, batch_size=batch_size, seed=seed)

    def image_transform(self) -> PixelTransform:
        """The dataset transform for this model: resize with the base model's processor and rescale to [0, 1],
        without normalizing (``forward`` normalizes)."""
        if self.image_processor is None:
            raise ValueError("this model has no image processor; build it with one to get its image transform")
        return PixelTransform(self.image_processor)


def _per_channel(values: float | Sequence[float], num_channels: int) -> list[float]:
    """The processor's mean/std as one value per channel (processors store a scalar or a 3-list)."""
    values = [float(values)] if isinstance(values, (int, float)) else [float(v) for v in values]
    if len(values) == num_channels:
        return values
    if len(set(values)) == 1:
        return values[:1] * num_channels
    raise ValueError(
        f"the image processor's normalization has {len(values)} values but the model takes {num_channels} "
        "channels; pass `image_mean` and `image_std` explicitly"
    )


def _load_image_processor(name_or_path: str | os.PathLike, hub_kwargs: dict[str, Any]) -> Any:
    """The folder's or repo's image processor, or None when it has none."""
    try:
        return AutoImageProcessor.from_pretrained(name_or_path, **hub_kwargs)
    except OSError:
        return None


def _load_base_model(config: SmoothingConfig) -> PreTrainedModel:
    """The base model a smoothing config names, with the head shape the adapter was trained with."""
    if config.base_model_name_or_path is None:
        raise ValueError(f"{SMOOTHING_CONFIG_NAME} names no base model (`base_model_name_or_path`)")
    kwargs: dict[str, Any] = {"revision": config.base_model_revision}
    if config.id2label is not None:
        id2label = {int(k): v for k, v in config.id2label.items()}
        kwargs.update(id2label=id2label, label2id={v: k for k, v in id2label.items()})
        base_config = AutoConfig.from_pretrained(config.base_model_name_or_path, revision=config.base_model_revision)
        if base_config.num_labels != len(id2label):  # a new head for a downstream label set
            kwargs.update(num_labels=len(id2label), ignore_mismatched_sizes=True)
    return AutoModelForImageClassification.from_pretrained(config.base_model_name_or_path, **kwargs)


def _trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Trainable parameters, plus the buffers (BatchNorm statistics) of modules that own one."""
    state = {name: p for name, p in model.named_parameters() if p.requires_grad}
    for module_name, module in model.named_modules():
        if any(p.requires_grad for p in module.parameters(recurse=False)):
            prefix = f"{module_name}." if module_name else ""
            state.update({prefix + name: b for name, b in module.named_buffers(recurse=False)})
    return state


def _load_trainable_state(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    expected = set(_trainable_state(model))
    if set(state) != expected:
        raise ValueError(
            f"{source} does not match the model its config describes: missing {sorted(expected - set(state))[:5]}, "
            f"unexpected {sorted(set(state) - expected)[:5]}"
        )
    model.load_state_dict(state, strict=False)
