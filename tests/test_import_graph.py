"""tools/import_graph.py: the package's imports run one way (docs/DESIGN.md, "Layers")."""
from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("import_graph", ROOT / "tools" / "import_graph.py")
import_graph = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(import_graph)


def test_the_package_has_no_cycle_no_upward_import_and_no_oversized_module():
    problems, graph = import_graph.check(ROOT)
    assert problems == []
    assert "merlib.train" in graph["merlib.loso"]            # the arrows the design names
    assert "merlib.executors" in graph["merlib.loso"]
    assert "merlib.loso" not in graph["merlib.executors"]    # executors receive the task
    assert not any(d.startswith("merlib.synth") for m, deps in graph.items()
                   if m.startswith("merlib.datasets") for d in deps)


@pytest.fixture
def copy(tmp_path):
    shutil.copytree(ROOT / "merlib", tmp_path / "merlib",
                    ignore=shutil.ignore_patterns("__pycache__", "data"))
    return tmp_path


def test_an_upward_import_even_inside_a_function_is_found(copy):
    config = copy / "merlib" / "config.py"
    config.write_text(config.read_text() + "\n\ndef _late():\n    from merlib.loso import run_loso\n")
    problems, _ = import_graph.check(copy)
    assert "upward import: merlib.config (config) imports merlib.loso (loso)" in problems
    assert any(p.startswith("import cycle: ") and "merlib.config" in p for p in problems)


def test_a_cycle_within_a_layer_is_found(copy):
    maps = copy / "merlib" / "maps.py"
    maps.write_text(maps.read_text() + "\nfrom merlib.train import make_model\n")
    problems, _ = import_graph.check(copy)
    assert problems == ["import cycle: merlib.maps -> merlib.train"]


def test_an_oversized_module_is_found(copy):
    (copy / "merlib" / "big.py").write_text("x = 1\n" * 501)
    with pytest.raises(SystemExit, match="merlib.big: in no layer"):
        import_graph.check(copy)  # a new module must be placed in a layer first
    (copy / "merlib" / "big.py").unlink()
    (copy / "merlib" / "report" / "big.py").write_text("x = 1\n" * 501)
    problems, _ = import_graph.check(copy)
    assert problems == ["merlib/report/big.py: 501 lines (over 500: split it by concern)"]
