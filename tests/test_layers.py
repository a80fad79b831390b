"""The architecture holds: one folder per layer, imports only downwards, no import cycles,
one Op enum with a gradient and a plaintext reference for every op, registries for
backends and providers."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

import mpc_ml
from mpc_ml.cli import main as cli_main
from mpc_ml.core.ops import Op
from mpc_ml.launch import BACKENDS
from mpc_ml.providers import PROVIDERS
from mpc_ml.tensor import REFERENCES, missing_gradients
from mpc_ml.tensor import tape

PACKAGE = Path(mpc_ml.__file__).resolve().parent

# Layer of each top-level name inside mpc_ml; a module may import its own folder and
# strictly lower layers only. "" is the package's __init__ (the public API).
LAYERS = {
    "config": 0, "core": 0,
    "comm": 1,
    "providers": 2,
    "session": 3,
    "launch": 4,
    "primitives": 5,
    "tensor": 6,
    "nn": 7, "optim": 7,
    "serving": 8, "compat": 8,
    "": 9,
    "cli": 10,
    "__main__": 11,
}
TOP_LEVEL_FILES = {"__init__.py", "__main__.py", "config.py", "session.py"}


def module_name(path: Path, root: Path, package: str) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([package, *parts])


def is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def imports_of(path: Path, name: str, known: set[str]) -> set[str]:
    """Every module of `known` that the file imports, at module level or inside functions."""
    tree = ast.parse(path.read_text(), str(path))
    base = name if is_package(path) else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base.split(".")
                anchor = anchor[:len(anchor) - (node.level - 1)]
                module = ".".join(anchor + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            targets = [f"{module}.{a.name}" if f"{module}.{a.name}" in known else module
                       for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:  # `import a.b.c` imports a.b.c's package too
                target = target.rpartition(".")[0]
            if target:
                found.add(target)
    return found


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    files = {module_name(p, root, package): p for p in root.rglob("*.py")}
    known = set(files)
    return {m: imports_of(p, m, known) - {m} for m, p in files.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, on_stack, stack, out = {}, {}, set(), [], []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def layer_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_the_folders_of_the_design_exist_with_a_docstring_each():
    for folder in LAYERS:
        if folder in ("", "config", "session", "__main__"):
            continue
        init = PACKAGE / folder / "__init__.py"
        assert init.is_file(), f"mpc_ml/{folder}/ is missing"
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and len(doc.splitlines()) >= 2, f"mpc_ml/{folder}/__init__.py needs a docstring"
    loose = {p.name for p in PACKAGE.glob("*.py")} - TOP_LEVEL_FILES
    assert not loose, f"modules loose at the top of mpc_ml/: {sorted(loose)}"
    assert {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()} \
        <= set(LAYERS), "a folder that is not a layer of LAYERS"


def test_no_import_cycles_in_the_package():
    graph = import_graph(PACKAGE, "mpc_ml")
    assert len(graph) > 40 and any(graph.values())  # the walk sees the package
    found = cycles(graph)
    pairs = [f"{a} <-> {b}" for comp in found for a in comp for b in graph[a] if b in comp]
    assert not found, "import cycles: " + "; ".join(pairs)


def test_no_layer_imports_a_higher_one():
    graph = import_graph(PACKAGE, "mpc_ml")
    bad = []
    for module, targets in graph.items():
        mine = layer_of(module)
        for target in targets:
            theirs = layer_of(target)
            if theirs != mine and LAYERS[theirs] >= LAYERS[mine]:
                bad.append(f"{module} imports {target}")
    assert not bad, "imports against the layers: " + "; ".join(sorted(bad))


@pytest.mark.parametrize("layer,forbidden", [
    ("nn", {"comm", "providers"}), ("optim", {"comm", "providers"}),
    ("tensor", {"comm", "providers"}),  # tensor/ reaches protocols only through primitives/
    ("core", set(LAYERS) - {"core"}),  # pure computation
])
def test_design_rules_on_what_a_layer_never_imports(layer, forbidden):
    graph = import_graph(PACKAGE, "mpc_ml")
    bad = [f"{m} imports {t}" for m, ts in graph.items() if layer_of(m) == layer
           for t in ts if layer_of(t) in forbidden]
    assert not bad, "; ".join(bad)


def test_the_walk_finds_imports_inside_functions(tmp_path):
    """The checks above see lazy imports: a cycle through a function body is found."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from . import b\n")
    (pkg / "b.py").write_text("def f():\n    from .a import x\n")
    assert cycles(import_graph(pkg, "pkg")) == [["pkg.a", "pkg.b"]]


def test_every_differentiable_op_has_a_gradient_and_every_op_a_reference():
    assert missing_gradients() == []
    assert set(REFERENCES) == set(Op), f"ops without a validation reference: {set(Op) - set(REFERENCES)}"


def test_a_missing_gradient_is_named(monkeypatch):
    monkeypatch.delitem(tape.GRADIENTS, Op.SIGMOID)
    assert missing_gradients() == [Op.SIGMOID]


def test_cli_choices_come_from_the_registries(capsys):
    with pytest.raises(SystemExit):
        cli_main(["launch", "-n", "2", "--provider", "oracle", "x.py"])
    err = capsys.readouterr().err
    assert all(f"'{name}'" in err for name in PROVIDERS), err
    with pytest.raises(SystemExit):
        cli_main(["launch", "-n", "2", "--backend", "pigeon", "x.py"])
    err = capsys.readouterr().err
    assert all(f"'{name}'" in err for name in BACKENDS if name != "inproc"), err


def test_one_job_check_for_every_way_of_starting(tmp_path):
    """mpc.run, the MPI runner and deployment files refuse the same bad jobs with the same words."""
    with pytest.raises(ValueError, match="unknown provider 'oracle'"):
        mpc_ml.run(lambda: None, 2, provider="oracle")
    with pytest.raises(ValueError, match="at least two parties"):
        mpc_ml.run(lambda: None, 1)
    with pytest.raises(ValueError, match="only correct for 2 parties"):
        mpc_ml.run(lambda: None, 3, config=mpc_ml.Config(truncation="local"))
    deployment = tmp_path / "job.toml"
    deployment.write_text("[job]\ntruncation = 'local'\n" + "[[party]]\naddress = '127.0.0.1:1'\n"
                          "[[party]]\naddress = '127.0.0.1:2'\n[[party]]\naddress = '127.0.0.1:3'\n")
    from mpc_ml.launch import deploy
    with pytest.raises(ValueError, match="only correct for 2 parties"):
        deploy.load(deployment)
