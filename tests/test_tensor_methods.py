"""The MPCTensor methods that CrypTen programs use beyond the core ops (issue 15, item 2):
in-place ops, powers and reductions, cos and sin, index operations, transposed
convolutions, pooling indices and adaptive max pooling, and private randomness.

Every case runs its forward and backward on private leaves (shared alternately by
each party) and is compared with torch on the same inputs: the value, and every private
leaf's .grad, within `tol * max(1, max |torch value|)`. One launch per configuration (2
and 3 parties, tfp and dealer, inproc) runs every case; then the autograd rules of the
in-place ops, the validation mode's references for the new ops, cos's traffic against
protocols/approximations.toml, and the distributions of rand, randn and bernoulli (fixed
per-party seeds, so the statistics are the same on every run).
"""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

import mpc_ml as mpc
from helpers import assert_near, configs, dealer_counters, enc, matrix_params, measured, rnd, rounded
from mpc_ml.core.prg import PRG
from mpc_ml.core.specs import evaluate_table, load_spec
from mpc_ml.primitives.approximations import ERROR_BOUNDS
from mpc_ml.session import current


def _poly(x, coeffs):
    return sum(c * x ** (i + 1) for i, c in enumerate(coeffs))


TORCH = SimpleNamespace(
    pos_pow=lambda x, p: x ** p, polynomial=_poly, hardtanh=F.hardtanh, relu6=F.relu6,
    cosine_similarity=F.cosine_similarity, conv_transpose2d=F.conv_transpose2d,
    conv_transpose1d=F.conv_transpose1d, max_pool2d=F.max_pool2d,
    adaptive_max_pool2d=F.adaptive_max_pool2d, adaptive_max_pool1d=F.adaptive_max_pool1d,
    cossin=lambda x: (x.cos(), x.sin()))
MPC = SimpleNamespace(
    pos_pow=lambda x, p: x.pos_pow(p), polynomial=lambda x, c: x.polynomial(c),
    hardtanh=lambda x, lo, hi: mpc.nn.functional.hardtanh(x, lo, hi),
    relu6=lambda x: mpc.nn.functional.relu6(x),
    cosine_similarity=lambda x, y, dim: mpc.nn.functional.cosine_similarity(x, y, dim),
    conv_transpose2d=mpc.nn.functional.conv_transpose2d,
    conv_transpose1d=mpc.nn.functional.conv_transpose1d,
    max_pool2d=mpc.nn.functional.max_pool2d, adaptive_max_pool2d=mpc.nn.functional.adaptive_max_pool2d,
    adaptive_max_pool1d=mpc.nn.functional.adaptive_max_pool1d, cossin=lambda x: x.cossin())


def P(*shape, lo=-1.0, hi=1.0):
    """A private input (requires grad)."""
    return ("private", shape, lo, hi)


def C(*shape, lo=-1.0, hi=1.0):
    """A public input (a torch tensor)."""
    return ("public", shape, lo, hi)


IDX = torch.tensor([[2, 0], [1, 1], [0, 3]])  # (3, 2) into dim 1 of (3, 4): repeats in a row
IDX_UNIQUE = torch.tensor([[2, 0], [1, 3], [0, 3]])  # scatter: no repeats within a row


def _inplace_arith(L, a, b):
    y = a * 1.0
    y.add_(b)
    y.sub_(b, alpha=0.5)
    y.mul_(b)
    y.div_(2.0)
    y.neg_()
    return y.add_(a, alpha=2.0)


def _inplace_unary(L, a):
    y = a * 1.0
    y.abs_()
    y.square_()
    y.clamp_(0.05, 0.5)
    return y * a


def _inplace_nonlinear(L, a, b):
    y = a * 1.0
    y.exp_()
    z = b * 1.0
    z.sigmoid_()
    return y * z


def _inplace_copy(L, a, b):
    y = a * 2.0
    y.copy_(b)
    y.pow_(2)
    return y * a


