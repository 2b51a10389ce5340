"""The shape of ``scaling/``: rooms import only rooms below them, no cycles, one ray import,
torch-free study loading / plan / status, and functions that fit on a screen."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from study_helpers import REPO, tiny_tables, write_study

SCALING = REPO / "scaling"
RANK = {
    "errors": 0,
    "argtypes": 0,
    "data": 1,
    "train": 2,
    "model": 3,
    "config": 4,
    "cell": 5,
    "study": 6,
    "cli": 7,
}
"""A room may import rooms of a lower rank (and itself); ``__main__`` is the CLI too."""
LONG_OK = "# long:"
"""A function over MAX_LINES carries this comment, with its reason, in its first lines."""
MAX_LINES = 60


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(SCALING.rglob("*.py")):
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _imports(path: Path, *, typing_only: bool = True) -> set[str]:
    """Every module named by an import anywhere in the file (lazy imports included;
    ``typing_only=False`` leaves out the ``if TYPE_CHECKING:`` blocks)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip: set[int] = set()
    if not typing_only:
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                skip |= {id(n) for b in node.body for n in ast.walk(b)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return found


def _room(module: str) -> str:
    parts = module.split(".")
    room = parts[1] if len(parts) > 1 else "cli"
    return "cli" if room in ("cli", "__main__") else room


def test_every_module_is_in_a_known_room() -> None:
    rooms = {_room(m) for m in _modules()}
    assert rooms <= set(RANK), rooms - set(RANK)


def test_imports_point_down_the_rooms_only() -> None:
    modules = _modules()
    wrong = []
    for name, path in modules.items():
        for target in _imports(path):
            if target.split(".")[0] != "scaling" or target not in modules:
                continue
            if RANK[_room(target)] > RANK[_room(name)]:
                wrong.append(f"{name} → {target}")
    assert not wrong, "imports that run back up:\n" + "\n".join(wrong)


def test_no_import_cycles() -> None:
    """At run time (annotation-only imports under TYPE_CHECKING run nothing)."""
    modules = _modules()
    graph = {
        name: {t for t in _imports(path, typing_only=False) if t in modules and t != name}
        for name, path in modules.items()
    }
    graph = {n: {t for t in ts if not n.startswith(t + ".")} for n, ts in graph.items()}
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " → ".join([*stack, node, nxt]))
            if nxt not in state:
                visit(nxt, [*stack, node])
        state[node] = 2

    for name in graph:
        if name not in state:
            visit(name, [])


def test_only_the_grid_imports_ray() -> None:
    users = {
        name
        for name, path in _modules().items()
        if any(t == "ray" or t.startswith("ray.") for t in _imports(path))
    }
    assert users == {"scaling.study.grid"}


def test_functions_fit_on_a_screen() -> None:
    long = []
    for name, path in _modules().items():
        lines = path.read_text(encoding="utf-8").splitlines()
        for node in ast.walk(ast.parse("\n".join(lines))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                size = node.end_lineno - node.lineno + 1
                head = "\n".join(lines[node.lineno - 1 : node.lineno + 3])
                if size > MAX_LINES and LONG_OK not in head:
                    long.append(f"{name}.{node.name}: {size} lines")
    assert not long, long


@pytest.mark.parametrize("verb", ["load", "plan", "status"])
def test_study_verbs_import_no_torch(tmp_path: Path, demo_dir: Path, verb: str) -> None:
    """Loading a study, ``plan`` with a warm FLOP cache and ``status`` stay torch-free."""
    study = write_study(tmp_path / "s.toml", tiny_tables(demo_dir, tmp_path / "out"))
    cache = tmp_path / "cache"
    warm = subprocess.run(
        [sys.executable, "-m", "scaling", "plan", str(study)],
        capture_output=True, text=True, cwd=REPO, env=_env(cache), timeout=300,
    )  # fmt: skip
    assert warm.returncode == 0, warm.stderr
    call = {
        "load": f"from scaling.config.load import load_study; load_study({str(study)!r})",
        "plan": f"from scaling.cli import main; main(['plan', {str(study)!r}])",
        "status": f"from scaling.cli import main; main(['status', {str(study)!r}])",
    }[verb]
    code = (
        f"import sys; {call}; "
        "heavy = [m for m in ('torch', 'timm', 'ray', 'plotly') if m in sys.modules]; "
        "print('HEAVY', heavy)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True, text=True, cwd=REPO, env=_env(cache), timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY []" in proc.stdout, proc.stdout


def _env(cache: Path) -> dict[str, str]:
    import os

    return {**os.environ, "XDG_CACHE_HOME": str(cache)}
