"""The import graph between the top-level packages points one way (docs/architecture.md):

    celif_cli  ->  service, worker  ->  jobstore  ->  celif_core

Every import counts, including the ones inside functions (a lazy import is still a dependency).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("celif_core", "jobstore", "service", "worker", "celif_cli")

# What each package may import among ours (itself always).
ALLOWED = {
    "celif_core": set(),
    "jobstore": {"celif_core"},
    "service": {"celif_core", "jobstore"},
    "worker": {"celif_core", "jobstore"},
    "celif_cli": {"celif_core", "jobstore", "service", "worker"},
}


def imports_of(path: Path) -> set[tuple[str, int]]:
    """(top-level package, line) for every import of one of ours in the file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        for name in names:
            top = name.split(".")[0]
            if top in PACKAGES:
                found.add((top, node.lineno))
    return found


def edges() -> dict[str, dict[str, list[str]]]:
    graph: dict[str, dict[str, list[str]]] = {p: {} for p in PACKAGES}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            for top, line in imports_of(path):
                if top != package:
                    where = f"{path.relative_to(ROOT)}:{line}"
                    graph[package].setdefault(top, []).append(where)
    return graph


@pytest.mark.parametrize("package", PACKAGES)
def test_package_imports_only_the_layers_below_it(package):
    forbidden = {
        dep: sites for dep, sites in edges()[package].items() if dep not in ALLOWED[package]
    }
    assert not forbidden, f"{package} imports {forbidden} (allowed: {sorted(ALLOWED[package])})"


def test_no_cycle_between_packages():
    graph = {p: set(deps) for p, deps in edges().items()}

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        return any(
            dep == goal or (dep not in seen and reaches(dep, goal, seen | {dep}))
            for dep in graph[start]
        )

    cyclic = [p for p in PACKAGES if reaches(p, p, set())]
    assert not cyclic, f"import cycle through {cyclic}: {graph}"


def test_the_checker_sees_lazy_imports(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from service.app import create_app\n    import worker.app\n")
    assert {top for top, _ in imports_of(probe)} == {"service", "worker"}


def test_the_api_does_not_load_the_worker_or_torch():
    import subprocess
    import sys

    code = (
        "import sys, service.app; "
        "bad = [m for m in ('worker', 'torch') if any(k == m or k.startswith(m + '.') "
        "for k in sys.modules)]; print(bad); sys.exit(1 if bad else 0)"
    )
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
