"""The nn pooling layers that return private indices (MaxPool2d(return_indices=True),
AdaptiveMaxPool2d, AdaptiveMaxPool1d), forward and backward against torch.nn, also
through from_pytorch."""
from __future__ import annotations

import pytest
import torch
import torch.nn as tnn

import mpc_ml
from helpers import assert_near, enc, on_matrix, rnd


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
@pytest.mark.parametrize("tracer", ["export", "fx"])
def test_from_pytorch_maps_indexed_pools(matrix, tracer):
    """from_pytorch converts MaxPool2d(return_indices=True), AdaptiveMaxPool2d and
    AdaptiveMaxPool1d, through torch.export's ATen ops or fx's modules; outputs and
    indices on a private input equal torch's."""
    torch_model = _IndexedPools().eval()
    x = rnd(f"indexed pools {tracer}", 2, 2, 11, 11, lo=-2.0, hi=2.0)
    models = [mpc_ml.nn.from_pytorch(torch_model, x, tracer=tracer) for _ in range(matrix.n)]
    for m in models if tracer == "fx" else []:
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