def _inplace_fill(L, a, b):
    y = a * 1.0
    y.zero_()
    y.add_(b)
    z = a * 1.0
    z.fill_(0.25)
    return y * a + z


def _inplace_index(L, a, b, c):
    y = a * 1.0
    y.index_add_(0, torch.tensor([2, 0]), b)
    y.scatter_(1, IDX_UNIQUE, c)
    return y.scatter_add_(1, IDX, c)


def _pool_indices(L, a):
    values, indices = L.max_pool2d(a, 3, 2, 1, 1, False, True)
    return values, indices


def _adaptive_indices(L, a):
    values, indices = L.adaptive_max_pool2d(a, (3, 2), True)
    return values, indices


def _adaptive_1d(L, a):
    values, indices = L.adaptive_max_pool1d(a, 3, True)
    return values, indices


# name -> (fn(lib, *inputs), input specs, tolerance); a tuple result: the first item is
# differentiated, the others (indices) compared by value
CASES = {
    # in-place ops (on non-leaves, as torch allows under grad mode)
    "inplace_arith": (_inplace_arith, [P(3, 4), P(3, 4, lo=0.5, hi=2.0)], 1e-3),
    "inplace_unary": (_inplace_unary, [P(3, 4)], 1e-3),
    "inplace_div_private": (lambda L, a, b: (a * 1.0).div_(b), [P(3, 4), P(3, 4, lo=1.0, hi=3.0)], 2e-3),
    "inplace_nonlinear": (_inplace_nonlinear, [P(3, 4, lo=-2.0, hi=2.0), P(3, 4, lo=-3.0, hi=3.0)], 2e-3),
    "inplace_copy": (_inplace_copy, [P(3, 4), P(4)], 1e-3),
    "inplace_fill": (_inplace_fill, [P(3, 4), P(3, 4)], 1e-3),
    "inplace_index": (_inplace_index, [P(3, 4), P(2, 4), P(3, 2)], 1e-3),
    # powers, products and reductions
    "pow_whole": (lambda L, a: a.pow(3) + a.pow(0) + a ** 2 + a.pow(1.0), [P(3, 4)], 1e-3),
    "pow_negative_and_roots": (lambda L, a: a.pow(-2) + a.pow(-1) + a.pow(0.5) + a ** -0.5,
                               [P(3, 4, lo=0.5, hi=3.0)], 3e-3),
    "pos_pow": (lambda L, a: L.pos_pow(a, 1.7) + L.pos_pow(a, -0.3), [P(3, 4, lo=0.5, hi=3.0)], 3e-3),
    "polynomial": (lambda L, a: L.polynomial(a, [0.5, -1.0, 0.25, 0.1, 0.3]), [P(3, 4)], 1e-3),
    "norm": (lambda L, a: torch.stack([a.norm(), a.norm(1, 1).sum(), a.norm(float("inf"), 0).sum(),
                                       a.norm("fro", 1, keepdim=True).sum()])
             if isinstance(a, torch.Tensor) else
             mpc.stack([a.norm(), a.norm(1, 1).sum(), a.norm(float("inf"), 0).sum(),
                        a.norm("fro", 1, keepdim=True).sum()]), [P(3, 5)], 3e-3),
    "norm_p3": (lambda L, a: a.norm(3, 1), [P(2, 4, lo=0.2, hi=1.5)], 5e-3),
    "prod": (lambda L, a: a.prod(1) + a.prod(0).sum() + a.prod() + a.prod(1, keepdim=True).sum(),
             [P(3, 5, lo=0.5, hi=1.5)], 2e-3),
    "var_std": (lambda L, a: a.var() + a.var(1, unbiased=False).sum() + a.var(0, keepdim=True).sum()
                + a.var(1, correction=0).sum() + a.std(1).sum(), [P(3, 5, lo=-2.0, hi=2.0)], 3e-3),
    "dot_ger_outer": (lambda L, a, b, c: a.ger(c) * a.dot(b) + b.outer(c), [P(4), P(4), P(3)], 1e-3),
    "cumsum_trace": (lambda L, a: a.cumsum(1) * a.trace() + a.cumsum(0), [P(3, 4)], 1e-3),
    "cos_sin": (lambda L, a: a.cos() + a.sin() * 2.0, [P(4, 5, lo=-10.0, hi=10.0)], 1e-3),
    "cossin": (lambda L, a: L.cossin(a)[0] * L.cossin(a)[1], [P(6, lo=-4.0, hi=4.0)], 1e-3),
    "cosine_similarity": (lambda L, a, b: L.cosine_similarity(a, b, 1), [P(3, 5), P(3, 5)], 3e-3),
    "hardtanh_relu6": (lambda L, a: L.hardtanh(a * 4.0, -1.5, 2.0) + L.relu6(a * 8.0), [P(4, 5)], 1e-3),
    # index operations (public indices)
    "gather": (lambda L, a: a.gather(1, IDX), [P(3, 4)], 1e-3),
    "scatter_private": (lambda L, a, b: a.scatter(1, IDX_UNIQUE, b), [P(3, 4), P(3, 2)], 1e-3),
    "scatter_public": (lambda L, a, p: a.scatter(0, IDX_UNIQUE[:, :1].T, 0.5) * 1.0
                       + a.scatter(1, IDX_UNIQUE, p), [P(3, 4), C(3, 2)], 1e-3),
    "scatter_add": (lambda L, a, b: a.scatter_add(1, IDX, b), [P(3, 4), P(3, 2)], 1e-3),
    "index_select": (lambda L, a: a.index_select(0, torch.tensor([2, 0, 2])), [P(3, 4)], 1e-3),
    "index_add": (lambda L, a, b: a.index_add(1, torch.tensor([0, 2, 0]), b, alpha=2.0),
                  [P(3, 4), P(3, 3)], 1e-3),
    "take": (lambda L, a: a.take(torch.tensor([[0, 5], [11, -1]])), [P(3, 4)], 1e-3),
    "roll": (lambda L, a: a.roll(1, 0) + a.roll((1, -2), (0, 1)) + a.roll(3), [P(3, 4)], 1e-3),
    "unfold": (lambda L, a: a.unfold(1, 3, 2), [P(3, 7)], 1e-3),
    "unbind": (lambda L, a: a.unbind(1)[0] * a.unbind(1)[2] + a.unbind(-1)[1], [P(3, 4)], 1e-3),
    # transposed convolutions (conv2d_input's Beaver product)
    "conv_transpose2d": (lambda L, x, w, b: L.conv_transpose2d(x, w, b, 2, 1, 1),
                         [P(2, 4, 4, 4), P(4, 3, 3, 3), P(3)], 1e-3),
    "conv_transpose2d_groups_dilation": (lambda L, x, w: L.conv_transpose2d(x, w, None, 1, 0, 0, 2, 2),
                                         [P(1, 4, 4, 4), P(4, 3, 3, 3)], 1e-3),
    "conv_transpose2d_public_weight": (lambda L, x, w: L.conv_transpose2d(x, w, None, (2, 1), (0, 1)),
                                       [P(1, 2, 3, 4), C(2, 3, 2, 3)], 1e-3),
    "conv_transpose1d": (lambda L, x, w: L.conv_transpose1d(x, w, None, 3, 2),
                         [P(2, 4, 5), P(4, 6, 3)], 1e-3),
    # pooling: private indices, adaptive max
    "max_pool2d_indices": (_pool_indices, [P(2, 2, 7, 7)], 1e-3),
    "adaptive_max_pool2d": (_adaptive_indices, [P(2, 2, 7, 5)], 1e-3),
    "adaptive_max_pool1d": (_adaptive_1d, [P(2, 3, 8)], 1e-3),
}


