"""Every protocol's measured traffic equals its spec (protocols/*.toml), and its result
is right against plaintext torch.

Each party resets its counters right before one protocol call and reads them right
after; the main thread then evaluates the spec's formulas with the actual sizes and
demands equality for every party: rounds, bytes_sent, bytes_received, messages, and
under the dealer provider the dealer_* counters (non-zero for the last party only).
Data comes from seeded torch.Generators (parties are threads sharing torch's global
RNG in the inproc backend, so nothing here relies on torch.manual_seed).
"""
from __future__ import annotations

import math
import threading
import types

import pytest
import torch
import torch.nn.functional as F

import mpc_ml as mpc
from helpers import COUNTERS, DEALER_COUNTERS, WORLD_SIZES, check_spec, dealer_counters
from helpers import enc as share
from helpers import join_all, measured, on_matrix, randn, request_bytes, rounded
from mpc_ml.comm.base import Communicator
from mpc_ml.comm.inproc import InprocHub
from mpc_ml.core.encoding import encode
from mpc_ml.primitives import beaver_product, open_shares, reveal, truncate, zero_share
from mpc_ml.session import Session, current
from mpc_ml.core.specs import derive_sizes, evaluate, evaluate_fraction, evaluate_table, load_spec

F_BITS = 16
UNIT = 2.0 ** -F_BITS


# -- helpers -------------------------------------------------------------------------------
def conv_kwargs(stride, padding, dilation, groups) -> dict:
    return {"stride": stride, "padding": padding, "dilation": dilation, "groups": groups}


def jsonable(kwargs: dict) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()}


def expected_stats(section: dict, *, n: int, rank: int, provider: str, role: str | None = None,
                   **sizes) -> dict:
    """The counters a spec section predicts for one party."""
    sizes = dict(sizes, n=n, rank=rank)
    cost = section["cost"]
    out = evaluate_table(cost["all"] if "all" in cost else cost[role], **sizes)
    if provider == "dealer":
        out.update(dealer_counters(section["dealer"], **sizes))
    return out


def assert_costs(stats: dict, section: dict, where: str, **kw) -> None:
    """Measured == spec, for every counter (and no dealer_* counters under tfp)."""
    want = expected_stats(section, **kw)
    keys = COUNTERS + (DEALER_COUNTERS if kw["provider"] == "dealer" else ())
    assert set(want) == set(keys), f"{where}: spec gives {sorted(want)}"
    assert stats == want, f"{where} (party {kw['rank']}): measured {stats}, spec {want}"


# -- the spec files and their loader ---------------------------------------------------------
SPEC_NAMES = ("input_sharing", "reveal", "beaver_mul", "beaver_matmul", "beaver_conv",
              "truncation", "zero_sharing", "lazy_product", "fss_comparison", "fixed_mask")
REQUIRED_REFERENCES = {"beaver_mul": ["Beaver"], "beaver_matmul": ["Beaver"],
                       "beaver_conv": ["Beaver"], "truncation": ["Escudero", "SecureML"],
                       "zero_sharing": ["CrypTen"], "input_sharing": ["CrypTen"],
                       "reveal": ["Beaver"], "lazy_product": ["Beaver", "Escudero"],
                       "fss_comparison": ["Boyle"], "fixed_mask": ["Beaver"]}


@pytest.mark.parametrize("name", SPEC_NAMES)
def test_spec_is_complete_and_its_formulas_evaluate(name):
    spec = load_spec(name)
    names = dict.fromkeys(spec["variables"], 7) | {"rank": 1}
    sizes = spec.get("sizes", {})
    for table in [sizes, *(v for v in sizes.values() if isinstance(v, dict))]:
        names.update(dict.fromkeys(table, 7))
    check_spec(spec, name, ("title", "computes", "security_model", "references", "variables"),
               REQUIRED_REFERENCES[name], names)


def test_spec_dir_from_argument_and_environment(tmp_path, monkeypatch):
    (tmp_path / "toy.toml").write_text('name = "toy"\n[cost.all]\nrounds = "n - 1"\n')
    assert load_spec("toy", tmp_path)["cost"]["all"]["rounds"] == "n - 1"
    monkeypatch.setenv("MPC_PROTOCOLS_DIR", str(tmp_path))
    assert load_spec("toy")["name"] == "toy"
    with pytest.raises(FileNotFoundError):
        load_spec("reveal")  # not in tmp_path
    with pytest.raises(ValueError):
        load_spec("../protocols/reveal")


