"""Every method side by side: the same base model, noise level, data and training budget, one table.

``run_comparison`` trains each method (``COMPARISON_METHODS``: the unadapted base, full fine-tuning, the PEFT
methods, LoRA and full fine-tuning with each training objective (consistency regularization, SmoothAdv, MACER),
the denoisers of denoised and diffusion denoised smoothing) on the
same base at the same sigma, saves it, and certifies the same held-out images with the same noise seed; some
methods several times with different training seeds. Each run is a folder (``save_pretrained``'s files,
``train_results.json``, ``certify/``), computed first and reused when present (rerunning resumes, as
``pipeline.certify`` does). ``write_comparison`` then reads the folders (also runs trained elsewhere, such as
the black-box coordinator of ``examples/train_blackbox.py``) into one table: certified accuracy at radii and
ACR (mean +- standard deviation over seeds, ``*`` / bold on the best mean per column), trainable parameters,
training time and certification throughput, in Markdown and LaTeX, and one plot with every curve. Runs under
``accelerate launch``: the Trainer and ``pipeline.certify`` share the work; the main process writes.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from accelerate import PartialState
from transformers import AutoConfig, TrainingArguments, set_seed

from .baselines import DenoiserTrainer, DiffusionDenoiser, DnCNN
from .checks import parse_json_object
from .data import check_labels
from .files import read_json, write_json
from .methods import METHODS, Trains, trainable_parameters
from .modeling import SmoothedImageClassifier
from .objectives import OBJECTIVES, get_objective
from .pipeline import certify
from .reporting.comparison import CERTIFY_DIR, TRAIN_RESULTS_NAME, write_comparison
from .trainer import SmoothingTrainer
from .transforms import ImageClassificationTransform


@dataclass(frozen=True)
class ComparisonMethod:
    """One row of the comparison: how its model is built on the base and how it is trained.

    ``method``: the ``METHODS`` name the base is adapted with (None: the base stays as it is); ``denoiser``:
    "dncnn" or "diffusion", an input module in front of the frozen base; ``objective``: the training objective,
    the denoiser's (``DenoiserTrainer``: "mse", "stability") in a denoiser row, otherwise a
    ``smoothing_hf.objectives.OBJECTIVES`` name (None: "gaussian"), with its options and m from the settings'
    ``objective_options`` and ``noise_samples``; ``second_model``: the ``ComparisonSettings`` field naming a
    model the row needs besides the base (a surrogate classifier, a DDPM); ``trains``: False for rows that
    train nothing; ``learning_rate``: the ``ComparisonSettings`` field of its learning rate."""

    description: str
    method: str | None = None
    denoiser: str | None = None
    objective: str | None = None
    second_model: str | None = None
    trains: bool = True
    learning_rate: str = "learning_rate"


def _registry_row(name: str) -> ComparisonMethod:
    """The row of a ``METHODS`` name: that method on the base; full fine-tuning's own learning rate."""
    every = METHODS[name].trains is Trains.EVERY_PARAMETER
    return ComparisonMethod(METHODS[name].description, method=name,
                            learning_rate="full_learning_rate" if every else "learning_rate")


def _objective_row(name: str, objective: str, description: str) -> ComparisonMethod:
    """The row of a ``METHODS`` name trained with a ``SmoothingTrainer`` objective."""
    return replace(_registry_row(name), description=description, objective=objective)


