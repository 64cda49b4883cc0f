"""The folder layout is the architecture: only tracking/ and the served model import mlflow."""

from __future__ import annotations

import ast
from pathlib import Path

import medtune

SRC = Path(medtune.__file__).parent
MLFLOW_EDGE = {"tracking", "serving.py", "pyfunc_model.py"}


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_only_the_mlflow_edge_imports_mlflow():
    offenders = sorted(
        str(path.relative_to(SRC))
        for path in SRC.rglob("*.py")
        if path.relative_to(SRC).parts[0] not in MLFLOW_EDGE
        and any(name == "mlflow" or name.startswith("mlflow.") for name in imported_modules(path))
    )
    assert offenders == []


def test_the_core_does_not_import_the_steps():
    core = [p for p in SRC.rglob("*.py") if p.relative_to(SRC).parts[0] not in {"steps", "cli.py", "api.py"}]
    offenders = sorted(
        str(p.relative_to(SRC)) for p in core if any(n.startswith("medtune.steps") for n in imported_modules(p))
    )
    assert offenders == []
