"""The training objectives of ``SmoothingTrainer``: one table (``OBJECTIVES``) from a name to an options
dataclass and a loss.

Every objective trains the base classifier f under Gaussian noise in [0, 1] pixel space; they differ in what
the loss asks of the noisy predictions. A training batch holds B images, each as m = ``num_noise_samples``
noisy copies x + e_j (rows i * m .. i * m + m - 1, ``NoiseCollator``), so ``pixel_values`` is [B * m, C, H, W]
and ``labels`` [B * m]; the soft smoothed classifier G(x) = E_e[softmax(f(x + e))] is estimated by the mean
softmax of an image's m copies.

- ``gaussian`` (Cohen et al., ICML 2019): mean cross-entropy over the B * m noisy images.
- ``consistency`` (Jeong and Shin, NeurIPS 2020): that cross-entropy + lbd * mean_j KL(mean softmax ||
  softmax of copy j) + eta * entropy of the mean softmax; m >= 2.
- ``smoothadv`` (Salman et al., NeurIPS 2019): l2 PGD on the soft smoothed classifier within epsilon of each
  clean image (``analysis.attacks.soft_smoothed_pgd``, the same m noise draws at every step), then the
  cross-entropy of the attacked image under those m draws; epsilon grows over the first epochs.
- ``macer`` (Zhai et al., ICLR 2020): cross-entropy of the soft smoothed classifier, -log G(x)_y, plus lbd
  times a hinge on the radius surrogate of the images it classifies correctly: (sigma / 2) * max(0, gamma -
  (Phi^-1(p1) - Phi^-1(p2))), p1 >= p2 the two largest probabilities of G computed from beta * logits; m >= 2.

Each loss is a mean over the micro-batch's images, so the Trainer's gradient accumulation over equal
micro-batches gives the gradient of the whole batch. Options are validated when made, and serialize to JSON
(``dataclasses.asdict``) for ``smoothing_config.json`` and the model card.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from .analysis.attacks import soft_smoothed_pgd
from .checks import check_number, check_positive_int

# ---------------------------------------------------------------------------------------------- options


@dataclass
class GaussianOptions:
    """Cross-entropy under noise has no options."""


@dataclass
class ConsistencyOptions:
    """Jeong and Shin's consistency regularization (their CIFAR-10 values: m = 2, eta = 0.5, lbd = 20 at sigma =
    0.25 and 10 at sigma = 0.5 and 1.0)."""

    lbd: float = field(default=10.0, metadata={"help": "Weight lambda >= 0 of the KL term."})
    eta: float = field(default=0.5, metadata={"help": "Weight eta >= 0 of the entropy of the mean prediction."})

    def __post_init__(self) -> None:
        self.lbd = check_number(self.lbd, "lbd", minimum=0)
        self.eta = check_number(self.eta, "eta", minimum=0)


@dataclass
class SmoothAdvOptions:
    """Salman et al.'s SmoothAdv training (their CIFAR-10 grid: epsilon 0.25-2.0, 1-10 steps, m = 1-8,
    10 warm-up epochs)."""

    epsilon: float = field(default=0.5, metadata={"help": "l2 radius of the attack in [0, 1] pixel units (> 0)."})
    steps: int = field(default=2, metadata={"help": "PGD steps per training batch (>= 1)."})
    step_size: float | None = field(
        default=None, metadata={"help": "l2 length of a PGD step (> 0); None: 2 * epsilon / steps (Salman et al.'s)."}
    )
    warmup_epochs: int = field(
        default=10,
        metadata={"help": "In epoch k (from 0) the radius is epsilon * min(1, (k + 1) / warmup_epochs); 1: none."},
    )

    def __post_init__(self) -> None:
        unit = "l2 in [0, 1] pixel units"
        self.epsilon = check_number(self.epsilon, "epsilon", minimum=0, strict_minimum=True, unit=unit)
        self.steps = check_positive_int(self.steps, "steps")
        if self.step_size is not None:
            self.step_size = check_number(self.step_size, "step_size", minimum=0, strict_minimum=True, unit=unit)
        self.warmup_epochs = check_positive_int(self.warmup_epochs, "warmup_epochs")

    def epsilon_at(self, epoch: float) -> float:
        """The attack radius during (fractional) ``epoch``: Salman et al.'s linear warm-up, per whole epoch."""
        return self.epsilon * min(1.0, (math.floor(epoch) + 1) / self.warmup_epochs)


