"""The shape of the source: no import cycles between modules or between packages, and functions a reader can
hold in their head."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "scratchlm"
LONGEST_FUNCTION = 80  # lines; argparse tables (the CLI's parser builders) are declarations, not logic


def modules() -> dict[str, Path]:
    found = {}
    for path in (SRC / PACKAGE).rglob("*.py"):
        parts = path.relative_to(SRC).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """Modules of ours that `name` imports, at its top or inside functions (a lazy import still couples)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def package_of(module: str) -> str:
    """scratchlm.train.loop -> scratchlm.train; scratchlm.cli -> scratchlm.cli."""
    parts = module.split(".")
    return ".".join(parts[:2])


def test_no_import_cycles_between_modules_or_packages():
    found = modules()
    graph = {name: imports_of(name, path, set(found)) for name, path in found.items()}
    # A package's __init__ importing its own modules is how packages work, not a cycle between modules.
    module_graph = {n: {t for t in ts if not (found[t].name == "__init__.py" and n.startswith(t + "."))}
                    for n, ts in graph.items()}  # fmt: skip
    assert cycle(module_graph) is None, " -> ".join(cycle(module_graph))
    packages: dict[str, set[str]] = {}
    for name, targets in graph.items():
        packages.setdefault(package_of(name), set()).update(
            package_of(t) for t in targets if package_of(t) != package_of(name) and t != PACKAGE
        )
    assert cycle(packages) is None, " -> ".join(cycle(packages))


def test_the_model_package_depends_only_on_the_foundations():
    """The model (its config, code, files and attention) is what training, evaluation and reporting build on; it
    imports none of them, so a model directory's code and checks never wait on a run's report or the loop."""
    found = modules()
    foundations = {f"{PACKAGE}.{name}" for name in ("errors", "config", "disk", "tokenization")}
    outside = {
        f"{name} -> {target}"
        for name, path in found.items()
        if name.startswith(f"{PACKAGE}.model")
        for target in imports_of(name, path, set(found))
        if not target.startswith(f"{PACKAGE}.model") and target not in foundations
    }
    assert not outside, sorted(outside)


def test_the_cycle_finder_finds_cycles():
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b"}, "b": set()}) is None


def test_functions_fit_in_a_reader_s_head():
    long = []
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and node.end_lineno - node.lineno + 1 > LONGEST_FUNCTION:
                long.append(f"{name}.{node.name}: {node.end_lineno - node.lineno + 1} lines")
    assert not long, long


def test_the_training_loop_reads_in_about_fifty_lines():
    tree = ast.parse((SRC / PACKAGE / "train" / "loop.py").read_text())
    functions = {n.name: n.end_lineno - n.lineno + 1 for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
    assert functions["fit"] <= 55, functions
