"""Weight files of a folder or Hub repo, found and checked before anything is loaded from them (for
``smoothing_hf.serialization``).

Folders and Hub repos take one code path (transformers' ``cached_file``). A name that is neither a folder nor a
valid Hub id is an error naming it; weights are safetensors only (a pickled ``pytorch_model.bin`` or
``adapter_model.bin`` is refused with the one-line conversion, never unpickled); a truncated safetensors file is
an error naming it; and the weights loaded after a base model must cover every parameter that loading it
initialized at random (a new classification head), with as many classes as the config lists, and fit the
base model the config names.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from huggingface_hub.utils import HFValidationError, validate_repo_id
from safetensors import safe_open
from transformers.utils import cached_file

from .config import SMOOTHING_CONFIG_NAME, SmoothingConfig
from .methods import head_module_names, trainable_state

FULL_WEIGHTS_NAME = "model.safetensors"  # transformers' weights: the whole model, merged models
ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"  # peft's adapter weights
PICKLED_NAMES = {FULL_WEIGHTS_NAME: "pytorch_model.bin", ADAPTER_WEIGHTS_NAME: "adapter_model.bin"}
"""The pickled file that older saves wrote in place of each safetensors file."""


def check_source(name_or_path: Any, what: str) -> None:
    """``name_or_path`` (``what`` names it in errors) must be a folder on this machine or a valid Hub repo id
    (``name`` or ``namespace/name``); a Hub id is left for the download to find or report."""
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError(f"{what} must be a folder or a Hub repo id (str or path), got {type(name_or_path).__name__}")
    path = os.fspath(name_or_path)
    if os.path.isdir(path):
        return
    if os.path.exists(path):
        raise OSError(f"{what} {path!r} is a file, not a model folder: pass the folder that holds it")
    try:
        validate_repo_id(path)
    except HFValidationError:
        raise OSError(
            f"{what} {path!r} is neither a folder (nothing exists at {os.path.abspath(path)!r}) nor a valid Hub repo "
            "id (`name` or `namespace/name`): check the path"
        ) from None


def optional_file(name_or_path: str | os.PathLike, filename: str, hub_kwargs: dict[str, Any]) -> str | None:
    """The local path of ``filename`` in the folder or repo, or None when it has none."""
    return cached_file(name_or_path, filename, _raise_exceptions_for_missing_entries=False, **hub_kwargs)


def refuse_pickled(name_or_path: str | os.PathLike, filename: str, hub_kwargs: dict[str, Any]) -> None:
    """Raise a ValueError with the one-line conversion when the folder or repo holds the pickled stand-in of the
    safetensors file ``filename`` (``PICKLED_NAMES``; sharded or not); it is never opened."""
    pickled = PICKLED_NAMES[filename]
    found = next((name for name in (pickled, f"{pickled}.index.json")
                  if optional_file(name_or_path, name, hub_kwargs) is not None), None)
    if found is None:
        return
    source = os.fspath(name_or_path)
    local = os.path.isdir(source)
    folder = os.path.abspath(source) if local else source.replace("/", "--")
    if filename == FULL_WEIGHTS_NAME:
        command = (
            "python -c \"from transformers import AutoModelForImageClassification as A; "
            f"A.from_pretrained('{source}', use_safetensors=False).save_pretrained('{folder}')\""
        )
    else:
        command = (
            "python -c \"import torch; from safetensors.torch import save_file; "
            f"save_file(torch.load('{folder}/{pickled}', weights_only=True), '{folder}/{filename}')\""
        )
        if not local:
            command = f"hf download {source} --local-dir {folder} && {command}"
    where = "" if local else f" (this writes the folder {folder!r}: load that folder instead of {source!r})"
    raise ValueError(
        f"{source!r} has no {filename}, only the pickled {found}: weights are loaded from safetensors only (unpickling "
        f"a file can run any code in it), so it is not opened. Convert it once, if you trust it{where}: {command}"
    )


def model_weights(name_or_path: str | os.PathLike, hub_kwargs: dict[str, Any]) -> str | None:
    """The local path of a transformers model's ``model.safetensors``, checked whole (or of its sharded index,
    left to transformers); pickled weights only are a ValueError (``refuse_pickled``); None when there are no
    weights at all (transformers then reports what is missing)."""
    path = optional_file(name_or_path, FULL_WEIGHTS_NAME, hub_kwargs)
    if path is None:
        path = optional_file(name_or_path, f"{FULL_WEIGHTS_NAME}.index.json", hub_kwargs)
    if path is None:
        refuse_pickled(name_or_path, FULL_WEIGHTS_NAME, hub_kwargs)
        return None
    check_safetensors(path)
    return path


def check_safetensors(path: str) -> dict[str, str]:
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


def tensor_shapes(path: str, prefix: str = "") -> dict[str, tuple[int, ...]]:
    """Name -> shape of the tensors in the safetensors file ``path`` (nothing is read but its header), for the
    names that start with ``prefix``, which is cut off (peft saves ``base_model.model.<name>``)."""
    with safe_open(path, framework="pt") as handle:
        return {key[len(prefix):]: tuple(handle.get_slice(key).get_shape())
                for key in handle.keys() if key.startswith(prefix)}


def check_covered(
    model: Any, fresh: dict[str, tuple[int, ...] | None], saved: dict[str, tuple[int, ...]], *,
    config_file: str, num_classes: int | None, base_file: str | None, weights_file: str | None,
) -> None:
    """The weights loaded next must agree with the config and cover what loading the base ``model`` left random.

    ``fresh``: the parameters initialized at random (name -> shape in the base weights, None where they lack it),
    ``saved``: name -> shape of the weights loaded into ``model`` next (from ``weights_file``; none when it is
    None). A head in ``saved`` must have ``num_classes`` outputs (the length of ``id2label`` in ``config_file``),
    and every fresh parameter must be in ``saved``; else a ValueError names both files and both sizes.
    """
    shapes = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    try:
        heads = head_module_names(model)
    except ValueError:  # no head outside the backbone: only what is fresh can be checked
        heads = []
    listed = (f"{config_file} lists {num_classes} classes (`id2label`)" if num_classes is not None
              else f"{config_file} records no `id2label`")
    for name, shape in saved.items():
        in_head = any(name.startswith(f"{head}.") for head in heads)
        if in_head and name in shapes and shape[:1] != shapes[name][:1] and shapes[name][:1] == (num_classes,):
            raise ValueError(
                f"{listed}, but {weights_file} holds a head of {shape[0]} classes ({name}: shape {shape}): the two "
                f"must agree; restore the `id2label` of {shape[0]} classes the model was saved with"
            )
    uncovered = sorted(name for name in fresh if name not in saved)
    if not uncovered:
        return
    name, base_shape = uncovered[0], fresh[uncovered[0]]
    if base_shape is None:
        base = f"the base weights {base_file} hold no {name}"
    else:
        base = f"the base model's head in {base_file} has {base_shape[0]} classes ({name}: shape {base_shape})"
    replacement = (f"{weights_file} holds no {name} of shape {shapes[name]} to replace it" if weights_file
                   else "the folder holds no weights of the model to replace it")
    raise ValueError(
        f"{listed}, but {base} and {replacement} ({len(uncovered)} such tensors: {uncovered[:4]}): it would be "
        "initialized at random at every load, giving other certificates each time. Restore the `id2label` the "
        "model was saved with, or train the head with the adapter (`train_head=True`) and save it again"
    )


def required_file(
    name_or_path: str | os.PathLike, filename: str, what: str, hub_kwargs: dict[str, Any], sharded: bool = False
) -> str:
    """The local path of ``filename`` in the folder or repo; a missing file is a ValueError that says why it
    is needed (it holds ``what``). With ``sharded``, a safetensors index (sharded weights) stands in for it."""
    path = optional_file(name_or_path, filename, hub_kwargs)
    if path is None and sharded:
        path = optional_file(name_or_path, f"{filename}.index.json", hub_kwargs)
    if path is None:
        if filename in PICKLED_NAMES:
            refuse_pickled(name_or_path, filename, hub_kwargs)
        raise ValueError(
            f"{os.fspath(name_or_path)!r} has no {filename}, which holds {what} that its {SMOOTHING_CONFIG_NAME} "
            "describes (weights are loaded from safetensors only); save the model again"
        )
    return path


def check_same_base(config: SmoothingConfig, adapter_base: str | None, source: str) -> None:
    """The adapter's own record of its base model (peft's adapter_config.json, our weights' metadata) must
    agree with the base model that smoothing_config.json names."""
    configured = config.base_model_name_or_path
    if adapter_base and configured and os.path.normpath(adapter_base) != os.path.normpath(configured):
        raise ValueError(
            f"{SMOOTHING_CONFIG_NAME} names the base model {configured!r}, but {source} was trained on "
            f"{adapter_base!r}: an adapter only fits the model it was trained on; fix `base_model_name_or_path` in "
            "one of the two files"
        )


def load_trainable_state(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
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
