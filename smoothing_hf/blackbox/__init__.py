"""Black-box PEFTSmoothing: make a classifier we can only query noise-robust with a BlackVIP coordinator.

- ``target.py``: ``BlackBoxClassifier``, the query-only target (every image sent is counted, with an optional
  budget: ``QueryBudgetExceeded``);
- ``spsa.py``: ``SPSAGC``, zeroth-order optimization from loss values only;
- ``training.py``: ``train_coordinator`` (the coordinator tuned by SPSA-GC from the target's answers),
  ``pretrain_autoencoder`` (its encoder without labels) and ``query_accuracy`` (accuracy on noisy images).

The coordinator itself is an input module (``smoothing_hf.input_modules.Coordinator``): a saved composite
loads without this package.
"""

from .spsa import SPSAGC
from .target import BlackBoxClassifier, QueryBudgetExceeded
from .training import pretrain_autoencoder, query_accuracy, train_coordinator

__all__ = [
    "SPSAGC", "BlackBoxClassifier", "QueryBudgetExceeded", "pretrain_autoencoder", "query_accuracy",
    "train_coordinator",
]
