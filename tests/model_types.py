"""Every image classifier in transformers' image-classification mapping, as a tiny random model: the table the
model-type tests run over (like peft's ``TEST_CASES``), and the README's table of model types x methods.

``TINY_MODELS`` maps a case name (the model type; ``<type>-teacher`` for a distilled two-head class) to the
classifier class and the config arguments of a model of a few thousand parameters on 32 x 32 pixels.
``LEFT_OUT`` names the mapping's types that are not [B, C, H, W] pixel classifiers, or need packages that
do not install here, with the reason. ``python tests/model_types.py`` prints the README table.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import transformers
from transformers import CONFIG_MAPPING, PreTrainedModel
from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES

IMAGE_SIZE = 32
NUM_LABELS = 3

_VIT_LIKE = dict(
    image_size=IMAGE_SIZE, patch_size=8, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
    intermediate_size=32,
)
_SWIN_LIKE = dict(image_size=IMAGE_SIZE, patch_size=4, embed_dim=8, depths=[1, 1], num_heads=[1, 2], window_size=4)
_TOWER = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)


@dataclass(frozen=True)
class TinyModel:
    """One row: the classifier class (a name in ``transformers``) and its config arguments."""

    model_type: str
    class_name: str
    config: dict = field(default_factory=dict)

    def build(self, seed: int = 0) -> PreTrainedModel:
        """A random model, in eval mode, seeded."""
        torch.manual_seed(seed)
        config = CONFIG_MAPPING[self.model_type](num_labels=NUM_LABELS, **self.config)
        return getattr(transformers, self.class_name)(config).eval()


def _vision_tower(model_type: str, class_name: str) -> TinyModel:
    vision = dict(_TOWER, image_size=IMAGE_SIZE, patch_size=8)
    text = dict(_TOWER, vocab_size=32, max_position_embeddings=16)
    return TinyModel(model_type, class_name, dict(vision_config=vision, text_config=text))


TINY_MODELS: dict[str, TinyModel] = {
    row.model_type if not row.class_name.endswith("WithTeacher") else f"{row.model_type}-teacher": row
    for row in [
        TinyModel("beit", "BeitForImageClassification", dict(_VIT_LIKE, use_relative_position_bias=True)),
        TinyModel("bit", "BitForImageClassification",
                  dict(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_groups=2)),
        _vision_tower("clip", "CLIPForImageClassification"),
        TinyModel("convnext", "ConvNextForImageClassification",
                  dict(image_size=IMAGE_SIZE, num_stages=2, hidden_sizes=[8, 16], depths=[1, 1])),
        TinyModel("convnextv2", "ConvNextV2ForImageClassification",
                  dict(image_size=IMAGE_SIZE, num_stages=2, hidden_sizes=[8, 16], depths=[1, 1])),
        TinyModel("cvt", "CvtForImageClassification",  # transformers indexes a stage's drop-path list by stage
                  dict(embed_dim=[8, 8, 16], num_heads=[1, 1, 2], depth=[1, 2, 3])),
        TinyModel("data2vec-vision", "Data2VecVisionForImageClassification",
                  dict(_VIT_LIKE, use_relative_position_bias=True)),
        TinyModel("deit", "DeiTForImageClassification", _VIT_LIKE),
        TinyModel("deit", "DeiTForImageClassificationWithTeacher", _VIT_LIKE),
        TinyModel("dinov2", "Dinov2ForImageClassification", dict(_VIT_LIKE, mlp_ratio=2)),
        TinyModel("dinov2_with_registers", "Dinov2WithRegistersForImageClassification",
                  dict(_VIT_LIKE, mlp_ratio=2, num_register_tokens=2)),
        TinyModel("donut-swin", "DonutSwinForImageClassification", _SWIN_LIKE),
        TinyModel("efficientnet", "EfficientNetForImageClassification",
                  dict(image_size=IMAGE_SIZE, width_coefficient=0.1, depth_coefficient=0.1, hidden_dim=128,
                       kernel_sizes=[3, 3], in_channels=[32, 16], out_channels=[16, 24], strides=[1, 2],
                       num_block_repeats=[1, 1], expand_ratios=[1, 6], depthwise_padding=[])),
        TinyModel("focalnet", "FocalNetForImageClassification",
                  dict(image_size=IMAGE_SIZE, patch_size=4, embed_dim=8, hidden_sizes=[8, 16], depths=[1, 1],
                       focal_levels=[2, 2], focal_windows=[3, 3])),
        TinyModel("hgnet_v2", "HGNetV2ForImageClassification",
                  dict(embedding_size=8, depths=[1, 1], hidden_sizes=[16, 32], stem_channels=[3, 8, 8],
                       stage_in_channels=[8, 16], stage_mid_channels=[8, 16], stage_out_channels=[16, 32],
                       stage_num_blocks=[1, 1], stage_downsample=[False, True], stage_light_block=[False, True],
                       stage_kernel_size=[3, 3], stage_numb_of_layers=[2, 2])),
        TinyModel("hiera", "HieraForImageClassification",
                  dict(image_size=[IMAGE_SIZE, IMAGE_SIZE], patch_size=[3, 3], patch_stride=[2, 2],
                       patch_padding=[1, 1], embed_dim=8, depths=[1, 1], num_heads=[1, 2], query_stride=[2, 2],
                       masked_unit_size=[4, 4], masked_unit_attention=[True, False], num_query_pool=1)),
        TinyModel("ijepa", "IJepaForImageClassification", _VIT_LIKE),
        TinyModel("levit", "LevitForImageClassification",
                  dict(image_size=IMAGE_SIZE, hidden_sizes=[16, 32], num_attention_heads=[1, 2], depths=[1, 1],
                       key_dim=[8, 8], attention_ratio=[2, 2], mlp_ratio=[2, 2],
                       down_ops=[["Subsample", 8, 1, 4, 2, 2]])),
        TinyModel("levit", "LevitForImageClassificationWithTeacher",
                  dict(image_size=IMAGE_SIZE, hidden_sizes=[16, 32], num_attention_heads=[1, 2], depths=[1, 1],
                       key_dim=[8, 8], attention_ratio=[2, 2], mlp_ratio=[2, 2],
                       down_ops=[["Subsample", 8, 1, 4, 2, 2]])),
        _vision_tower("metaclip_2", "MetaClip2ForImageClassification"),
        TinyModel("mobilenet_v1", "MobileNetV1ForImageClassification",
                  dict(image_size=IMAGE_SIZE, depth_multiplier=0.125, min_depth=4)),
        TinyModel("mobilenet_v2", "MobileNetV2ForImageClassification",
                  dict(image_size=IMAGE_SIZE, depth_multiplier=0.125, min_depth=4)),
        TinyModel("mobilevit", "MobileViTForImageClassification",
                  dict(image_size=IMAGE_SIZE, patch_size=2, hidden_sizes=[16, 16, 16],
                       neck_hidden_sizes=[8, 8, 8, 8, 8, 8, 16], num_attention_heads=2, expand_ratio=2.0)),
        TinyModel("mobilevitv2", "MobileViTV2ForImageClassification",
                  dict(image_size=IMAGE_SIZE, patch_size=1, width_multiplier=0.1, n_attn_blocks=[1, 1, 1])),
        TinyModel("poolformer", "PoolFormerForImageClassification",
                  dict(depths=[1, 1], hidden_sizes=[8, 16], patch_sizes=[7, 3], strides=[4, 2], padding=[2, 1],
                       num_encoder_blocks=2)),
        TinyModel("pp_lcnet", "PPLCNetForImageClassification", dict(scale=0.25, class_expand=32)),
        TinyModel("pvt", "PvtForImageClassification",
                  dict(image_size=IMAGE_SIZE, num_encoder_blocks=2, depths=[1, 1], sequence_reduction_ratios=[2, 1],
                       hidden_sizes=[8, 16], patch_sizes=[4, 2], strides=[4, 2], num_attention_heads=[1, 2],
                       mlp_ratios=[2, 2])),
        TinyModel("pvt_v2", "PvtV2ForImageClassification",
                  dict(image_size=IMAGE_SIZE, num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1],
                       hidden_sizes=[8, 16], patch_sizes=[7, 3], strides=[4, 2], num_attention_heads=[1, 2],
                       mlp_ratios=[2, 2])),
        TinyModel("regnet", "RegNetForImageClassification",
                  dict(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], groups_width=4)),
        TinyModel("resnet", "ResNetForImageClassification",
                  dict(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic")),
        TinyModel("segformer", "SegformerForImageClassification",
                  dict(num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[8, 16],
                       patch_sizes=[7, 3], strides=[4, 2], num_attention_heads=[1, 2], mlp_ratios=[2, 2],
                       decoder_hidden_size=16)),
        _vision_tower("siglip", "SiglipForImageClassification"),
        TinyModel("swiftformer", "SwiftFormerForImageClassification",
                  dict(image_size=IMAGE_SIZE, depths=[1, 1], embed_dims=[8, 16], downsamples=[True, True])),
        TinyModel("swin", "SwinForImageClassification", _SWIN_LIKE),
        TinyModel("swinv2", "Swinv2ForImageClassification", _SWIN_LIKE),
        TinyModel("textnet", "TextNetForImageClassification",
                  dict(image_size=[IMAGE_SIZE, IMAGE_SIZE], stem_out_channels=8, hidden_sizes=[8, 16, 16, 16, 16],
                       conv_layer_kernel_sizes=[[[3, 3]], [[3, 3]], [[3, 3]], [[3, 3]]],
                       conv_layer_strides=[[1], [2], [2], [2]])),
        TinyModel("vit", "ViTForImageClassification", _VIT_LIKE),
        TinyModel("vit_msn", "ViTMSNForImageClassification", _VIT_LIKE),
    ]
}

LEFT_OUT = {
    "dinat": "needs the `natten` package (neighborhood-attention kernels), which does not install here",
    "imagegpt": "not a pixel classifier: it takes color-cluster token ids (`input_ids`), not [B, C, H, W] pixels",
    "perceiver": "not a [B, C, H, W] pixel classifier: it takes `inputs` through its own preprocessors "
                 "(learned, Fourier or conv), with no `pixel_values` argument",
    "shieldgemma2": "a vision-language model: it classifies an image with a text policy prompt (`input_ids`)",
    "siglip2": "not a [B, C, H, W] pixel classifier: it takes flattened patches [B, N, C * P * P] with "
               "`pixel_attention_mask` and `spatial_shapes`",
    "timm_wrapper": "needs the `timm` package, whose torchvision requirement does not match this torch",
}


def markdown_table() -> str:
    """The README's table: one row per case, one column per method; ✓ where the method applies, ✓ᵘ where it
    applies but its adapter cannot be folded into the weights exactly (certified unmerged, no merged export),
    – where it does not apply (the error says why)."""
    from smoothing_hf.methods import METHODS, NotMergeable, Saved, applicable_methods, apply_method, merged_copy

    lines = ["| model type (class) | " + " | ".join(METHODS) + " |", "|---|" + "---|" * len(METHODS)]
    for row in TINY_MODELS.values():
        applicable = applicable_methods(row.build())
        cells = []
        for method in METHODS:
            cell = "✓" if method in applicable else "–"
            if method in applicable and METHODS[method].saved is Saved.PEFT_ADAPTER:
                try:
                    merged_copy(apply_method(row.build(), method))
                except NotMergeable:
                    cell = "✓ᵘ"
            cells.append(cell)
        lines.append(f"| `{row.model_type}` ({row.class_name}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def check_table_covers_the_mapping() -> list[str]:
    """The mapping's model types that are neither in ``TINY_MODELS`` nor in ``LEFT_OUT`` (should be none)."""
    covered = {row.model_type for row in TINY_MODELS.values()} | set(LEFT_OUT)
    return sorted(set(MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES) - covered)


if __name__ == "__main__":
    print(markdown_table())
    print()
    for model_type, reason in LEFT_OUT.items():
        print(f"- `{model_type}`: {reason}")
