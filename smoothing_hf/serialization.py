"""Saving and loading smoothed classifiers: smoothing folders and Hub repos (one code path), merged export.

A smoothing folder holds ``smoothing_config.json`` (sigma, normalization, base model and revision, method),
the model as its method's registry row says (``smoothing_hf.methods.Saved``: peft's adapter files, our
``smoothing_weights.safetensors``, or the whole model), an input module whole as ``input_module.safetensors``,
the image processor and a ``README.md`` model card. Weights are read and written as safetensors only.

``SmoothedImageClassifier.from_pretrained``/``save_pretrained`` delegate here: ``load`` returns the parts the
classifier is built from, ``save`` writes them; a merged export folds the adapter with
``smoothing_hf.methods.merged_model``. Nothing here imports training code.
"""

from __future__ import annotations

import copy
import os
import tempfile
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from peft import PeftConfig, PeftModel
from safetensors import safe_open
from safetensors.torch import load_file, load_model, save_file, save_model
from transformers import AutoConfig, AutoModelForImageClassification, PreTrainedModel
from transformers.utils import cached_file

try:
    from transformers.utils.hub import resolve_revision
except ImportError:  # transformers releases that do not resolve revisions to commits themselves
    resolve_revision = None

from .config import SMOOTHING_CONFIG_NAME, SmoothingConfig
from .files import read_json
from .hub import MODEL_CARD_NAME, write_model_card
from .input_modules import InputModule, input_module_from_record
from .methods import (
    METHODS,
    Saved,
    apply_method,
    apply_peft_config,
    carry_base_layer_attributes,
    head_module_names,
    is_peft_type,
    merged_model,
    saved_form,
    trainable_parameters,
    trainable_state,
)
from .transforms import load_image_processor, per_channel

HUB_KWARGS = ("revision", "token", "cache_dir", "local_files_only", "force_download", "proxies")
WEIGHTS_NAME = "smoothing_weights.safetensors"  # our methods' trainable weights: adapters, prompts, the head
ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME = "adapter_config.json", "adapter_model.safetensors"  # peft's files
FULL_WEIGHTS_NAME = "model.safetensors"  # transformers' weights: the whole model, merged models
INPUT_MODULE_WEIGHTS_NAME = "input_module.safetensors"


class Parts(NamedTuple):
    """What a ``SmoothedImageClassifier`` is built from: ``SmoothedImageClassifier(*parts)``."""
    model: PreTrainedModel | PeftModel
    config: SmoothingConfig
    image_processor: Any
    input_module: InputModule | None


