"""``InputModule``: the base class of pixel-to-pixel stages in front of a frozen base classifier.

Apart from the registry (``smoothing_hf.input_modules``) so that the modules can subclass it and the registry
can import them, both without an import cycle.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch


class InputModule(torch.nn.Module):
    """A module from pixels [B, C, H, W] to pixels [B, C, H, W] (the [0, 1] scale, noisy pixels may leave
    it), placed before the base classifier.

    Subclasses set ``module_type`` (their ``INPUT_MODULES`` name) and ``description``, and pass their
    constructor's options to ``super().__init__(**options)``: JSON values, enough to rebuild the architecture
    with ``from_options`` before the saved weights are loaded into it. Parameters with ``requires_grad`` are the
    trained ones.
    """

    module_type: ClassVar[str]
    description: ClassVar[str]
    """One line for model cards, e.g. "a DnCNN denoiser trained with the stability objective"."""

    def __init__(self, **options: Any) -> None:
        super().__init__()
        self.options = options

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> InputModule:
        """The architecture that ``options`` describe, with fresh weights."""
        return cls(**options)

    def record(self) -> dict[str, Any]:
        """What ``smoothing_config.json`` keeps of this module: its type and options."""
        return {"type": self.module_type, "options": dict(self.options)}
