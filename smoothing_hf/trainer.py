"""``SmoothingTrainer``: ``transformers.Trainer`` for a ``SmoothedImageClassifier`` under Gaussian noise.

The loop, optimizer, scheduler, logging, checkpointing and distribution are the Trainer's. What is added,
and why each part cannot be left to the Trainer:

- the collators (``NoiseCollator``): the noise is part of the data, fresh for training and the same on
  every evaluation so that ``eval_accuracy`` under noise is reproducible;
- ``remove_unused_columns=False``: the Trainer would drop the ``image`` column that a ``set_transform``
  turns into ``pixel_values`` (it only keeps columns named in ``forward``'s signature);
- ``compute_loss``: the training objective (``smoothing_hf.objectives.OBJECTIVES``: cross-entropy under noise,
  consistency regularization, SmoothAdv, MACER) over the m noisy copies of each image, which the model's own
  cross-entropy loss cannot express; evaluation reports the plain cross-entropy under noise for every objective,
  so that ``eval_loss`` compares across objectives;
- ``train``: records the objective, its options and m in ``model.config.training`` (the model card shows them);
- a log entry of trainable / total parameters when training starts (PAPER.md: report them side by side).

Gradient accumulation: ``SmoothedImageClassifier.forward`` takes no ``**kwargs``, so the Trainer's
``model_accepts_loss_kwargs`` is False and ``num_items_in_batch`` is None: ``compute_loss`` returns the mean
over its micro-batch and ``training_step`` divides it by the number of accumulated micro-batches. We state
that with ``loss_is_scaled_for_ga = False`` rather than leave it to the Trainer's guess.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from transformers import EvalPrediction, Trainer, TrainerCallback, TrainingArguments

from .checks import check_number
from .modeling import SmoothedImageClassifier
from .noise import NoiseCollator
from .objectives import TrainingBatch, WithCleanPixels, cross_entropy, get_objective

logger = logging.getLogger(__name__)

EVAL_NOISE_SEED = 0
"""Seed of the evaluation noise: the same noise at every evaluation, whatever the training seed."""


def noisy_accuracy_metric(prediction: EvalPrediction) -> dict[str, float]:
    """The default ``compute_metrics``: ``{"accuracy"}``, the fraction of the noisy evaluation images that the
    model (the base classifier, under noise) classifies correctly."""
    logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
    labels = np.asarray(prediction.label_ids)
    return {"accuracy": float(np.mean(np.argmax(logits, axis=-1) == labels))}


class SmoothingTrainer(Trainer):
    """Trains a ``SmoothedImageClassifier`` (in practice its PEFT adapter) on Gaussian-noise-augmented images.

    Datasets yield examples with ``pixel_values`` (float [C, H, W] in [0, 1], un-normalized, e.g. from
    ``model.image_transform()`` in a ``set_transform``) and ``labels`` or ``label``. Noise at ``model.sigma`` is
    added by the collators: ``NoiseCollator(sigma, num_noise_samples, seed=args.seed)`` for training, and one
    noisy copy with the fixed seed ``EVAL_NOISE_SEED``, restarted at every evaluation, for evaluation and
    prediction (``eval_data_collator``); evaluation noise is therefore the same at every ``evaluate()``,
    except with ``dataloader_persistent_workers``, whose workers keep their noise stream running.

    Args:
        model: the smoothed classifier; its trainable parameters (``requires_grad``) are trained.
        args: ``TrainingArguments``; ``remove_unused_columns`` is turned off (on a copy).
        objective: the training objective, a name in ``smoothing_hf.objectives.OBJECTIVES``: "gaussian"
            (cross-entropy under noise, the default), "consistency", "smoothadv" or "macer".
        objective_options: the objective's options, a dict (JSON object) or its options dataclass (e.g.
            ``{"epsilon": 0.5, "steps": 2}`` for "smoothadv"); None: its defaults (the papers' values).
        num_noise_samples: m, noisy copies of each training image per batch (the batch holds B * m images);
            "consistency" and "macer" need m >= 2.
        consistency_weight: the older shorthand for ``objective="consistency"`` with ``objective_options={"lbd":
            consistency_weight, "eta": 0.0}`` (the KL term alone; 0: "gaussian"); not together with ``objective``.
        data_collator: the training collator; default ``NoiseCollator`` as above. For an objective that needs the
            clean images ("smoothadv") it is wrapped in ``WithCleanPixels``.
        compute_metrics: default ``noisy_accuracy_metric`` ("eval_accuracy").
        **kwargs: the other ``Trainer`` arguments (train_dataset, eval_dataset, processing_class, callbacks,
            optimizers, ...). ``compute_loss_func`` is not accepted: this trainer computes its own loss.
    """

    # compute_loss returns a micro-batch mean (num_items_in_batch is never counted for this model), so the
    # Trainer must divide it by the number of accumulated micro-batches; see the module docstring.
    loss_is_scaled_for_ga = False

    def __init__(
        self,
        model: SmoothedImageClassifier,
        args: TrainingArguments | None = None,
        *,
        objective: str = "gaussian",
        objective_options: dict | Any = None,
        num_noise_samples: int = 1,
        consistency_weight: float | None = None,
        data_collator: Any = None,
        compute_metrics: Any = None,
        **kwargs: Any,
    ) -> None:
        if not isinstance(model, SmoothedImageClassifier):
            raise TypeError(f"`model` must be a SmoothedImageClassifier, got {type(model).__name__}")
        if kwargs.get("compute_loss_func") is not None:
            raise TypeError(
                "`compute_loss_func` is not supported: SmoothingTrainer computes its objective's loss itself; pass "
                "`objective`, or subclass and override `compute_loss`"
            )
        if kwargs.get("model_init") is not None:
            raise TypeError("`model_init` is not supported: pass the SmoothedImageClassifier as `model`")
        if consistency_weight is not None:
            objective, objective_options = _consistency_shorthand(consistency_weight, objective, objective_options)
        row = get_objective(objective)
        self.objective_options = row.parse_options(objective_options)
        self.num_noise_samples = row.check_noise_samples(num_noise_samples)
        self.training_objective = row
        if args is None:
            args = TrainingArguments(output_dir="tmp_trainer")
        if args.remove_unused_columns:
            logger.info(
                "SmoothingTrainer sets `remove_unused_columns=False`: the columns a `set_transform` turns into "
                "`pixel_values` (e.g. 'image') must reach it"
            )
            args = copy.copy(args)
            args.remove_unused_columns = False
        if data_collator is None:
            data_collator = NoiseCollator(model.sigma, self.num_noise_samples, seed=args.seed)
        if row.needs_clean_pixels:
            data_collator = WithCleanPixels(data_collator, self.num_noise_samples)
        self.eval_data_collator = NoiseCollator(model.sigma, 1, seed=EVAL_NOISE_SEED, deterministic=True)
        super().__init__(
            model=model,
            args=args,
            data_collator=data_collator,
            compute_metrics=compute_metrics if compute_metrics is not None else noisy_accuracy_metric,
            **kwargs,
        )
        self.add_callback(_ParameterCountCallback(self))

    # ------------------------------------------------------------------ evaluation data

    def get_eval_dataloader(self, eval_dataset=None):
        with self._evaluation_collator():
            return super().get_eval_dataloader(eval_dataset)

    def get_test_dataloader(self, test_dataset):
        with self._evaluation_collator():
            return super().get_test_dataloader(test_dataset)

    @contextlib.contextmanager
    def _evaluation_collator(self) -> Iterator[None]:
        """Build dataloaders with the evaluation collator, its noise stream restarted (the Trainer has one
        ``data_collator`` for every dataloader)."""
        self.eval_data_collator.reset()
        train_collator, self.data_collator = self.data_collator, self.eval_data_collator
        try:
            yield
        finally:
            self.data_collator = train_collator

    # ------------------------------------------------------------------ loss

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, torch.Tensor],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ):
        """While training, the objective's loss on the micro-batch (``objectives.OBJECTIVES``); in evaluation,
        the mean cross-entropy over the noisy images. A mean over this micro-batch's images: the Trainer
        divides it for gradient accumulation (``loss_is_scaled_for_ga = False``)."""
        batch = TrainingBatch(
            model=model, attack_model=self.accelerator.unwrap_model(model), inputs=inputs,
            num_noise_samples=self.num_noise_samples, sigma=self.model.sigma, epoch=self.state.epoch or 0.0,
        )
        if model.training:
            loss, outputs = self.training_objective.loss(batch, self.objective_options)
        else:
            loss, outputs = cross_entropy(batch)
        return (loss, outputs) if return_outputs else loss

    def training_record(self) -> dict[str, Any]:
        """How this trainer trains, as ``config.training`` records it: the objective's name, its options (a JSON
        object; left out for an objective without options, such as "gaussian") and m."""
        options = dataclasses.asdict(self.objective_options)
        return {
            "objective": self.training_objective.name,
            **({"objective_options": options} if options else {}),
            "num_noise_samples": self.num_noise_samples,
        }

    def train(self, *args: Any, **kwargs: Any):
        """``Trainer.train``, then the objective recorded in ``model.config.training`` (``training_record``)."""
        output = super().train(*args, **kwargs)
        self.model.record_training(**self.training_record())
        return output


def _consistency_shorthand(weight: Any, objective: Any, options: Any) -> tuple[str, dict]:
    """The objective that the older ``consistency_weight`` argument stands for."""
    weight = check_number(weight, "consistency_weight", minimum=0)
    if objective != "gaussian" or options is not None:
        raise TypeError(
            "`consistency_weight` is the older shorthand for objective='consistency', objective_options={'lbd': "
            "weight, 'eta': 0.0}; give either it or `objective`/`objective_options`, not both"
        )
    return ("consistency", {"lbd": weight, "eta": 0.0}) if weight > 0 else ("gaussian", None)


class _ParameterCountCallback(TrainerCallback):
    """Logs trainable / total parameters (and the share) when training starts, also into ``log_history``."""

    def __init__(self, trainer: SmoothingTrainer) -> None:
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        model = self.trainer.model
        total = sum(p.numel() for p in model.parameters())
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        share = trainable / total if total else 0.0
        logger.info(f"Training {trainable:,} of {total:,} parameters ({100 * share:.3f}%)")
        self.trainer.log({"trainable_parameters": trainable, "total_parameters": total, "trainable_share": share})
