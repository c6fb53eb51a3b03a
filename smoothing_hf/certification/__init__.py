"""The statistics core of randomized smoothing, free of Hugging Face: it takes any callable from [B, C, H, W]
pixels to [B, K] logits.

- ``bounds``: Clopper-Pearson bounds, Cohen's radius, the largest certifiable radius.
- ``certificates``: ``Certificate``, ``RadiusDecision``, ABSTAIN, PREDICT's and CERTIFY's decisions from counts.
- ``smoother``: ``Smoother``, PREDICT and CERTIFY over seeded noise streams.
- ``sequential``: sample-efficient modes (a fixed radius, adaptive radii) in rounds.
"""

from .bounds import clopper_pearson_bounds, clopper_pearson_lower, largest_certifiable_radius, radius_from_bound
from .certificates import ABSTAIN, Certificate, RadiusDecision, certificates_from_counts, predictions_from_counts
from .sequential import sample_schedule
from .smoother import Smoother, eval_mode

__all__ = [
    "ABSTAIN", "Certificate", "RadiusDecision", "Smoother", "certificates_from_counts", "clopper_pearson_bounds",
    "clopper_pearson_lower", "eval_mode", "largest_certifiable_radius", "predictions_from_counts",
    "radius_from_bound", "sample_schedule",
]