def _inputs(name: str, specs):
    return [rnd(f"{name}-{i}", *shape, lo=lo, hi=hi) for i, (_, shape, lo, hi) in enumerate(specs)]


def _expected(name: str):
    """torch's value, extra outputs, upstream gradient and leaf gradients for one case."""
    fn, specs, _ = CASES[name]
    values = _inputs(name, specs)
    leaves = [rounded(v).float().requires_grad_(kind == "private") for (kind, *_), v in zip(specs, values)]
    out = fn(TORCH, *[leaf * 1.0 if leaf.requires_grad else leaf for leaf in leaves])
    out, extras = (out[0], out[1:]) if isinstance(out, tuple) else (out, ())
    upstream = rnd(f"{name}-upstream", *out.shape)
    out.backward(upstream)
    return values, out.detach(), [e.double() for e in extras], upstream, [leaf.grad for leaf in leaves]


def _run_case(name: str, values, upstream):
    fn, specs, _ = CASES[name]
    n = mpc.world_size()
    args = [enc(v, i % n).requires_grad_() if kind == "private" else rounded(v).float()
            for i, ((kind, *_), v) in enumerate(zip(specs, values))]
    # leaves enter as x * 1.0, as on the torch side (an in-place op on a leaf is refused)
    out = fn(MPC, *[a * 1.0 if isinstance(a, mpc.MPCTensor) else a for a in args])
    out, extras = (out[0], out[1:]) if isinstance(out, tuple) else (out, ())
    out.backward(upstream)
    grads = [a.grad.decrypt() if isinstance(a, mpc.MPCTensor) else None for a in args]
    return out.decrypt(), [e.decrypt() for e in extras], grads


