import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before huggingface_hub is imported: tests never download
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pytest
import torch
from transformers import (
    ResNetConfig,
    ResNetForImageClassification,
    ViTConfig,
    ViTForImageClassification,
    ViTImageProcessorPil,
)


class LinearBoundary(torch.nn.Module):
    """Base classifier f(x) = [w . x > b] with ||w||_2 = 1 on 1 x 4 x 4 images.

    For x at signed distance d = w . x - b from its boundary, P(f(x + e) = f(x)) = Phi(|d| / sigma), so
    the smoothed classifier's exact l2 radius at x is |d|.
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("w", torch.full((16,), 0.25))
        self.b = float(self.w.sum() * 0.5)  # the boundary passes through the all-0.5 image

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        margin = pixels.flatten(1) @ self.w - self.b
        return torch.stack([-margin, margin], dim=1)

    def image_at(self, distance: float) -> torch.Tensor:
        """The [1, 4, 4] image at signed distance ``distance`` (|distance| <= 2) from the boundary."""
        return (0.5 + distance * self.w).view(1, 4, 4)


@pytest.fixture
def one_thread():
    """Run the test on one thread: tiny models run as fast on one, and much faster on a shared, busy CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def linear_boundary() -> LinearBoundary:
    return LinearBoundary()


def tiny_vit(num_channels: int = 3, num_labels: int = 10, image_size: int = 28) -> ViTForImageClassification:
    torch.manual_seed(0)
    config = ViTConfig(
        image_size=image_size,
        patch_size=7,
        num_channels=num_channels,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=num_labels,
    )
    return ViTForImageClassification(config).eval()


def tiny_resnet(num_channels: int = 1, num_labels: int = 10) -> ResNetForImageClassification:
    torch.manual_seed(0)
    config = ResNetConfig(
        num_channels=num_channels,
        embedding_size=8,
        hidden_sizes=[8, 16],
        depths=[1, 1],
        layer_type="basic",
        num_labels=num_labels,
    )
    return ResNetForImageClassification(config).eval()


@pytest.fixture(scope="session")
def tiny_vit_dir(tmp_path_factory) -> str:
    """A folder with a tiny random ViT (3 x 28 x 28, 10 classes) and its image processor, like a Hub repo."""
    folder = tmp_path_factory.mktemp("tiny-vit")
    tiny_vit().save_pretrained(folder)
    ViTImageProcessorPil(
        size={"height": 28, "width": 28}, image_mean=[0.5, 0.4, 0.3], image_std=[0.2, 0.25, 0.3]
    ).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def tiny_resnet_dir(tmp_path_factory) -> str:
    """A folder with a tiny random 1-channel ResNet and no image processor."""
    folder = tmp_path_factory.mktemp("tiny-resnet")
    tiny_resnet().save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def tiny_vit_gray_dir(tmp_path_factory) -> str:
    """A tiny random 1-channel 28 x 28 ViT with its image processor."""
    folder = tmp_path_factory.mktemp("tiny-vit-gray")
    tiny_vit(num_channels=1).save_pretrained(folder)
    ViTImageProcessorPil(size={"height": 28, "width": 28}, image_mean=[0.5], image_std=[0.5]).save_pretrained(folder)
    return str(folder)
