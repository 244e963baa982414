"""The shape of the package (docs/architecture.md): imports run one way, with no exception.

Read from the source with ``ast``, every import counts: at module level, inside a
function, under ``TYPE_CHECKING``. A new edge against the flow fails here.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "gateway"

# The package root holds the shared vocabulary, the composition root and the CLI only.
SHARED = {"clock", "config", "errors", "events", "log", "ports", "shoppers"}
ENTRY = {"app", "cli", "__main__"}
# The stages, in the order events flow through them: a stage may use an earlier
# stage's types, never a later one's. Storage sits beside every stage: any stage
# may use it, and it uses only the shared vocabulary.
STAGES = ["sensing", "identity", "checkout", "decision", "publish"]


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    """Module -> the gateway modules it imports (any import statement anywhere)."""
    graph: dict[str, set[str]] = defaultdict(set)
    for path in PACKAGE.rglob("*.py"):
        name = _module_name(path)
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                if node.module == "gateway":
                    graph[name].update(f"gateway.{a.name}" for a in node.names)
                elif node.module.startswith("gateway."):
                    graph[name].add(node.module)
            elif isinstance(node, ast.Import):
                graph[name].update(a.name for a in node.names if a.name.startswith("gateway."))
            elif isinstance(node, ast.ImportFrom) and node.level:
                raise AssertionError(f"{path}: relative import; the project imports absolutely")
        graph.setdefault(name, set())
    return graph


def _group(module: str) -> str:
    """The package's part a module belongs to: a stage, storage, hq, testing, demo,
    ``shared`` (root vocabulary) or one of the entry modules."""
    parts = module.split(".")
    if len(parts) == 1 or (len(parts) == 2 and parts[1] in SHARED | {"__version__"}):
        return "shared"
    if len(parts) == 2 and parts[1] in ENTRY:
        return parts[1]
    return parts[1]


def _allowed(group: str) -> set[str]:
    """The groups ``group`` may import."""
    if group == "shared":
        return {"shared"}
    if group == "storage":
        return {"shared", "storage"}
    if group in STAGES:
        return {"shared", "storage", *STAGES[: STAGES.index(group) + 1]}
    if group == "app":
        return {"shared", "storage", *STAGES}
    if group == "hq":  # HQ's tools use the Pi's formats (tokens, topics, bundles)
        return {"shared", "storage", *STAGES, "hq"}
    if group in {"demo", "testing"}:  # a simulated store and the tests' real parts
        return {"shared", "storage", *STAGES, "hq", "testing", "demo" if group == "demo" else ""}
    if group == "cli":
        return {"shared", "storage", *STAGES, "hq", "app", "demo"}
    if group == "__main__":
        return {"cli"}
    raise AssertionError(f"unknown part of the package: {group}")


def test_the_package_root_holds_only_the_vocabulary_the_composition_root_and_the_cli() -> None:
    """Every other module lives in its stage (or in hq/, demo/, testing/)."""
    root = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__"}
    assert root == SHARED | ENTRY


def test_imports_run_one_way() -> None:
    """No stage imports a later stage; the shared vocabulary imports no stage; storage
    only the vocabulary; nothing but the CLI imports the composition root."""
    wrong = sorted(
        f"{module} -> {target}"
        for module, targets in _imports().items()
        for target in targets
        if _group(target) not in _allowed(_group(module))
    )
    assert wrong == []


def test_the_import_graph_has_no_cycle() -> None:
    """Module by module, no import leads back to where it started (lazy imports count)."""
    graph = _imports()
    known = set(graph)

    def resolve(target: str) -> str | None:
        # "from gateway.publish import topics" names a module; "from gateway.events
        # import X" names a module's attribute: keep the longest known module prefix.
        while target and target not in known:
            target = target.rpartition(".")[0]
        return target or None

    edges = {m: {t for t in map(resolve, ts) if t and t != m} for m, ts in graph.items()}
    # A package's __init__ importing its own modules is how a package re-exports, not a cycle.
    edges = {
        m: {
            t
            for t in ts
            if not (t.startswith(m + ".") and (PACKAGE.parent / Path(*m.split("."))).is_dir())
        }
        for m, ts in edges.items()
    }
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            scc = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                scc.append(w)
                if w == v:
                    break
            if len(scc) > 1:
                cycles.append(sorted(scc))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    assert cycles == []


def test_the_daemon_loads_no_hq_testing_or_demo_code() -> None:
    """``store-gateway run`` as it starts: the CLI's parser and a composed ``Gateway`` pull
    in nothing from gateway/hq/, gateway/testing/ or gateway/demo/ (looked at in a fresh
    interpreter's ``sys.modules``, so lazy imports count too)."""
    code = (
        "import sys, tempfile, pathlib\n"
        "from gateway import cli\n"
        "cli.build_parser()\n"
        "from gateway.app import Gateway\n"
        "from gateway.config import parse_config\n"
        "d = pathlib.Path(tempfile.mkdtemp())\n"
        "cfg = parse_config({'store': {'id': 's1'}, 'storage': {'path': str(d / 'g.db')},\n"
        "    'hq': {'enabled': True, 'port': 1}, 'ble': {'enabled': True},\n"
        "    'satellites': [{'id': 'sat-1', 'firmware': 'espresense', 'zone': 'produce'}]})\n"
        "Gateway(cfg)\n"
        "print('\\n'.join(sorted(m for m in sys.modules if m.startswith('gateway'))))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        cwd=PACKAGE.parent,
    ).stdout.split()
    assert "gateway.app" in out and "gateway.decision.ranker" in out
    assert [m for m in out if m.split(".")[1:2] in (["hq"], ["testing"], ["demo"])] == []
