"""Products with fixed weights (protocols/fixed_mask.toml): opened against their mask once,
later products open the other operand only; values against torch, counters against the
spec, and a changed weight opened again."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

import mpc_ml as mpc
from helpers import enc, measured, randn, request_bytes
from mpc_ml.core.specs import load_spec
from test_protocol_costs import assert_costs

SPEC = load_spec("fixed_mask")
TOL = 1e-3


def _costs(stats, section, what, n, rank, provider, op, xs, ys, zs, kwargs, mask):
    assert_costs({k: v for k, v in stats.items() if k in
                  ("rounds", "bytes_sent", "bytes_received", "messages") or k.startswith("dealer")},
                 SPEC[section], what, n=n, rank=rank, provider=provider,
                 numel_x=math.prod(xs), numel_y=math.prod(ys), numel_z=math.prod(zs),
                 request_bytes=request_bytes("fixed_triple", op=op, a_shape=list(xs),
                                             b_shape=list(ys), kwargs=kwargs, mask=mask))


def test_fixed_weights_are_opened_once(inproc_matrix):
    n, provider = inproc_matrix.n, inproc_matrix.provider
    x, w = randn(1, 4, 6), randn(2, 5, 6)
    img, kernel = randn(3, 2, 2, 6, 6), randn(4, 3, 2, 3, 3)
    conv = {"stride": [1, 1], "padding": [1, 1], "dilation": [1, 1], "groups": 1}

    @mpc.no_grad()
    def party():
        xs, im = enc(x, 1 % n), enc(img, 1 % n)
        wt, k = enc(w, 0).fix_masks(), enc(kernel, 0).fix_masks()
        runs = []
        for _ in range(2):
            y, s1 = measured(lambda: xs @ wt.t())  # a transposed view of fixed weights
            c, s2 = measured(lambda: im.conv2d(k, padding=1))
            runs.append((y.decrypt(), s1, c.decrypt(), s2))
        wt.set_(enc(w * 2, 0))  # a new value: a new mask, opened again
        y, s3 = measured(lambda: xs @ wt.t())
        return runs, (y.decrypt(), s3)

    results = mpc.run(party, world_size=n, provider=provider)
    for rank, (runs, (y_new, s_new)) in enumerate(results):
        for i, (y, s1, c, s2) in enumerate(runs):
            assert torch.allclose(y.double(), (x @ w.t()).double(), atol=TOL), (rank, i)
            assert torch.allclose(c.double(), F.conv2d(img, kernel, padding=1).double(), atol=TOL)
            section = "first" if i == 0 else "reuse"
            _costs(s1, section, f"matmul, {section}", n, rank, provider, "matmul",
                   (4, 6), (6, 5), (4, 5), {}, 0)
            _costs(s2, section, f"conv2d, {section}", n, rank, provider, "conv2d",
                   img.shape, kernel.shape, (2, 3, 6, 6), conv, 1)
        assert torch.allclose(y_new.double(), (x @ (2 * w).t()).double(), atol=TOL)
        _costs(s_new, "first", "matmul after set_", n, rank, provider, "matmul",
               (4, 6), (6, 5), (4, 5), {}, 2)


def test_a_served_model_sends_fewer_bytes_from_its_second_query():
    torch_model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    x = randn(5, 3, 8).float()

    def party():
        model = mpc.nn.from_pytorch(torch_model, x).encrypt(src=0)
        out = []
        for _ in range(2):
            with mpc.no_grad():
                y, stats = measured(lambda: model(enc(x, 1)).decrypt())
            out.append((y, stats["bytes_sent"]))
        return out

    (y1, first), (y2, second) = mpc.run(party, world_size=2, provider="tfp")[0]
    want = torch_model(x).detach()
    assert torch.allclose(y1, want, atol=1e-3) and torch.allclose(y2, want, atol=1e-3)
    weights = sum(p.numel() for p in torch_model.parameters() if p.dim() == 2)
    assert first - second == 8 * weights, (first, second)


def test_aliases_of_fixed_weights_are_never_stale():
    """A clone is not in the family; a write through a view, or to the parent under a live
    view, makes every opening of the family stale (a new mask, the new value)."""
    x, w = randn(5, 2, 3), randn(6, 3, 3)

    @mpc.no_grad()
    def party():
        xs, fixed = enc(x, 1), enc(w, 0).fix_masks()
        clone = fixed.clone()
        clone[0] = 0.0
        (xs @ clone).decrypt()
        got = [(xs @ fixed.clone()).decrypt()]
        (xs @ fixed).decrypt()
        fixed.reshape(-1)[0] = 100.0  # through a view that shares the storage
        got.append((xs @ fixed).decrypt())
        transposed = fixed.t()
        (xs @ transposed).decrypt()
        fixed[0, 0] = 7.0  # under a live view
        got.append((xs @ transposed).decrypt())
        return got

    after_view, after_parent = w.clone(), w.clone()
    after_view.reshape(-1)[0] = 100.0
    after_parent.copy_(after_view)
    after_parent[0, 0] = 7.0
    wants = [x @ w, x @ after_view, x @ after_parent.t()]
    for got, want in zip(mpc.run(party, world_size=2, provider="tfp")[0], wants):
        assert torch.allclose(got.double(), want.double(), atol=1e-2), (got, want)


def test_the_dealer_refuses_a_request_past_its_budget():
    from mpc_ml.core.prg import PRG
    from mpc_ml.providers.base import MAX_REQUEST_ELEMENTS, CorrelationGenerator, make_request
    generator = CorrelationGenerator([PRG(bytes(16)), PRG(bytes(range(16)))], correction_party=1)
    huge = make_request("band", shape=[64, MAX_REQUEST_ELEMENTS // 64], inputs=1,
                        monomials=[[0, [0, 1]]])
    try:
        generator.generate(huge)
    except ValueError as e:
        assert "elements" in str(e)
    else:
        raise AssertionError("an oversized request was served")
