"""``SmoothingTrainer``: ``transformers.Trainer`` for a ``SmoothedImageClassifier`` under Gaussian noise.

The loop, optimizer, scheduler, logging, checkpointing and distribution are the Trainer's. What is added,
and why each part cannot be left to the Trainer:

- the collators (``NoiseCollator``): the noise is part of the data, fresh for training and the same on
  every evaluation so that ``eval_accuracy`` under noise is reproducible;
- ``remove_unused_columns=False``: the Trainer would drop the ``image`` column that a ``set_transform``
  turns into ``pixel_values`` (it only keeps columns named in ``forward``'s signature);
- ``compute_loss``: the optional consistency regularizer of Jeong and Shin (NeurIPS 2020) over the m noisy
  copies of each image, which the model's own cross-entropy loss cannot express;
- a log entry of trainable / total parameters when training starts (PAPER.md: report them side by side).

Gradient accumulation: ``SmoothedImageClassifier.forward`` takes no ``**kwargs``, so the Trainer's
``model_accepts_loss_kwargs`` is False and ``num_items_in_batch`` is None: ``compute_loss`` returns the mean
over its micro-batch and ``training_step`` divides it by the number of accumulated micro-batches. We state
that with ``loss_is_scaled_for_ga = False`` rather than leave it to the Trainer's guess.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from transformers import EvalPrediction, Trainer, TrainerCallback, TrainingArguments

from .checks import check_number, check_positive_int
from .modeling import SmoothedImageClassifier
from .noise import NoiseCollator

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
        num_noise_samples: m, noisy copies of each training image per batch (the batch holds B * m images).
        consistency_weight: lambda >= 0 of the consistency loss, lambda * mean over copies of
            KL(mean softmax of the m copies || softmax of the copy); > 0 needs m >= 2. Jeong and Shin's
            entropy term (eta) is not included.
        data_collator: the training collator; default ``NoiseCollator`` as above.
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
        num_noise_samples: int = 1,
        consistency_weight: float = 0.0,
        data_collator: Any = None,
        compute_metrics: Any = None,
        **kwargs: Any,
    ) -> None:
        if not isinstance(model, SmoothedImageClassifier):
            raise TypeError(f"`model` must be a SmoothedImageClassifier, got {type(model).__name__}")
        if kwargs.get("compute_loss_func") is not None:
            raise TypeError(
                "`compute_loss_func` is not supported: SmoothingTrainer computes cross-entropy (+ consistency) "
                "itself; subclass and override `compute_loss` instead"
            )
        if kwargs.get("model_init") is not None:
            raise TypeError("`model_init` is not supported: pass the SmoothedImageClassifier as `model`")
        num_noise_samples = check_positive_int(num_noise_samples, "num_noise_samples")
        consistency_weight = check_number(consistency_weight, "consistency_weight", minimum=0)
        if consistency_weight > 0 and num_noise_samples < 2:
            raise ValueError(
                f"`consistency_weight` > 0 needs `num_noise_samples` >= 2 (copies to be consistent across), got "
                f"num_noise_samples={num_noise_samples}"
            )
        if args is None:
            args = TrainingArguments(output_dir="tmp_trainer")
        if args.remove_unused_columns:
            logger.info(
                "SmoothingTrainer sets `remove_unused_columns=False`: the columns a `set_transform` turns into "
                "`pixel_values` (e.g. 'image') must reach it"
            )
            args = copy.copy(args)
            args.remove_unused_columns = False
        self.num_noise_samples = num_noise_samples
        self.consistency_weight = consistency_weight
        if data_collator is None:
            data_collator = NoiseCollator(model.sigma, self.num_noise_samples, seed=args.seed)
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
        """Mean cross-entropy over the B * m noisy images, plus ``consistency_weight`` times the consistency
        loss while training. A mean over this micro-batch: the Trainer divides it for gradient accumulation
        (``loss_is_scaled_for_ga = False``)."""
        labels = inputs["labels"]
        outputs = model(pixel_values=inputs["pixel_values"])
        logits = outputs.logits
        loss = F.cross_entropy(logits.float(), labels)
        if self.consistency_weight > 0 and model.training:
            loss = loss + self.consistency_weight * consistency_loss(logits, labels, self.num_noise_samples)
        return (loss, outputs) if return_outputs else loss


def consistency_loss(logits: torch.Tensor, labels: torch.Tensor, num_noise_samples: int) -> torch.Tensor:
    """Jeong and Shin's consistency term for [B * m, K] logits whose m copies of each image are contiguous:
    the mean over images and copies of KL(mean softmax of the image's copies || softmax of the copy)."""
    m = num_noise_samples
    if logits.shape[0] % m:
        raise ValueError(
            f"the batch has {logits.shape[0]} images, not a multiple of num_noise_samples={m}: the training collator "
            "must give m contiguous noisy copies of each image"
        )
    grouped = labels.view(-1, m)
    if not torch.equal(grouped, grouped[:, :1].expand_as(grouped)):
        raise ValueError(
            f"the labels are not in runs of num_noise_samples={m}: the training collator must repeat each image and "
            "its label m times contiguously (NoiseCollator(sigma, num_noise_samples=m))"
        )
    log_p = F.log_softmax(logits.float(), dim=-1).view(-1, m, logits.shape[-1])  # [B, m, K]
    log_mean = torch.logsumexp(log_p, dim=1, keepdim=True) - math.log(m)  # log of the mean softmax, [B, 1, K]
    kl = F.kl_div(log_p, log_mean.expand_as(log_p), reduction="none", log_target=True).sum(-1)  # [B, m]
    return kl.mean()


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
