"""The ``certified_accuracy`` evaluate metric: ``evaluate.load`` reads ``certified_accuracy.py`` from this folder."""