COMPARISON_METHODS: dict[str, ComparisonMethod] = {
    "base": ComparisonMethod("the base model, unadapted (no training)", trains=False),
    "full": replace(_registry_row("full"), description="full fine-tuning under noise (Cohen et al.)"),
    "linear": replace(_registry_row("linear"), description="the classification head only"),
    "lora": replace(_registry_row("lora"), description="LoRA"),
    "dora": replace(_registry_row("dora"), description="DoRA"),
    "adapter": replace(_registry_row("adapter"), description="bottleneck adapters"),
    "vpt": replace(_registry_row("vpt"), description="visual prompt tuning"),
    "consistency": _objective_row("lora", "consistency", "LoRA with consistency regularization (Jeong and Shin, 2020)"),
    "full-consistency": _objective_row("full", "consistency", "full fine-tuning with consistency regularization"),
    "lora-smoothadv": _objective_row("lora", "smoothadv", "LoRA with SmoothAdv training (Salman et al., 2019)"),
    "full-smoothadv": _objective_row("full", "smoothadv", "full fine-tuning with SmoothAdv training"),
    "lora-macer": _objective_row("lora", "macer", "LoRA with MACER (Zhai et al., 2020)"),
    "full-macer": _objective_row("full", "macer", "full fine-tuning with MACER"),
    "dncnn-mse": ComparisonMethod(
        "DnCNN denoiser, MSE objective (Salman et al., 2020)", denoiser="dncnn", objective="mse",
        learning_rate="denoiser_learning_rate",
    ),
    "dncnn-stability": ComparisonMethod(
        "DnCNN denoiser, stability objective (Salman et al., 2020)", denoiser="dncnn", objective="stability",
        learning_rate="denoiser_learning_rate",
    ),
    "dncnn-surrogate": ComparisonMethod(
        "DnCNN denoiser, stability objective through a surrogate model (query access; Salman et al., 2020)",
        denoiser="dncnn", objective="stability", second_model="surrogate_model", learning_rate="denoiser_learning_rate",
    ),
    "diffusion": ComparisonMethod(
        "one-shot DDPM denoising at t* (Carlini et al., 2023)", denoiser="diffusion", second_model="diffusion_model",
        trains=False,
    ),
}
"""The rows ``run_comparison`` knows by name; any other ``METHODS`` name is a row too (``comparison_method``)."""


def comparison_method(name: str) -> ComparisonMethod:
    """The row of ``name``: a ``COMPARISON_METHODS`` row, or a ``METHODS`` name on the base."""
    if name in COMPARISON_METHODS:
        return COMPARISON_METHODS[name]
    if name in METHODS:
        return _registry_row(name)
    raise ValueError(f"unknown method {name!r}; allowed: {sorted(set(COMPARISON_METHODS) | set(METHODS))}")


DEFAULT_OBJECTIVE_OPTIONS = {
    "consistency": {"lbd": 5.0, "eta": 0.0},
    "smoothadv": {"epsilon": 0.5, "steps": 2, "warmup_epochs": 2},
    "macer": {"lbd": 12.0, "gamma": 8.0, "beta": 16.0},
}
"""The grid's objective options: consistency as the earlier grid ran it (the KL term alone, weight 5), SmoothAdv
with Salman et al.'s epsilon 0.5 and 2 steps warmed up over half of the 4 epochs, MACER with Zhai et al.'s values."""
DEFAULT_NOISE_SAMPLES = {"consistency": 2, "smoothadv": 2, "macer": 4}
"""The grid's m per objective: 2 for consistency and SmoothAdv, 4 for MACER (Zhai et al. use 16, four times the
cost per step)."""


