"""The layering docs/architecture.md states, checked on every import in the code (a function's own
imports included): neither the training wing nor the sweep imports the analysis, and the run record
stays torch-free and knows nothing of training or of how jobs share a process."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "normexp"


def _imports(file: Path) -> set[str]:
    """Every module `file` imports, anywhere in it (`from a import b` gives a and a.b)."""
    names = set()
    for node in ast.walk(ast.parse(file.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names |= {node.module, *(f"{node.module}.{alias.name}" for alias in node.names)}
    return names


def _forbidden(file: Path, forbidden: tuple[str, ...]) -> list[str]:
    return sorted(name for name in _imports(file) if any(name == f or name.startswith(f"{f}.") for f in forbidden))


@pytest.mark.parametrize("folder, forbidden", [
    ("sweep", ("normexp.analysis",)),
    ("train", ("normexp.analysis",)),
    ("nn", ("normexp.analysis", "normexp.record", "hydra")),
    ("data", ("normexp.analysis", "normexp.record", "hydra")),
    ("record", ("normexp.analysis", "normexp.train", "normexp.threads", "torch")),
])
def test_a_wing_imports_nothing_it_must_not(folder, forbidden):
    broken = {str(file.relative_to(PACKAGE)): _forbidden(file, forbidden) for file in (PACKAGE / folder).rglob("*.py")}
    assert not {module: names for module, names in broken.items() if names}


def test_an_import_inside_a_function_counts(tmp_path):
    module = tmp_path / "report.py"
    module.write_text("def count():\n    from normexp.analysis.collect import load_runs\n")
    assert _forbidden(module, ("normexp.analysis",)) == ["normexp.analysis.collect",
                                                         "normexp.analysis.collect.load_runs"]
