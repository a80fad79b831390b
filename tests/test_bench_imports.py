"""Imports among benchmarks/*.py, read with ast (module-level imports and those inside
functions alike): no import cycle among them, and the CrypTen side, crypten_runner.py and
every benchmarks module it reaches, which runs in CrypTen's own virtualenv, never imports
mpc_ml (only torch, numpy, crypten, the standard library and each other)."""
from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
CRYPTEN_SIDE = "crypten_runner"
CRYPTEN_SIDE_MAY_IMPORT = {"torch", "numpy", "crypten", "__future__",
                           "transformers"}  # only inside rows.bert_base, a row CrypTen never runs


def imports_of(path: Path) -> list[tuple[str, int]]:
    """(dotted module name, line) of every import in the file, wherever it stands:
    import/from-import statements and importlib.import_module / __import__ of a constant."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # benchmarks/ is no package: a relative import names a sibling
                found += [(node.module or alias.name, node.lineno) for alias in node.names]
            elif node.module == "benchmarks":  # from benchmarks import ops
                found += [(f"benchmarks.{alias.name}", node.lineno) for alias in node.names]
            else:
                found.append((node.module, node.lineno))
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            fn = node.func
            name = fn.attr if isinstance(fn, ast.Attribute) else getattr(fn, "id", None)
            if name in ("import_module", "__import__"):
                found.append((node.args[0].value, node.lineno))
    return found


def graph(folder: Path) -> tuple[dict, dict]:
    """({module: {imported sibling: first line}}, {module: [(other import, line)]})."""
    modules = {p.stem for p in folder.glob("*.py")}
    local, other = {m: {} for m in modules}, {m: [] for m in modules}
    for m in modules:
        for name, line in imports_of(folder / f"{m}.py"):
            parts = name.split(".")
            if parts[0] == "benchmarks" and len(parts) > 1:
                parts = parts[1:]
            if parts[0] in modules:
                local[m].setdefault(parts[0], line)
            else:
                other[m].append((name, line))
    return local, other


def reachable(local: dict, start: str) -> dict:
    """{module: the import path from start to it} for every module start reaches."""
    paths, todo = {start: [start]}, [start]
    while todo:
        m = todo.pop()
        for dep in local[m]:
            if dep not in paths:
                paths[dep] = paths[m] + [dep]
                todo.append(dep)
    return paths


def cycles(local: dict) -> list[str]:
    """'a -> b (line n), and back: b -> ... -> a' for every import a -> b that b reaches back."""
    found = []
    for a in sorted(local):
        for b, line in sorted(local[a].items()):
            back = reachable(local, b)
            if a in back:
                found.append(f"{a}.py imports {b} (line {line}), and back: " + " -> ".join(back[a]))
    return found


def crypten_side_problems(local: dict, other: dict, start: str = CRYPTEN_SIDE) -> list[str]:
    allowed = set(sys.stdlib_module_names) | CRYPTEN_SIDE_MAY_IMPORT
    problems = []
    for m, path in sorted(reachable(local, start).items()):
        for name, line in other[m]:
            top = name.split(".")[0]
            if top == "mpc_ml" or top not in allowed:
                problems.append(f"{m}.py (reached as {' -> '.join(path)}) imports {name} "
                                f"(line {line})")
    return problems


def test_no_import_cycle_among_benchmarks():
    local, _ = graph(BENCH)
    assert local, "no benchmarks/*.py found"
    assert cycles(local) == []


def test_crypten_side_imports_no_mpc_ml():
    local, other = graph(BENCH)
    assert CRYPTEN_SIDE in local
    side = reachable(local, CRYPTEN_SIDE)
    assert {"crypten_compat", "rows"} <= set(side)  # what it runs on: the shims and our rows
    mpc = [p for p in crypten_side_problems(local, other) if " imports mpc_ml" in p]
    assert mpc == [], "modules on the CrypTen side import mpc_ml"
    assert crypten_side_problems(local, other) == [], (
        "modules on the CrypTen side import more than torch, numpy, crypten and the "
        "standard library")


def test_the_checks_find_cycles_and_mpc_ml_inside_functions(tmp_path):
    (tmp_path / "a.py").write_text("import os\n\ndef f():\n    import b\n")
    (tmp_path / "b.py").write_text("from c import x\n")
    (tmp_path / "c.py").write_text("import importlib\n\ndef g():\n"
                                   "    importlib.import_module('a')\n")
    (tmp_path / "runner.py").write_text("def party():\n    import d\n")
    (tmp_path / "d.py").write_text("import torch\n\ndef h():\n    from mpc_ml.core import ring\n")
    local, other = graph(tmp_path)
    found = cycles(local)
    assert any(line.startswith("a.py imports b (line 4)") for line in found), found
    assert len(found) == 3  # a -> b, b -> c, c -> a
    assert crypten_side_problems(local, other, "runner") == [
        "d.py (reached as runner -> d) imports mpc_ml.core (line 4)"]
    assert crypten_side_problems(local, other, "b") == []  # b reaches a, c: stdlib only