def test_evaluate_is_exact_and_refuses_code():
    assert evaluate("8 * (n - 1) * (numel_x + numel_y)", n=3, numel_x=12, numel_y=20) == 512
    assert evaluate("(H + 2 * p - d * (k - 1) - 1) // s + 1", H=7, p=1, d=1, k=3, s=2) == 4
    assert evaluate("2**(64 - bits)", bits=16) == 2 ** 48  # exact, beyond float precision
    assert evaluate("6 / 4 * 2") == 3
    assert evaluate_fraction("abs_x / 2**64", abs_x=2 ** 60) == evaluate_fraction("1 / 16")
    for bad in ("__import__('os').getpid()", "n.bit_length()", "[n]", "n % 2", "n if n else 1",
                "lambda: 1", "m + 1", "1 / 0", "3 / 2", "2 ** 2 ** 2 ** 2 ** 2", "'a' * 3",
                "True + 1", "n <", "(" * 600 + "1" + ")" * 600):
        with pytest.raises(ValueError):
            evaluate(bad, n=2)


# -- input sharing ----------------------------------------------------------------------------
SHARE_SHAPES = [(), (5,), (3, 4), (2, 3, 1, 4)]


def test_input_sharing(inproc_matrix):
    n, provider = inproc_matrix.n, inproc_matrix.provider
    spec = load_spec("input_sharing")
    data = [randn(10 + i, *shape, scale=100.0) for i, shape in enumerate(SHARE_SHAPES)]

    def party():
        out = []
        for i, t in enumerate(data):
            src = i % n
            x, stats = measured(lambda: share(t, src))
            out.append((src, stats, x.decrypt()))
        return out

    for rank, records in enumerate(inproc_matrix.run(party)):
        for t, (src, stats, value) in zip(data, records):
            assert_costs(stats, spec, f"encrypt {tuple(t.shape)} from {src}", n=n, rank=rank,
                         provider=provider, role="src" if rank == src else "others",
                         ndim=t.dim())
            assert value.dtype == torch.float64 and value.shape == t.shape
            assert torch.allclose(value, t, rtol=0, atol=UNIT / 2)


# -- reveal -------------------------------------------------------------------------------------
def test_reveal(inproc_matrix):
    n, provider = inproc_matrix.n, inproc_matrix.provider
    spec = load_spec("reveal")
    a, b = randn(20, 3, 5, scale=10.0), randn(21, 7)

    def party():
        session = current()
        x, y = share(a, 0), share(b, n - 1)
        opened, s_open = measured(lambda: x.decrypt())
        to_dst = [measured(lambda: x.decrypt(dst=d)) for d in range(n)]
        pair, s_pair = measured(lambda: open_shares(session, [x.share, y.share]))
        return opened, s_open, to_dst, pair, s_pair

    for rank, (opened, s_open, to_dst, pair, s_pair) in enumerate(inproc_matrix.run(party)):
        kw = dict(n=n, rank=rank, provider=provider)
        assert_costs(s_open, spec["open"], "decrypt()", numel=a.numel(), **kw)
        assert torch.allclose(opened, a, rtol=0, atol=UNIT / 2)
        for dst, (value, stats) in enumerate(to_dst):
            assert_costs(stats, spec["to_dst"], f"decrypt(dst={dst})", numel=a.numel(),
                         role="dst" if rank == dst else "others", **kw)
            if rank == dst:
                assert torch.allclose(value, a, rtol=0, atol=UNIT / 2)
            else:
                assert value is None
        assert_costs(s_pair, spec["open"], "open_shares of two tensors",
                     numel=a.numel() + b.numel(), **kw)
        assert torch.equal(pair[0], encode(a, F_BITS)) and torch.equal(pair[1], encode(b, F_BITS))