@dataclass
class MacerOptions:
    """Zhai et al.'s MACER (their CIFAR-10 values: m = 16, lbd = 12, gamma = 8, beta = 16)."""

    lbd: float = field(default=12.0, metadata={"help": "Weight lambda >= 0 of the robustness (hinge) term."})
    gamma: float = field(default=8.0, metadata={"help": "Hinge margin gamma > 0 on Phi^-1(p1) - Phi^-1(p2)."})
    beta: float = field(default=16.0, metadata={"help": "Inverse temperature beta > 0 of the logits in the hinge."})

    def __post_init__(self) -> None:
        self.lbd = check_number(self.lbd, "lbd", minimum=0)
        self.gamma = check_number(self.gamma, "gamma", minimum=0, strict_minimum=True)
        self.beta = check_number(self.beta, "beta", minimum=0, strict_minimum=True)


# ---------------------------------------------------------------------------------------------- losses


@dataclass
class TrainingBatch:
    """What a loss sees of one training micro-batch.

    ``model`` is the Trainer's model (DDP-wrapped with several processes): the forward whose gradients train.
    ``attack_model`` is the same ``SmoothedImageClassifier`` unwrapped, for attacks, which take gradients
    with respect to pixels only. ``inputs``: ``pixel_values`` [B * m, C, H, W] noisy pixels, ``labels``
    [B * m], and ``clean_pixel_values`` [B * m, C, H, W] for an objective that needs the clean images.
    ``epoch``: the Trainer's (fractional) epoch, for warm-ups."""

    model: torch.nn.Module
    attack_model: torch.nn.Module
    inputs: dict[str, torch.Tensor]
    num_noise_samples: int
    sigma: float
    epoch: float


def cross_entropy(batch: TrainingBatch, options: Any = None) -> tuple[torch.Tensor, Any]:
    """The mean cross-entropy over the B * m noisy images, and the model's output."""
    outputs = batch.model(pixel_values=batch.inputs["pixel_values"])
    return F.cross_entropy(outputs.logits.float(), batch.inputs["labels"]), outputs


def consistency_loss(logits: torch.Tensor, labels: torch.Tensor, num_noise_samples: int) -> torch.Tensor:
    """Jeong and Shin's consistency term for [B * m, K] logits whose m copies of each image are contiguous:
    the mean over images and copies of KL(mean softmax of the image's copies || softmax of the copy)."""
    m = num_noise_samples
    log_p = _grouped_log_softmax(logits, labels, m)  # [B, m, K]
    log_mean = torch.logsumexp(log_p, dim=1, keepdim=True) - math.log(m)  # log of the mean softmax, [B, 1, K]
    kl = F.kl_div(log_p, log_mean.expand_as(log_p), reduction="none", log_target=True).sum(-1)  # [B, m]
    return kl.mean()


def _consistency(batch: TrainingBatch, options: ConsistencyOptions) -> tuple[torch.Tensor, Any]:
    loss, outputs = cross_entropy(batch)
    logits, labels, m = outputs.logits, batch.inputs["labels"], batch.num_noise_samples
    loss = loss + options.lbd * consistency_loss(logits, labels, m)
    if options.eta > 0:
        log_mean = torch.logsumexp(_grouped_log_softmax(logits, labels, m), dim=1) - math.log(m)  # [B, K]
        entropy = -(log_mean.exp() * log_mean).sum(-1).mean()
        loss = loss + options.eta * entropy
    return loss, outputs