def load(
    name_or_path: str | os.PathLike,
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
) -> Parts:
    """The parts of a smoothed classifier: loaded whole from a smoothing folder or repo, or a base classifier
    smoothed at ``sigma``. The arguments are ``SmoothedImageClassifier.from_pretrained``'s."""
    hub_kwargs = {k: v for k, v in model_kwargs.items() if k in HUB_KWARGS}
    # Every file of this load comes from one state of the repo: a branch is resolved to its commit once.
    revision = _resolve_revision(name_or_path, hub_kwargs)
    if revision is not None:
        hub_kwargs["revision"] = model_kwargs["revision"] = revision
    config_file = _optional_file(name_or_path, SMOOTHING_CONFIG_NAME, hub_kwargs)
    if config_file is not None:
        if method is not None or peft_config is not None or input_module is not None:
            raise ValueError(
                f"{name_or_path!r} is a saved smoothing model; it brings its own method, so "
                "`method`/`peft_config`/`input_module` must not be given"
            )
        return _load_folder(name_or_path, config_file, sigma, hub_kwargs)
    _refuse_weights_without_config(name_or_path, hub_kwargs)
    if sigma is None:
        raise ValueError(f"`sigma` is required: {name_or_path!r} is a base model (no {SMOOTHING_CONFIG_NAME})")
    if sum(option is not None for option in (method, peft_config, input_module)) > 1:
        raise ValueError("pass at most one of `method`, `peft_config` and `input_module`")
    if new_labels is not None:
        if not new_labels or len(set(new_labels)) != len(new_labels):
            raise ValueError(f"`new_labels` must be distinct class names, at least one, got {new_labels!r}")
        model_kwargs.update(
            num_labels=len(new_labels), id2label=dict(enumerate(new_labels)),
            label2id={name: i for i, name in enumerate(new_labels)}, ignore_mismatched_sizes=True,
        )
    model = AutoModelForImageClassification.from_pretrained(name_or_path, **model_kwargs)
    # A local folder is recorded as an absolute path, so a saved adapter loads from any directory; peft
    # records model.name_or_path as the adapter's base.
    base_name = os.path.abspath(name_or_path) if os.path.isdir(name_or_path) else str(name_or_path)
    model.name_or_path = model.config.name_or_path = base_name
    if new_labels is not None:  # fresh even when the old head had the same shape
        for head in head_module_names(model):
            for module in model.get_submodule(head).modules():
                if hasattr(module, "reset_parameters"):
                    module.reset_parameters()
    image_processor = load_image_processor(name_or_path, **hub_kwargs)
    if image_processor is None and (image_mean is None or image_std is None):
        raise ValueError(
            f"{name_or_path!r} has no image processor to take the normalization from; "
            "pass `image_mean` and `image_std` (per-channel, for [0, 1] pixels)"
        )
    num_channels = getattr(model.config, "num_channels", 3)
    if image_processor is not None and getattr(image_processor, "do_normalize", False):
        mean = per_channel(image_processor.image_mean, num_channels)
        std = per_channel(image_processor.image_std, num_channels)
    else:
        mean, std = [0.0] * num_channels, [1.0] * num_channels
    if peft_config is not None:
        method = str(peft_config.peft_type.value).lower()
        model = apply_peft_config(model, peft_config)
    elif method is not None:
        model = apply_method(model, method, **(method_options or {}))
    elif input_module is not None:
        model.requires_grad_(False)
    config = SmoothingConfig(
        sigma=sigma,
        image_mean=list(image_mean) if image_mean is not None else mean,
        image_std=list(image_std) if image_std is not None else std,
        base_model_name_or_path=base_name,
        base_model_revision=getattr(revision, "resolved", None) or (str(revision) if revision is not None else None),
        peft_method=method,
        method_options=dict(method_options or {}) if peft_config is None else {},
    )
    return Parts(model, config, image_processor, input_module)


def _load_folder(
    name_or_path: str | os.PathLike, config_file: str, sigma: float | None, hub_kwargs: dict[str, Any]
) -> Parts:
    """Load what ``save`` wrote: the base model the config names (at its recorded revision; the other Hub
    arguments apply to it too), then the adapter, checked against the config before use."""
    config = SmoothingConfig.from_json_file(config_file)
    if sigma is not None and float(sigma) != config.sigma:
        raise ValueError(
            f"`sigma`={sigma} contradicts the saved sigma={config.sigma} of {name_or_path!r}; a smoothed model is "
            "certified at the sigma it was trained for: omit `sigma` or pass the saved value"
        )
    method = config.peft_method
    if method is not None and method not in METHODS and not is_peft_type(method):
        raise ValueError(
            f"{config_file} names an unknown method {method!r}; allowed: {sorted(METHODS)} or a peft method's type"
        )
    held = saved_form(method, merged=config.merged)
    what = "the whole model" if held is Saved.WHOLE_MODEL else f"the {method} adapter"
    base_kwargs = {k: v for k, v in hub_kwargs.items() if k != "revision"}
    if held is Saved.WHOLE_MODEL:
        _check_safetensors(_required_file(name_or_path, FULL_WEIGHTS_NAME, what, hub_kwargs, sharded=True))
        model = AutoModelForImageClassification.from_pretrained(name_or_path, use_safetensors=True, **hub_kwargs)
    elif held is None:
        model = _load_base_model(config, base_kwargs)
    elif held is Saved.PEFT_ADAPTER:
        adapter_config = _required_file(name_or_path, ADAPTER_CONFIG_NAME, what, hub_kwargs)
        weights = _required_file(name_or_path, ADAPTER_WEIGHTS_NAME, what, hub_kwargs)
        _check_safetensors(weights)
        _check_same_base(config, read_json(adapter_config).get("base_model_name_or_path"), adapter_config)
        # Both files lie in one folder (the repo's snapshot at one commit): peft reads them there, so it
        # never falls back to a pickled adapter_model.bin.
        model = PeftModel.from_pretrained(_load_base_model(config, base_kwargs), os.path.dirname(weights))
        carry_base_layer_attributes(model)
    else:
        weights = _required_file(name_or_path, WEIGHTS_NAME, what, hub_kwargs)
        _check_same_base(config, _check_safetensors(weights).get("base_model_name_or_path"), weights)
        model = apply_method(_load_base_model(config, base_kwargs), method, **config.method_options)
        _load_trainable_state(model, load_file(weights), weights)
    input_module = None
    if config.input_module is not None:
        kind = config.input_module["type"]
        input_module = input_module_from_record(config.input_module)
        weights = _required_file(name_or_path, INPUT_MODULE_WEIGHTS_NAME, f"the {kind} input module", hub_kwargs)
        _check_same_base(config, _check_safetensors(weights).get("base_model_name_or_path"), weights)
        try:
            load_model(input_module, weights)
        except RuntimeError as error:
            raise ValueError(f"{weights} does not match the {kind} module its config describes: {error}") from None
        input_module.requires_grad_(False)
        model.requires_grad_(False)
    return Parts(model, config, load_image_processor(name_or_path, **hub_kwargs), input_module)


