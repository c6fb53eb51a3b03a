"""Hub I/O for smoothed classifiers: model cards, pushing a saved folder, refreshing its certified results.

A smoothing folder (``SmoothedImageClassifier.save_pretrained``) holds the adapter, the image processor,
``smoothing_config.json`` and a ``README.md`` model card rendered here from the config alone, so the card
never says anything the config does not record. Three public steps:

- ``model_card(config, model_id)``: the card, a ``huggingface_hub.ModelCard`` rendered from the Jinja template
  ``smoothing_hf/model_cards/smoothing_model_card.md``; its metadata has ``library_name``, ``base_model``,
  ``tags``, ``datasets`` and a ``model-index`` with the certified accuracies and the ACR as eval results, each
  named with the certification space where the record has one (radii of different image sizes never compare).
- ``push_folder(folder, repo_id)``: one commit of the folder's files with ``huggingface_hub`` (create the repo,
  and the branch for a ``revision``, then ``HfApi.upload_folder``).
- ``update_results(folder, summary)``: after ``certify()``, write its results into the folder's
  ``smoothing_config.json`` and card (only when called: results are never recorded silently).

Imports the config and the two registries (methods, input modules), not the model wrapper nor its
serialization, which import this module.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from collections.abc import Mapping
from typing import Any

from huggingface_hub import CommitInfo, EvalResult, HfApi, ModelCard, ModelCardData

from . import __version__
from .certification import largest_certifiable_radius
from .config import CERTIFICATION_KEYS, SMOOTHING_CONFIG_NAME, TRAINING_KEYS, SmoothingConfig, check_certification
from .files import write_text
from .input_modules import input_module_class
from .methods import METHODS, Saved, Trains, saved_form

logger = logging.getLogger(__name__)

MODEL_CARD_NAME = "README.md"
MODEL_CARD_TEMPLATE = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "model_cards", "smoothing_model_card.md"
)
"""The Jinja template of the model card, shipped inside the package (``setup.cfg`` package data)."""
LIBRARY_NAME = "smoothing_hf"
CARD_TAGS = ("smoothing_hf", "randomized-smoothing", "certified-robustness", "image-classification")
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
PUSH_IGNORE_PATTERNS = (".*", "*/.*", "*.tmp")
"""Files of a folder that ``push_folder`` leaves out (``upload_folder``'s patterns, on paths relative to the
folder): hidden files and folders (the staging folders of ``save_pretrained``), temporary files."""


# ---------------------------------------------------------------------------------------------- model card


def model_card(config: SmoothingConfig, model_id: str, template_path: str | os.PathLike | None = None) -> ModelCard:
    """The model card of a smoothed classifier described by ``config``, for loading as ``model_id`` (a Hub repo
    id or a folder: it appears in the card's loading snippet and names the ``model-index`` entry).

    Rendered with ``huggingface_hub.ModelCard.from_template`` from ``template_path`` (default
    ``MODEL_CARD_TEMPLATE``); the template gets the config's fields and a few derived values (see the
    default template for their names)."""
    if not isinstance(config, SmoothingConfig):
        raise TypeError(f"`config` must be a SmoothingConfig, got {type(config).__name__}")
    if not isinstance(model_id, (str, os.PathLike)) or not os.fspath(model_id):
        raise ValueError(f"`model_id` must be a Hub repo id or a folder, got {model_id!r}")
    model_id = os.fspath(model_id)
    model_name = model_id.rstrip("/").split("/")[-1] or model_id
    certification = config.certification
    training = config.training or {}
    base_model = _hub_id(config.base_model_name_or_path)
    method = config.peft_method
    datasets = [name for name in (training.get("dataset"), (certification or {}).get("dataset")) if _hub_id(name)]
    row = METHODS.get(method)  # None for a method the registry lacks (from a peft_config)
    tags = [*CARD_TAGS, *([method] if method else []), *(["peft"] if row and row.saved is Saved.PEFT_ADAPTER else [])]

    card_data = ModelCardData(
        library_name=LIBRARY_NAME,
        base_model=base_model,
        tags=tags,
        datasets=list(dict.fromkeys(datasets)) or None,
        pipeline_tag="image-classification",
        model_name=model_name if certification else None,
        eval_results=_eval_results(config) if certification else None,
    )
    usage = {"n0": 100, "n": 100_000, "alpha": 0.001}
    if certification:
        usage = {key: certification[key] for key in usage}
    return ModelCard.from_template(
        card_data,
        template_path=os.fspath(template_path) if template_path is not None else MODEL_CARD_TEMPLATE,
        model_id=model_id,
        model_name=model_name,
        library_version=__version__,
        base_model=base_model,
        base_model_url=f"https://huggingface.co/{base_model}" if base_model else None,
        base_model_name_or_path=config.base_model_name_or_path,
        base_model_revision=config.base_model_revision,
        sigma=config.sigma,
        method=method,
        input_module=config.input_module,
        input_module_description=(
            input_module_class(config.input_module["type"]).description if config.input_module else None
        ),
        method_description=row.description if row else method,
        trains=(row.trains if row else Trains.ADDED_PARAMETERS).name,  # what it trains, how it is held:
        held=(row.saved if row else Saved.PEFT_ADAPTER).name,  # a peft_config's adapter by default
        method_options=_options_text(config.method_options),
        merged=config.merged,
        trainable_parameters=training.get("trainable_parameters"),
        total_parameters=training.get("total_parameters"),
        training={key: training.get(key) for key in TRAINING_KEYS},  # every key, None where unknown
        objective_options=_options_text(training.get("objective_options")),
        num_labels=len(config.id2label) if config.id2label else "unknown",
        class_names=_class_names(config.id2label),
        image_mean=config.image_mean,
        image_std=config.image_std,
        certify_size=config.certify_size,  # with the size the forward upsamples to, and how
        model_input_size=config.model_input_size,
        resize_interpolation=config.resize_interpolation,
        certification={key: certification.get(key) for key in CERTIFICATION_KEYS} if certification else None,
        max_radius=(
            largest_certifiable_radius(certification["n"], certification["alpha"], config.sigma)
            if certification else None
        ),
        usage=usage,
    )


def write_model_card(config: SmoothingConfig, path: str | os.PathLike, model_id: str) -> None:
    """Render ``model_card(config, model_id)`` into ``path`` atomically (temporary file renamed into place)."""
    write_text(str(model_card(config, model_id)), path)


def _eval_results(config: SmoothingConfig) -> list[EvalResult]:
    """One eval result per certified radius (``certified_accuracy``, a fraction) and one for the ACR, with
    the settings that qualify them (sigma, n0, n, alpha, and the space where recorded) as metric arguments; a
    recorded space is named in the task and in every metric's name too."""
    record = config.certification
    dataset = record.get("dataset") or "unknown"
    space = record.get("space")  # in every name and task, so that no leaderboard ranks radii of two spaces together
    common = dict(
        task_type="image-classification",
        task_name=f"Certified image classification (randomized smoothing, {space})" if space
        else "Certified image classification (l2, randomized smoothing)",
        dataset_type=dataset, dataset_name=dataset, dataset_split=record.get("split"),
    )
    settings = {"sigma": config.sigma, "n0": record["n0"], "n": record["n"], "alpha": record["alpha"],
                **({"space": space} if space else {})}
    results = [
        EvalResult(
            **common, metric_type="certified_accuracy", metric_value=value,
            metric_name=f"Certified accuracy at radius {radius} ({space})" if space
            else f"Certified accuracy at l2 radius {radius}",
            metric_config=f"radius={radius}", metric_args={"radius": float(radius), **settings},
        )
        for radius, value in record["certified_accuracy"].items()
    ]
    results.append(
        EvalResult(
            **common, metric_type="acr", metric_value=record["acr"],
            metric_name=f"Average certified radius ({space})" if space else "Average certified radius",
            metric_args=settings,
        )
    )
    return results