def _smoothadv(batch: TrainingBatch, options: SmoothAdvOptions) -> tuple[torch.Tensor, Any]:
    m, inputs = batch.num_noise_samples, batch.inputs
    if "clean_pixel_values" not in inputs:
        raise KeyError("the batch has no 'clean_pixel_values': SmoothingTrainer adds them for 'smoothadv'")
    clean_copies, labels = inputs["clean_pixel_values"], inputs["labels"]
    if clean_copies.shape != inputs["pixel_values"].shape:
        raise ValueError(
            f"'clean_pixel_values' {list(clean_copies.shape)} must have the shape of 'pixel_values' "
            f"{list(inputs['pixel_values'].shape)}: one clean row per noisy row"
        )
    _check_runs(len(labels), labels, m)
    noise = inputs["pixel_values"] - clean_copies  # the collator's draws e_j, [B * m, C, H, W]
    clean, image_labels = clean_copies[::m], labels[::m]
    epsilon = options.epsilon_at(batch.epoch)
    step_size = options.step_size if options.step_size is not None else 2 * epsilon / options.steps
    attacked = soft_smoothed_pgd(
        batch.attack_model, clean, image_labels, lambda: noise, epsilon=epsilon, steps=options.steps,
        step_size=step_size, num_noise=m,
    )
    outputs = batch.model(pixel_values=attacked.repeat_interleave(m, dim=0) + noise)
    return F.cross_entropy(outputs.logits.float(), labels), outputs


def _macer(batch: TrainingBatch, options: MacerOptions) -> tuple[torch.Tensor, Any]:
    outputs = batch.model(pixel_values=batch.inputs["pixel_values"])
    logits, labels, m = outputs.logits.float(), batch.inputs["labels"], batch.num_noise_samples
    image_labels = labels[::m]
    log_p = _grouped_log_softmax(logits, labels, m)
    log_smoothed = torch.logsumexp(log_p, dim=1) - math.log(m)  # log G(x), [B, K]
    classification = F.nll_loss(log_smoothed, image_labels)
    tempered = F.log_softmax(options.beta * logits, dim=-1).view(log_p.shape).exp().mean(1)  # [B, K]
    top, classes = tempered.topk(2, dim=-1)
    # The hinge counts the correctly classified images whose margin is below gamma. A margin that rounds to
    # +inf (p1 = 1 or p2 = 0 in float32) has a hinge of 0; those images are selected out before Phi^-1 is
    # applied with gradients, whose 0 * inf would be NaN (Zhai et al. drop those terms too).
    with torch.no_grad():
        margin = torch.special.ndtri(top[:, 0]) - torch.special.ndtri(top[:, 1])
    active = (classes[:, 0] == image_labels) & torch.isfinite(margin) & (margin <= options.gamma)
    top = top[active]
    hinge = (options.gamma - torch.special.ndtri(top[:, 0]) + torch.special.ndtri(top[:, 1])).sum() * batch.sigma / 2
    return classification + options.lbd * hinge / len(image_labels), outputs


def _grouped_log_softmax(logits: torch.Tensor, labels: torch.Tensor, m: int) -> torch.Tensor:
    """[B * m, K] logits as [B, m, K] log-probabilities, after checking that the rows come in runs of m copies
    of one image (``_check_runs``)."""
    _check_runs(logits.shape[0], labels, m)
    return F.log_softmax(logits.float(), dim=-1).view(-1, m, logits.shape[-1])


def _check_runs(rows: int, labels: torch.Tensor, m: int) -> None:
    """Raise unless the ``rows`` images of a batch come as runs of m copies of one image (m contiguous equal
    labels), as ``NoiseCollator(sigma, num_noise_samples=m)`` gives them."""
    if rows % m or len(labels) != rows:
        raise ValueError(
            f"the batch has {rows} images and {len(labels)} labels, not one label per image in a multiple of "
            f"num_noise_samples={m}: the training collator must give m contiguous noisy copies of each image"
        )
    grouped = labels.view(-1, m)
    if not torch.equal(grouped, grouped[:, :1].expand_as(grouped)):
        raise ValueError(
            f"the labels are not in runs of num_noise_samples={m}: the training collator must repeat each image and "
            "its label m times contiguously (NoiseCollator(sigma, num_noise_samples=m))"
        )