# -- zero sharing ---------------------------------------------------------------------------------
def test_zero_sharing(inproc_matrix):
    n, provider = inproc_matrix.n, inproc_matrix.provider
    spec = load_spec("zero_sharing")
    shapes = [(4,), (2, 3, 5)]

    def party():
        session = current()
        out = []
        for shape in shapes:
            z, stats = measured(lambda: zero_share(session, shape))
            out.append((z, stats, reveal(session, z)))
        return out

    results = inproc_matrix.run(party)
    for rank, records in enumerate(results):
        for shape, (z, stats, total) in zip(shapes, records):
            assert_costs(stats, spec, f"zero_share {shape}", n=n, rank=rank, provider=provider,
                         numel=math.prod(shape))
            assert z.shape == shape and z.dtype == torch.int64
            assert torch.equal(total, torch.zeros(shape, dtype=torch.int64))
            assert bool((z != 0).all())  # a share, not a zero: 2^-64 chance per element
    # fresh randomness per call: the two sharings differ
    assert not torch.equal(results[0][0][0], results[0][1][0].flatten()[:4])


@pytest.mark.parametrize("n", WORLD_SIZES)
def test_pairwise_seed_setup(n):
    """The session's one-time seed agreement (reset away before any protocol) per spec."""
    spec = load_spec("zero_sharing")["setup"]
    hub = InprocHub()
    results, errors = {}, []

    def party(rank):
        try:
            comm = Communicator(rank, n, {j: hub.link(rank, j) for j in range(n) if j != rank},
                                timeout=10.0)
            me = types.SimpleNamespace(rank=rank, world_size=n, comm=comm, config=mpc.Config())
            prgs = Session._agree_pairwise_seeds(me)
            results[rank] = (comm.stats.as_dict(), {j: p.seed for j, p in prgs.items()})
        except BaseException as e:  # reported below
            errors.append(e)

    join_all([threading.Thread(target=party, args=(r,)) for r in range(n)], timeout=60)
    assert not errors, errors
    for rank in range(n):
        stats, seeds = results[rank]
        assert_costs(stats, spec, "pairwise seeds", n=n, rank=rank, provider="tfp")
        assert sorted(seeds) == [j for j in range(n) if j != rank]
        for j, seed in seeds.items():
            assert seed == results[j][1][rank] and len(seed) == 16
    assert len({s for _, seeds in results.values() for s in seeds.values()}) == n * (n - 1) // 2


# -- truncation --------------------------------------------------------------------------------
def trunc_inputs() -> list[tuple[torch.Tensor, int]]:
    """(plaintext, bits): encoded, these are the ring values x that get truncated."""
    return [(randn(30, 4, 6, scale=1000.0), 16), (randn(31, 9, scale=3.0), 20),
            (randn(32, 2, 2, 3, scale=0.01), 16),
            # |x| = 2^60 in the ring, near the exact method's limit of 2^62
            (torch.where(randn(33, 64) > 0, 1.0, -1.0).double() * 2.0 ** 44, 16)]


def check_trunc_result(result: torch.Tensor, t: torch.Tensor, bits: int, section: dict,
                       where: str) -> None:
    """The spec's error bound: result - floor(x / 2^bits) within [min, max] (0 and 1)."""
    lo, hi = (evaluate(section[k]) for k in ("result_minus_floor_min", "result_minus_floor_max"))
    assert (lo, hi) == (0, 1)
    diff = result - (encode(t, F_BITS) >> bits)  # arithmetic shift = floor division
    assert bool(((diff >= lo) & (diff <= hi)).all()), f"{where}: off by {diff.unique().tolist()}"


def test_truncation_exact(inproc_matrix):
    n, provider = inproc_matrix.n, inproc_matrix.provider
    spec = load_spec("truncation")
    section = spec["exact"]
    cases = trunc_inputs()

    def party():
        session = current()
        out = []
        for t, bits in cases:
            x = share(t, n - 1)
            y, stats = measured(lambda: truncate(session, x.share, bits))
            out.append((stats, reveal(session, y)))
        z, free = measured(lambda: truncate(session, x.share, 0))
        return out, free, z is x.share

    for rank, (records, free, same) in enumerate(inproc_matrix.run(party)):
        for (t, bits), (stats, result) in zip(cases, records):
            where = f"exact truncation of {tuple(t.shape)} by {bits}"
            assert_costs(stats, section, where, n=n, rank=rank, provider=provider,
                         numel=t.numel(), bits=bits,
                         trunc_request_bytes=request_bytes("trunc", shape=list(t.shape), bits=bits))
            check_trunc_result(result, t, bits, section, where)
        assert same and all(v == 0 for v in free.values()), f"bits=0 is free: {free}"


