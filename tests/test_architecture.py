"""The package's shape (DESIGN.md "Which module may use which"): imports run one way, the statistics core knows
nothing of Hugging Face, loading a model needs no training code, and every module reads in one sitting."""

import ast
import os
import subprocess
import sys

import pytest
from conftest import tiny_resnet

PACKAGE = os.path.join(os.path.dirname(__file__), os.pardir, "smoothing_hf")
HUGGING_FACE = ("transformers", "peft", "datasets", "accelerate", "huggingface_hub", "diffusers")
TRAINING = ("smoothing_hf.trainer", "smoothing_hf.baselines", "smoothing_hf.blackbox", "smoothing_hf.comparison",
            "transformers.trainer")


def package_modules() -> dict[str, str]:
    """Module name -> file of every module of smoothing_hf (packages by their ``__init__``)."""
    modules = {}
    root = os.path.abspath(os.path.join(PACKAGE, os.pardir))
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                parts = os.path.relpath(path, root)[: -len(".py")].split(os.sep)
                modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def imports_of(name: str, path: str, modules: dict[str, str]) -> set[str]:
    """The package modules that ``name`` imports anywhere in its file (function-level imports included; not
    those under ``if TYPE_CHECKING:``, which never run)."""
    package = name if path.endswith("__init__.py") else name.rsplit(".", 1)[0]
    found = set()
    tree = ast.parse(open(path, encoding="utf-8").read())
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
            node.body = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        found.update(target for target in targets if target in modules and target != name)
    return found


def test_no_import_cycle_among_the_package_modules():
    modules = package_modules()
    graph = {name: imports_of(name, path, modules) for name, path in modules.items()}
    state: dict[str, str] = {}

    def visit(name: str, trail: list[str]) -> None:
        state[name] = "open"
        for target in sorted(graph[name]):
            if state.get(target) == "open":
                cycle = trail[trail.index(target):] + [target]
                pytest.fail(f"import cycle: {' -> '.join(cycle)}")
            if target not in state:
                visit(target, [*trail, target])
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


def loaded_after(script: str) -> set[str]:
    """The names of ``sys.modules`` after running ``script`` in a fresh interpreter."""
    code = f"import sys\n{script}\nprint('\\n'.join(sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr
    return set(done.stdout.split())


def test_the_statistics_core_imports_nothing_of_hugging_face():
    loaded = loaded_after("from smoothing_hf.certification import Smoother")
    assert "smoothing_hf.certification.smoother" in loaded
    assert sorted({name.split(".")[0] for name in loaded} & set(HUGGING_FACE)) == []


def test_loading_a_saved_dncnn_composite_imports_no_training_code(tmp_path):
    from smoothing_hf import DnCNN, SmoothedImageClassifier

    base = tmp_path / "base"
    tiny_resnet().save_pretrained(base)
    denoiser = DnCNN(num_channels=1, depth=3, width=4)
    model = SmoothedImageClassifier.from_pretrained(str(base), sigma=0.25, image_mean=[0.5], image_std=[0.5],
                                                    input_module=denoiser)
    model.save_pretrained(tmp_path / "composite")
    loaded = loaded_after(
        f"from smoothing_hf import SmoothedImageClassifier\n"
        f"model = SmoothedImageClassifier.from_pretrained({str(tmp_path / 'composite')!r})\n"
        f"assert type(model.input_module).__name__ == 'DnCNN'"
    )
    assert sorted(name for name in loaded if name.startswith(TRAINING)) == []


def test_every_module_reads_in_one_sitting():
    long = {name: n for name, path in package_modules().items() if (n := len(open(path).read().splitlines())) > 400}
    assert long == {}
