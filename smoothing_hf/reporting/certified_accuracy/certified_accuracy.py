"""Certified accuracy of a smoothed classifier at l2 radii, with ACR, abstain rate and clean accuracy.

An ``evaluate`` metric module, self-contained (numpy only) so that ``evaluate.load`` can copy it into its
module cache and it can be shared as is:

    import evaluate
    from smoothing_hf.reporting import certified_accuracy_metric_path

    metric = evaluate.load(certified_accuracy_metric_path())            # offline: a local path
    metric.compute(predictions=[3, -1, 7], radii=[0.8, 0.0, 0.3], references=[3, 2, 1])

It computes the same figures as ``smoothing_hf.reporting.summarize`` on Cohen et al.'s certify rows.
"""

import math
import numbers

import datasets
import evaluate  # the module, not `from evaluate import Metric`: evaluate.load takes the first Metric class here
import numpy as np

ABSTAIN = -1
DEFAULT_REPORT_RADII = (0.0, 0.25, 0.5, 0.75, 1.0)

_CITATION = """\
@inproceedings{cohen2019certified,
  title={Certified Adversarial Robustness via Randomized Smoothing},
  author={Cohen, Jeremy and Rosenfeld, Elan and Kolter, Zico},
  booktitle={International Conference on Machine Learning},
  pages={1310--1320},
  year={2019}
}
"""

_DESCRIPTION = """\
Certified accuracy at radius r is the fraction of examples that a smoothed classifier (randomized smoothing)
classifies correctly with a certified l2 radius of at least r: no perturbation of l2 norm below r changes
its prediction, with high probability over the Monte-Carlo noise. The average certified radius (ACR) is the
mean of radius * correct. An abstention (prediction -1) counts as wrong, with radius 0.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `int`): the smoothed classifier's class per example, or -1 where it abstained.
    radii (`list` of `float`): the certified l2 radius per example (0.0 where it abstained), in the units
        of the images' pixels (smoothing_hf: pixels in [0, 1]).
    references (`list` of `int`): the true label per example.
    report_radii (`list` of `float`, optional): radii at which to report certified accuracy, in the same
        units; defaults to the metric's `report_radii` (given to `evaluate.load`), itself by default
        (0, 0.25, 0.5, 0.75, 1.0).

Returns:
    `certified_accuracy@{r:g}` for each reported radius r (fraction in [0, 1]), `acr` (mean of radius *
    correct, in the radii's units), `abstain_rate` (fraction of predictions -1) and `clean_accuracy`
    (fraction correct, the certified accuracy at radius 0).

Examples:
    >>> metric = evaluate.load(certified_accuracy_metric_path(), report_radii=[0.0, 0.5])
    >>> metric.compute(predictions=[3, -1, 7, 1], radii=[0.8, 0.0, 0.3, 0.2], references=[3, 2, 1, 1])
    {'certified_accuracy@0': 0.5, 'certified_accuracy@0.5': 0.25, 'acr': 0.25, 'abstain_rate': 0.25,
     'clean_accuracy': 0.5}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class CertifiedAccuracy(evaluate.Metric):
    def __init__(self, report_radii=DEFAULT_REPORT_RADII, **kwargs):
        """``report_radii``: radii (l2) at which ``compute`` reports certified accuracy unless given one."""
        super().__init__(**kwargs)
        self.report_radii = _check_report_radii(report_radii)

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Value("int64"),
                    "radii": datasets.Value("float64"),  # float64: radius >= r compares as the TSV's floats do
                    "references": datasets.Value("int64"),
                }
            ),
            reference_urls=["https://arxiv.org/abs/1902.02918", "https://github.com/locuslab/smoothing"],
        )

    def _compute(self, predictions, radii, references, report_radii=None):
        report_radii = self.report_radii if report_radii is None else _check_report_radii(report_radii)
        predictions, radii, references = np.asarray(predictions), np.asarray(radii, dtype=float), np.asarray(references)
        if len(predictions) == 0:
            raise ValueError(
                "certified_accuracy needs at least one example: `predictions`, `radii` and `references` are empty"
            )
        if np.any(predictions < ABSTAIN):
            invalid = sorted(set(predictions[predictions < ABSTAIN].tolist()))
            raise ValueError(f"`predictions` must be class indices >= 0 or {ABSTAIN} (abstain), got {invalid}")
        if not np.all(np.isfinite(radii) & (radii >= 0)):
            raise ValueError("`radii` must be finite certified radii >= 0 (0.0 where the prediction abstained)")
        abstained = predictions == ABSTAIN
        correct = (predictions == references) & ~abstained
        return {
            **{f"certified_accuracy@{r:g}": float(np.mean(correct & (radii >= r))) for r in report_radii},
            "acr": float(np.mean(radii * correct)),
            "abstain_rate": float(np.mean(abstained)),
            "clean_accuracy": float(np.mean(correct)),
        }


def _check_report_radii(report_radii):
    radii = tuple(report_radii) if not isinstance(report_radii, (str, bytes)) else ()
    if not radii or not all(
        isinstance(r, numbers.Real) and not isinstance(r, bool) and math.isfinite(r) and r >= 0 for r in radii
    ):
        raise ValueError(f"`report_radii` must be a non-empty sequence of finite radii >= 0, got {report_radii!r}")
    return radii
