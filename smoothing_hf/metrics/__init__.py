"""``evaluate`` metric modules shipped with smoothing_hf, one folder each, loaded by path:
``evaluate.load(smoothing_hf.reporting.certified_accuracy_metric_path())``."""