# -- what else each launch measures -------------------------------------------------------
COS_SIZES = (7, 10)
SEED = 1234


def _cos_costs():
    """(numel, stats, requests' byte length) of x.cos() for each size."""
    out = []
    session = current()
    for size in COS_SIZES:
        x = enc(torch.linspace(-3, 3, size), 0)
        seen = []
        session.provider.observers.append(seen.append)
        _, stats = measured(lambda: x.cos())
        session.provider.observers.pop()
        import json
        total = sum(len(json.dumps(r, separators=(",", ":"), sort_keys=True)) for r in seen)
        out.append((size, stats, total))
    return out


def _randomness():
    """Draws under fixed per-party seeds: rand, randn, bernoulli (public and private p), and
    rand's rounds."""
    session = current()
    session.own = PRG(bytes([SEED % 256, session.rank]) * 8)
    u, stats = measured(lambda: mpc.rand(20000))
    z = mpc.randn(100, 100)
    zb = mpc.randn(4001, method="box_muller")
    p = torch.tensor([0.1, 0.5, 0.9]).repeat_interleave(3000)
    b_public = mpc.bernoulli(p)
    b_private = enc(p, 0).bernoulli()
    return (u.decrypt(), stats, z.decrypt(), b_public.decrypt(), b_private.decrypt(), p,
            mpc.rand(2, 3).shape, mpc.rand((4,)).shape, zb.decrypt())


def party(expected):
    results = {name: _run_case(name, values, upstream)
               for name, (values, _, _, upstream, _) in expected.items()}
    return results, _cos_costs(), _randomness()


CONFIGS = configs(n=(2, 3), backend="inproc")


@pytest.fixture(scope="module")
def expected():
    return {name: _expected(name) for name in CASES}


@pytest.fixture(scope="module")
def launches(expected):
    cache = {}

    def get(cfg):
        if cfg not in cache:
            cache[cfg] = cfg.run(party, args=({k: v for k, v in expected.items()},))
        return cache[cfg]
    return get


@pytest.fixture(params=matrix_params(CONFIGS))
def cfg(request):
    return request.param


