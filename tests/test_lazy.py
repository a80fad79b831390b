"""Lazy truncation (protocols/lazy_product.toml): products left pending, their truncation
paid in the next elementwise product's opening, riding on the next opening, or never
(decrypt); measured traffic against the spec and values against torch."""
from __future__ import annotations

import copy
import math

import pytest
import torch

import mpc_ml as mpc
from helpers import enc, measured, on_matrix, randn, request_bytes, rounded
from mpc_ml.core.specs import load_spec
from mpc_ml.primitives import b2a_bits, open_words, ride
from mpc_ml.session import current
from test_protocol_costs import UNIT, assert_costs

SPEC = load_spec("lazy_product")


def lazy_sizes(x_shape, y_shape, z_shape, xb: int, yb: int, square: bool) -> dict:
    return dict(numel_x=math.prod(x_shape), numel_y=0 if square else math.prod(y_shape),
                numel_z=math.prod(z_shape), pending_x=int(xb > 0), pending_y=int(yb > 0),
                square=int(square),
                request_bytes=request_bytes("lazy_triple", x_shape=list(x_shape),
                                            y_shape=list(y_shape), x_bits=xb, y_bits=yb,
                                            square=square))


# (x's shape, y's shape, which operands are pending: p pending, s settled, sq x * x pending,
# ssq x * x settled: a square opens x once, not a Beaver triple's two operands)
CASES = {"pending * settled": ((3, 4), (3, 4), "ps"), "settled * pending": ((3, 4), (3, 4), "sp"),
         "pending * pending": ((2, 5), (2, 5), "pp"), "pending squared": ((6,), (6,), "sq"),
         "settled squared": ((2, 3), (2, 3), "ssq"), "broadcast": ((2, 1, 5), (4, 5), "ps")}


def test_elementwise_products_absorb_pending_truncations(inproc_matrix):
    n, provider = inproc_matrix.n, inproc_matrix.provider
    data = {name: [randn(10 + i, xs, scale=2.0), randn(20 + i, xs), randn(30 + i, ys, scale=2.0),
                   randn(40 + i, ys)] for i, (name, (xs, ys, _)) in enumerate(CASES.items())}

    def party():
        out = {}
        for name, (_, _, kind) in CASES.items():
            a, b, c, d = (enc(t, k % n) for k, t in enumerate(data[name]))
            x = a * b if kind in ("ps", "pp", "sq") else a
            y = c * d if kind in ("sp", "pp") else c
            if kind in ("sq", "ssq"):
                z, stats = measured(lambda: x * x)
            else:
                z, stats = measured(lambda: x * y)
            out[name] = (stats, z.decrypt(), x.decrypt(), y.decrypt())
        return out

    for rank, out in enumerate(inproc_matrix.run(party)):
        for name, (xs, ys, kind) in CASES.items():
            stats, z, x, y = out[name]
            square = kind in ("sq", "ssq")
            xb, yb = (16 if kind in ("ps", "pp", "sq") else 0), (16 if kind in ("sp", "pp", "sq") else 0)
            zs = xs if square else tuple(torch.broadcast_shapes(xs, ys))
            assert_costs(stats, SPEC["lazy_mul"], name, n=n, rank=rank, provider=provider,
                         **lazy_sizes(xs, ys, zs, xb, yb, square))
            y = x if square else y
            want = x * y  # each pending operand is truncated within 1 unit first
            bound = ((y.abs() if xb else 0) + (x.abs() if yb else 0) + 1) * UNIT * 1.01
            assert bool(((z - want).abs() <= bound).all()), f"{name}: {float((z - want).abs().max())}"


