"""Saving and loading smoothed classifiers: smoothing folders and Hub repos (one code path), merged export.

A smoothing folder holds ``smoothing_config.json`` (sigma, normalization, base model and revision, method),
the model as its method's registry row says (``smoothing_hf.methods.Saved``: peft's adapter files, our
``smoothing_weights.safetensors``, or the whole model), an input module whole as ``input_module.safetensors``,
the image processor, the classifier's ``config.json`` (the whole model's; beside our weights or none, the
base's, since transformers' ``pipeline()`` reads a folder's config before its loader runs; never beside peft's
files, where transformers would take the folder for a whole model) and a ``README.md`` model card. Weights are
read and written as safetensors only, each file found and checked by ``smoothing_hf.weights_files`` before
anything is read from it.

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

from peft import PeftConfig, PeftModel
from safetensors.torch import load_file, load_model, save_file, save_model
from transformers import AutoConfig, AutoModelForImageClassification, PreTrainedModel

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
from .space import model_input_size, space_settings
from .transforms import load_image_processor, per_channel
from .weights_files import (
    ADAPTER_WEIGHTS_NAME,
    FULL_WEIGHTS_NAME,
    check_covered,
    check_safetensors,
    check_same_base,
    check_source,
    load_trainable_state,
    model_weights,
    optional_file,
    required_file,
    tensor_shapes,
)

HUB_KWARGS = ("revision", "token", "cache_dir", "local_files_only", "force_download", "proxies")
WEIGHTS_NAME = "smoothing_weights.safetensors"  # our methods' trainable weights: adapters, prompts, the head
ADAPTER_CONFIG_NAME = "adapter_config.json"  # peft's adapter files, beside ADAPTER_WEIGHTS_NAME
PEFT_PREFIX = "base_model.model."  # peft's name for a base model's tensor in its adapter files
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
    certify_size: int | Sequence[int] | None = None,
    resize_interpolation: str = "bilinear",
    **model_kwargs: Any,
) -> Parts:
    """The parts of a smoothed classifier: loaded whole from a smoothing folder or repo, or a base classifier
    smoothed at ``sigma``. The arguments are ``SmoothedImageClassifier.from_pretrained``'s; each is checked, and
    the weights files too (safetensors only, whole), before any weights are read."""
    check_source(name_or_path, "`pretrained_model_name_or_path`")
    if method_options is not None and not isinstance(method_options, dict):
        raise TypeError(
            "`method_options` must be a dict of the method's options (e.g. {'r': 16} for lora, {'train_head': False}) "
            f"or None, got {type(method_options).__name__} {method_options!r}"
        )
    if model_kwargs.setdefault("use_safetensors", True) is not True:
        raise ValueError(f"`use_safetensors` must be True or left out (weights are loaded from safetensors only), "
                         f"got {model_kwargs['use_safetensors']!r}")
    hub_kwargs = {k: v for k, v in model_kwargs.items() if k in HUB_KWARGS}
    # Every file of this load comes from one state of the repo: a branch is resolved to its commit once.
    revision = _resolve_revision(name_or_path, hub_kwargs)
    if revision is not None:
        hub_kwargs["revision"] = model_kwargs["revision"] = revision
    config_file = optional_file(name_or_path, SMOOTHING_CONFIG_NAME, hub_kwargs)
    if config_file is not None:
        given = [f"`{name}`" for name, value in [
            ("method", method), ("method_options", method_options or None), ("peft_config", peft_config),
            ("input_module", input_module), ("new_labels", new_labels), ("image_mean", image_mean),
            ("image_std", image_std), ("certify_size", certify_size)] if value is not None]
        if given:
            raise ValueError(
                f"{name_or_path!r} is a saved smoothing model; it brings its own method, head, normalization and "
                f"space, so {', '.join(given)} must not be given"
            )
        return _load_folder(name_or_path, config_file, sigma, hub_kwargs)
    _refuse_weights_without_config(name_or_path, hub_kwargs)
    if sigma is None:
        raise ValueError(f"`sigma` is required: {name_or_path!r} is a base model (no {SMOOTHING_CONFIG_NAME})")
    if sum(option is not None for option in (method, peft_config, input_module)) > 1:
        raise ValueError("pass at most one of `method`, `peft_config` and `input_module`")
    if method_options and method is None:
        raise ValueError(
            f"`method_options` needs `method` (the METHODS name they configure), got {method_options!r} without one"
        )
    if new_labels is not None:
        if not new_labels or len(set(new_labels)) != len(new_labels):
            raise ValueError(f"`new_labels` must be distinct class names, at least one, got {new_labels!r}")
        model_kwargs.update(
            num_labels=len(new_labels), id2label=dict(enumerate(new_labels)),
            label2id={name: i for i, name in enumerate(new_labels)}, ignore_mismatched_sizes=True,
        )
    model_weights(name_or_path, hub_kwargs)
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
    if new_labels is not None and (saved_form(method) is None or not _trains_head(model)):
        raise ValueError(
            "`new_labels` gives the model a new, randomly initialized head, which must be trained and saved with the "
            "adapter: pass a `method` that trains it (`linear`, `full`, or any other without `train_head=False`) or a "
            f"`peft_config` whose `modules_to_save` holds the head; got method={method!r}"
            + (" with an input module (the base is frozen)" if input_module is not None else "")
        )
    config = SmoothingConfig(
        sigma=sigma,
        image_mean=list(image_mean) if image_mean is not None else mean,
        image_std=list(image_std) if image_std is not None else std,
        base_model_name_or_path=base_name,
        base_model_revision=getattr(revision, "resolved", None) or (str(revision) if revision is not None else None),
        peft_method=method,
        method_options=dict(method_options or {}) if peft_config is None else {},
        **space_settings(certify_size, model_input_size(model.config, image_processor), resize_interpolation),
    )
    return Parts(model, config, image_processor, input_module)



def _load_folder(
    name_or_path: str | os.PathLike, config_file: str, sigma: float | None, hub_kwargs: dict[str, Any]
) -> Parts:
    """Load what ``save`` wrote: the base model the config names (at its recorded revision; the other Hub
    arguments apply to it too), then the adapter, checked against the config before use: the same base, and a
    head of as many classes as ``id2label`` lists, which the adapter must hold where the base lacks it."""
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
    covered = {"config_file": config_file, "num_classes": len(config.id2label) if config.id2label else None}
    if held is Saved.WHOLE_MODEL:
        weights = required_file(name_or_path, FULL_WEIGHTS_NAME, what, hub_kwargs, sharded=True)
        check_safetensors(weights)
        model = AutoModelForImageClassification.from_pretrained(name_or_path, use_safetensors=True, **hub_kwargs)
        if covered["num_classes"] not in (None, model.config.num_labels):
            raise ValueError(
                f"{config_file} lists {covered['num_classes']} classes (`id2label`), but {weights} holds a model of "
                f"{model.config.num_labels} classes: the two must agree; restore the `id2label` it was saved with"
            )
    elif held is None:
        model, fresh, base_file = _load_base_model(config, base_kwargs)
        check_covered(model, fresh, {}, base_file=base_file, weights_file=None, **covered)
    elif held is Saved.PEFT_ADAPTER:
        adapter_config = required_file(name_or_path, ADAPTER_CONFIG_NAME, what, hub_kwargs)
        weights = required_file(name_or_path, ADAPTER_WEIGHTS_NAME, what, hub_kwargs)
        check_safetensors(weights)
        check_same_base(config, read_json(adapter_config).get("base_model_name_or_path"), adapter_config)
        # Both files lie in one folder (the repo's snapshot at one commit): peft reads them there, so it
        # never falls back to a pickled adapter_model.bin.
        base, fresh, base_file = _load_base_model(config, base_kwargs)
        check_covered(base, fresh, tensor_shapes(weights, PEFT_PREFIX), base_file=base_file, weights_file=weights,
                      **covered)
        model = PeftModel.from_pretrained(base, os.path.dirname(weights))
        carry_base_layer_attributes(model)
    else:
        weights = required_file(name_or_path, WEIGHTS_NAME, what, hub_kwargs)
        check_same_base(config, check_safetensors(weights).get("base_model_name_or_path"), weights)
        base, fresh, base_file = _load_base_model(config, base_kwargs)
        check_covered(base, fresh, tensor_shapes(weights), base_file=base_file, weights_file=weights, **covered)
        model = apply_method(base, method, **config.method_options)
        load_trainable_state(model, load_file(weights), weights)
    input_module = None
    if config.input_module is not None:
        kind = config.input_module["type"]
        input_module = input_module_from_record(config.input_module)
        weights = required_file(name_or_path, INPUT_MODULE_WEIGHTS_NAME, f"the {kind} input module", hub_kwargs)
        check_same_base(config, check_safetensors(weights).get("base_model_name_or_path"), weights)
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
        if held in (Saved.TRAINABLE_STATE, None) and not merge:  # pipeline() reads config.json before any loader
            model.config.save_pretrained(staging)
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
            training.update(trainable_parameters=trainable, total_parameters=total, train_head=_trains_head(model))
    return training or None


# ---------------------------------------------------------------------------------------------- helpers


def _trains_head(model: PreTrainedModel | PeftModel) -> bool:
    """Whether a parameter of the classification head is trainable (for peft, its copy in ``modules_to_save``)."""
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    heads = [f".{head}." for head in head_module_names(base)]
    return any(p.requires_grad and any(h in f".{n}" for h in heads) for n, p in model.named_parameters())


def _metadata(config: SmoothingConfig, **entries: str) -> dict[str, str]:
    """The safetensors metadata of a weight file: its format, ``entries``, and the base model it fits."""
    metadata = {"format": "pt", **entries}
    if config.base_model_name_or_path is not None:
        metadata["base_model_name_or_path"] = config.base_model_name_or_path
    return metadata


def _load_base_model(
    config: SmoothingConfig, hub_kwargs: dict[str, Any]
) -> tuple[PreTrainedModel, dict[str, tuple[int, ...] | None], str | None]:
    """The base model a smoothing config names, at its recorded revision, with a head of as many classes as its
    ``id2label`` lists; its weights are checked first (``model_weights``: safetensors, whole). Returned with
    the tensors that loading initialized at random (name -> shape in the base weights, None where they lack
    it: a new head, for ``check_covered``) and the weights file. ``hub_kwargs`` (token, cache_dir,
    local_files_only, ...) go to its downloads."""
    name = config.base_model_name_or_path
    if name is None:
        raise ValueError(f"{SMOOTHING_CONFIG_NAME} names no base model (`base_model_name_or_path`)")
    kwargs: dict[str, Any] = {**hub_kwargs, "revision": config.base_model_revision}
    try:
        check_source(name, f"the base model that {SMOOTHING_CONFIG_NAME} names")
        base_file = model_weights(name, kwargs)
        if config.id2label is not None:
            base_config = AutoConfig.from_pretrained(name, **kwargs)
            id2label = {int(k): v for k, v in config.id2label.items()}
            kwargs.update(id2label=id2label, label2id={v: k for k, v in id2label.items()})
            if base_config.num_labels != len(id2label):  # a new head for a downstream label set
                kwargs.update(num_labels=len(id2label), ignore_mismatched_sizes=True)
        model, info = AutoModelForImageClassification.from_pretrained(
            name, use_safetensors=True, output_loading_info=True, **kwargs
        )
    except OSError as error:
        revision = f" at revision {config.base_model_revision!r}" if config.base_model_revision else ""
        raise OSError(
            f"the base model {name!r}{revision} that {SMOOTHING_CONFIG_NAME} names could not be loaded; the adapter "
            f"needs it (a Hub id, or a folder on this machine): {error}"
        ) from error
    fresh = dict.fromkeys(info["missing_keys"])
    fresh.update({key: tuple(saved) for key, saved, _ in info["mismatched_keys"]})
    return model, fresh, base_file


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
        if optional_file(name_or_path, filename, hub_kwargs) is not None:
            raise ValueError(
                f"{os.fspath(name_or_path)!r} holds adapter files ({filename}) but no {SMOOTHING_CONFIG_NAME}, so it "
                "is not a smoothing model (its sigma and normalization are unknown) nor a base model. Load it with "
                "the SmoothedImageClassifier.save_pretrained folder it came from, or smooth its base model with "
                "`from_pretrained(base, sigma=..., peft_config=...)`"
            )
