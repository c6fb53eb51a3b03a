"""``SmoothedImageClassifier``: any ``AutoModelForImageClassification`` made a smoothed classifier.

It takes un-normalized pixels in [0, 1] (the space the noise and the certified radius live in), passes them
through its input module if it has one (a denoiser or a black-box coordinator, ``smoothing_hf.input_modules``),
normalizes them with the base model's mean/std, and runs the base model (with its PEFT adapter, if any). ``predict``/``certify`` delegate to ``Smoother`` at the model's own sigma.
"""

from __future__ import annotations

import copy
import os
import tempfile
from collections.abc import Sequence
from typing import Any

import torch
from huggingface_hub import CommitInfo
from peft import PeftConfig, PeftModel, get_peft_model
from safetensors import safe_open
from safetensors.torch import load_file, load_model, save_file, save_model
from transformers import AutoConfig, AutoModelForImageClassification, PreTrainedModel
from transformers.modeling_outputs import ImageClassifierOutput
from transformers.utils import cached_file

try:
    from transformers.utils.hub import resolve_revision
except ImportError:  # transformers releases that do not resolve revisions to commits themselves
    resolve_revision = None

from .config import SMOOTHING_CONFIG_NAME, SmoothingConfig, read_json_object
from .certification import Certificate, Smoother
from .hub import MODEL_CARD_NAME, certification_record, push_folder, write_model_card
from .input_modules import INPUT_MODULE_WEIGHTS_NAME, InputModule, input_module_from_record
from .methods import METHODS, apply_method, head_module_names, trainable_parameters
from .transforms import PixelTransform, load_image_processor, per_channel