@on_matrix(n=2, backend="inproc")
def test_truncation_local(matrix):
    provider = matrix.provider
    section = load_spec("truncation")["local"]
    cases = trunc_inputs()[:3]
    bits, elements = 16, 1 << 15
    big = torch.full((elements,), 2.0 ** 44, dtype=torch.float64)  # x = 2^60 in the ring

    def party():
        session = current()
        out = []
        for t, b in cases:
            x = share(t, 0)
            y, stats = measured(lambda: truncate(session, x.share, b))
            out.append((stats, reveal(session, y)))
        x = share(big, 1)
        return out, reveal(session, truncate(session, x.share, bits))

    config = mpc.Config(truncation="local")
    for rank, (records, big_result) in enumerate(matrix.run(party, config=config)):
        for (t, b), (stats, result) in zip(cases, records):
            where = f"local truncation of {tuple(t.shape)} by {b}"
            assert_costs(stats, section, where, n=2, rank=rank, provider=provider)
            check_trunc_result(result, t, b, section, where)
    # Failures: rate abs_x / 2^64 per element, each off by 2^(64 - bits).
    diff = big_result - (encode(big, F_BITS) >> bits)
    ok = (diff == 0) | (diff == 1)
    off = evaluate(section["failure_error"], bits=bits)
    failed = diff[~ok]
    assert bool(((failed.abs() == off) | ((failed - 1).abs() == off)).all()), failed.unique()
    p = evaluate_fraction(section["failure_probability"], abs_x=2 ** 60)
    mean = float(p) * elements
    sd = math.sqrt(mean * (1 - float(p)))
    assert abs(int(failed.numel()) - mean) < 6 * sd, (int(failed.numel()), mean)


def test_local_truncation_refused_beyond_two_parties():
    with pytest.raises((ValueError, mpc.PartyError), match="only correct for 2 parties"):
        mpc.run(lambda: None, world_size=3, config=mpc.Config(truncation="local"))


# -- Beaver products ----------------------------------------------------------------------------
def product_sizes(op: str, xs, ys, z_shape, kwargs: dict) -> dict:
    """Sizes the beaver specs need: numel_* and the dealer requests' JSON lengths."""
    return dict(numel_x=math.prod(xs), numel_y=math.prod(ys), numel_z=math.prod(z_shape),
                triple_request_bytes=request_bytes("triple", op=op, a_shape=list(xs),
                                                   b_shape=list(ys), kwargs=jsonable(kwargs)),
                trunc_request_bytes=request_bytes("trunc", shape=list(z_shape), bits=F_BITS))


def user_triple_request_bytes(op: str, xs, ys, kw: dict) -> int:
    """The triple request MPCTensor's op sends: conv arguments as (h, w) pairs, and conv1d
    as a height-1 conv2d."""
    if op == "conv2d":
        kw = dict(kw, **{k: list(_pair(kw.get(k, d))) for k, d in
                         (("stride", 1), ("padding", 0), ("dilation", 1))})
    elif op == "conv1d":
        op, xs, ys = "conv2d", (xs[0], xs[1], 1, *xs[2:]), (ys[0], ys[1], 1, *ys[2:])
        def one(k, d):
            return _pair(kw.get(k, d))[0]
        kw = dict(kw, stride=[1, one("stride", 1)], padding=[0, one("padding", 0)],
                  dilation=[1, one("dilation", 1)])
    return request_bytes("triple", op=op, a_shape=list(xs), b_shape=list(ys),
                         kwargs=jsonable(kw))