@dataclass
class ComparisonSettings:
    """What every method shares (base, sigma, data, training budget, certification) and per-method options."""

    sigma: float = field(metadata={"help": "Noise std in [0, 1] pixel units."})
    epochs: float = field(default=4.0, metadata={"help": "Training epochs of every trained method."})
    batch_size: int = field(default=64, metadata={"help": "Training images per step (per process)."})
    learning_rate: float = field(default=3e-3, metadata={"help": "Learning rate of the PEFT methods and the head."})
    full_learning_rate: float = field(default=5e-4, metadata={"help": "Learning rate of full fine-tuning."})
    denoiser_learning_rate: float = field(default=2e-3, metadata={"help": "Learning rate of the DnCNN denoisers."})
    objective_options: str = field(
        default=json.dumps(DEFAULT_OBJECTIVE_OPTIONS),
        metadata={"help": "Options of the training objectives (JSON: objective -> options); an objective named here "
                  "gets these options instead of DEFAULT_OBJECTIVE_OPTIONS' (the rest of its options: its defaults)."},
    )
    noise_samples: str = field(
        default=json.dumps(DEFAULT_NOISE_SAMPLES),
        metadata={"help": "Noisy copies m of each image per batch, per training objective (JSON: objective -> m), "
                  "over DEFAULT_NOISE_SAMPLES; an objective in neither: 1."},
    )
    dncnn_options: str = field(default='{"depth": 6, "width": 16}', metadata={"help": "DnCNN options (JSON)."})
    diffusion_model: str | None = field(
        default=None, metadata={"help": "DDPM pipeline (Hub id or folder) of 'diffusion'."}
    )
    surrogate_model: str | None = field(
        default=None,
        metadata={"help": "Classifier (Hub id or folder) that stands in for the base in 'dncnn-surrogate'."},
    )
    eval_batch_size: int = field(default=250, metadata={"help": "Images per evaluation batch (accuracy under noise)."})
    n0: int = field(default=100, metadata={"help": "Selection samples per image."})
    n: int = field(default=6000, metadata={"help": "Estimation samples per image."})
    alpha: float = field(default=0.001, metadata={"help": "Failure probability of each certificate."})
    skip: int = field(default=10, metadata={"help": "Certify every skip-th validation image."})
    max_examples: int | None = field(default=None, metadata={"help": "Certify at most this many images."})
    certify_batch_size: int = field(default=128, metadata={"help": "Noisy samples per forward pass when certifying."})
    certify_seed: int = field(default=0, metadata={"help": "Noise seed of certification (the same for every run)."})

    def __post_init__(self) -> None:  # a typo in the JSON fails before any training
        parse_json_object(self.dncnn_options, "dncnn_options")
        for name in OBJECTIVES:
            self.objective_setup(name)

    def objective_setup(self, objective: str) -> dict[str, Any]:
        """The ``SmoothingTrainer`` arguments of ``objective``: ``objective``, its checked ``objective_options``
        and ``num_noise_samples``."""
        options = parse_json_object(self.objective_options, "objective_options")
        counts = parse_json_object(self.noise_samples, "noise_samples")
        for name, value in (("objective_options", options), ("noise_samples", counts)):
            unknown = sorted(set(value) - set(OBJECTIVES))
            if unknown:
                raise ValueError(f"`{name}` has keys {unknown} that are not objectives; allowed: {list(OBJECTIVES)}")
        options, counts = {**DEFAULT_OBJECTIVE_OPTIONS, **options}, {**DEFAULT_NOISE_SAMPLES, **counts}
        row = get_objective(objective)
        return {
            "objective": objective,
            "objective_options": row.parse_options(options.get(objective)),
            "num_noise_samples": row.check_noise_samples(counts.get(objective, 1)),
        }


def second_model(name: str, settings: ComparisonSettings) -> str:
    """The second model the row ``name`` needs (its ``second_model`` setting), or a ValueError naming the
    missing setting."""
    field_name = comparison_method(name).second_model
    model = getattr(settings, field_name)
    if model is None:
        help_text = ComparisonSettings.__dataclass_fields__[field_name].metadata["help"]
        raise ValueError(f"method {name!r} needs `{field_name}`: {help_text}")
    return model


def build_model(method: str, base: str, settings: ComparisonSettings) -> SmoothedImageClassifier:
    """The smoothed model of the row ``method`` on ``base`` at ``settings.sigma``, ready to train."""
    row, sigma = comparison_method(method), settings.sigma
    if row.second_model is not None:
        second_model(method, settings)  # a missing one fails before any training
    if row.denoiser == "dncnn":
        options = parse_json_object(settings.dncnn_options, "dncnn_options")
        denoiser = DnCNN(num_channels=AutoConfig.from_pretrained(base).num_channels, **options)
        return SmoothedImageClassifier.from_pretrained(base, sigma=sigma, input_module=denoiser)
    if row.denoiser == "diffusion":
        denoiser = DiffusionDenoiser.from_pretrained(second_model(method, settings), sigma=sigma)
        return SmoothedImageClassifier.from_pretrained(base, sigma=sigma, input_module=denoiser)
    if row.method is None:
        return SmoothedImageClassifier.from_pretrained(base, sigma=sigma).requires_grad_(False)
    return SmoothedImageClassifier.from_pretrained(base, sigma=sigma, method=row.method)


