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


def _all_imports(path: Path) -> set[str]:
    """Every medtune module ``path`` imports, at the top or inside a function."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return {n for n in names if n.startswith("medtune.")}


def test_steps_are_steps():
    """No step imports another (the pipeline composes them), and each reads in functions of at most 80 lines."""
    steps = {p.stem for p in (SRC / "steps").glob("*.py") if p.stem != "__init__"}
    for path in (SRC / "steps").glob("*.py"):
        others = {n.split(".")[2] for n in _all_imports(path) if n.startswith("medtune.steps.") and n.count(".") >= 2}
        if path.stem != "pipeline":
            assert not (others & steps) - {path.stem}, f"steps/{path.name} imports steps {others & steps}"
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef):
                assert node.end_lineno - node.lineno < 80, f"steps/{path.name}: {node.name} is over 80 lines"


def test_no_cycle_between_the_packages_and_no_arrow_up_from_the_engines():
    def area(module: str) -> str:
        return ".".join(module.split(".")[:2])

    modules = {
        ".".join(p.relative_to(SRC.parent).with_suffix("").parts).replace(".__init__", ""): p for p in SRC.rglob("*.py")
    }
    arrows: dict[str, set[str]] = {}
    for name, path in modules.items():
        if name == "medtune":  # the package's face: re-exports the API
            continue
        for target in _all_imports(path):
            while target not in modules and "." in target:
                target = target.rsplit(".", 1)[0]  # `from medtune.x import name`: the module x
            if target in modules and target != "medtune" and area(target) != area(name):
                arrows.setdefault(area(name), set()).add(area(target))

    def reaches(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for nxt in arrows.get(todo.pop(), ()):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    cycles = sorted((a, b) for a in arrows for b in arrows[a] if a in reaches(b))
    assert cycles == []
    assert not {"medtune.api", "medtune.cli", "medtune.steps"} & arrows.get("medtune.hpo", set())
