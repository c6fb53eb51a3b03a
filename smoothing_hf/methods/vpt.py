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

from .targets import backbone


@dataclass
class VPTConfig:
    num_prompts: int = field(default=8, metadata={"help": "Prompt tokens per layer."})
    deep: bool = field(default=False, metadata={"help": "Deep VPT: new prompts before every layer, not only the first."})

    def __post_init__(self) -> None:
        if isinstance(self.num_prompts, bool) or not isinstance(self.num_prompts, int) or self.num_prompts < 1:
            raise ValueError(f"`num_prompts` must be a positive int, got {self.num_prompts!r}")


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


def _transformer_layers(module: torch.nn.Module, count: int) -> tuple[str, torch.nn.ModuleList] | None:
    for name, child in module.named_modules():
        if isinstance(child, torch.nn.ModuleList) and len(child) == count:
            return name, child
    return None


def add_prompts(model: PreTrainedModel, config: VPTConfig) -> None:
    """Insert visual prompts into ``model`` in place. Raises ``ValueError`` for non-ViT-family models."""
    body = backbone(model)
    embeddings = getattr(body, "embeddings", None)
    hidden_size = getattr(model.config, "hidden_size", None)
    layers = _transformer_layers(body, getattr(model.config, "num_hidden_layers", -1))
    if embeddings is None or getattr(embeddings, "cls_token", None) is None or hidden_size is None or layers is None:
        raise ValueError(
            f"method 'vpt' applies to ViT-family models (a [CLS] token and a stack of transformer layers); "
            f"{type(model).__name__} is not one. Use 'lora', 'adapter' or 'linear'"
        )
    if getattr(model.config, "use_relative_position_bias", False) or getattr(model.config, "use_shared_relative_position_bias", False):
        raise ValueError("method 'vpt' cannot add tokens to a model with relative position biases (e.g. BEiT); use 'lora'")
    _, stack = layers
    prompts = VisualPrompts(len(stack) if config.deep else 1, config.num_prompts, hidden_size)
    body.visual_prompts = prompts.to(embeddings.cls_token.device)
    embeddings.register_forward_hook(prompts.insert)
    if config.deep:
        for index in range(1, len(stack)):
            stack[index].register_forward_pre_hook(functools.partial(_replace_hook, prompts, index), with_kwargs=True)


def _replace_hook(prompts: VisualPrompts, layer: int, module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    return prompts.replace(layer, args, kwargs)
