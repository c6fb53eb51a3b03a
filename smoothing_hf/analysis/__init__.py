"""What a smoothed classifier does beyond its certificate, after the fact:

- ``attacks.py``: SmoothAdv (``smooth_adv``), the white-box l2 attack on the smoothed classifier, and
  ``attack_dataset``, its empirical robust accuracy on a dataset (``attack.tsv``, ``summary.json``);
- ``robustness.py``: the figures of an attack run beside the certified accuracy (summary, table, plot);
- ``attribution.py``: Grad-CAM maps (captum) of base and noise-adapted models on clean and noisy images.

Import the module you need (``from smoothing_hf.analysis.attacks import smooth_adv``): this package imports
none of them, so an attack does not load captum.
"""
