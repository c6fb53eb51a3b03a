"""The query-only target of black-box PEFTSmoothing: ``BlackBoxClassifier``, with a query budget.

The target classifier is a service: we send [B, C, H, W] images in [0, 1] and read class scores, never
its weights or gradients. One query is one image sent to the target; a batch of B images is B queries (and
one call).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from transformers import AutoModelForImageClassification, PreTrainedModel

from ..checks import check_choice, check_positive_int
from ..transforms import load_image_processor, per_channel
from ..weights_files import check_source, model_weights

OUTPUTS = ("logits", "probabilities")
PROBABILITY_TOLERANCE = 1e-3
"""How far from 1 a row of probabilities returned by a black box may sum."""


class QueryBudgetExceeded(RuntimeError):
    """A query would take the black box past its ``query_budget`` (images); nothing was sent."""


class BlackBoxClassifier:
    """A classifier we may only query: [B, C, H, W] pixels on the [0, 1] scale in, [B, num_labels] scores out.

    The target runs under ``torch.no_grad`` on a detached copy of the input, so no gradient is ever
    computed through it, and its output is returned detached. Every call is counted: ``queries`` is the
    number of images sent (a batch of B is B queries), ``calls`` the number of requests. With
    ``query_budget``, a call that would take ``queries`` past it raises ``QueryBudgetExceeded`` before
    anything is sent.

    Args:
        target: the classifier. A ``transformers`` image classification model is called as
            ``target(pixel_values=(x - image_mean) / image_std).logits`` (see ``from_pretrained``); any other
            callable or module (a ``SmoothedImageClassifier``, a remote API wrapper) as ``target(x)``, which
            must return a [B, K] tensor (or an object with ``.logits``).
        num_labels: K; by default the model's ``config.num_labels`` (or ``num_labels`` attribute), else
            taken from the first answer. Every answer must have shape [B, K].
        output: what the black box returns, "logits" or "probabilities" (rows >= 0 that sum to 1). A
            callable must return that; a model's logits are turned into probabilities inside the black
            box when "probabilities" is asked for (a service that only exposes probabilities).
        query_budget: the most images that may be sent, or None for no limit.
        image_mean / image_std: per-channel normalization of a ``transformers`` model's input (default none).
        image_processor: the target's image processor, kept for dataset transforms (resizing), not called.
    """

    def __init__(
        self,
        target: Callable[[torch.Tensor], Any],
        num_labels: int | None = None,
        *,
        output: str = "logits",
        query_budget: int | None = None,
        image_mean: list[float] | None = None,
        image_std: list[float] | None = None,
        image_processor: Any = None,
    ) -> None:
        if not callable(target):
            raise TypeError(
                f"`target` must be callable (pixels [B, C, H, W] -> scores [B, K]), got {type(target).__name__}"
            )
        if num_labels is None:
            num_labels = getattr(getattr(target, "config", None), "num_labels", None) or getattr(
                target, "num_labels", None
            )
        self.target = target
        self.num_labels = None if num_labels is None else check_positive_int(num_labels, "num_labels")
        self.output = check_choice(output, "output", OUTPUTS)
        self.query_budget = None if query_budget is None else check_positive_int(query_budget, "query_budget")
        self.image_processor = image_processor
        self.queries = 0
        self.calls = 0
        self._is_model = isinstance(target, PreTrainedModel)
        if isinstance(target, torch.nn.Module):
            target.eval()  # a service answers deterministically: no dropout
        if (image_mean is None) != (image_std is None):
            raise ValueError("pass both `image_mean` and `image_std`, or neither")
        self._normalization = None
        if image_mean is not None:
            mean, std = torch.tensor(image_mean, dtype=torch.float32), torch.tensor(image_std, dtype=torch.float32)
            if mean.shape != std.shape or mean.dim() != 1 or not (std > 0).all():
                raise ValueError(
                    f"`image_mean`/`image_std` must be per-channel lists, std > 0; got {image_mean}, {image_std}"
                )
            self._normalization = (mean.view(1, -1, 1, 1), std.view(1, -1, 1, 1))

    @classmethod
    def from_pretrained(
        cls, name_or_path: str, *, output: str = "logits", query_budget: int | None = None, **model_kwargs: Any
    ) -> BlackBoxClassifier:
        """A local ``AutoModelForImageClassification`` (Hub id or folder) used as a black box, with the
        normalization of its image processor (none without one). ``model_kwargs`` go to the loaders."""
        hub_kwargs = {
            k: v for k, v in model_kwargs.items() if k in ("revision", "token", "cache_dir", "local_files_only")
        }
        check_source(name_or_path, "`name_or_path`")
        model_weights(name_or_path, hub_kwargs)  # safetensors only: pickled weights are refused, never opened
        model = AutoModelForImageClassification.from_pretrained(name_or_path, use_safetensors=True, **model_kwargs)
        model.requires_grad_(False)
        processor = load_image_processor(name_or_path, **hub_kwargs)
        channels = getattr(model.config, "num_channels", 3)
        mean = std = None
        if processor is not None and getattr(processor, "do_normalize", False):
            mean, std = per_channel(processor.image_mean, channels), per_channel(processor.image_std, channels)
        return cls(
            model, output=output, query_budget=query_budget, image_mean=mean, image_std=std, image_processor=processor
        )

    @property
    def remaining(self) -> int | None:
        """Images that may still be sent (None without a budget)."""
        return None if self.query_budget is None else self.query_budget - self.queries

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        """Send ``pixels`` [B, C, H, W] (the [0, 1] scale; noisy pixels may leave it) and return the
        black box's [B, num_labels] logits or probabilities (``output``), detached, float32."""
        if not isinstance(pixels, torch.Tensor) or pixels.dim() != 4 or not pixels.is_floating_point():
            shape = tuple(pixels.shape) if isinstance(pixels, torch.Tensor) else type(pixels).__name__
            raise ValueError(f"a black box takes float pixels of shape [B, C, H, W], got {shape}")
        size = pixels.shape[0]
        if self.query_budget is not None and self.queries + size > self.query_budget:
            raise QueryBudgetExceeded(
                f"query budget exhausted: {self.queries} of {self.query_budget} images already sent, this call would "
                f"send {size} more; raise `query_budget` or train for fewer steps"
            )
        self.queries += size
        self.calls += 1
        with torch.no_grad():
            answer = self._ask(pixels.detach())
        return self._check(answer, size)

    def _ask(self, pixels: torch.Tensor) -> Any:
        if self._is_model:
            if self._normalization is not None:
                mean, std = (t.to(pixels.device) for t in self._normalization)
                pixels = (pixels - mean) / std
            dtype = next(self.target.parameters()).dtype
            answer = self.target(pixel_values=pixels.to(dtype)).logits
        else:
            answer = self.target(pixels)
        answer = getattr(answer, "logits", answer)
        exposed_as_probabilities = self.output == "probabilities" and isinstance(self.target, torch.nn.Module)
        if exposed_as_probabilities and isinstance(answer, torch.Tensor):
            answer = answer.float().softmax(dim=-1)  # a model's logits, exposed as probabilities
        return answer

    def _check(self, answer: Any, size: int) -> torch.Tensor:
        if not isinstance(answer, torch.Tensor):
            raise TypeError(
                f"the black box must return a tensor of {self.output} [B, K], got {type(answer).__name__}"
            )
        if self.num_labels is None and answer.dim() == 2:
            self.num_labels = answer.shape[1]
        if answer.dim() != 2 or answer.shape != (size, self.num_labels):
            raise ValueError(
                f"the black box returned {self.output} of shape {tuple(answer.shape)} for {size} images, but "
                f"[{size}, {self.num_labels}] was expected (num_labels={self.num_labels}): the target does not match "
                "the label count"
            )
        answer = answer.detach().float()
        if not torch.isfinite(answer).all():
            raise ValueError("the black box returned non-finite scores")
        if self.output == "probabilities":
            sums = answer.sum(dim=1)
            if (answer < 0).any() or ((sums - 1).abs() > PROBABILITY_TOLERANCE).any():
                raise ValueError(
                    "the black box was declared to return probabilities, but its rows are not distributions (negative "
                    f"values or sums in [{sums.min():.4g}, {sums.max():.4g}]); pass output='logits' if it returns "
                    "logits"
                )
        return answer

    def log_probabilities(self, pixels: torch.Tensor) -> torch.Tensor:
        """log p(class | pixels) [B, K] from one query of ``pixels`` (probabilities are clamped at 1e-12)."""
        answer = self(pixels)
        return answer.clamp_min(1e-12).log() if self.output == "probabilities" else answer.log_softmax(dim=-1)

    def __repr__(self) -> str:
        budget = "" if self.query_budget is None else f"/{self.query_budget}"
        return (
            f"{type(self).__name__}(num_labels={self.num_labels}, output={self.output!r}, "
            f"queries={self.queries}{budget})"
        )