def test_a_product_then_decrypt_costs_one_round_and_is_exact(inproc_matrix):
    """Issue: 'A product followed by decrypt costs 1 round' (and its value is the exact
    product of the encoded operands, decoded at 2^-32)."""
    n, provider = inproc_matrix.n, inproc_matrix.provider
    a, b = randn(50, 4, 3, scale=3.0), randn(51, 4, 3, scale=3.0)

    def party():
        x, y = enc(a, 0), enc(b, n - 1)
        z, s_mul = measured(lambda: x * y)
        value, s_dec = measured(z.decrypt)
        return s_mul, s_dec, value

    beaver, reveal = load_spec("beaver_mul"), SPEC["decrypt"]
    for rank, (s_mul, s_dec, value) in enumerate(inproc_matrix.run(party)):
        assert s_mul["rounds"] == 1 and s_dec["rounds"] == 1
        kw = dict(n=n, rank=rank, provider=provider, numel_x=12, numel_y=12, numel_z=12,
                  triple_request_bytes=request_bytes("triple", op="mul", a_shape=[4, 3],
                                                     b_shape=[4, 3], kwargs={}))
        assert_costs(s_mul, beaver["composed"], "x * y", **kw)
        assert_costs(s_dec, reveal, "decrypt of x * y", **kw)
        assert torch.equal(value.double(), rounded(a) * rounded(b))


def test_relu_of_a_product_pays_its_truncation_on_the_comparisons_opening(inproc_matrix):
    n, provider = inproc_matrix.n, inproc_matrix.provider
    a, b = randn(60, 5, 7, scale=2.0), randn(61, 5, 7, scale=2.0)

    def party():
        x, y = enc(a, 0), enc(b, n - 1)
        settled = enc(rounded(a) * rounded(b), 0)
        pending = x * y
        r_pending, s_pending = measured(pending.relu)
        r_settled, s_settled = measured(settled.relu)
        return s_pending, s_settled, r_pending.decrypt(), r_settled.decrypt()

    trunc = dict(rounds=0, messages=0, bytes_sent=8 * (n - 1) * 35, bytes_received=8 * (n - 1) * 35)
    if provider == "dealer":
        trunc.update(dealer_bytes_sent=request_bytes("trunc", shape=[5, 7], bits=16),
                     dealer_bytes_received=16 * 35, dealer_messages=1)
    want = torch.relu(rounded(a) * rounded(b))
    for rank, (s_pending, s_settled, got, ref) in enumerate(inproc_matrix.run(party)):
        extra = {k: s_pending[k] - s_settled[k] for k in s_pending}
        is_corr = rank == n - 1
        expected = {k: (v if is_corr or not k.startswith("dealer") else 0) for k, v in trunc.items()}
        assert extra == expected, (rank, extra)
        assert float((got - want).abs().max()) <= 1.01 * UNIT
        assert float((ref - want).abs().max()) <= 1.01 * UNIT


@on_matrix(n=3, backend="inproc")
def test_riders_travel_with_binary_openings(matrix):
    """A queued arithmetic opening rides on an XOR opening (int64 words) and on a packed-bit
    opening (uint8), adding its bytes and no round."""
    n = matrix.n
    values = [torch.arange(6, dtype=torch.int64) * 1000 - 2500, torch.tensor([-(1 << 62), 5])]

    def party():
        session = current()
        got = []
        shares = [v if session.rank == 0 else torch.zeros_like(v) for v in values]
        ride(session, shares[0], got.append)
        words = torch.full((4,), 7 if session.rank == 0 else 0, dtype=torch.int64)
        (opened,), s_words = measured(lambda: open_words(session, [words]))
        ride(session, shares[1], got.append)
        bits, s_bits = measured(lambda: b2a_bits(session, words, [0, 1, 2]))
        assert not session.riders
        return got, opened, s_words, s_bits, bits

    for got, opened, s_words, s_bits, _ in matrix.run(party):
        assert torch.equal(got[0], values[0]) and torch.equal(got[1], values[1])
        assert torch.equal(opened, torch.full((4,), 7))
        assert s_words["rounds"] == 1 and s_words["bytes_sent"] == (n - 1) * 8 * (4 + 6)
        assert s_bits["rounds"] == 1 and s_bits["bytes_sent"] == (n - 1) * (2 + 8 * 2)


@on_matrix(n=2, backend="inproc")
def test_lazy_chains_under_local_truncation(matrix):
    a, b, c = randn(70, 8, scale=2.0), randn(71, 8, scale=2.0), randn(72, 8, 3)

    def party():
        x, y, w = enc(a, 0), enc(b, 1), enc(c, 0)
        z = x * y * x + y
        return z.decrypt(), (z.unsqueeze(0) @ w).relu().decrypt()

    config = mpc.Config(truncation="local")
    ra, rb, rc = rounded(a), rounded(b), rounded(c)
    want = ra * rb * ra + rb
    for z, r in matrix.run(party, config=config):
        assert float((z - want).abs().max()) <= 1e-3
        assert float((r - torch.relu(want.unsqueeze(0) @ rc)).abs().max()) <= 1e-2