def save(
    parts: Parts, save_directory: str | os.PathLike, *, merge: bool = False, model_card: bool = True,
    model_id: str | None = None,
) -> None:
    """Write ``parts`` into ``save_directory`` so that ``load(save_directory)`` restores them; see
    ``SmoothedImageClassifier.save_pretrained`` (``merge`` is its ``merge_adapter``). Files are written to a
    hidden temporary folder inside ``save_directory`` and moved in one by one, the config last, so a folder
    with a config is complete."""
    model, image_processor, input_module = parts.model, parts.image_processor, parts.input_module
    if merge and input_module is not None:
        raise ValueError(
            f"`merge_adapter=True` cannot fold the {parts.config.input_module['type']} input module into the base "
            "model's weights: save it without `merge_adapter`"
        )
    os.makedirs(save_directory, exist_ok=True)
    config = copy.deepcopy(parts.config)
    id2label = model.config.id2label or {i: f"LABEL_{i}" for i in range(model.config.num_labels)}  # PVT's is None
    config.id2label = {str(k): str(v) for k, v in id2label.items()}
    config.training = training_record(model, config, input_module)
    # Any PeftModel is held as peft's files, also one from a `peft_config` whose type the registry lacks.
    held = Saved.PEFT_ADAPTER if isinstance(model, PeftModel) else saved_form(config.peft_method, merged=config.merged)
    with tempfile.TemporaryDirectory(dir=save_directory, prefix=".tmp-") as staging:
        if merge and held is not Saved.WHOLE_MODEL:
            merged_model(model, config.peft_method).save_pretrained(staging)
            config.merged = True
        elif held in (Saved.PEFT_ADAPTER, Saved.WHOLE_MODEL):
            model.save_pretrained(staging)
        elif held is Saved.TRAINABLE_STATE:
            state = {k: v.detach().contiguous() for k, v in trainable_state(model).items()}
            metadata = _metadata(config, peft_method=config.peft_method)
            save_file(state, os.path.join(staging, WEIGHTS_NAME), metadata=metadata)
        if input_module is not None:
            metadata = _metadata(config, input_module=input_module.module_type)
            save_model(input_module, os.path.join(staging, INPUT_MODULE_WEIGHTS_NAME), metadata=metadata)
        if image_processor is not None:
            image_processor.save_pretrained(staging)
        if model_card:  # after the model's own files: peft writes a README.md of its own
            write_model_card(config, os.path.join(staging, MODEL_CARD_NAME), model_id or os.fspath(save_directory))
        config.to_json_file(os.path.join(staging, SMOOTHING_CONFIG_NAME))
        for name in sorted(os.listdir(staging), key=lambda n: n == SMOOTHING_CONFIG_NAME):
            os.replace(os.path.join(staging, name), os.path.join(save_directory, name))


