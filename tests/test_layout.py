"""The package's shape: modules import each other without cycles, and the stages never reach up
into the conversation that uses them."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "voicecore"


def import_graph() -> dict[str, set[str]]:
    """Module -> the voicecore modules it imports at load time (imports inside functions are
    deferred on purpose and do not count)."""
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
        modules[name] = path
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("voicecore"):
                targets = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
                graph[name] |= {t for t in targets if t in modules and t != name}
            elif isinstance(node, ast.Import):
                graph[name] |= {alias.name for alias in node.names if alias.name in modules}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = stack[stack.index(v) :]
            del stack[stack.index(v) :]
            if len(component) > 1:
                found.append(component)

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_the_stages_never_import_the_conversation():
    graph = import_graph()
    above = {"voicecore.session", "voicecore.reply", "voicecore.rtc", "voicecore.talk", "voicecore.web"}
    for stage in ("audio", "turn", "stt", "llm", "tts"):
        for module, imports in graph.items():
            if module.startswith(f"voicecore.{stage}"):
                assert not {i for i in imports if i.startswith(tuple(above))}, (module, imports)
