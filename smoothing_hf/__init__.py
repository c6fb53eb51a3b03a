"""smoothing_hf: certified l2 robustness for Hugging Face image classifiers by randomized smoothing,
with the base model adapted to Gaussian noise by parameter-efficient fine-tuning (PEFTSmoothing)."""

from .attacks import attack_dataset, smooth_adv
from .baselines import DenoiserTrainer, DiffusionDenoiser, DnCNN
from .blackbox import (
    BlackBoxClassifier,
    Coordinator,
    QueryBudgetExceeded,
    train_coordinator,
)
from .config import SMOOTHING_CONFIG_NAME, SmoothingConfig
from .core import (
    ABSTAIN,
    Certificate,
    RadiusDecision,
    Smoother,
    certificates_from_counts,
    clopper_pearson_lower,
)
from .data import (
    EMBEDDED_DATASETS,
    ImageClassificationTransform,
    check_labels,
    class_names,
    load_image_dataset,
    num_classes,
    prepare_columns,
)
from .input_modules import InputModule
from .methods import METHODS, apply_method, trainable_parameters
from .modeling import SmoothedImageClassifier
from .noise import NOISE_CHUNK_SIZE, NoiseCollator, Phase, derive_seed
from .pipeline import certify
from .spsa import SPSAGC
from .trainer import SmoothingTrainer
from .transforms import PixelTransform

__version__ = "0.1.0"

__all__ = [
    "ABSTAIN",
    "EMBEDDED_DATASETS",
    "METHODS",
    "NOISE_CHUNK_SIZE",
    "SMOOTHING_CONFIG_NAME",
    "SPSAGC",
    "BlackBoxClassifier",
    "Certificate",
    "Coordinator",
    "DenoiserTrainer",
    "DiffusionDenoiser",
    "DnCNN",
    "ImageClassificationTransform",
    "InputModule",
    "NoiseCollator",
    "Phase",
    "PixelTransform",
    "QueryBudgetExceeded",
    "RadiusDecision",
    "SmoothedImageClassifier",
    "Smoother",
    "SmoothingConfig",
    "SmoothingTrainer",
    "apply_method",
    "attack_dataset",
    "certificates_from_counts",
    "certify",
    "check_labels",
    "class_names",
    "clopper_pearson_lower",
    "derive_seed",
    "load_image_dataset",
    "num_classes",
    "prepare_columns",
    "smooth_adv",
    "train_coordinator",
    "trainable_parameters",
]