def training_record(
    model: PreTrainedModel | PeftModel, config: SmoothingConfig, input_module: InputModule | None
) -> dict | None:
    """``config.training`` with the trainable and total parameter counts when they are known: counted from
    ``requires_grad`` on a model prepared for training, kept from the config on a reloaded one (whose
    adapter is frozen)."""
    training = dict(config.training or {})
    if input_module is not None:
        trainable, _ = trainable_parameters(input_module)
        if trainable > 0:
            total = sum(p.numel() for module in (model, input_module) for p in module.parameters())
            training.update(trainable_parameters=trainable, total_parameters=total, train_head=False)
    elif config.peft_method is not None and not config.merged:
        trainable, total = trainable_parameters(model)
        if trainable > 0:
            base = model.get_base_model() if isinstance(model, PeftModel) else model
            heads = [f".{head}." for head in head_module_names(base)]
            train_head = any(
                p.requires_grad and any(h in f".{n}" for h in heads) for n, p in model.named_parameters()
            )
            training.update(trainable_parameters=trainable, total_parameters=total, train_head=train_head)
    return training or None


# ---------------------------------------------------------------------------------------------- helpers


def _metadata(config: SmoothingConfig, **entries: str) -> dict[str, str]:
    """The safetensors metadata of a weight file: its format, ``entries``, and the base model it fits."""
    metadata = {"format": "pt", **entries}
    if config.base_model_name_or_path is not None:
        metadata["base_model_name_or_path"] = config.base_model_name_or_path
    return metadata


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


def _optional_file(name_or_path: str | os.PathLike, filename: str, hub_kwargs: dict[str, Any]) -> str | None:
    """The local path of ``filename`` in the folder or repo, or None when it has none."""
    return cached_file(name_or_path, filename, _raise_exceptions_for_missing_entries=False, **hub_kwargs)


def _refuse_weights_without_config(name_or_path: str | os.PathLike, hub_kwargs: dict[str, Any]) -> None:
    """A folder or repo with adapter weights but no smoothing_config.json is an error: it is not a base model,
    and its sigma and normalization are unknown."""
    for filename in (ADAPTER_CONFIG_NAME, WEIGHTS_NAME):
        if _optional_file(name_or_path, filename, hub_kwargs) is not None:
            raise ValueError(
                f"{os.fspath(name_or_path)!r} holds adapter files ({filename}) but no {SMOOTHING_CONFIG_NAME}, so it "
                "is not a smoothing model (its sigma and normalization are unknown) nor a base model. Load it with "
                "the SmoothedImageClassifier.save_pretrained folder it came from, or smooth its base model with "
                "`from_pretrained(base, sigma=..., peft_config=...)`"
            )


def _required_file(
    name_or_path: str | os.PathLike, filename: str, what: str, hub_kwargs: dict[str, Any], sharded: bool = False
) -> str:
    """The local path of ``filename`` in the folder or repo; a missing file is a ValueError that says why it
    is needed (it holds ``what``). With ``sharded``, a safetensors index (sharded weights) stands in for it."""
    path = _optional_file(name_or_path, filename, hub_kwargs)
    if path is None and sharded:
        path = _optional_file(name_or_path, f"{filename}.index.json", hub_kwargs)
    if path is None:
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
        message = f"{path} is not a readable safetensors file ({error}); it is corrupt or truncated"
        raise ValueError(f"{message}: save or download it again") from None


def _check_same_base(config: SmoothingConfig, adapter_base: str | None, source: str) -> None:
    """The adapter's own record of its base model (peft's adapter_config.json, our weights' metadata) must
    agree with the base model that smoothing_config.json names."""
    configured = config.base_model_name_or_path
    if adapter_base and configured and os.path.normpath(adapter_base) != os.path.normpath(configured):
        raise ValueError(
            f"{SMOOTHING_CONFIG_NAME} names the base model {configured!r}, but {source} was trained on "
            f"{adapter_base!r}: an adapter only fits the model it was trained on; fix `base_model_name_or_path` in "
            "one of the two files"
        )


def _load_trainable_state(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load the saved trainable weights into ``model``; their names and shapes must be the model's (a
    different base model, or other method options, give other ones)."""
    expected = trainable_state(model)
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
