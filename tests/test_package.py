"""The package's public names: every one resolves (lazily), an unknown one is an AttributeError, and the light
entry points do not import torch."""

import subprocess
import sys

import pytest

import smoothing_hf


def test_every_public_name_resolves_to_the_object_of_its_module():
    for name in smoothing_hf.__all__:
        value = getattr(smoothing_hf, name)
        assert getattr(sys.modules[f"smoothing_hf.{smoothing_hf._MODULE_OF[name]}"], name) is value, name
    assert set(smoothing_hf.__all__) <= set(dir(smoothing_hf))
    assert len(set(smoothing_hf.__all__)) == len(smoothing_hf.__all__)


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'certify_everything'"):
        smoothing_hf.certify_everything  # noqa: B018
    with pytest.raises(ImportError):
        from smoothing_hf import certify_everything  # noqa: F401


def test_the_report_command_does_not_import_torch_or_transformers():
    script = "import sys, smoothing_hf.report; print(sorted({'torch', 'transformers', 'peft'} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "[]"
