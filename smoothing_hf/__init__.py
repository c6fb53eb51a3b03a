"""smoothing_hf: certified l2 robustness for Hugging Face image classifiers by randomized smoothing,
with the base model adapted to Gaussian noise by parameter-efficient fine-tuning (PEFTSmoothing)."""

from .config import SMOOTHING_CONFIG_NAME, SmoothingConfig
from .core import ABSTAIN, Certificate, Smoother, certificates_from_counts, clopper_pearson_lower
from .modeling import SmoothedImageClassifier
from .noise import NOISE_CHUNK_SIZE, Phase, derive_seed
from .transforms import PixelTransform

__version__ = "0.1.0"

__all__ = [
    "ABSTAIN",
    "NOISE_CHUNK_SIZE",
    "SMOOTHING_CONFIG_NAME",
    "Certificate",
    "Phase",
    "PixelTransform",
    "SmoothedImageClassifier",
    "Smoother",
    "SmoothingConfig",
    "certificates_from_counts",
    "clopper_pearson_lower",
    "derive_seed",
]
