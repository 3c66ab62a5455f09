"""The house rules, checked on the source: no import cycles among recrank's modules (imports inside functions
count too), and each package imports only the packages below it (DESIGN.md's table)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("conf", "runtime", "features", "textmodel", "ranker", "serving", "offline")
MAY_IMPORT = {
    "conf": set(),
    "runtime": {"conf"},
    "features": {"conf", "runtime"},
    "textmodel": {"conf", "runtime", "features"},
    "ranker": {"conf", "runtime", "features", "textmodel"},
    "serving": {"conf", "runtime", "ranker"},
    "offline": {"conf", "runtime", "features", "textmodel", "ranker"},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES if (ROOT / pkg).is_dir() for p in (ROOT / pkg).rglob("*.py")}


def imports(path: Path, known: set[str]) -> set[str]:
    """recrank modules ``path`` imports, anywhere in the file (``TYPE_CHECKING`` blocks included)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # ``from pkg import submodule`` depends on the submodule; ``from module import name`` on the module
            subs = [f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in known]
            names = subs if len(subs) == len(node.names) else [node.module, *subs]
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name:
                out.add(name)
    return out


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {m: imports(p, known) - {m} for m, p in mods.items()}


def test_no_import_cycles() -> None:
    g = graph()
    # A package's __init__ re-exports its modules; the edge module -> its own package is not a cycle of design.
    g = {m: {d for d in deps if not (m.startswith(d + ".") and "." not in d)} for m, deps in g.items()}
    cycles, state = [], {}

    def visit(m: str, stack: list[str]) -> None:
        state[m] = "open"
        for d in sorted(g.get(m, ())):
            if state.get(d) == "open":
                cycles.append([*stack[stack.index(d) :], d])
            elif d not in state:
                visit(d, [*stack, d])
        state[m] = "done"

    for m in sorted(g):
        if m not in state:
            visit(m, [m])
    assert cycles == [], "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_packages_import_only_the_layers_below() -> None:
    bad = []
    for m, deps in graph().items():
        own = m.split(".")[0]
        for d in deps:
            other = d.split(".")[0]
            if other != own and other not in MAY_IMPORT[own]:
                bad.append(f"{m} imports {d}")
    assert bad == []