HUB_KWARGS = ("revision", "token", "cache_dir", "local_files_only", "force_download", "proxies")
WEIGHTS_NAME = "smoothing_weights.safetensors"
"""Trainable weights of our own methods (adapter, vpt, linear): adapters, prompts, the head."""
ADAPTER_CONFIG_NAME = "adapter_config.json"
ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"
FULL_WEIGHTS_NAME = "model.safetensors"
"""peft's adapter files (peft methods) and transformers' weights (``full``, merged models)."""


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
                f"`input_module` must be a smoothing_hf.input_modules.InputModule or None, got {type(input_module).__name__}"
            )
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
        the base model, which is then frozen whole. ``new_labels`` (class names) gives the base a new, freshly initialized
        classification head for a downstream label set (joint adaptation). ``model_kwargs`` go to the model
        loader; the Hub arguments among them (revision, token, cache_dir, local_files_only, ...) go to every
        file download.
        """
        hub_kwargs = {k: v for k, v in model_kwargs.items() if k in HUB_KWARGS}
        # Every file of this load comes from one state of the repo: a branch is resolved to its commit once.
        revision = _resolve_revision(pretrained_model_name_or_path, hub_kwargs)
        if revision is not None:
            hub_kwargs["revision"] = model_kwargs["revision"] = revision
        config_file = cached_file(
            pretrained_model_name_or_path, SMOOTHING_CONFIG_NAME, _raise_exceptions_for_missing_entries=False, **hub_kwargs
        )
        if config_file is not None:
            if method is not None or peft_config is not None or input_module is not None:
                raise ValueError(
                    f"{pretrained_model_name_or_path!r} is a saved smoothing model; it brings its own method, so "
                    "`method`/`peft_config`/`input_module` must not be given"
                )
            return cls._from_smoothing_folder(pretrained_model_name_or_path, config_file, sigma, hub_kwargs)
        _refuse_weights_without_config(pretrained_model_name_or_path, hub_kwargs)
        if sigma is None:
            raise ValueError(
                f"`sigma` is required: {pretrained_model_name_or_path!r} is a base model (no {SMOOTHING_CONFIG_NAME})"
            )
        if sum(option is not None for option in (method, peft_config, input_module)) > 1:
            raise ValueError("pass at most one of `method`, `peft_config` and `input_module`")
        if new_labels is not None:
            if not new_labels or len(set(new_labels)) != len(new_labels):
                raise ValueError(f"`new_labels` must be distinct class names, at least one, got {new_labels!r}")
            model_kwargs.update(
                num_labels=len(new_labels), id2label=dict(enumerate(new_labels)),
                label2id={name: i for i, name in enumerate(new_labels)}, ignore_mismatched_sizes=True,
            )
        model = AutoModelForImageClassification.from_pretrained(pretrained_model_name_or_path, **model_kwargs)
        # A local folder is recorded as an absolute path, so a saved adapter loads from any directory; peft
        # records model.name_or_path as the adapter's base.
        base_name = (
            os.path.abspath(pretrained_model_name_or_path) if os.path.isdir(pretrained_model_name_or_path)
            else str(pretrained_model_name_or_path)
        )
        model.name_or_path = model.config.name_or_path = base_name
        if new_labels is not None:  # fresh even when the old head had the same shape
            for head in head_module_names(model):
                for module in model.get_submodule(head).modules():
                    if hasattr(module, "reset_parameters"):
                        module.reset_parameters()
        image_processor = load_image_processor(pretrained_model_name_or_path, **hub_kwargs)
        if image_processor is None and (image_mean is None or image_std is None):
            raise ValueError(
                f"{pretrained_model_name_or_path!r} has no image processor to take the normalization from; "
                "pass `image_mean` and `image_std` (per-channel, for [0, 1] pixels)"
            )
        num_channels = getattr(model.config, "num_channels", 3)
        if image_processor is not None and getattr(image_processor, "do_normalize", False):
            mean, std = per_channel(image_processor.image_mean, num_channels), per_channel(image_processor.image_std, num_channels)
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
            if input_module is not None:
                model.requires_grad_(False)
        config = SmoothingConfig(
            sigma=sigma,
            image_mean=list(image_mean) if image_mean is not None else mean,
            image_std=list(image_std) if image_std is not None else std,
            base_model_name_or_path=base_name,
            base_model_revision=getattr(revision, "resolved", None) or (str(revision) if revision is not None else None),
            peft_method=method_name,
            method_options=dict(method_options or {}) if peft_config is None else {},
        )
        return cls(model, config, image_processor, input_module)

    @classmethod
    def _from_smoothing_folder(
        cls, name_or_path: str | os.PathLike, config_file: str, sigma: float | None, hub_kwargs: dict[str, Any]
    ) -> SmoothedImageClassifier:
        """Load what ``save_pretrained`` wrote: the base model the config names (at its recorded revision; the
        other Hub arguments apply to it too), then the adapter, checked against the config before use."""
        config = SmoothingConfig.from_json_file(config_file)
        if sigma is not None and float(sigma) != config.sigma:
            raise ValueError(
                f"`sigma`={sigma} contradicts the saved sigma={config.sigma} of {name_or_path!r}; a smoothed model is "
                "certified at the sigma it was trained for: omit `sigma` or pass the saved value"
            )
        method = config.peft_method
        if method is not None and method not in METHODS:
            raise ValueError(f"{config_file} names an unknown method {method!r}; allowed: {sorted(METHODS)}")
        base_kwargs = {k: v for k, v in hub_kwargs.items() if k != "revision"}
        if config.merged or method == "full":  # the whole model is in the folder
            _check_safetensors(_required_file(name_or_path, FULL_WEIGHTS_NAME, config, hub_kwargs, sharded=True))
            model = AutoModelForImageClassification.from_pretrained(name_or_path, use_safetensors=True, **hub_kwargs)
        elif method is None:
            model = _load_base_model(config, base_kwargs)
        elif METHODS[method].is_peft:
            adapter_config = _required_file(name_or_path, ADAPTER_CONFIG_NAME, config, hub_kwargs)
            weights = _required_file(name_or_path, ADAPTER_WEIGHTS_NAME, config, hub_kwargs)
            _check_safetensors(weights)
            _check_same_base(config, read_json_object(adapter_config).get("base_model_name_or_path"), adapter_config)
            # Both files lie in one folder (the repo's snapshot at one commit): peft reads them there, so it
            # never falls back to a pickled adapter_model.bin.
            model = PeftModel.from_pretrained(_load_base_model(config, base_kwargs), os.path.dirname(weights))
        else:
            weights = _required_file(name_or_path, WEIGHTS_NAME, config, hub_kwargs)
            metadata = _check_safetensors(weights)
            _check_same_base(config, metadata.get("base_model_name_or_path"), weights)
            model = apply_method(_load_base_model(config, base_kwargs), method, **config.method_options)
            _load_trainable_state(model, load_file(weights), weights)
        input_module = None
        if config.input_module is not None:
            input_module = input_module_from_record(config.input_module)
            weights = _required_file(name_or_path, INPUT_MODULE_WEIGHTS_NAME, config, hub_kwargs)
            _check_same_base(config, _check_safetensors(weights).get("base_model_name_or_path"), weights)
            try:
                load_model(input_module, weights)
            except RuntimeError as error:
                raise ValueError(f"{weights} does not match the {config.input_module['type']} module its config describes: {error}") from None
            input_module.requires_grad_(False)
            model.requires_grad_(False)
        return cls(model, config, load_image_processor(name_or_path, **hub_kwargs), input_module)

    def save_pretrained(
        self, save_directory: str | os.PathLike, *, merge_adapter: bool = False, model_card: bool = True, model_id: str | None = None
    ) -> None:
        """Write this model so that ``from_pretrained(save_directory)`` restores it: the adapter (peft's
        files for peft methods, ``smoothing_weights.safetensors`` for ours, the whole model for ``full``),
        the image processor, ``smoothing_config.json`` (with the trainable parameter count, and the latest
        certification when recorded) and a ``README.md`` model card (``smoothing_hf.hub.model_card``; its
        loading snippet loads ``model_id``, default ``save_directory``).

        With ``merge_adapter`` the folder holds the whole model with the adapter folded into its weights
        instead: plain ``transformers`` loads it (``AutoModelForImageClassification``); peft methods, ``linear``
        and ``full`` only (bottleneck adapters, prompts and input modules are not weights of the base
        architecture). An input module is saved whole (frozen parts included) as ``input_module.safetensors``.

        Files are written to a temporary folder and moved in one by one, the config last, so a folder with a
        config is complete. Safetensors only."""
        if merge_adapter and self.input_module is not None:
            raise ValueError(
                f"`merge_adapter=True` cannot fold the {self.config.input_module['type']} input module into the base "
                "model's weights: save it without `merge_adapter`"
            )
        os.makedirs(save_directory, exist_ok=True)
        config = copy.deepcopy(self.config)
        config.id2label = {str(k): str(v) for k, v in self.model.config.id2label.items()}
        config.training = self._training_record()
        with tempfile.TemporaryDirectory(dir=save_directory, prefix=".tmp-") as staging:
            if merge_adapter and not config.merged and config.peft_method != "full":
                self._merged_model().save_pretrained(staging)
                config.merged = True
            elif isinstance(self.model, PeftModel) or config.merged or config.peft_method == "full":
                self.model.save_pretrained(staging)
            elif config.peft_method is not None:
                state = {k: v.detach().contiguous() for k, v in _trainable_state(self.model).items()}
                metadata = {"format": "pt", "peft_method": config.peft_method}
                if config.base_model_name_or_path is not None:
                    metadata["base_model_name_or_path"] = config.base_model_name_or_path
                save_file(state, os.path.join(staging, WEIGHTS_NAME), metadata=metadata)
            if self.input_module is not None:
                metadata = {"format": "pt", "input_module": self.input_module.module_type}
                if config.base_model_name_or_path is not None:
                    metadata["base_model_name_or_path"] = config.base_model_name_or_path
                save_model(self.input_module, os.path.join(staging, INPUT_MODULE_WEIGHTS_NAME), metadata=metadata)
            if self.image_processor is not None:
                self.image_processor.save_pretrained(staging)
            if model_card:  # after the model's own files: peft writes a README.md of its own
                write_model_card(config, os.path.join(staging, MODEL_CARD_NAME), model_id or os.fspath(save_directory))
            config.to_json_file(os.path.join(staging, SMOOTHING_CONFIG_NAME))
            for name in sorted(os.listdir(staging), key=lambda n: n == SMOOTHING_CONFIG_NAME):
                os.replace(os.path.join(staging, name), os.path.join(save_directory, name))

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
                folder, repo_id, commit_message=commit_message, commit_description=commit_description, private=private,
                token=token, revision=revision, create_pr=create_pr, rewrite_card=False,
            )

    def record_certification(self, summary: dict, *, dataset_name: str | None = None, split: str | None = None) -> None:
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

    def _training_record(self) -> dict | None:
        """``config.training`` with the trainable and total parameter counts when they are known: counted
        from ``requires_grad`` on a model prepared for training, kept from the config on a reloaded one (whose
        peft adapter is frozen)."""
        training = dict(self.config.training or {})
        if self.input_module is not None:
            trainable, _ = trainable_parameters(self.input_module)
            if trainable > 0:
                total = sum(p.numel() for p in self.parameters())
                training.update(trainable_parameters=trainable, total_parameters=total, train_head=False)
        elif self.config.peft_method is not None and not self.config.merged:
            trainable, total = trainable_parameters(self.model)
            if trainable > 0:
                base = self.model.get_base_model() if isinstance(self.model, PeftModel) else self.model
                heads = [f".{head}." for head in head_module_names(base)]
                train_head = any(p.requires_grad and any(h in f".{n}" for h in heads) for n, p in self.model.named_parameters())
                training.update(trainable_parameters=trainable, total_parameters=total, train_head=train_head)
        return training or None

    def _merged_model(self) -> PreTrainedModel:
        """A copy of the base model with the adapter folded into its weights (peft's ``merge_and_unload``);
        the model itself for methods that add no modules (``linear``, none)."""
        method = self.config.peft_method
        if isinstance(self.model, PeftModel):
            return copy.deepcopy(self.model).merge_and_unload()
        if method in (None, "linear"):
            return self.model
        raise ValueError(
            f"`merge_adapter=True` needs a method whose update folds into the base weights (peft methods, 'linear', "
            f"'full'); {method!r} adds modules of its own: save it without `merge_adapter`"
        )

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
        clipped). Returns the base model's ``ImageClassifierOutput``: logits [B, num_labels], and the loss
        when ``labels`` [B] are given."""
        if pixel_values.dim() != 4 or pixel_values.shape[1] != self.num_channels:
            raise ValueError(
                f"`pixel_values` must have shape [B, {self.num_channels}, H, W], got {tuple(pixel_values.shape)}"
            )
        if self.input_module is not None:
            shape = pixel_values.shape
            pixel_values = self.input_module(pixel_values)
            if pixel_values.shape != shape:
                raise ValueError(
                    f"the {self.config.input_module['type']} input module must return pixels of its input's shape "
                    f"{tuple(shape)}, got {tuple(pixel_values.shape)}"
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
        return SmoothedImageClassifier(merged, self.config, self.image_processor, self.input_module)

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


def _load_base_model(config: SmoothingConfig, hub_kwargs: dict[str, Any]) -> PreTrainedModel:
    """The base model a smoothing config names, at its recorded revision, with the head shape the adapter was
    trained with. ``hub_kwargs`` (token, cache_dir, local_files_only, ...) go to its downloads."""
    name = config.base_model_name_or_path
    if name is None:
        raise ValueError(f"{SMOOTHING_CONFIG_NAME} names no base model (`base_model_name_or_path`)")
    kwargs: dict[str, Any] = {**hub_kwargs, "revision": config.base_model_revision}
    try:
        if config.id2label is not None:
            id2label = {int(k): v for k, v in config.id2label.items()}
            kwargs.update(id2label=id2label, label2id={v: k for k, v in id2label.items()})
            base_config = AutoConfig.from_pretrained(name, **{**hub_kwargs, "revision": config.base_model_revision})
            if base_config.num_labels != len(id2label):  # a new head for a downstream label set
                kwargs.update(num_labels=len(id2label), ignore_mismatched_sizes=True)
        return AutoModelForImageClassification.from_pretrained(name, **kwargs)
    except OSError as error:
        revision = f" at revision {config.base_model_revision!r}" if config.base_model_revision else ""
        raise OSError(
            f"the base model {name!r}{revision} that {SMOOTHING_CONFIG_NAME} names could not be loaded; the adapter "
            f"needs it (a Hub id, or a folder on this machine): {error}"
        ) from error


def _resolve_revision(name_or_path: str | os.PathLike, hub_kwargs: dict[str, Any]) -> str | None:
    """``revision`` resolved to a commit for a Hub repo (a ``huggingface_hub.ResolvedRevision``, whose
    ``resolved`` is the commit), as transformers does for each load; unchanged for a folder or when the Hub
    cannot say (the download then reports the error)."""
    if resolve_revision is None:
        return hub_kwargs.get("revision")
    return resolve_revision(
        name_or_path, hub_kwargs.get("revision"), token=hub_kwargs.get("token"),
        local_files_only=bool(hub_kwargs.get("local_files_only")), cache_dir=hub_kwargs.get("cache_dir"),
    )


def _refuse_weights_without_config(name_or_path: str | os.PathLike, hub_kwargs: dict[str, Any]) -> None:
    """A folder or repo with adapter weights but no smoothing_config.json is an error: it is not a base model,
    and its sigma and normalization are unknown."""
    for filename in (ADAPTER_CONFIG_NAME, WEIGHTS_NAME):
        if cached_file(name_or_path, filename, _raise_exceptions_for_missing_entries=False, **hub_kwargs) is not None:
            raise ValueError(
                f"{os.fspath(name_or_path)!r} holds adapter files ({filename}) but no {SMOOTHING_CONFIG_NAME}, so it is "
                "not a smoothing model (its sigma and normalization are unknown) nor a base model. Load it with the "
                "SmoothedImageClassifier.save_pretrained folder it came from, or smooth its base model with "
                "`from_pretrained(base, sigma=..., peft_config=...)`"
            )


def _required_file(
    name_or_path: str | os.PathLike, filename: str, config: SmoothingConfig, hub_kwargs: dict[str, Any], sharded: bool = False
) -> str:
    """The local path of ``filename`` in the folder or repo; a missing file is a ValueError that says why it
    is needed. With ``sharded``, a safetensors index (sharded weights) stands in for the file."""
    path = cached_file(name_or_path, filename, _raise_exceptions_for_missing_entries=False, **hub_kwargs)
    if path is None and sharded:
        index = f"{filename}.index.json"
        path = cached_file(name_or_path, index, _raise_exceptions_for_missing_entries=False, **hub_kwargs)
    if path is None:
        what = "the whole model" if config.merged or config.peft_method == "full" else f"the {config.peft_method} adapter"
        raise ValueError(
            f"{os.fspath(name_or_path)!r} has no {filename}, which holds {what} that its {SMOOTHING_CONFIG_NAME} "
            "describes (weights are loaded from safetensors only); save the model again"
        )
    return path


def _check_safetensors(path: str) -> dict[str, str]:
    """The metadata of the safetensors file ``path``, after checking that its header is whole and covers the
    file; a corrupt or truncated file is a ValueError naming it. (A sharded model's index is left to
    transformers.)"""
    if path.endswith(".index.json"):
        return {}
    try:
        with safe_open(path, framework="pt") as handle:
            return dict(handle.metadata() or {})
    except Exception as error:  # safetensors raises its own SafetensorError (not an OSError) for a bad file
        raise ValueError(f"{path} is not a readable safetensors file ({error}); it is corrupt or truncated: save or download it again") from None


def _check_same_base(config: SmoothingConfig, adapter_base: str | None, source: str) -> None:
    """The adapter's own record of its base model (peft's adapter_config.json, our weights' metadata) must
    agree with the base model that smoothing_config.json names."""
    configured = config.base_model_name_or_path
    if adapter_base and configured and os.path.normpath(adapter_base) != os.path.normpath(configured):
        raise ValueError(
            f"{SMOOTHING_CONFIG_NAME} names the base model {configured!r}, but {source} was trained on {adapter_base!r}: "
            "an adapter only fits the model it was trained on; fix `base_model_name_or_path` in one of the two files"
        )




def _trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Trainable parameters, plus the buffers (BatchNorm statistics) of modules that own one."""
    state = {name: p for name, p in model.named_parameters() if p.requires_grad}
    for module_name, module in model.named_modules():
        if any(p.requires_grad for p in module.parameters(recurse=False)):
            prefix = f"{module_name}." if module_name else ""
            state.update({prefix + name: b for name, b in module.named_buffers(recurse=False)})
    return state


def _load_trainable_state(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load the saved trainable weights into ``model``; their names and shapes must be the model's (a
    different base model, or other method options, give other ones)."""
    expected = _trainable_state(model)
    if set(state) != set(expected):
        raise ValueError(
            f"{source} does not match the model its config describes (another base model or method options?): "
            f"missing {sorted(set(expected) - set(state))[:5]}, unexpected {sorted(set(state) - set(expected))[:5]}"
        )
    shapes = [f"{name}: {tuple(state[name].shape)} saved, {tuple(tensor.shape)} in the model"
              for name, tensor in expected.items() if state[name].shape != tensor.shape]
    if shapes:
        raise ValueError(
            f"{source} was trained on a different base model than the one its config names: {'; '.join(shapes[:3])}"
        )
    model.load_state_dict(state, strict=False)
