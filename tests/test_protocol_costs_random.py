"""Private uniform randomness (protocols/random.toml): uniform_share's and mpc.rand's
measured traffic equals the spec, and the values are what the spec says they are.

As in test_protocol_costs.py: each party resets its counters right before one call and
reads them right after; the main thread evaluates the spec's formulas with the actual
sizes and demands equality for every party: rounds, bytes_sent, bytes_received, messages,
and under the dealer provider the dealer_* counters (non-zero for the last party only).
"""
from __future__ import annotations

import functools
import math
import operator

import pytest
import torch

import mpc_ml as mpc
from helpers import COUNTERS, DEALER_COUNTERS, check_spec, dealer_counters, measured, request_bytes
from mpc_ml.core.specs import evaluate, evaluate_table, load_spec
from mpc_ml.primitives import reveal, uniform_share
from mpc_ml.session import current

SPEC = load_spec("random")
SHAPES = [(3, 4), (70,), (2, 3, 5), (1,)]
DRAWS = 20000  # one large draw for the distribution checks


def expected(rank: int, n: int, provider: str, shape, f: int) -> dict:
    sizes = dict(n=n, rank=rank, numel=math.prod(shape), f=f,
                 dabits_request_bytes=request_bytes("dabits", shape=list(shape),
                                                    positions=list(range(f))))
    out = evaluate_table(SPEC["cost"]["all"], **sizes)
    if provider == "dealer":
        out.update(dealer_counters(SPEC["dealer"], **sizes))
    return out


def assert_costs(stats: dict, where: str, *, rank: int, n: int, provider: str, shape, f: int):
    want = expected(rank, n, provider, shape, f)
    keys = COUNTERS + (DEALER_COUNTERS if provider == "dealer" else ())
    assert set(want) == set(keys), f"{where}: spec gives {sorted(want)}"
    if provider == "tfp":
        assert set(stats) == set(COUNTERS), f"{where}: {sorted(stats)}"
    got = {k: stats[k] for k in keys}
    assert got == want, f"{where} (party {rank}, n={n}): measured {got}, spec {want}"


def test_spec_is_complete_and_its_formulas_evaluate():
    names = {"n": 3, "rank": 1, "numel": 8, "f": 16, "dabits_request_bytes": 94}
    check_spec(SPEC, "random", ("title", "computes", "security_model", "references", "reveals",
                                "implementation", "error_bound"),
               ["daBits", "B2A", "one-time pad", "CrypTen"], names)
    # the example in [variables] is the real request length
    assert request_bytes("dabits", shape=[3, 4], positions=list(range(16))) == 94
    assert "e.g. 94 for shape [3, 4]" in SPEC["variables"]["dabits_request_bytes"]
    assert evaluate(SPEC["cost"]["all"]["bytes_sent"], n=2, numel=3, f=16) == 6


def _draws(shapes):
    session = current()
    f = session.config.precision_bits
    out = []
    for shape in shapes:
        share, stats = measured(lambda: uniform_share(session, shape))
        out.append((share, stats, reveal(session, share)))
    tensor, t_stats = measured(lambda: mpc.rand(*SHAPES[0]))
    return f, out, (tensor.share, t_stats, tensor.decrypt())


@pytest.mark.parametrize("bits", [16, 12])
def test_uniform_share_costs_and_values(inproc_matrix, bits):
    n, provider = inproc_matrix.n, inproc_matrix.provider
    shapes = SHAPES + [(DRAWS,)]
    results = inproc_matrix.run(_draws, args=(shapes,), config=mpc.Config(precision_bits=bits))
    for rank, (f, records, (t_share, t_stats, _)) in enumerate(results):
        assert f == bits
        kw = dict(rank=rank, n=n, provider=provider, f=f)
        for shape, (share, stats, _) in zip(shapes, records):
            assert share.shape == shape and share.dtype == torch.int64
            assert_costs(stats, f"uniform_share {shape}", shape=shape, **kw)
        # mpc.rand is the primitive and nothing more: the same traffic
        assert_costs(t_stats, f"mpc.rand{SHAPES[0]}", shape=SHAPES[0], **kw)
        assert t_share.shape == SHAPES[0]
    unit = 2 ** bits
    for i, shape in enumerate(shapes):
        total = results[0][1][i][2]
        for res in results[1:]:  # every party opens the same value
            assert torch.equal(res[1][i][2], total)
        shares = [res[1][i][0] for res in results]
        assert torch.equal(functools.reduce(operator.add, shares), total)
        # integers u in [0, 2^f): the grid of [0, 1) at scale 2^f
        assert bool(((total >= 0) & (total < unit)).all()), shape
        # each share alone is a full-ring mask, not the value (2^-(64-f) chance per element)
        if total.numel() >= 12:
            assert not torch.equal(shares[0], total)
            assert bool((shares[0] >= unit).any() | (shares[0] < 0).any())
    # fresh values per call: mpc.rand's draw is not uniform_share's first one (same shape)
    rand_ints = (results[0][2][2].to(torch.float64) * unit).round().to(torch.int64)
    assert not torch.equal(results[0][1][0][2], rand_ints)
    assert torch.equal(rand_ints, functools.reduce(operator.add, [r[2][0] for r in results]))
    # mpc.rand decrypts to the same grid on [0, 1), as torch.rand's range
    rand_value = results[0][2][2]
    assert rand_value.shape == torch.rand(SHAPES[0]).shape
    assert bool(((rand_value >= 0) & (rand_value < 1)).all())
    assert torch.equal(rand_value * unit, torch.round(rand_value * unit))

    # the distribution of the large draw against torch.rand's (continuous) uniform
    u = results[0][1][-1][2].to(torch.float64) / unit
    mean, var = u.mean().item(), u.var().item()
    want_mean, want_var = (1 - 2.0 ** -bits) / 2, (1 - 2.0 ** -(2 * bits)) / 12
    assert abs(mean - want_mean) < 4 * math.sqrt(want_var / DRAWS), mean
    assert abs(var - want_var) < 4 * math.sqrt(1 / (180 * DRAWS)), var
    ks = (torch.sort(u).values - torch.arange(DRAWS, dtype=torch.float64) / DRAWS).abs().max().item()
    assert ks < 1.63 / math.sqrt(DRAWS) + 2.0 ** -bits, f"KS distance {ks:.3g}"  # 1% level
    # every bit of u is a fair coin: 20000 draws, 5 sigma = 354
    ints = results[0][1][-1][2]
    ones = torch.stack([((ints >> j) & 1).sum() for j in range(bits)])
    assert bool(((ones - DRAWS / 2).abs() < 5 * math.sqrt(DRAWS / 4)).all()), ones.tolist()
    assert bool((ints >> bits == 0).all())
