"""The base classifier's forward pass as certification runs it: precision, memory format, compilation.

Noise is drawn in float32 and added to float32 pixels (``noise.py``); only the forward pass below runs in
reduced precision, through ``torch.autocast`` on the sampling device. A certificate is a statement about the
classifier *as evaluated*, so the precision is part of a run's settings (``pipeline.certify`` records it and
refuses to resume with another).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch

from ..checks import check_choice

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
"""Forward-pass precisions by name: float32, or autocast to bfloat16 / float16."""


@contextlib.contextmanager
def eval_mode(module: object) -> Iterator[None]:
    """Put an ``nn.Module`` in eval mode (no dropout: f must be deterministic) and restore its mode after."""
    if not isinstance(module, torch.nn.Module):
        yield
        return
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


class BaseForward:
    """``forward(batch, batch_size)``: [b, C, H, W] float32 pixels -> [b, num_classes] float32 logits.

    Args:
        base_classifier: a ``torch.nn.Module`` or callable (as ``Smoother`` takes it).
        num_classes: K; an output of another shape is a ValueError.
        precision: one of ``PRECISIONS``; "bf16"/"fp16" autocast the forward pass on ``device``.
        channels_last: run a convolutional module in channels-last memory format (the module's parameters
            are converted in place, once; values are unchanged).
        compile: ``torch.compile`` the module once; every batch is padded with zero images to ``batch_size``
            so that one compiled graph serves the run (the padded rows' logits are dropped).
        device: the device the forward pass runs on (its type selects the autocast backend).
    """

    def __init__(
        self,
        base_classifier: Callable[[torch.Tensor], object],
        num_classes: int,
        *,
        precision: str = "fp32",
        channels_last: bool = False,
        compile: bool = False,
        device: torch.device | str | None = None,
    ) -> None:
        self.precision = check_choice(precision, "precision", PRECISIONS)
        for name, value in (("channels_last", channels_last), ("compile", compile)):
            if not isinstance(value, bool):
                raise TypeError(f"`{name}` must be True or False, got {value!r}")
        if (channels_last or compile) and not isinstance(base_classifier, torch.nn.Module):
            raise TypeError(
                f"`channels_last` and `compile` need a torch.nn.Module base classifier, got "
                f"{type(base_classifier).__name__}"
            )
        self.device_type = torch.device(device).type if device is not None else None
        if self.device_type is not None:
            check_precision_on(self.precision, self.device_type)
        if channels_last:
            base_classifier.to(memory_format=torch.channels_last)
        self.base_classifier = base_classifier
        self.num_classes = num_classes
        self.channels_last, self.compiled = channels_last, compile
        self._call = torch.compile(base_classifier) if compile else base_classifier

    def __call__(self, batch: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
        size = len(batch)
        if self.compiled and batch_size is not None and size < batch_size:
            batch = torch.cat([batch, batch.new_zeros((batch_size - size, *batch.shape[1:]))])
        if self.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        dtype = PRECISIONS[self.precision]
        device_type = self.device_type or batch.device.type
        if dtype is not None and self.device_type is None:  # checked at construction where the device was known
            check_precision_on(self.precision, device_type)
        with torch.autocast(device_type, dtype=dtype, enabled=dtype is not None):
            output = self._call(batch)
        logits = getattr(output, "logits", output)
        if isinstance(logits, torch.Tensor):
            logits = logits[:size]
        if not isinstance(logits, torch.Tensor) or logits.shape != (size, self.num_classes):
            got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
            raise ValueError(
                f"`base_classifier` must return logits of shape [batch, num_classes] = [{size}, "
                f"{self.num_classes}], got {got}"
            )
        return logits.float()


def check_precision_on(precision: str, device_type: str) -> None:
    """Raise unless ``precision`` (a ``PRECISIONS`` name) can run on a device of ``device_type``."""
    if PRECISIONS[precision] is None:
        return
    if not torch.amp.autocast_mode.is_autocast_available(device_type):
        raise ValueError(
            f"`precision`={precision!r} needs autocast, which device type {device_type!r} lacks; use 'fp32'"
        )
    if device_type == "cuda" and precision == "bf16" and not torch.cuda.is_bf16_supported():
        raise ValueError("`precision`='bf16' is not supported on this GPU; use 'fp16' or 'fp32'")
