"""The layout shows the architecture: no import circles between modules (module-level imports)."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _graph() -> dict:
    mods = {}
    for base in ("robot_env", "drivers", "simulators"):
        for p in (ROOT / base).rglob("*.py"):
            name = ".".join(p.relative_to(ROOT).with_suffix("").parts)
            mods[name[:-len(".__init__")] if name.endswith(".__init__") else name] = p
    graph = {m: set() for m in mods}
    for m, p in mods.items():
        is_pkg = p.name == "__init__.py"
        for node in ast.parse(p.read_text()).body:  # imports inside functions are lazy on purpose
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    parts = m.split(".") if is_pkg else m.split(".")[:-1]
                    parts = parts[:len(parts) - (node.level - 1)]
                    base = ".".join(parts + ([node.module] if node.module else []))
                else:
                    base = node.module
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            graph[m] |= {t for t in targets if t in mods and t != m}
    return graph


def test_no_import_circles():
    graph = _graph()
    assert len(graph) > 60
    state, circles = {}, []

    def visit(m, path):
        state[m] = "open"
        for n in sorted(graph[m]):
            if state.get(n) == "open":
                circles.append(path[path.index(n):] + [n])
            elif n not in state:
                visit(n, path + [n])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert circles == []
