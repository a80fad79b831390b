"""The architecture holds: one folder per layer, imports only downwards, no import cycles,
one Op enum with a gradient and a plaintext reference for every op, registries for
backends and providers. And the nn pooling layers that return private indices
(MaxPool2d(return_indices=True), AdaptiveMaxPool2d, AdaptiveMaxPool1d), forward and
backward against torch.nn, also through from_pytorch."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
import torch.nn as tnn

import mpc_ml
from helpers import assert_near, enc, on_matrix, rnd
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


# -- nn pooling layers with private indices, against torch.nn ---------------------------------------
POOL_CONFIGS = on_matrix((2, "inproc", "tfp"), (3, "inproc", "dealer"))
# (layer name, args, kwargs, input shape): each with return_indices=True and without
POOLS = [
    ("MaxPool2d", (2,), {}, (2, 3, 6, 6)),
    ("MaxPool2d", (3,), dict(stride=2, padding=1), (2, 2, 7, 7)),
    ("MaxPool2d", ((2, 3),), dict(stride=(2, 1), dilation=(1, 2)), (1, 2, 6, 8)),
    ("MaxPool2d", (2,), dict(ceil_mode=True), (1, 2, 5, 5)),
    ("AdaptiveMaxPool2d", ((2, 3),), {}, (2, 3, 7, 8)),
    ("AdaptiveMaxPool2d", (3,), {}, (2, 2, 5, 5)),
    ("AdaptiveMaxPool2d", ((None, 2),), {}, (1, 2, 4, 5)),
    ("AdaptiveMaxPool2d", (1,), {}, (3, 4, 4)),  # (C, H, W): global max pooling
    ("AdaptiveMaxPool2d", (5,), {}, (1, 2, 5, 5)),  # output = input: windows of one element
    ("AdaptiveMaxPool1d", (3,), {}, (2, 3, 8)),
    ("AdaptiveMaxPool1d", (4,), {}, (3, 10)),
]


def _pool_party(name, args, kwargs, x, grad_out, with_indices):
    layer = getattr(mpc_ml.nn, name)(*args, return_indices=with_indices, **kwargs)
    xp = enc(x, 1).requires_grad_()
    out = layer(xp)
    values, indices = out if with_indices else (out, None)
    assert isinstance(values, mpc_ml.MPCTensor)
    assert indices is None or isinstance(indices, mpc_ml.MPCTensor), "indices stay private"
    values.backward(grad_out)
    return (values.decrypt(), None if indices is None else indices.decrypt(), xp.grad.decrypt(),
            repr(layer))


def _check_pool(matrix, name, args, kwargs, x, with_indices, what):
    torch_layer = getattr(tnn, name)(*args, return_indices=with_indices, **kwargs)
    xt = x.clone().requires_grad_()
    out = torch_layer(xt)
    values, indices = out if with_indices else (out, None)
    grad_out = rnd(f"{what}upstream", *values.shape)
    values.backward(grad_out)
    results = matrix.run(_pool_party, args=(name, args, kwargs, x, grad_out, with_indices))
    for rank, (got, got_indices, grad, text) in enumerate(results):
        where = f"{what} (party {rank})"
        assert_near(got, values, 1e-4, f"{where} values")
        if with_indices:
            assert got_indices.shape == indices.shape
            assert torch.equal(got_indices.round().long(), indices), f"{where} indices"
            assert torch.equal(got_indices, got_indices.round()), f"{where} indices are integers"
        else:
            assert got_indices is None
        assert_near(grad, xt.grad, 1e-4, f"{where} input grad")
        assert f"return_indices={with_indices}" in text


@POOL_CONFIGS
@pytest.mark.parametrize("with_indices", [True, False], ids=["indices", "values"])
@pytest.mark.parametrize("name,args,kwargs,shape", POOLS,
                         ids=[f"{p[0]}{p[1]}-{'x'.join(map(str, p[3]))}" for p in POOLS])
def test_pooling_layer_against_torch(matrix, name, args, kwargs, shape, with_indices):
    """Values, private indices (decrypted: torch's exactly) and the input's gradient
    through the values."""
    what = f"{name}{args}{kwargs}{shape}"
    _check_pool(matrix, name, args, kwargs, rnd(what, *shape, lo=-2.0, hi=2.0), with_indices, what)


@POOL_CONFIGS
@pytest.mark.parametrize("name,args,shape", [("MaxPool2d", (2,), (1, 2, 4, 6)),
                                             ("AdaptiveMaxPool2d", ((2, 3),), (1, 2, 5, 7)),
                                             ("AdaptiveMaxPool1d", (3,), (2, 7))])
def test_pooling_layer_ties_pick_the_first_maximum(matrix, name, args, shape):
    """Small integers repeat inside windows: the index (and the gradient) is the first
    maximum's, as torch's."""
    g = torch.Generator().manual_seed(7)
    x = torch.randint(-2, 2, shape, generator=g).to(torch.float32)
    _check_pool(matrix, name, args, {}, x, True, f"ties {name}{shape}")


class _IndexedPools(tnn.Module):
    """A torch model that uses pooling indices: conv, relu, MaxPool2d(return_indices=True),
    AdaptiveMaxPool2d (with and without indices), AdaptiveMaxPool1d."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = tnn.Conv2d(2, 3, 3)
        self.pool = tnn.MaxPool2d(2, return_indices=True)
        self.adaptive = tnn.AdaptiveMaxPool2d((2, 3))
        self.adaptive_idx = tnn.AdaptiveMaxPool2d(2, return_indices=True)
        self.adaptive1d = tnn.AdaptiveMaxPool1d(4)

    def forward(self, x):
        v, i = self.pool(torch.relu(self.conv(x)))
        a, j = self.adaptive_idx(v)
        out = self.adaptive(v).flatten(1) + self.adaptive1d(v.flatten(2)).flatten(1).sum(1, keepdim=True)
        return out, i, a, j


def _converted_party(model, x):
    outs = model(enc(x, 1))
    return [o.decrypt() for o in outs]


@POOL_CONFIGS
@pytest.mark.parametrize("tracer", ["auto", "fx"])
def test_from_pytorch_maps_indexed_pools(matrix, tracer):
    """from_pytorch converts MaxPool2d(return_indices=True), AdaptiveMaxPool2d and
    AdaptiveMaxPool1d (torch.export has no max_pool2d_with_indices, so 'auto' falls back
    to fx here); outputs and indices on a private input equal torch's."""
    torch_model = _IndexedPools().eval()
    x = rnd(f"indexed pools {tracer}", 2, 2, 11, 11, lo=-2.0, hi=2.0)
    models = [mpc_ml.nn.from_pytorch(torch_model, x, tracer=tracer) for _ in range(matrix.n)]
    for m in models:
        assert type(m.get_submodule("pool")) is mpc_ml.nn.MaxPool2d and m.pool.return_indices
        assert type(m.get_submodule("adaptive")) is mpc_ml.nn.AdaptiveMaxPool2d
        assert type(m.get_submodule("adaptive1d")) is mpc_ml.nn.AdaptiveMaxPool1d
    with torch.no_grad():
        expected = torch_model(x)
    results = mpc_ml.run(lambda: _converted_party(models[mpc_ml.rank()], x), world_size=matrix.n,
                         backend=matrix.backend, provider=matrix.provider)
    for rank, outs in enumerate(results):
        assert_near(outs[0], expected[0], 1e-3, f"party {rank} output")
        assert torch.equal(outs[1].round().long(), expected[1]), f"party {rank} max_pool2d indices"
        assert_near(outs[2], expected[2], 1e-3, f"party {rank} adaptive values")
        assert torch.equal(outs[3].round().long(), expected[3]), f"party {rank} adaptive indices"


@POOL_CONFIGS
def test_functional_pools_with_indices_through_fx(matrix):
    """The functional forms fx records (torch's boolean dispatch: max_pool2d_with_indices,
    adaptive_max_pool2d_with_indices, adaptive_max_pool1d) are mapped too."""
    import torch.nn.functional as TF

    class Functional(tnn.Module):
        def forward(self, x):
            v, i = TF.max_pool2d(x, 2, return_indices=True)
            a, j = TF.adaptive_max_pool2d(x, 3, return_indices=True)
            return v, i, a, j, TF.adaptive_max_pool2d(x, 2), TF.adaptive_max_pool1d(x.flatten(2), 5)

    torch_model = Functional()
    x = rnd("functional pools", 1, 2, 6, 7, lo=-2.0, hi=2.0)
    models = [mpc_ml.nn.from_pytorch(torch_model, x, tracer="fx") for _ in range(matrix.n)]
    expected = torch_model(x)
    results = mpc_ml.run(lambda: _converted_party(models[mpc_ml.rank()], x), world_size=matrix.n,
                         backend=matrix.backend, provider=matrix.provider)
    for rank, outs in enumerate(results):
        for k, (got, want) in enumerate(zip(outs, expected)):
            if want.is_floating_point():
                assert_near(got, want, 1e-4, f"party {rank} output {k}")
            else:
                assert torch.equal(got.round().long(), want), f"party {rank} indices {k}"