@pytest.mark.parametrize("name", list(CASES))
def test_method_value_and_gradient_match_torch(launches, expected, cfg, name):
    _, _, tol = CASES[name]
    _, want, want_extras, _, want_grads = expected[name]
    (results, _, _) = launches(cfg)[0]
    got, extras, grads = results[name]
    assert_near(got, want, tol, f"{name} value")
    for i, (g, e) in enumerate(zip(extras, want_extras)):
        assert torch.equal(g.round(), e), f"{name}: output {i + 1} (indices) differ from torch's"
    for i, (g, w) in enumerate(zip(grads, want_grads)):
        if w is not None:
            assert_near(g, w, tol, f"{name} grad of input {i}")


def test_cos_traffic_is_the_spec(launches, cfg):
    """x.cos()'s rounds, bytes and messages, and the dealer's counters, per
    protocols/approximations.toml [cos] (the last party holds the dealer's corrections)."""
    spec = load_spec("approximations")["cos"]
    for rank, (_, costs, _) in enumerate(launches(cfg)):
        for numel, stats, request_bytes in costs:
            sizes = dict(n=cfg.n, numel=numel, rank=rank, request_bytes=request_bytes)
            want = evaluate_table(spec["cost"]["all"], **sizes)
            assert {k: stats[k] for k in want} == want, (rank, numel)
            if cfg.provider == "dealer":
                dealer = dealer_counters(spec["dealer"], **sizes)
                assert {k: stats[k] for k in dealer} == dealer, (rank, numel)


def test_private_randomness_distributions(launches, cfg):
    """rand: the 2^-f grid on [0, 1), uniform (mean, variance, KS distance); randn (both
    methods): mean, variance, KS distance to N(0, 1), within their support; bernoulli:
    frequencies of public and private p. Fixed per-party seeds; every party decrypts the same draws."""
    outs = [r for _, _, r in launches(cfg)]
    u, stats, z, b_public, b_private, p, shape2, shape1, zb = outs[0]
    assert all(torch.equal(o[0], u) for o in outs)
    assert stats["rounds"] == 1 and shape2 == (2, 3) and shape1 == (4,)
    u = u.double()
    assert float(u.min()) >= 0 and float(u.max()) < 1
    assert torch.equal(u * 2 ** 16, (u * 2 ** 16).round())
    assert abs(float(u.mean()) - 0.5) < 0.01 and abs(float(u.var()) - 1 / 12) < 0.005
    grid = torch.sort(u).values
    ks = float((grid - torch.arange(1, u.numel() + 1) / u.numel()).abs().max())
    assert ks < 0.015, f"rand: KS distance {ks:.3g}"
    for z, top, what in ((z, 6, "irwin_hall"), (zb, 4.72, "box_muller")):
        z = z.double().reshape(-1)
        assert abs(float(z.mean())) < 0.05 and abs(float(z.std()) - 1) < 0.05, what
        assert float(z.abs().max()) <= top, what
        normal = 0.5 * (1 + torch.special.erf(torch.sort(z).values / math.sqrt(2)))
        ks = float((normal - torch.arange(1, z.numel() + 1) / z.numel()).abs().max())
        assert ks < 0.025, f"randn ({what}): KS distance {ks:.3g}"
    for draws in (b_public, b_private):
        assert set(draws.unique().tolist()) <= {0.0, 1.0}
        freq = draws.reshape(3, -1).mean(1)
        assert torch.allclose(freq.double(), torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64),
                              atol=0.03), freq