def run_products(op: str, cases: list, cfg, *, config=None, direct: bool = True) -> list:
    """Per party, per case: (beaver_product's stats, its revealed ring result, the MPCTensor
    op's stats, its decrypted result). Each case is (x, y, kwargs)."""
    n = cfg.n
    user_op = {"mul": lambda x, y, kw: x * y, "matmul": lambda x, y, kw: x @ y,
               "conv1d": lambda x, y, kw: mpc.conv1d(x, y, **kw),
               "conv2d": lambda x, y, kw: mpc.conv2d(x, y, **kw)}[op]

    def party():
        session = current()
        out = []
        for a, b, kw in cases:
            x, y = share(a, 0), share(b, n - 1)
            if direct:
                z, s_direct = measured(lambda: beaver_product(session, op, x.share, y.share, **kw))
                z = reveal(session, z)
            else:
                z = s_direct = None
            w, s_user = measured(lambda: user_op(x, y, kw))
            out.append((s_direct, z, s_user, w.decrypt()))
        return out

    kw = {} if config is None else {"config": config}
    return cfg.run(party, **kw)


def check_products(op: str, spec: dict, sizes_table: dict | None, cases: list, results: list,
                   n: int, provider: str, shape_sizes, composed: str = "composed") -> None:
    float_op = {"mul": torch.mul, "matmul": torch.matmul, "conv1d": F.conv1d,
                "conv2d": F.conv2d}[op]
    for rank, records in enumerate(results):
        for (a, b, kw), (s_direct, z, s_user, w) in zip(cases, records):
            where = f"{op} {tuple(a.shape)} x {tuple(b.shape)} {kw}"
            want = float_op(rounded(a), rounded(b), **kw)  # exact in float64 at these sizes
            sizes = product_sizes(op, a.shape, b.shape, want.shape, kw)
            if sizes_table is not None:  # the spec's own size formulas agree with torch
                derived = derive_sizes(sizes_table, **shape_sizes(a.shape, b.shape, kw))
                for key in ("numel_x", "numel_y", "numel_z"):
                    assert derived[key] == sizes[key], f"{where}: spec {key}"
            common = dict(n=n, rank=rank, provider=provider, **sizes)
            if s_direct is not None:
                assert_costs(s_direct, spec, f"beaver_product {where}", **common)
                exact = ring_op(op, encode(a, F_BITS), encode(b, F_BITS), kw)
                assert torch.equal(z, exact), f"{where}: beaver_product is not exact"
            user = dict(common, triple_request_bytes=user_triple_request_bytes(
                op, a.shape, b.shape, kw))
            if op == "conv1d":  # truncated as the height-1 conv2d's output
                z4 = (want.shape[0], want.shape[1], 1, want.shape[2])
                user["trunc_request_bytes"] = request_bytes("trunc", shape=list(z4), bits=F_BITS)
            assert_costs(s_user, spec[composed], f"MPCTensor {where}", **user)
            assert w.shape == want.shape and w.dtype == torch.float64
            err = float((w - want).abs().max())
            assert err <= 1.0001 * UNIT, f"{where}: error {err / UNIT:.2f} units"


def ring_op(op: str, x: torch.Tensor, y: torch.Tensor, kw: dict) -> torch.Tensor:
    """The plaintext product of encoded operands, exactly (float64 is exact at these sizes)."""
    if op == "mul":
        return x * y
    if op == "matmul":
        return torch.matmul(x, y)
    f = {"conv1d": F.conv1d, "conv2d": F.conv2d}[op]
    return f(x.double(), y.double(), **kw).round().long()


MUL_CASES = [(randn(40, 3, 4, scale=3.0), randn(41, 3, 4, scale=3.0), {}),
             (randn(42, 2, 1, 5), randn(43, 4, 5, scale=5.0), {}),  # broadcasting
             (randn(44, 6, scale=2.0), randn(45, (), scale=4.0), {})]


def test_beaver_mul(inproc_matrix):
    n, provider = inproc_matrix.n, inproc_matrix.provider
    spec = load_spec("beaver_mul")
    results = run_products("mul", MUL_CASES, inproc_matrix)
    check_products("mul", spec, None, MUL_CASES, results, n, provider, None)


