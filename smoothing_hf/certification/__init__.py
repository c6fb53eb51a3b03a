"""The statistics core of randomized smoothing, free of Hugging Face: it takes any callable from [B, C, H, W]
pixels to [B, K] logits.

- ``bounds``: Clopper-Pearson bounds (classical and randomized), Cohen's radius, the largest certifiable radius.
- ``certificates``: ``Certificate``, ``RadiusDecision``, ``RadiiDecision``, ABSTAIN, PREDICT's and CERTIFY's
  decisions from counts.
- ``smoother``: ``Smoother``, PREDICT and CERTIFY over seeded noise streams.
- ``confidence``: confidence sequences for p_A (betting; Clopper-Pearson over a Bonferroni schedule) and
  one-sided tests per radius threshold.
- ``sequential``: sample-efficient modes (one radius, several radii, an adaptive radius) and their scheduler.
- ``two_stage``: the adaptive radius from a pilot that chooses n and a fixed-n Clopper-Pearson bound.
"""

from .bounds import (
    clopper_pearson_bounds,
    clopper_pearson_lower,
    largest_certifiable_radius,
    radius_from_bound,
    randomized_clopper_pearson_lower,
)
from .certificates import (
    ABSTAIN,
    Certificate,
    RadiiDecision,
    RadiusDecision,
    certificates_from_counts,
    check_radii_to_test,
    predictions_from_counts,
)
from .confidence import (
    ADAPTIVE_CONFIDENCES,
    BOUNDING_SEQUENCES,
    CONFIDENCE_SEQUENCES,
    DEFAULT_ADAPTIVE_CONFIDENCE,
    DEFAULT_CONFIDENCE,
    TWO_STAGE,
    ConfidenceSequence,
    check_confidence,
    check_futility,
    confidence_sequence,
    sample_schedule,
)
from .forward import eval_mode
from .smoother import Smoother
from .two_stage import pilot_size

__all__ = [
    "ABSTAIN", "ADAPTIVE_CONFIDENCES", "BOUNDING_SEQUENCES", "CONFIDENCE_SEQUENCES", "Certificate",
    "ConfidenceSequence", "DEFAULT_ADAPTIVE_CONFIDENCE", "DEFAULT_CONFIDENCE", "RadiiDecision", "RadiusDecision",
    "Smoother", "TWO_STAGE", "certificates_from_counts", "check_confidence", "check_futility",
    "check_radii_to_test", "clopper_pearson_bounds", "clopper_pearson_lower", "confidence_sequence", "eval_mode",
    "largest_certifiable_radius", "pilot_size", "predictions_from_counts", "radius_from_bound",
    "randomized_clopper_pearson_lower", "sample_schedule",
]
