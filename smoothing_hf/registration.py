"""Registers the ``"certified-image-classification"`` pipeline task with transformers on ``import smoothing_hf``,
without importing transformers (or torch) then: ``import smoothing_hf`` stays light (``python -m
smoothing_hf.report`` loads neither), and the task is registered the moment ``transformers.pipelines`` is
imported, whichever comes first.

If ``transformers.pipelines`` is already loaded, the task is registered at once; otherwise a finder on
``sys.meta_path`` waits for that one module, lets its own loader run it, then registers the task and removes
itself. The task module (``smoothing_hf.certified_pipeline``) is reached by name, as ``smoothing_hf``'s
``__init__`` reaches its exports, so that this leaf imports nothing of the package.
"""

from __future__ import annotations

import importlib
import importlib.abc
import sys
from importlib.machinery import ModuleSpec
from types import ModuleType
from typing import Any

TRANSFORMERS_PIPELINES = "transformers.pipelines"
TASK_MODULE = "smoothing_hf.certified_pipeline"


def register_task_when_transformers_pipelines_loads() -> None:
    """Register the task now if ``transformers.pipelines`` is loaded, else as soon as it is (once)."""
    if TRANSFORMERS_PIPELINES in sys.modules:
        _register()
    elif not any(isinstance(finder, _RegisterAfterImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _RegisterAfterImport())


def _register() -> None:
    """Importing the task module registers the task; a task module whose own import loads transformers.pipelines
    (it is then in sys.modules, half run) registers it when it has run."""
    if TASK_MODULE not in sys.modules:
        importlib.import_module(TASK_MODULE)


class _RegisterAfterImport(importlib.abc.MetaPathFinder):
    """Finds ``transformers.pipelines`` with the other finders and wraps its loader so that the task is
    registered right after the module has run; every other import is left to the other finders."""

    def find_spec(self, fullname: str, path: Any = None, target: ModuleType | None = None) -> ModuleSpec | None:
        if fullname != TRANSFORMERS_PIPELINES:
            return None
        sys.meta_path.remove(self)  # once; and the finders below must not find this one again
        for finder in sys.meta_path:
            spec = finder.find_spec(fullname, path, target) if hasattr(finder, "find_spec") else None
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _ThenRegister(spec.loader)
                return spec
        return None


class _ThenRegister(importlib.abc.Loader):
    """A module loader that registers the task after the module it loads has run; anything else it is asked
    (``get_source``, ``is_package``, ...) goes to the wrapped loader."""

    def __init__(self, loader: importlib.abc.Loader) -> None:
        self.loader = loader

    def create_module(self, spec: ModuleSpec) -> ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self.loader.exec_module(module)
        _register()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.loader, name)
