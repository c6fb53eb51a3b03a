"""Bottleneck adapters (Houlsby et al., ICML 2019) after a transformer's attention and MLP sublayers.

Written here because the ``adapters`` package pins transformers 4 and peft has no bottleneck adapter.
Each adapted projection computes y = W x + up(gelu(down(W x))); ``up`` starts at zero, so the adapted
model starts as the base model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import PreTrainedModel

from ..checks import check_positive_int
from .targets import sublayer_output_projections


@dataclass
class AdapterConfig:
    reduction_factor: int = field(default=16, metadata={"help": "Hidden size / bottleneck size of each adapter."})
    target_modules: list[str] | None = field(
        default=None, metadata={"help": "Full names of the linear layers to follow with an adapter (default: derived)."}
    )

    def __post_init__(self) -> None:
        self.reduction_factor = check_positive_int(self.reduction_factor, "reduction_factor")


class AdaptedLinear(torch.nn.Module):
    """A frozen ``nn.Linear`` followed by a residual bottleneck adapter. Input/output [..., features]."""

    def __init__(self, linear: torch.nn.Linear, bottleneck: int) -> None:
        super().__init__()
        self.linear = linear
        self.down = torch.nn.Linear(linear.out_features, bottleneck)
        self.up = torch.nn.Linear(bottleneck, linear.out_features)
        torch.nn.init.zeros_(self.up.weight)
        torch.nn.init.zeros_(self.up.bias)
        self.to(linear.weight.device)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        output = self.linear(hidden)
        return output + self.up(torch.nn.functional.gelu(self.down(output)))


def unfit_for_adapters(model: PreTrainedModel) -> str | None:
    """Why bottleneck adapters cannot go into ``model`` (it has no attention or MLP sublayers of linear
    layers outside its head), or None when they can."""
    if sublayer_output_projections(model):
        return None
    return f"{type(model).__name__} has none"


def add_adapters(model: PreTrainedModel, config: AdapterConfig) -> list[str]:
    """Wrap the target linear layers of ``model`` in place (by default the output projection of each
    sublayer: ``model`` must be fit, see ``unfit_for_adapters``); returns their names. Only adapters train."""
    targets = config.target_modules or sublayer_output_projections(model)
    for name in targets:
        linear = model.get_submodule(name)
        if not isinstance(linear, torch.nn.Linear):
            raise ValueError(f"adapter target `{name}` must be an nn.Linear, got {type(linear).__name__}")
        model.set_submodule(name, AdaptedLinear(linear, max(1, linear.out_features // config.reduction_factor)))
    return list(targets)