def train_and_certify(
    method: str, base: str, dataset: Any, settings: ComparisonSettings, output_dir: str | os.PathLike, seed: int = 0
) -> str:
    """Train ``method`` on ``base`` (``dataset``: splits "train" and "validation" as ``load_image_dataset``
    gives), save it with ``train_results.json`` in ``output_dir`` and certify the validation split into
    ``output_dir/certify``; a run whose results are there already is not trained again, and its
    certification resumes. Returns ``output_dir``."""
    state = PartialState()
    output_dir = os.fspath(output_dir)
    results_path = os.path.join(output_dir, TRAIN_RESULTS_NAME)
    if os.path.isfile(results_path):
        model = SmoothedImageClassifier.from_pretrained(output_dir)
    else:
        model = _train(method, base, dataset, settings, output_dir, seed)
    _certify(model, dataset["validation"], settings, os.path.join(output_dir, CERTIFY_DIR))
    state.wait_for_everyone()
    return output_dir


def _certify(model: SmoothedImageClassifier, validation: Any, settings: ComparisonSettings, output_dir: str) -> None:
    """Certify the comparison's images into ``output_dir``, unless a whole run is there already (a resumed
    run's summary would not know the throughput of the samples drawn before)."""
    expected = len(range(0, len(validation), settings.skip)[: settings.max_examples])
    if read_json(os.path.join(output_dir, "summary.json"), missing_ok=True).get("num_examples") == expected:
        return
    certify(
        model,
        validation.with_transform(ImageClassificationTransform.for_model(model)),
        n0=settings.n0,
        n=settings.n,
        alpha=settings.alpha,
        batch_size=settings.certify_batch_size,
        seed=settings.certify_seed,
        skip=settings.skip,
        max_examples=settings.max_examples,
        output_dir=output_dir,
    )


def _train(
    method: str, base: str, dataset: Any, settings: ComparisonSettings, output_dir: str, seed: int
) -> SmoothedImageClassifier:
    set_seed(seed)  # before the model is built: new heads, adapters and denoisers start from the seed
    model = build_model(method, base, settings)
    check_labels(dataset, model.num_labels)
    transform = ImageClassificationTransform.for_model(model)
    data = {
        "train_dataset": dataset["train"].with_transform(transform),
        "eval_dataset": dataset["validation"].with_transform(transform),
    }
    row = comparison_method(method)
    learning_rate = getattr(settings, row.learning_rate)
    args = TrainingArguments(
        output_dir=os.path.join(output_dir, "trainer"),
        num_train_epochs=settings.epochs,
        per_device_train_batch_size=settings.batch_size,
        per_device_eval_batch_size=settings.eval_batch_size,
        learning_rate=learning_rate,
        warmup_steps=20,
        lr_scheduler_type="cosine",
        report_to=[],
        save_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
        seed=seed,
        dataloader_num_workers=0,
    )
    if row.denoiser is not None and row.objective is not None:
        surrogate = None
        if row.second_model is not None:  # trained through the surrogate (query access to the base)
            surrogate = SmoothedImageClassifier.from_pretrained(second_model(method, settings), sigma=settings.sigma)
        trainer = DenoiserTrainer(model, args, objective=row.objective, surrogate=surrogate, **data)
    else:
        trainer = SmoothingTrainer(model, args, **settings.objective_setup(row.objective or "gaussian"), **data)
    trains = row.trains
    before = trainer.evaluate(metric_key_prefix="before")["before_accuracy"]
    started = time.perf_counter()
    steps = trainer.train().global_step if trains else 0
    training_seconds = time.perf_counter() - started if trains else 0.0
    after = trainer.evaluate()["eval_accuracy"] if trains else before
    trainable, total = trainable_parameters(model) if trains else (0, sum(p.numel() for p in model.parameters()))
    record = {
        "method": method,
        "seed": seed,
        "sigma": settings.sigma,
        "base_model_name_or_path": base,
        "trainable_parameters": trainable,
        "total_parameters": total,
        "training_seconds": training_seconds,
        "steps": steps,
        "noisy_accuracy_before": before,
        "noisy_accuracy_after": after,
        "learning_rate": learning_rate if trains else None,
        "epochs": settings.epochs if trains else 0,
    }
    model.record_training(noisy_accuracy=after, **({"steps": steps, "epochs": settings.epochs} if trains else {}))
    if trainer.is_world_process_zero():
        model.save_pretrained(output_dir)
        write_json(record, os.path.join(output_dir, TRAIN_RESULTS_NAME))  # last: marks the run as trained
    PartialState().wait_for_everyone()
    return model.eval()


