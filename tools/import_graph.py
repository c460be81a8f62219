"""Check merlib's import graph: no cycles, nothing imported from a layer above, no module over
the size limit. Run by ``make test`` (``make imports``); exits 1 naming every violation.

    .venv/bin/python tools/import_graph.py [--print]

Data flows one way (docs/DESIGN.md, "Layers"): a module may import its own layer and the layers
below it. Imports inside functions count too: a lazy import is still a dependency. ``--print``
lists each module's layer and what it imports.
"""
from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAX_LINES = 500

# Lowest first. A module takes the layer of the longest prefix that names it.
LAYERS = [
    ("base", ["merlib.files", "merlib.registry", "merlib.devices", "merlib.faces", "merlib.data",
              "merlib.pypi"]),
    ("config", ["merlib.config", "merlib.options", "merlib.paper"]),
    ("datasets", ["merlib.datasets"]),
    ("synth", ["merlib.synth"]),  # SynthME writes datasets through merlib.datasets' writers
    ("preprocess", ["merlib.preprocess"]),
    ("model", ["merlib.model", "merlib.weights", "merlib.flops", "merlib.augment"]),
    ("train", ["merlib.clips", "merlib.maps", "merlib.train", "merlib.baselines",
               "merlib.executors"]),
    ("loso", ["merlib.loso"]),
    # SynthME's scoring of preprocessing's output sits beside the generator but above preprocess
    ("metrics", ["merlib.metrics", "merlib.synth.scoring"]),
    ("report", ["merlib.report"]),
    ("experiment", ["merlib.experiment"]),
    ("entry points", ["merlib.batch", "merlib.cli", "merlib.__main__", "merlib"]),
]


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> int:
    best, rank = -1, None
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            # the package itself ("merlib") names only its __init__, not everything under it
            if (module == p or (p != "merlib" and module.startswith(p + "."))) and len(p) > best:
                best, rank = len(p), i
    if rank is None:
        raise SystemExit(f"{module}: in no layer of tools/import_graph.py; add it to LAYERS")
    return rank


def imports_of(path: Path, module: str, known: set[str]) -> set[str]:
    """The merlib modules ``path`` imports, anywhere in the file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        for name in names:
            while name and name not in known:  # `from merlib.x import f` -> merlib.x
                name = name.rpartition(".")[0]
            if name and name != module and name != "merlib":
                found.add(name)
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def check(root: Path = ROOT) -> tuple[list[str], dict[str, set[str]]]:
    """The problems of the ``merlib`` package under ``root``, and its import graph."""
    files = {module_name(p, root): p for p in sorted((root / "merlib").rglob("*.py"))}
    known = set(files)
    graph = {m: imports_of(p, m, known) for m, p in files.items()}
    for m in graph:
        layer_of(m)  # every module must be placed in a layer
    problems = []
    for m, deps in sorted(graph.items()):
        for d in sorted(deps):
            if layer_of(d) > layer_of(m):
                problems.append(f"upward import: {m} ({LAYERS[layer_of(m)][0]}) imports "
                                f"{d} ({LAYERS[layer_of(d)][0]})")
    for comp in cycles(graph):
        problems.append("import cycle: " + " -> ".join(comp))
    for m, p in sorted(files.items()):
        n = len(p.read_text().splitlines())
        if n > MAX_LINES:
            problems.append(f"{p.relative_to(root)}: {n} lines (over {MAX_LINES}: split it by concern)")
    return problems, graph


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--print", action="store_true", help="list every module's layer and imports")
    args = ap.parse_args()
    problems, graph = check()
    if args.print:
        for m in sorted(graph, key=lambda m: (layer_of(m), m)):
            print(f"{LAYERS[layer_of(m)][0]:>12}  {m}: {', '.join(sorted(graph[m])) or '-'}")
    for line in problems:
        print(line)
    print(f"import graph: {len(graph)} modules, {sum(map(len, graph.values()))} imports, "
          f"{len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