# -- in-place ops and autograd, as torch ----------------------------------------------------
def test_inplace_autograd_rules():
    a, b = rnd("rules-a", 3, 4), rnd("rules-b", 3, 4)

    def body():
        x, w = enc(a, 0).requires_grad_(), enc(b, 1).requires_grad_()
        with pytest.raises(RuntimeError, match="leaf Variable that requires grad"):
            w.add_(1.0)
        y = x * 1.0
        z = y * y  # saves y
        y.add_(1.0)
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            z.sum().backward()
        ((x * w).sum()).backward()
        with mpc.no_grad():  # an optimizer step, in place
            w.sub_(w.grad, alpha=0.5)
        assert w.is_leaf and w.requires_grad and w.grad_fn is None
        v = enc(a, 1)  # no grad anywhere: nothing recorded
        v.mul_(2.0)
        assert v.grad_fn is None and not v.requires_grad
        u = enc(a, 0)  # a tensor without grad, updated from one with grad: on the graph
        u.mul_(x)
        u.sum().backward()
        return w.decrypt(), x.grad.decrypt(), v.decrypt()

    w, xg, v = mpc.run(body, world_size=2, backend="inproc", provider="tfp")[0]
    ar, br = rounded(a), rounded(b)
    assert_near(w, br - 0.5 * ar, 1e-3, "w after w.sub_(w.grad, alpha=0.5)")
    assert_near(xg, br + ar, 1e-3, "x.grad from (x w).sum() and (a * x).sum()")
    assert_near(v, 2 * ar, 1e-3, "mul_ without grad")


def test_new_ops_pass_the_validation_mode():
    """Config(validate=True) compares each new op with its REFERENCES entry (and bound)."""
    a = rnd("validate", 2, 2, 6, 5)

    def body():
        x = enc(a, 0)
        x.gather(3, torch.zeros(2, 2, 6, 2, dtype=torch.int64)).cumsum(2).roll(1, 1)
        ones = torch.ones(1, 2, 6, 5, dtype=torch.int64)
        x.scatter(1, torch.tensor([[[[1]]]]), 0.5).scatter_add(0, ones, x)
        x.index_add(2, torch.tensor([0, 0, 1, 2, 3, 5]), x).index_select(3, torch.tensor([4, 0]))
        x.cos(), x.sin()
        w = enc(rnd("validate-w", 2, 3, 3, 3), 1)
        mpc.tensor.conv_transpose2d(x, w, None, 2, 1, 1)
        x.max_pool2d(2, return_indices=True), x.adaptive_max_pool2d((4, 3), return_indices=True)
        return True

    assert mpc.run(body, world_size=2, backend="inproc", provider="tfp",
                   config=mpc.Config(validate=True))[0]


def test_refusals_name_what_is_supported():
    def body():
        x = enc(torch.ones(2, 1, 3, 3), 0)
        with pytest.raises(ValueError, match="pos_pow"):
            x.pow(1.5)
        with pytest.raises(TypeError, match="public exponent"):
            x.pow(x)
        with pytest.raises(ValueError, match="p must be"):
            x.norm(0.5)
        with pytest.raises(ValueError, match="output_padding"):
            mpc.tensor.conv_transpose2d(x, torch.ones(1, 1, 2, 2), stride=2, output_padding=2)
        with pytest.raises(TypeError, match="integer tensor"):
            x.gather(1, torch.zeros(2, 1, 3, 3))
        with pytest.raises(ValueError, match="dot expects 1-d"):
            x.dot(x)
        return True

    assert mpc.run(body, world_size=2, backend="inproc", provider="tfp")[0]


def test_cos_sin_bound_on_a_wide_grid():
    """cos and sin within their ERROR_BOUNDS entry at every point of [-100, 100] and at the
    ends of the domain (2 parties)."""
    t = torch.cat([torch.linspace(-100, 100, 4001), torch.tensor([2.0 ** 30, -2.0 ** 30, 1e6])]).double()

    def body():
        c, s = enc(t, 1).cossin()
        return c.decrypt(), s.decrypt()

    c, s = mpc.run(body, world_size=2, backend="inproc", provider="tfp")[0]
    x = rounded(t)
    for name, got, want in (("cos", c, x.cos()), ("sin", s, x.sin())):
        bound = ERROR_BOUNDS[name]
        assert bool(bound.in_domain(x).all())
        assert bool(((got - want).abs() <= bound.allowed(x, want)).all()), name