def test_an_sgd_step_settles_every_parameter_in_one_round():
    """The updates' truncations are paid together: the step costs the same rounds for one
    parameter as for six (the gradients' truncations, then the parameters')."""
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 3),
                                torch.nn.ReLU(), torch.nn.Linear(3, 2))
    x, t = randn(80, 5, 4), randn(81, 5, 2)

    def party():
        net = mpc.nn.from_pytorch(model, torch.zeros(1, 4)).encrypt(src=0)
        opt = mpc.optim.SGD(net.parameters(), lr=0.1)
        loss = mpc.nn.MSELoss()(net(enc(x, 0)), enc(t, 1))
        loss.backward()
        _, stats = measured(opt.step)
        return stats, [p.decrypt() for p in net.parameters()]

    torch_model = copy.deepcopy(model).double()
    opt = torch.optim.SGD(torch_model.parameters(), lr=0.1)
    torch.nn.functional.mse_loss(torch_model(x), t).backward()
    opt.step()
    for stats, params in mpc.run(party, 2):
        assert stats["rounds"] == 2
        for got, want in zip(params, torch_model.parameters()):
            assert float((got - want.detach()).abs().max()) <= 1e-3


def test_a_sum_of_pending_products_is_settled_first_and_stays_exact():
    """10^4 products of 10^3 by 10^3 sum to 10^10, beyond the 2^30 a pending value may
    reach: sum() settles the products first (each within the bound) and then adds."""
    def party():
        x = enc(torch.full((10000,), 1000.0), 0)
        return (x * x).sum().decrypt(), (x * 3.0 * 5).decrypt()[:2]

    for total, scaled in mpc.run(party, 2):
        assert float(total) == 1e10
        assert torch.equal(scaled, torch.tensor([15000.0, 15000.0]))


def test_an_assignment_wins_over_a_truncation_still_riding():
    def party():
        x = enc(torch.tensor([3.0]), 0)
        a = x * x
        mpc.tensor.settle([a], now=False)  # queued to ride on the next opening
        a.set_(enc(torch.tensor([7.0]), 0))
        (x * x).decrypt()  # an opening: the rider travels with it
        return a.decrypt()

    for got in mpc.run(party, 2):
        assert float(got) == 7.0


def test_a_square_is_the_same_tensor_on_every_party():
    """x * x.to(x's device) is a square on no party (that call returns the same share
    object on some devices and a copy on others: the parties must agree)."""
    def party():
        x = enc(torch.tensor([1.5, 2.0]), 0) * 0.5  # pending
        with mpc.tensor.trace_correlations() as trace:
            x * x.to("cpu")
            x * x
        return [r["params"]["square"] for r in trace.requests() if r["kind"] == "lazy_triple"]

    for squares in mpc.run(party, 2):
        assert squares == [False, True]


def test_the_dealer_refuses_malformed_lazy_triples():
    from mpc_ml.providers.base import KINDS
    good = dict(x_shape=[2], y_shape=[2], x_bits=16, y_bits=0, square=False)
    KINDS["lazy_triple"].derived_shapes(good)
    for bad in (dict(good, x_bits=64), dict(good, y_bits=-1), dict(good, x_bits=True),
                dict(good, square=True), dict(good, square="yes")):
        with pytest.raises(ValueError, match="lazy_triple"):
            KINDS["lazy_triple"].derived_shapes(bad)


def test_autograd_does_not_settle_what_it_records():
    """The tape asks whether an input is private without reading its share (reading it
    settles a pending value): a bias added to a tracked product costs nothing."""
    def party():
        x = enc(torch.ones(2, 3), 0).requires_grad_()
        w, b = enc(torch.ones(3, 4), 1).requires_grad_(), enc(torch.ones(4), 1).requires_grad_()
        y = x @ w
        out, stats = measured(lambda: y + b)
        return stats["rounds"], out.decrypt()

    for rounds, out in mpc.run(party, 2):
        assert rounds == 0 and torch.equal(out, torch.full((2, 4), 4.0))