# ---------------------------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class Objective:
    """One row of ``OBJECTIVES``: ``options`` its options dataclass, ``loss(batch, options)`` -> (loss, model
    output) while training, ``min_noise_samples`` the smallest m it works with, ``needs_clean_pixels`` whether
    its batches must carry the clean images (``WithCleanPixels``)."""

    name: str
    description: str
    options: type
    loss: Callable[[TrainingBatch, Any], tuple[torch.Tensor, Any]]
    min_noise_samples: int = 1
    needs_clean_pixels: bool = False

    def parse_options(self, options: Any = None) -> Any:
        """``options`` (None, a dict or an instance of ``self.options``) as a checked ``self.options``; unknown
        keys and bad values are errors naming the objective, the option and what is allowed."""
        if isinstance(options, self.options):
            return options
        if options is None:
            options = {}
        if not isinstance(options, dict):
            raise TypeError(
                f"`objective_options` of objective {self.name!r} must be a dict (a JSON object), got "
                f"{type(options).__name__} {options!r}"
            )
        allowed = [f.name for f in dataclasses.fields(self.options)]
        unknown = sorted(set(options) - set(allowed))
        if unknown:
            raise ValueError(
                f"`objective_options` {unknown} do not belong to objective {self.name!r}; its options are "
                f"{allowed or 'none'}"
            )
        try:
            return self.options(**options)
        except (TypeError, ValueError) as error:
            raise type(error)(f"`objective_options` of objective {self.name!r}: {error}") from None

    def check_noise_samples(self, num_noise_samples: int) -> int:
        """``num_noise_samples`` (m) if this objective works with it."""
        m = check_positive_int(num_noise_samples, "num_noise_samples")
        if m < self.min_noise_samples:
            raise ValueError(
                f"objective {self.name!r} needs `num_noise_samples` >= {self.min_noise_samples} (m noisy copies of "
                f"each image per batch, to estimate the smoothed classifier from), got num_noise_samples={m}"
            )
        return m


OBJECTIVES: dict[str, Objective] = {
    row.name: row
    for row in [
        Objective("gaussian", "cross-entropy under Gaussian noise (Cohen et al., 2019)", GaussianOptions,
                  cross_entropy),
        Objective("consistency", "cross-entropy + consistency regularization (Jeong and Shin, 2020)",
                  ConsistencyOptions, _consistency, min_noise_samples=2),
        Objective("smoothadv", "adversarial training of the smoothed classifier, SmoothAdv (Salman et al., 2019)",
                  SmoothAdvOptions, _smoothadv, needs_clean_pixels=True),
        Objective("macer", "soft smoothed cross-entropy + certified radius hinge, MACER (Zhai et al., 2020)",
                  MacerOptions, _macer, min_noise_samples=2),
    ]
}
"""The objectives ``SmoothingTrainer(objective=...)`` takes; a new objective is one row."""


def get_objective(name: Any) -> Objective:
    """The ``OBJECTIVES`` row of ``name``; anything else is a ValueError listing the names."""
    if not isinstance(name, str) or name not in OBJECTIVES:
        raise ValueError(f"`objective` must be one of {list(OBJECTIVES)}, got {name!r}")
    return OBJECTIVES[name]


class WithCleanPixels:
    """A training collator that also passes the clean images along: ``clean_pixel_values`` [B * m, C, H, W],
    row i the clean image of noisy row i, from the examples' ``pixel_values`` (float [C, H, W] in [0, 1]),
    beside whatever ``collator`` (e.g. ``NoiseCollator(sigma, m)``) returns."""

    def __init__(self, collator: Callable[[list[dict]], dict[str, torch.Tensor]], num_noise_samples: int) -> None:
        self.collator = collator
        self.num_noise_samples = check_positive_int(num_noise_samples, "num_noise_samples")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.collator!r}, num_noise_samples={self.num_noise_samples})"

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        batch = self.collator(examples)
        clean = torch.stack([torch.as_tensor(example["pixel_values"]) for example in examples]).float()
        batch["clean_pixel_values"] = clean.repeat_interleave(self.num_noise_samples, dim=0)
        return batch