def test_product_with_public_operand(inproc_matrix):
    n, provider = inproc_matrix.n, inproc_matrix.provider
    section = load_spec("beaver_mul")["public_operand"]
    t = randn(50, 3, 5, scale=4.0)
    frac, whole = randn(51, 5, scale=2.0), torch.tensor([3.0, -2.0, 0.0, 7.0, 1.0])
    mat = randn(52, 5, 2)

    def party():
        x = share(t, 1 % n)
        ops = [lambda: x * frac, lambda: 0.375 * x, lambda: x * whole, lambda: 3 * x,
               lambda: x @ mat, lambda: mat.T @ x.T]
        out = []
        for fn in ops:
            y, stats = measured(fn)
            out.append((stats, y.decrypt()))
        return out

    r = rounded
    wants = [(r(t) * r(frac), "fractional"), (r(t) * 0.375, "fractional"),
             (r(t) * whole, "integral"), (r(t) * 3, "integral"),
             (r(t) @ r(mat), "fractional"), (r(mat).T @ r(t).T, "fractional")]
    for rank, records in enumerate(inproc_matrix.run(party)):
        for i, ((want, kind), (stats, value)) in enumerate(zip(wants, records)):
            where = f"public operand case {i} ({kind})"
            assert_costs(stats, section[kind], where, n=n, rank=rank, provider=provider,
                         numel_z=want.numel(),
                         trunc_request_bytes=request_bytes("trunc", shape=list(want.shape),
                                                           bits=F_BITS))
            tol = 0 if kind == "integral" else 1.0001 * UNIT
            assert float((value - want).abs().max()) <= tol, where


@on_matrix(n=2, backend="inproc")
def test_products_with_local_truncation(matrix):
    config = mpc.Config(truncation="local")
    for name, op, cases in (("beaver_mul", "mul", MUL_CASES),
                            ("beaver_matmul", "matmul", MATMUL_CASES[:2]),
                            ("beaver_conv", "conv2d", CONV2D_CASES[1:])):
        spec = load_spec(name)
        results = run_products(op, cases, matrix, config=config, direct=False)
        check_products(op, spec, None, cases, results, 2, matrix.provider, None,
                       "composed_local")


def matmul_shape_sizes(xs, ys, kw) -> dict:
    """batch_*, M, K, N of torch.matmul's operands (vectors count as one row/column)."""
    xs, ys = list(xs), list(ys)
    m = 1 if len(xs) == 1 else xs[-2]
    k = xs[-1]
    nn = 1 if len(ys) == 1 else ys[-1]
    bx, by = xs[:-2], ys[:-2]
    bz = torch.broadcast_shapes(torch.Size(bx), torch.Size(by))
    return dict(batch_x=math.prod(bx), batch_y=math.prod(by), batch_z=math.prod(bz),
                M=m, K=k, N=nn)


MATMUL_CASES = [(randn(60, 3, 4, scale=2.0), randn(61, 4, 5, scale=2.0), {}),
                (randn(62, 2, 3, 4), randn(63, 2, 4, 5), {}),  # batched
                (randn(64, 2, 1, 3, 4), randn(65, 3, 4, 2), {}),  # broadcast batch dims
                (randn(66, 4), randn(67, 4, 5), {}),  # vector @ matrix
                (randn(68, 2, 3, 6), randn(69, 6), {})]  # batched matrix @ vector


def test_beaver_matmul(inproc_matrix):
    n, provider = inproc_matrix.n, inproc_matrix.provider
    spec = load_spec("beaver_matmul")
    results = run_products("matmul", MATMUL_CASES, inproc_matrix)
    check_products("matmul", spec, spec["sizes"], MATMUL_CASES, results, n, provider,
                   matmul_shape_sizes)


