"""The package's layers: the command lines sit on top of the library, the library never imports them, and no two
modules import each other, at the top or inside functions."""

import ast

from conftest import ROOT

# Modules that are command lines (python -m trainer[.X], accelerate launch trainer/main.py) or wire one run for them.
COMMANDS = {"__main__", "cli", "main", "explain", "bench", "predict", "app", "export"}


def imports() -> dict:
    """{module: the trainer modules it imports anywhere in its code}."""
    found = {}
    for path in (ROOT / "trainer").glob("*.py"):
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "trainer":
                names |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("trainer."):
                names.add(node.module.split(".")[1])
            elif isinstance(node, ast.Import):
                names |= {a.name.split(".")[1] for a in node.names if a.name.startswith("trainer.")}
        found[path.stem] = names - {path.stem}
    return found


def test_the_library_never_imports_a_command_line():
    graph = imports()
    offenders = {module: sorted(used & COMMANDS) for module, used in graph.items()
                 if module not in COMMANDS and used & COMMANDS}
    assert not offenders


def test_no_import_cycles():
    graph = imports()
    cycles = []

    def visit(module, path):
        for used in sorted(graph.get(module, ())):
            if used in path:
                cycles.append(path[path.index(used):] + [used])
            elif used in graph:
                visit(used, path + [used])

    for module in graph:
        visit(module, [module])
    assert not cycles, cycles[:5]
    assert len(graph) > 25 and "explanations" in graph["main"]  # the walk saw the package