def _hub_id(name: str | None) -> str | None:
    """``name`` when it reads as a Hub repo id (not a local path, not an ``embedded:`` dataset), else None."""
    if not name or os.path.isabs(name) or os.path.exists(name) or not _REPO_ID.match(name):
        return None
    return name


def _options_text(options: Mapping[str, Any] | None) -> str:
    """Options as ``name=value, ...`` in name order ("" for none)."""
    return ", ".join(f"{k}={v!r}" for k, v in sorted((options or {}).items()))


def _class_names(id2label: Mapping[str, str] | None) -> str | None:
    if not id2label:
        return None
    names = [id2label[key] for key in sorted(id2label, key=lambda k: int(k) if k.lstrip("-").isdigit() else k)]
    return ", ".join(names[:20]) + (f", ... ({len(names)} in all)" if len(names) > 20 else "")


# ---------------------------------------------------------------------------------------------- results


def certification_record(
    config: SmoothingConfig, summary: Mapping[str, Any], *, dataset_name: str | None = None, split: str | None = None
) -> dict:
    """The ``SmoothingConfig.certification`` record of a ``certify()`` summary (``summary.json``), checked
    against ``config``: the summary must come from CERTIFY (not PREDICT), from a whole run (not one shard of
    several), at the config's sigma and for the model the config describes, in its space where both say. The
    record keeps the summary's ``space`` (where its radii live; absent from older summaries)."""
    if not isinstance(summary, Mapping) or "certified_accuracy" not in summary:
        raise ValueError(
            "`summary` must be the summary of a certify() run in certify mode (its summary.json, with "
            "'certified_accuracy'); a predict-mode summary has no certified radii"
        )
    settings = summary.get("settings") or {}
    if settings.get("mode", "certify") != "certify":
        raise ValueError(
            f"`summary` comes from a {settings['mode']!r} run; only certify-mode results go into a model card"
        )
    if (settings.get("num_shards") or 1) > 1:
        raise ValueError(
            f"`summary` covers shard {settings.get('shard_index')} of {settings['num_shards']} only; merge the shards "
            "(smoothing_hf.pipeline.merge_shards) and record the merged summary"
        )
    missing = [key for key in ("n0", "n", "alpha", "sigma") if settings.get(key) is None]
    if missing:
        raise ValueError(f"`summary['settings']` must record {missing} (certify() writes them); got {sorted(settings)}")
    if float(settings["sigma"]) != config.sigma:
        raise ValueError(
            f"`summary` was certified at sigma={settings['sigma']}, but this model's sigma is {config.sigma}: "
            "certificates hold only at the sigma they were computed for"
        )
    model = settings.get("model") or {}
    recorded = {
        "base_model_name_or_path": config.base_model_name_or_path, "method": config.peft_method,
        "input_module": (config.input_module or {}).get("type"),
    }
    differing = [key for key, value in recorded.items() if key in model and model[key] != value]
    if differing:
        raise ValueError(
            "`summary` was certified with another model: "
            + ", ".join(f"{key}={model[key]!r} there, {recorded[key]!r} here" for key in differing)
        )
    space = summary.get("space") or settings.get("space")
    expected = config.space(len(config.image_mean))
    if space and expected and space != expected:
        raise ValueError(
            f"`summary` was certified in {space}, but this model certifies in {expected} (`certify_size`): its "
            "radii come from another model"
        )
    record = {
        "n0": settings["n0"], "n": settings["n"], "alpha": settings["alpha"], "seed": settings.get("seed"),
        "skip": settings.get("skip"), "num_examples": summary.get("num_examples"), "dataset": dataset_name,
        "split": split, "certified_accuracy": summary["certified_accuracy"], "acr": summary.get("acr"),
        "abstain_rate": summary.get("abstain_rate"), "clean_accuracy": summary.get("clean_accuracy"),
        "space": space, "precision": settings.get("precision"), "bound_seed": settings.get("bound_seed"),
    }
    return check_certification({key: value for key, value in record.items() if value is not None})