def _pair(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def conv2d_shape_sizes(xs, ws, kw) -> dict:
    (sh, sw), (ph, pw), (dh, dw) = _pair(kw["stride"]), _pair(kw["padding"]), _pair(kw["dilation"])
    return dict(N=xs[0], C_in=xs[1], H=xs[2], W=xs[3], C_out=ws[0], kH=ws[2], kW=ws[3],
                groups=kw["groups"], stride_h=sh, stride_w=sw, pad_h=ph, pad_w=pw,
                dil_h=dh, dil_w=dw)


def conv1d_shape_sizes(xs, ws, kw) -> dict:
    return dict(N=xs[0], C_in=xs[1], L=xs[2], C_out=ws[0], kL=ws[2], groups=kw["groups"],
                stride=kw["stride"], pad=kw["padding"], dil=kw["dilation"])


CONV2D_CASES = [(randn(70, 1, 2, 5, 5), randn(71, 3, 2, 3, 3), conv_kwargs(1, 0, 1, 1)),
                # strided, padded, dilated, grouped, with per-axis tuples
                (randn(72, 2, 4, 7, 6), randn(73, 6, 2, 3, 2),
                 conv_kwargs((2, 1), (1, 2), (1, 2), 2)),
                (randn(74, 1, 3, 6, 6), randn(75, 3, 1, 2, 2), conv_kwargs(2, 1, 1, 3))]
CONV1D_CASES = [(randn(76, 2, 3, 9), randn(77, 4, 3, 3), conv_kwargs(2, 1, 1, 1)),
                (randn(78, 1, 4, 10), randn(79, 4, 2, 3), conv_kwargs(1, 2, 2, 2))]


def test_beaver_conv(inproc_matrix):
    n, provider = inproc_matrix.n, inproc_matrix.provider
    spec = load_spec("beaver_conv")
    for op, cases, shape_sizes in (("conv2d", CONV2D_CASES, conv2d_shape_sizes),
                                   ("conv1d", CONV1D_CASES, conv1d_shape_sizes)):
        results = run_products(op, cases, inproc_matrix)
        check_products(op, spec, spec["sizes"][op], cases, results, n, provider, shape_sizes)


def test_conv_bias_is_free():
    n, provider = 3, "dealer"
    spec = load_spec("beaver_conv")
    a, w, bias = CONV2D_CASES[1][0], CONV2D_CASES[1][1], randn(80, 6)
    kw = CONV2D_CASES[1][2]

    def party():
        x, y, b = share(a, 0), share(w, 1), share(bias, 2)
        out, stats = measured(lambda: mpc.conv2d(x, y, b, **kw))
        return stats, out.decrypt()

    want = F.conv2d(rounded(a), rounded(w), rounded(bias), **kw)
    for rank, (stats, value) in enumerate(mpc.run(party, world_size=n, provider=provider)):
        assert_costs(stats, spec["composed"], "conv2d with a private bias", n=n, rank=rank,
                     provider=provider, **dict(product_sizes("conv2d", a.shape, w.shape, want.shape, kw),
                                               triple_request_bytes=user_triple_request_bytes(
                                                   "conv2d", a.shape, w.shape, kw)))
        assert float((value - want).abs().max()) <= 1.0001 * UNIT


# -- tcp: the same counts over sockets and a dealer process ----------------------------------------
def tcp_party(a, b, t):
    """Module-level (spawned processes import it): a few protocols, plain return values."""
    n = mpc.world_size()
    out = {}
    x, out["encrypt"] = measured(lambda: share(t, 0))
    y, z = share(a, 0), share(b, n - 1)
    w, out["matmul"] = measured(lambda: y @ z)
    v, out["decrypt_dst"] = measured(lambda: w.decrypt(dst=n - 1))
    out["value"] = None if v is None else v.tolist()
    return out


@on_matrix((2, "tcp", "tfp"), (3, "tcp", "dealer"))
def test_tcp_counts_the_same(matrix):
    n, provider = matrix.n, matrix.provider
    a, b, t = MATMUL_CASES[1][0], MATMUL_CASES[1][1], randn(90, 2, 3)
    results = matrix.run(tcp_party, args=(a, b, t))
    want = rounded(a) @ rounded(b)
    enc, mm, rv = load_spec("input_sharing"), load_spec("beaver_matmul"), load_spec("reveal")
    for rank, out in enumerate(results):
        kw = dict(n=n, rank=rank, provider=provider)
        assert_costs(out["encrypt"], enc, "tcp encrypt", role="src" if rank == 0 else "others",
                     ndim=t.dim(), **kw)
        assert_costs(out["matmul"], mm["composed"], "tcp matmul",
                     **product_sizes("matmul", a.shape, b.shape, want.shape, {}), **kw)
        assert_costs(out["decrypt_dst"], rv["to_dst"], "tcp decrypt(dst)", numel=want.numel(),
                     role="dst" if rank == n - 1 else "others", **kw)
        if rank == n - 1:
            err = float((torch.tensor(out["value"], dtype=torch.float64) - want).abs().max())
            assert err <= 1.0001 * UNIT
        else:
            assert out["value"] is None
