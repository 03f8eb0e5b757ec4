"""The library imports one way: no cycle, no thinkdiff import hidden inside a function, low-level modules never
import a stage or a pair, and no module outside the pair folders names a specific pair."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import networkx as nx
import pytest

from thinkdiff import pairs

LIB = Path(__file__).resolve().parents[2] / "lib" / "thinkdiff"
# Stage code (takes a Run and caches) and the pair / task / checkpoint-layout plug-ins: what low-level code must
# not import.
STAGE = {"pipeline", "runconfig", "report", "notebooks", "records"}
PLUGIN_PACKAGES = ("pairs", "tasks", "formats")
# Low-level code: tensors, stores, schemes, kernels, statistics, metrics, probes, the lexicon.
LOW_LEVEL = {"crosscoder", "schemes", "kernels", "store", "hooks", "codes", "norms", "stats", "metrics", "probes",
             "lexicon", "paths", "precision", "hf", "evaluate", "train", "harvest", "steer", "geometry", "label",
             "ablation", "browser", "plots", "relations", "world", "nlworld", "realdata", "qwen", "adl"}


def _modules() -> dict[str, Path]:
    out = {}
    for f in LIB.rglob("*.py"):
        parts = f.relative_to(LIB).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts) or "thinkdiff"] = f
    return out


def _imports(name: str, path: Path, modules: dict) -> list[tuple[str, bool]]:
    """(imported module, at top level?) for every thinkdiff import of ``name``."""
    tree = ast.parse(path.read_text())
    top = {id(n) for n in tree.body}
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    if name == "thinkdiff":
        package = []
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1] if node.level > 1 else package
                target = ".".join(base + ([node.module] if node.module else []))
            elif (node.module or "").startswith("thinkdiff"):
                target = node.module[len("thinkdiff."):] if node.module != "thinkdiff" else ""
            else:
                continue
            for alias in node.names:
                cand = f"{target}.{alias.name}" if target else alias.name
                out.append((cand if cand in modules else target, id(node) in top))
        elif isinstance(node, ast.Import):
            out += [(a.name[len("thinkdiff."):], id(node) in top) for a in node.names if a.name.startswith("thinkdiff.")]
    return [(m, t) for m, t in out if m in modules and m != name]


@pytest.fixture(scope="module")
def graph():
    modules = _modules()
    g = nx.DiGraph()
    inner = []
    for name, path in modules.items():
        g.add_node(name)
        for target, at_top in _imports(name, path, modules):
            g.add_edge(name, target)
            if not at_top:
                inner.append(f"{name} -> {target}")
    return g, inner


def test_the_graph_is_read_from_the_source(graph):
    g, _ = graph
    assert g.has_edge("pipeline", "runconfig") and g.has_edge("pairs", "pairs.spec") and g.number_of_nodes() > 40


def test_no_import_cycle(graph):
    g, _ = graph
    cycles = [sorted(c) for c in nx.strongly_connected_components(g) if len(c) > 1]
    assert not cycles, f"import cycles: {cycles}"


def test_no_thinkdiff_import_inside_a_function(graph):
    _, inner = graph
    assert not inner, f"imports inside functions (move them to the top of the module): {inner}"


def test_low_level_code_never_imports_a_stage_or_a_plugin(graph):
    g, _ = graph
    bad = [f"{a} -> {b}" for a in LOW_LEVEL for b in nx.descendants(g, a)
           if b in STAGE or b.split(".")[0] in PLUGIN_PACKAGES]
    assert not bad, f"low-level modules reaching stage or pair code: {bad}"


def _code_strings(tree) -> list[tuple[int, str]]:
    """(line, text) of every string constant that is not a docstring: what the code itself says."""
    docs = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.body \
                and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant):
            docs.add(id(node.body[0].value))
    return [(n.lineno, n.value) for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docs]


def test_no_module_outside_the_pair_folders_names_a_pair():
    """Pairs are data and plug-ins: code elsewhere asks the pair's kind and task, never which pair it is. Every
    string the code holds (docstrings aside, which may show an example) is checked for a registered pair's name."""
    names = sorted(pairs.PAIRS, key=len, reverse=True)
    pattern = re.compile(r"(?<![\w-])(" + "|".join(re.escape(n) for n in names) + r")(?![\w-])")
    assert pattern.search("run 'organism-m'") and not pattern.search("organism-sft")
    hits = []
    for f in LIB.rglob("*.py"):
        if f.relative_to(LIB).parts[0] == "pairs":
            continue
        for line, text in _code_strings(ast.parse(f.read_text())):
            if pattern.search(text):
                hits.append(f"{f.relative_to(LIB)}:{line}: {text!r}")
    assert not hits, "pair names outside lib/thinkdiff/pairs/:\n" + "\n".join(hits)
