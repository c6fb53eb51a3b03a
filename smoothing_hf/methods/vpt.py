"""Visual prompt tuning (Jia et al., ECCV 2022) for ViT-family models: learnable prompt tokens.

Written here because peft's prompt methods target language models. Shallow VPT inserts ``num_prompts``
tokens after the [CLS] token of the embedding output; deep VPT also replaces them with fresh learnable
tokens before every later transformer layer. The [CLS] token (what the head reads) is unchanged in
position, so the head works as before.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import torch
from transformers import PreTrainedModel

from ..checks import check_positive_int
from .targets import backbone


@dataclass
class VPTConfig:
    num_prompts: int = field(default=8, metadata={"help": "Prompt tokens per layer."})
    deep: bool = field(
        default=False, metadata={"help": "Deep VPT: new prompts before every layer, not only the first."}
    )

    def __post_init__(self) -> None:
        self.num_prompts = check_positive_int(self.num_prompts, "num_prompts")


class VisualPrompts(torch.nn.Module):
    """The learnable prompt tokens [num_layers, P, D] (one row for shallow VPT), inserted by forward hooks
    on the backbone's embeddings and layers (hooks, not wrappers: the backbone reads its submodules'
    attributes, e.g. ``embeddings.patch_embeddings``)."""

    def __init__(self, num_layers: int, num_prompts: int, hidden_size: int) -> None:
        super().__init__()
        self.prompts = torch.nn.Parameter(torch.empty(num_layers, num_prompts, hidden_size).uniform_(-0.02, 0.02))

    def _tokens(self, layer: int, like: torch.Tensor) -> torch.Tensor:
        return self.prompts[layer].to(like.dtype).expand(len(like), -1, -1)

    def insert(self, module: torch.nn.Module, args: tuple, tokens: torch.Tensor) -> torch.Tensor:
        """Forward hook of the embeddings: [B, 1 + N, D] -> [B, 1 + P + N, D], prompts after [CLS]."""
        return torch.cat([tokens[:, :1], self._tokens(0, tokens), tokens[:, 1:]], dim=1)

    def replace(self, layer: int, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        """Forward pre-hook of layer ``layer`` >= 1 (deep VPT): its own prompts at positions 1..P."""
        hidden = args[0] if args else kwargs["hidden_states"]
        hidden = torch.cat([hidden[:, :1], self._tokens(layer, hidden), hidden[:, 1 + self.prompts.shape[1] :]], dim=1)
        return ((hidden, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": hidden})


def _transformer_layers(model: PreTrainedModel) -> torch.nn.ModuleList | None:
    """The backbone's stack of ``config.num_hidden_layers`` transformer layers, if it has one."""
    count = getattr(model.config, "num_hidden_layers", -1)
    for child in backbone(model).modules():
        if isinstance(child, torch.nn.ModuleList) and len(child) == count:
            return child
    return None


def unfit_for_prompts(model: PreTrainedModel) -> str | None:
    """Why visual prompts cannot go into ``model``, or None when they can: it needs a [CLS] token embedding,
    a hidden size and a stack of transformer layers, and no relative position biases (which fix the number of
    tokens, e.g. BEiT's)."""
    embeddings = getattr(backbone(model), "embeddings", None)
    name = type(model).__name__
    if embeddings is None or getattr(embeddings, "cls_token", None) is None:
        return f"{name} has no [CLS] token embedding"
    if getattr(model.config, "hidden_size", None) is None or _transformer_layers(model) is None:
        return f"{name} has no stack of transformer layers"
    if getattr(model.config, "use_relative_position_bias", False) or getattr(
        model.config, "use_shared_relative_position_bias", False
    ):
        return f"{name} has relative position biases (e.g. BEiT), to which no tokens can be added"
    return None


def add_prompts(model: PreTrainedModel, config: VPTConfig) -> None:
    """Insert visual prompts into ``model`` in place; ``model`` must be fit (see ``unfit_for_prompts``)."""
    body = backbone(model)
    embeddings, stack = body.embeddings, _transformer_layers(model)
    prompts = VisualPrompts(len(stack) if config.deep else 1, config.num_prompts, model.config.hidden_size)
    body.visual_prompts = prompts.to(embeddings.cls_token.device)
    embeddings.register_forward_hook(prompts.insert)
    if config.deep:
        for index in range(1, len(stack)):
            stack[index].register_forward_pre_hook(functools.partial(_replace_hook, prompts, index), with_kwargs=True)


def _replace_hook(
    prompts: VisualPrompts, layer: int, module: torch.nn.Module, args: tuple, kwargs: dict
) -> tuple[tuple, dict]:
    return prompts.replace(layer, args, kwargs)