def update_results(
    folder: str | os.PathLike,
    summary: Mapping[str, Any],
    *,
    dataset_name: str | None = None,
    split: str | None = None,
    model_id: str | None = None,
) -> SmoothingConfig:
    """Record a ``certify()`` summary in a saved smoothing folder: rewrite its ``smoothing_config.json``
    (``certification``) and its ``README.md`` card (rendered anew: edits to the card are replaced). Each file is
    written to a temporary name and renamed, the config last. ``model_id`` (default: ``folder``) is what
    the card's loading snippet loads. Returns the new config."""
    path = os.path.join(folder, SMOOTHING_CONFIG_NAME)
    config = _folder_config(folder)
    config.certification = certification_record(config, summary, dataset_name=dataset_name, split=split)
    write_model_card(config, os.path.join(folder, MODEL_CARD_NAME), model_id or os.fspath(folder))
    config.to_json_file(path)
    return config


# ---------------------------------------------------------------------------------------------- push


def push_folder(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    commit_message: str | None = None,
    commit_description: str | None = None,
    private: bool | None = None,
    token: str | bool | None = None,
    revision: str | None = None,
    create_pr: bool = False,
    rewrite_card: bool = True,
) -> CommitInfo:
    """Upload a saved smoothing folder to the Hub repo ``repo_id`` in one commit (``HfApi.upload_folder``).

    Creates the repo if needed (``private`` applies to a new repo), and the branch ``revision`` if it does not
    exist (from the default branch); ``create_pr`` opens a pull request instead (against the default branch:
    ``upload_folder`` refuses a ``revision`` with it). With ``rewrite_card`` the card is rendered anew for
    ``repo_id`` (its loading snippet then loads the repo); otherwise the folder's ``README.md`` goes up as it
    is. Hidden files and folders (the staging folders of ``save_pretrained``) and ``*.tmp`` files are left out
    (``PUSH_IGNORE_PATTERNS``). Returns the ``CommitInfo``."""
    config = _folder_config(folder)
    if not isinstance(repo_id, str) or not _REPO_ID.match(repo_id):
        raise ValueError(f"`repo_id` must be a Hub repo id such as 'user/vit-lora-smoothing-0.25', got {repo_id!r}")
    if create_pr and revision not in (None, "main"):
        raise ValueError(
            f"`create_pr=True` opens a pull request against the default branch; `revision` must be None with it, "
            f"got {revision!r} (push to the branch without `create_pr`, or open the pull request from main)"
        )
    needs_base = saved_form(config.peft_method, merged=config.merged) is not Saved.WHOLE_MODEL
    if config.base_model_name_or_path and needs_base and not _hub_id(config.base_model_name_or_path):
        logger.warning(
            f"{repo_id}: the base model is the local path {config.base_model_name_or_path!r}; others can load "
            "this adapter only with a base model of that name. Smooth a Hub model, or push a merged model "
            "(push_to_hub(..., merge_adapter=True))"
        )
    api = HfApi(token=token)
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    if revision is not None and not create_pr and not revision.startswith("refs/pr/"):
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    default_message = f"Upload smoothed classifier (sigma={config.sigma}, method={config.peft_method})"
    upload = dict(
        repo_id=repo_id, ignore_patterns=list(PUSH_IGNORE_PATTERNS), revision=revision, create_pr=create_pr,
        commit_message=commit_message or default_message, commit_description=commit_description,
    )
    if not rewrite_card:
        return api.upload_folder(folder_path=folder, **upload)
    with tempfile.TemporaryDirectory(prefix="smoothing-push-") as staging:
        _link_files(folder, staging, leave_out=MODEL_CARD_NAME)
        write_text(str(model_card(config, repo_id)), os.path.join(staging, MODEL_CARD_NAME))
        return api.upload_folder(folder_path=staging, **upload)


def _folder_config(folder: str | os.PathLike) -> SmoothingConfig:
    """The config of a saved smoothing folder; a folder without one is a ValueError."""
    path = os.path.join(folder, SMOOTHING_CONFIG_NAME)
    if not os.path.isfile(path):
        raise ValueError(
            f"{os.fspath(folder)} is not a smoothing folder (no {SMOOTHING_CONFIG_NAME}); save the model there first"
        )
    return SmoothingConfig.from_json_file(path)


def _link_files(folder: str | os.PathLike, staging: str, leave_out: str) -> None:
    """Mirror ``folder`` in the empty folder ``staging``: a symbolic link to each of its files (folders are made
    anew; ``upload_folder`` reads files through links but does not walk linked folders), but ``leave_out``, a
    path relative to ``folder``."""
    for root, _, files in os.walk(folder):
        relative_root = os.path.relpath(root, folder)
        os.makedirs(os.path.join(staging, relative_root), exist_ok=True)
        for name in files:
            relative = os.path.normpath(os.path.join(relative_root, name))
            if relative != leave_out:
                os.symlink(os.path.abspath(os.path.join(root, name)), os.path.join(staging, relative))