def run_folder(output_dir: str | os.PathLike, method: str, seed: int, seeded: bool) -> str:
    """Where a run goes: ``output_dir/method`` or, for a method run with several seeds,
    ``output_dir/method-seed<seed>``."""
    return os.path.join(output_dir, f"{method}-seed{seed}" if seeded else method)


def run_comparison(
    base: str,
    dataset: Any,
    settings: ComparisonSettings,
    output_dir: str | os.PathLike,
    *,
    methods: Sequence[str] = tuple(COMPARISON_METHODS),
    seeds: Sequence[int] = (0,),
    seeded_methods: Sequence[str] = ("lora", "full"),
    pretrained: Mapping[str, str | os.PathLike] | None = None,
) -> str:
    """Train and certify every method of ``methods`` (``seeded_methods`` once per seed of ``seeds``, the others
    with the first seed), certify the saved smoothing models of ``pretrained`` (label -> folder, e.g. a
    black-box coordinator) on the same images, and write the comparison (``write_comparison``) into
    ``output_dir``. Returns its Markdown table."""
    for method in methods:
        comparison_method(method)
    if not seeds:
        raise ValueError("`seeds` must hold at least one seed")
    planned = {  # method -> (seed, run folder) of each of its runs
        method: [
            (seed, run_folder(output_dir, method, seed, method in seeded_methods and len(seeds) > 1))
            for seed in (seeds if method in seeded_methods else seeds[:1])
        ]
        for method in methods
    }
    for method, method_runs in planned.items():  # an untrained method that does not apply to this base fails here,
        if not all(os.path.isfile(os.path.join(folder, TRAIN_RESULTS_NAME)) for _, folder in method_runs):
            build_model(method, base, settings)  # before hours of training the others
    runs = {
        method: [train_and_certify(method, base, dataset, settings, folder, seed) for seed, folder in method_runs]
        for method, method_runs in planned.items()
    }
    for label, folder in (pretrained or {}).items():
        model = SmoothedImageClassifier.from_pretrained(folder)
        if model.sigma != settings.sigma:
            raise ValueError(
                f"the pretrained run {label!r} ({folder}) has sigma {model.sigma}, the comparison {settings.sigma}"
            )
        _certify(model, dataset["validation"], settings, os.path.join(output_dir, label, CERTIFY_DIR))
        runs[label] = [os.path.join(output_dir, label)]
        _link_pretrained(folder, os.path.join(output_dir, label))
    markdown = ""
    if PartialState().is_main_process:
        markdown = write_comparison(
            runs, output_dir, settings=dataclasses.asdict(settings) | {"base": base, "seeds": list(seeds)}
        )
    PartialState().wait_for_everyone()
    return markdown


def _link_pretrained(folder: str | os.PathLike, run: str) -> None:
    """A run certified here from a model trained elsewhere: its ``train_results.json`` (trainable parameters,
    training time), when it has one, is copied beside the certification."""
    source = os.path.join(folder, TRAIN_RESULTS_NAME)
    if PartialState().is_main_process and os.path.isfile(source):
        with open(source, encoding="utf-8") as handle:
            write_json(json.load(handle), os.path.join(run, TRAIN_RESULTS_NAME))


# ---------------------------------------------------------------------------------------------- the table
