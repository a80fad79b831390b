"""The binary and nonlinear protocols' measured traffic equals their specs
(protocols/and.toml, a2b.toml, b2a.toml, comparison.toml, approximations.toml), and
their results are right against plaintext torch.

As in test_protocol_costs.py: each party resets its counters right before one protocol
call and reads them right after; the main thread evaluates the spec's formulas with the
actual sizes and demands equality for every party: rounds, bytes_sent, bytes_received,
messages, and under the dealer provider the dealer_* counters (non-zero for the last
party only). Data comes from seeded torch.Generators in the main thread (parties are
threads sharing torch's global RNG in the inproc backend).
"""
from __future__ import annotations

import functools
import itertools
import math
import operator
import re

import pytest
import torch
import torch.nn.functional as F

import mpc_ml as mpc
from helpers import COUNTERS, DEALER_COUNTERS, check_spec, dealer_counters
from helpers import enc as share
from helpers import gen, measured, on_matrix, randn, request_bytes, rounded
from mpc_ml.primitives.approximations import ERROR_BOUNDS
from mpc_ml.core.encoding import encode
from mpc_ml.primitives import (a2b, and_many, and_monomials, b2a, b2a_bits, binary_add,
                               bit_products, ltz, max_all_pairs, max_along_last, max_one_hot,
                               open_bits, open_words, relu, reveal)
from mpc_ml.primitives.binary import SLICED_FROM, and_held, held_by, reduce_to_two
from mpc_ml.primitives.normalization import leading_bit_weighted
from mpc_ml.session import current
from mpc_ml.core.specs import derive_sizes, evaluate, evaluate_fraction, evaluate_table, load_spec

F_BITS = 16
SIGN_POSITION = [63]
LTZ_POSITION = [0]  # ltz converts msb's unsliced bit, held at position 0 of a word
# The fan-in-4 carry operator (a2b.toml, comparison.toml): the monomials of one
# and_monomials over the inputs P0 P1 P2 P3 G0 G1 G2 (G's three terms, then P), and over
# P1 P2 P3 G0 G1 G2 at the last level, where P is not needed.
COMBINE = [[3, 6], [2, 3, 5], [1, 2, 3, 4], [0, 1, 2, 3]]
COMBINE_LAST = [[2, 5], [1, 2, 4], [0, 1, 2, 3]]
# msb's rounds after the carry-save reduction: (kind, monomials or None, words per input
# per sliced word w): the generate bits of 63 positions, then levels on 64 -> 16 -> 4 -> 1
# groups; on fewer than SLICED_FROM elements each round has m words per input instead.
CARRY_TREE = (("btriple", None, 63), ("band", COMBINE, 16), ("band", COMBINE, 4),
              ("band", COMBINE_LAST, 1))


# -- helpers -------------------------------------------------------------------------------
def uniform(seed: int, shape, lo: float, hi: float) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(shape, generator=gen(seed), dtype=torch.float64)


def words(seed: int, *shape) -> torch.Tensor:
    """Uniform int64 words over the full range (every bit pattern)."""
    count = math.prod(shape)
    raw = torch.randint(0, 256, (count * 8,), generator=gen(seed), dtype=torch.uint8)
    return raw.view(torch.int64).reshape(shape).clone()


def xor_shares(value: torch.Tensor, n: int, seed: int) -> list[torch.Tensor]:
    """n XOR shares of a word tensor: n - 1 uniform, the last fixing the XOR."""
    parts = [words(seed + i, *value.shape) for i in range(n - 1)]
    return parts + [functools.reduce(operator.xor, parts, value.clone())]


def add_shares(value: torch.Tensor, n: int, seed: int) -> list[torch.Tensor]:
    """n additive shares mod 2^64: n - 1 uniform, the last fixing the sum."""
    parts = [words(seed + i, *value.shape) for i in range(n - 1)]
    return parts + [value - sum(parts, torch.zeros_like(value))]


def xor_all(shares) -> torch.Tensor:
    return functools.reduce(operator.xor, shares)


def sum_all(shares) -> torch.Tensor:
    return functools.reduce(operator.add, shares)


def entries(mono) -> list[tuple[int, int]]:
    """A monomial's entries as sorted (input, row shift): i is (i, 0)."""
    return sorted((e, 0) if isinstance(e, int) else tuple(e) for e in mono)


def listed(monomials) -> list[list]:
    """Monomials as a band request lists them: sorted entries, i or [i, shift]."""
    return [[i if sh == 0 else [i, sh] for i, sh in entries(m)] for m in monomials]


def subset_count(monomials) -> int:
    """Sets of two or more entries inside some monomial: the band's derived components."""
    return len({s for mono in monomials for k in range(2, len(mono) + 1)
                for s in itertools.combinations(entries(mono), k)})


def band_bytes(monomials, numel: int) -> int:
    """Length of the band request of and_monomials over these monomials' inputs (plain
    indices, on flat words)."""
    inputs = 1 + max(i for mono in monomials for i in mono)
    return request_bytes("band", inputs=inputs, monomials=listed(monomials), shape=[numel])


def btriple_bytes(m: int, shape=None) -> dict:
    """The A2B's request lengths for m converted elements (of this shape): its triples (for
    2 parties the first AND's held_btriple, of the input's shape), and the bands of the
    carry operator with and without the propagate."""
    return dict(btriple_request_bytes_1=request_bytes("btriple", shape=[m]),
                held_btriple_request_bytes=request_bytes("held_btriple",
                                                         shape=list(shape or [m])),
                band_request_bytes_7=band_bytes(COMBINE, m),
                band_request_bytes_6=band_bytes(COMBINE_LAST, m))


def carry_tree(m: int, n: int) -> list[tuple[str, list | None, int, list]]:
    """msb's AND rounds on m elements after the carry-save reduction: (kind, monomials,
    words per input, the request's shape), sliced (w = ceil(m / 64)) from SLICED_FROM
    elements on, else the carries of whole words (m per input, the same kinds and
    monomials). For 2 parties the first AND is and_held on the parties' own words, whose
    request keeps the words' shape ([63, w] sliced, [m] whole)."""
    w = (m + 63) // 64
    sliced = m >= SLICED_FROM
    out = []
    for kind, monos, c in CARRY_TREE:
        size = c * w if sliced else m
        if kind == "btriple" and n == 2:
            out.append(("held_btriple", None, size, [63, w] if sliced else [m]))
        else:
            out.append((kind, monos, size, [size]))
    return out


def tree_open_words(m: int, n: int) -> int:
    """Words msb on m elements opens after the carry-save reduction: 2 per ANDed word (1 for
    and_held), one per input of each band: 22 per element below SLICED_FROM, else 272 per
    64 (21 and 209 for 2 parties)."""
    return sum(s if kind == "held_btriple" else 2 * s if kind == "btriple"
               else (1 + max(map(max, monos))) * s for kind, monos, s, _ in carry_tree(m, n))


def tree_dealer_words(m: int, n: int) -> int:
    """Words of the dealer's corrections for msb on m elements after the carry-save
    reduction: one per ANDed word, one per subset product per band word (60 per element
    below SLICED_FROM, else 518 per 64)."""
    return sum(s if kind in ("btriple", "held_btriple") else subset_count(monos) * s
               for kind, monos, s, _ in carry_tree(m, n))


def tree_requests(m: int, n: int) -> list[tuple[str, dict]]:
    """The requests of msb on m elements: one btriple [m] per carry-save level, then the
    carry tree's four (a btriple, or held_btriple, and three bands)."""
    out = [("btriple", {"shape": [m]})] * (n - 2)
    for kind, monos, s, shape in carry_tree(m, n):
        if monos is None:
            out.append((kind, {"shape": shape}))
        else:
            out.append(("band", {"inputs": 1 + max(map(max, monos)), "monomials": listed(monos),
                                 "shape": [s]}))
    return out


def total_bytes(requests) -> int:
    return sum(request_bytes(kind, **params) for kind, params in requests)


def ltz_request_bytes(m: int, n: int) -> dict:
    """The AND requests of msb on m elements: one [m] per carry-save level, then the carry
    tree's four (a btriple or held_btriple and three bands; summed)."""
    return dict(btriple_request_bytes_1=request_bytes("btriple", shape=[m]),
                tree_request_bytes=total_bytes(tree_requests(m, n)[n - 2:]))


def bit_product_bytes(shape, value_shapes) -> int:
    return request_bytes("bit_product", shape=list(shape),
                         value_shapes=[list(v) for v in value_shapes])


def dabits_bytes(shape, positions=SIGN_POSITION) -> int:
    return request_bytes("dabits", shape=list(shape), positions=list(positions))


def spec_sizes(spec: dict, section: dict, n: int, **sizes) -> dict:
    """The given sizes extended by the spec's [sizes] (csa_rounds) and the section's."""
    out = derive_sizes(spec.get("sizes", {}), n=n, **sizes)
    return derive_sizes(section.get("sizes", {}), **out)


def expected_stats(spec: dict, section: dict, *, n: int, rank: int, provider: str,
                   **sizes) -> dict:
    """The counters a spec section predicts for one party."""
    sizes = spec_sizes(spec, section, n, rank=rank, **sizes)
    out = evaluate_table(section["cost"]["all"], **sizes)
    if provider == "dealer" and "dealer" in section:
        out.update(dealer_counters(section["dealer"], **sizes))
    return out


def assert_costs(stats: dict, spec: dict, section: dict, where: str, **kw) -> None:
    """Measured == spec, for every counter (and no dealer_* counters under tfp)."""
    want = expected_stats(spec, section, **kw)
    dealer = kw["provider"] == "dealer" and "dealer" in section
    keys = COUNTERS + (DEALER_COUNTERS if dealer else ())
    assert set(want) == set(keys), f"{where}: spec gives {sorted(want)}"
    got = {k: stats[k] for k in keys}
    if kw["provider"] == "tfp":
        assert set(stats) == set(COUNTERS), f"{where}: {sorted(stats)}"
    assert got == want, f"{where} (party {kw['rank']}, n={kw['n']}): measured {got}, spec {want}"


def csa_from_table(spec: dict, n: int) -> int:
    return evaluate(spec["csa_rounds_table"][str(n)])


# -- the spec files ------------------------------------------------------------------------------
SPEC_NAMES = ("and", "a2b", "b2a", "comparison", "approximations")
REQUIRED_REFERENCES = {"and": ["Beaver", "Ohata", "ABY2.0"], "a2b": ["Kogge", "ABY"],
                       "b2a": ["daBits", "bit injection"],
                       "comparison": ["ABY", "CrypTen", "Brent", "Ohata", "ABY2.0"],
                       "approximations": ["CrypTen", "Catrina", "Abramowitz", "Estrin",
                                          "Goldschmidt", "SecureML", "Kogge", "PUMA"]}
FUNCTIONS = ("exp", "reciprocal", "inv_sqrt", "sqrt", "log", "sigmoid", "tanh", "erf", "gelu",
             "softmax", "log_softmax")


def variable_names(node: dict) -> set:
    """Every name a spec defines: [variables] and [sizes] tables at any depth."""
    names = set()
    for key, value in node.items():
        if isinstance(value, dict):
            if key in ("variables", "sizes"):
                names |= set(value)
            names |= variable_names(value)
    return names


@pytest.mark.parametrize("name", SPEC_NAMES)
def test_spec_is_complete_and_its_formulas_evaluate(name):
    spec = load_spec(name)
    names = dict.fromkeys(variable_names(spec), 8) | {"rank": 1, "n": 3, "selected": 2}
    check_spec(spec, name, ("title", "computes", "security_model", "references", "reveals",
                            "implementation"), REQUIRED_REFERENCES[name], names)
    if "csa_rounds_table" in spec:  # the table and the formula n - 2 agree up to n = 5
        for n in range(2, 6):
            assert csa_from_table(spec, n) == evaluate(spec["sizes"]["csa_rounds"], n=n)


def cost_sections(spec: dict, fname: str) -> list[tuple[str, dict, int]]:
    """(where, section, k) for each table of a function's costs: the section itself, or
    for softmax / log_softmax its two paths (evaluated at k = 8 and k = 16)."""
    section = spec[fname]
    if "cost" in section:
        return [(fname, section, 8)]
    return [(f"{fname}.all_pairs", section["all_pairs"], 8),
            (f"{fname}.tournament", section["tournament"], 16)]


def test_approximations_sections_state_method_domain_error():
    spec = load_spec("approximations")
    comparison = load_spec("comparison")
    for fname in FUNCTIONS + ("normalisation", "exp_wide"):
        for key in ("api", "method", "domain", "error_bound"):
            assert spec[fname].get(key), f"{fname}: no {key}"
        for where, section, k in cost_sections(spec, fname):
            for key in ("composition", "bytes_per_element_per_peer", "requests"):
                assert section.get(key), f"{where}: no {key}"
            # bytes_per_element_per_peer is bytes_sent's part per element; the rest are
            # packed bits. The carry trees and the sliced normalisation work on 64 elements
            # a word, so the per-element figure is exact where every count is a multiple of
            # 64: numel = 1024; k = 8 (rows 128, 3584 pairs) and k = 16 (rows 64: tournament
            # levels of 512, 256, 128 and 64 comparisons, a normalisation of 64).
            numel = 1024
            for n in (2, 3, 4):
                tour = tournament(comparison, comparison["max_along_last"], [numel // k], k, 1, n)
                sizes = spec_sizes(spec, section, n, numel=numel, k=k, request_bytes=0,
                                   **{key: tour[key] for key in (
                                       "levels", "bit_bytes", "tree_open_words_levels",
                                       "tree_dealer_words_levels")})
                sent = evaluate(section["cost"]["all"]["bytes_sent"], **sizes)
                linear = evaluate_fraction(section["bytes_per_element_per_peer"], **sizes)
                rest = sent - (n - 1) * linear * numel
                assert 0 <= rest <= (n - 1) * (tour["bit_bytes"] + 3 * numel // 8), (where, n, rest)
    # the one table of bounds (ERROR_BOUNDS), as the spec repeats it
    for fname, bound in ERROR_BOUNDS.items():
        assert spec[fname]["domain"] == bound.domain, fname
        assert spec[fname]["error_bound"] == bound.describe(), fname


# -- AND, XOR, opening words and bits ------------------------------------------------------
AND_SHAPES = [[(3, 4), (5,)], [(2, 3, 5)]]  # and_many calls: the shapes of their pairs
BIT_COUNTS = (13, 16)


def test_and_xor_and_openings(inproc_matrix):
    n, provider = inproc_matrix.n, inproc_matrix.provider
    spec = load_spec("and")
    calls = [[(words(100 + 10 * c + i, *s), words(200 + 10 * c + i, *s))
              for i, s in enumerate(shapes)] for c, shapes in enumerate(AND_SHAPES)]
    sh = [[(xor_shares(x, n, 300 + 10 * c + i), xor_shares(y, n, 400 + 10 * c + i))
           for i, (x, y) in enumerate(pairs)] for c, pairs in enumerate(calls)]
    bits = [torch.randint(0, 2, (k,), generator=gen(500 + k)) for k in BIT_COUNTS]
    bit_sh = [[torch.randint(0, 2, (k,), generator=gen(600 + k + i)) for i in range(n - 1)]
              for k in BIT_COUNTS]
    bit_sh = [parts + [xor_all(parts + [b])] for parts, b in zip(bit_sh, bits)]

    def party():
        session, r = current(), mpc.rank()
        out = []
        for pairs in sh:
            mine = [(xs[r], ys[r]) for xs, ys in pairs]
            z, s_and = measured(lambda: and_many(session, mine))
            w, s_xor = measured(lambda: [x ^ y for x, y in mine])
            opened, s_open = measured(lambda: open_words(session, z))
            out.append((z, s_and, w, s_xor, opened, s_open))
        opened_bits = [measured(lambda: open_bits(session, b[r])) for b in bit_sh]
        return out, opened_bits

    results = inproc_matrix.run(party)
    for rank, (records, opened_bits) in enumerate(results):
        kw = dict(n=n, rank=rank, provider=provider)
        for pairs, (z, s_and, w, s_xor, opened, s_open) in zip(calls, records):
            numel = sum(x.numel() for x, _ in pairs)
            assert_costs(s_and, spec, spec, f"and_many of {numel} words", numel=numel,
                         btriple_request_bytes=request_bytes("btriple", shape=[numel]), **kw)
            assert_costs(s_xor, spec, spec["xor"], "xor", **kw)
            assert_costs(s_open, spec, spec["open_words"], "open_words", numel=numel, **kw)
            for (x, y), zi, oi in zip(pairs, z, opened):
                assert zi.shape == x.shape and torch.equal(oi, x & y)
        for k, (value, stats), b in zip(BIT_COUNTS, opened_bits, bits):
            assert_costs(stats, spec, spec["open_bits"], f"open_bits of {k}", numel=k, **kw)
            assert torch.equal(value, b)
    # the shares themselves, XORed across the parties
    for c, pairs in enumerate(calls):
        for i, (x, y) in enumerate(pairs):
            assert torch.equal(xor_all([res[0][c][0][i] for res in results]), x & y)
            assert torch.equal(xor_all([res[0][c][2][i] for res in results]), x ^ y)


# (number of inputs, their shape, monomials): unsorted and degree-1 monomials, degree 5, the
# carry operator's two bands, the prefix OR's one 4-input monomial, and entries (i, s) of
# inputs with their rows shifted by s (rows, words inputs; the same input at two shifts)
MONOMIAL_CALLS = [(6, (3, 7), [(1, 0), (3, 2, 1), (0, 2, 3, 4, 5), (4,)]),
                  (7, (130,), [tuple(m) for m in COMBINE]),
                  (6, (2, 9), [tuple(m) for m in COMBINE_LAST]),
                  (4, (2, 2, 5), [(0, 1, 2, 3)]),
                  (2, (6, 3), [((0, 1), 1), ((0, 2), 1, (1, 1)), (0, (1, -2), (1, 3))])]


def shifted(x: torch.Tensor, shift: int) -> torch.Tensor:
    """Rows of x moved by shift (row r reads row r - shift), zero-filled."""
    out = torch.zeros_like(x)
    if shift >= 0:
        out[shift:] = x[:x.shape[0] - shift]
    else:
        out[:shift] = x[-shift:]
    return out


def test_and_monomials(inproc_matrix):
    n, provider = inproc_matrix.n, inproc_matrix.provider
    spec = load_spec("and")
    section = spec["and_monomials"]
    values = [[words(1000 + 10 * c + i, *shape) for i in range(k)]
              for c, (k, shape, _) in enumerate(MONOMIAL_CALLS)]
    sh = [[xor_shares(x, n, 1100 + 10 * c + i) for i, x in enumerate(xs)]
          for c, xs in enumerate(values)]

    def party():
        session, r = current(), mpc.rank()
        return [measured(lambda: and_monomials(session, [x[r] for x in shares], monos))
                for shares, (_, _, monos) in zip(sh, MONOMIAL_CALLS)]

    results = inproc_matrix.run(party)
    for rank, records in enumerate(results):
        kw = dict(n=n, rank=rank, provider=provider)
        for (k, shape, monos), (z, stats) in zip(MONOMIAL_CALLS, records):
            numel = math.prod(shape)
            rows = any(not isinstance(e, int) for m in monos for e in m)
            assert_costs(stats, spec, section, f"and_monomials {k} x {shape} {monos}",
                         numel=numel, inputs=k, subsets=subset_count(monos),
                         band_request_bytes=request_bytes(
                             "band", inputs=k, monomials=listed(monos),
                             shape=list(shape) if rows else [numel]), **kw)
            assert len(z) == len(monos) and all(t.shape == shape for t in z)
    assert subset_count(COMBINE) == 22 and subset_count(COMBINE_LAST) == 15
    for c, (xs, (_, _, monos)) in enumerate(zip(values, MONOMIAL_CALLS)):
        for j, mono in enumerate(monos):
            want = functools.reduce(operator.and_, [shifted(xs[i], sh) for i, sh in entries(mono)])
            assert torch.equal(xor_all([res[c][0][j] for res in results]), want), (c, mono)


HELD_SHAPES = [(5,), (3, 7), (63, 2)]


@on_matrix(n=2, backend="inproc")
def test_and_held(matrix):
    """2 parties: u held by party 0, v by party 1 (their own words), one round of 8 bytes
    per element each way; the request keeps the words' shape."""
    provider = matrix.provider
    spec = load_spec("and")
    us = [words(1500 + i, *shape) for i, shape in enumerate(HELD_SHAPES)]
    vs = [words(1510 + i, *shape) for i, shape in enumerate(HELD_SHAPES)]

    def party():
        session = current()
        return [measured(lambda: and_held(session, held_by(session, u, 0), held_by(session, v, 1)))
                for u, v in zip(us, vs)]

    results = matrix.run(party)
    for rank, records in enumerate(results):
        for shape, (_, stats) in zip(HELD_SHAPES, records):
            assert_costs(stats, spec, spec["and_held"], f"and_held {shape}", n=2, rank=rank,
                         provider=provider, numel=math.prod(shape),
                         held_btriple_request_bytes=request_bytes("held_btriple", shape=list(shape)))
    for i, (u, v) in enumerate(zip(us, vs)):
        assert torch.equal(results[0][i][0] ^ results[1][i][0], u & v), HELD_SHAPES[i]


# -- A2B (carry-save + radix-4 Kogge-Stone), B2A, bit_products --------------------------------------
EDGE_WORDS = torch.tensor([0, 1, -1, 2 ** 63 - 1, -2 ** 63, 2 ** 62, -2 ** 62, 12345],
                          dtype=torch.int64)
A2B_VALUES = [words(700, 2, 3), torch.cat([EDGE_WORDS, words(701, 9)])]
B2A_POSITIONS = [SIGN_POSITION, [0, 1, 31, 62, 63], list(range(0, 64, 3))]


def test_a2b_adders_and_b2a(inproc_matrix):
    n, provider = inproc_matrix.n, inproc_matrix.provider
    spec_a, spec_b = load_spec("a2b"), load_spec("b2a")
    add_sh = [add_shares(v, n, 710 + 10 * i) for i, v in enumerate(A2B_VALUES)]
    us = [words(730 + i, *v.shape) for i, v in enumerate(A2B_VALUES)]
    u_sh = [xor_shares(u, n, 740 + 10 * i) for i, u in enumerate(us)]
    v_sh = [xor_shares(v, n, 760 + 10 * i) for i, v in enumerate(A2B_VALUES)]

    def party():
        session, r = current(), mpc.rank()
        out = []
        for i in range(len(A2B_VALUES)):
            x = add_sh[i][r]
            w, s_a2b = measured(lambda: a2b(session, x))
            back, s_b2a = measured(lambda: b2a(session, w))
            bits = [measured(lambda: b2a_bits(session, w, pos)) for pos in B2A_POSITIONS]
            total, s_add = measured(lambda: binary_add(session, u_sh[i][r], v_sh[i][r]))
            held = [held_by(session, x, owner) for owner in range(n)]
            two, s_csa = measured(lambda: reduce_to_two(session, held))
            out.append((w, s_a2b, back, s_b2a, bits, total, s_add, two, s_csa))
        return out

    results = inproc_matrix.run(party)
    for rank, records in enumerate(results):
        kw = dict(n=n, rank=rank, provider=provider)
        for value, (w, s_a2b, back, s_b2a, bits, total, s_add, two, s_csa) in zip(A2B_VALUES,
                                                                               records):
            numel = value.numel()
            req = btriple_bytes(numel, value.shape)
            where = f"{tuple(value.shape)}"
            assert_costs(s_a2b, spec_a, spec_a, f"a2b {where}", numel=numel, **req, **kw)
            assert_costs(s_add, spec_a, spec_a["binary_add"], f"binary_add {where}", numel=numel,
                         **req, **kw)
            assert_costs(s_csa, spec_a, spec_a["carry_save"], f"reduce_to_two {where}",
                         numel=numel, **req, **kw)
            assert_costs(s_b2a, spec_b, spec_b["full_word"], f"b2a {where}", numel=numel,
                         dabits_request_bytes=dabits_bytes(value.shape, range(64)), **kw)
            for pos, (_, stats) in zip(B2A_POSITIONS, bits):
                assert_costs(stats, spec_b, spec_b, f"b2a_bits {where} at {len(pos)} positions",
                             numel=numel, k=len(pos),
                             dabits_request_bytes=dabits_bytes(value.shape, pos), **kw)
    for i, value in enumerate(A2B_VALUES):
        per_party = [res[i] for res in results]
        assert torch.equal(xor_all([p[0] for p in per_party]), value), "a2b"
        assert torch.equal(sum_all([p[2] for p in per_party]), value), "b2a(a2b(x)) round trip"
        for j, pos in enumerate(B2A_POSITIONS):
            got = sum_all([p[4][j][0] for p in per_party])
            want = (value.unsqueeze(-1) >> torch.tensor(pos)) & 1
            assert got.shape == (*value.shape, len(pos)) and torch.equal(got, want), pos
        # u + v with wrap-around (int64 addition wraps mod 2^64)
        assert torch.equal(xor_all([p[5] for p in per_party]), us[i] + value), "binary_add"
        u2 = xor_all([p[7][0] for p in per_party])
        v2 = xor_all([p[7][1] for p in per_party])
        assert torch.equal(u2 + v2, value), "reduce_to_two keeps the sum"


# (the bit's shape, the values' shapes): values of the bit's shape, broadcast over trailing
# dims, or covering only the bit's leading rows
BIT_PRODUCT_CALLS = [((3, 5), [(3, 5), (3, 5, 4)]), ((70,), [(70,)]), ((2, 1), [(2, 1, 3)]),
                     ((4, 3), [(4, 3), (2, 3, 2)])]


def test_bit_products(inproc_matrix):
    n, provider = inproc_matrix.n, inproc_matrix.provider
    spec = load_spec("b2a")
    section = spec["bit_products"]
    bits = [torch.randint(0, 2, shape, generator=gen(1200 + c))
            for c, (shape, _) in enumerate(BIT_PRODUCT_CALLS)]
    bit_sh = [[torch.randint(0, 2, b.shape, generator=gen(1210 + 10 * c + i)) for i in range(n - 1)]
              for c, b in enumerate(bits)]
    bit_sh = [parts + [xor_all(parts + [b])] for parts, b in zip(bit_sh, bits)]
    values = [[words(1300 + 10 * c + i, *v) for i, v in enumerate(shapes)]
              for c, (_, shapes) in enumerate(BIT_PRODUCT_CALLS)]
    val_sh = [[add_shares(v, n, 1400 + 10 * c + i) for i, v in enumerate(vs)]
              for c, vs in enumerate(values)]

    def party():
        session, r = current(), mpc.rank()
        return [measured(lambda: bit_products(session, bs[r], [v[r] for v in vs]))
                for bs, vs in zip(bit_sh, val_sh)]

    results = inproc_matrix.run(party)
    for rank, records in enumerate(results):
        kw = dict(n=n, rank=rank, provider=provider)
        for (shape, shapes), ((_, products), stats) in zip(BIT_PRODUCT_CALLS, records):
            assert_costs(stats, spec, section, f"bit_products {shape} x {shapes}",
                         numel=math.prod(shape), values_numel=sum(map(math.prod, shapes)),
                         bit_product_request_bytes=bit_product_bytes(shape, shapes), **kw)
            assert [tuple(p.shape) for p in products] == shapes
    for c, (b, vs) in enumerate(zip(bits, values)):
        assert torch.equal(sum_all([res[c][0][0] for res in results]), b), "the bit's B2A"
        for j, v in enumerate(vs):
            rows = b[:v.shape[0]]
            want = v * rows.reshape(rows.shape + (1,) * (v.dim() - b.dim()))  # mod 2^64
            assert torch.equal(sum_all([res[c][0][1][j] for res in results]), want), (c, j)


@pytest.mark.parametrize("n", (5, 6, 7))
def test_carry_save_depth_beyond_four_parties(n):
    """The csa_rounds table where it departs from n - 2 (tfp; values checked too)."""
    spec = load_spec("a2b")
    value = torch.cat([EDGE_WORDS, words(790, 4)])
    sh = add_shares(value, n, 791)

    def party():
        x, stats = measured(lambda: a2b(current(), sh[mpc.rank()]))
        return x, stats

    results = mpc.run(party, world_size=n, provider="tfp")  # beyond the matrix's n
    csa = csa_from_table(spec, n)
    numel = value.numel()
    for rank, (_, stats) in enumerate(results):
        assert stats == {"rounds": csa + 4, "bytes_sent": 16 * (n - 1) * (n + 9) * numel,
                         "bytes_received": 16 * (n - 1) * (n + 9) * numel,
                         "messages": (n - 1) * (csa + 4)}, (n, rank, stats)
    assert torch.equal(xor_all([x for x, _ in results]), value)


# -- comparisons, relu, abs, clamp ----------------------------------------------------------------
def comparison_inputs():
    """x (3, 4) with zeros, ties and both signs; y (4,) broadcast against it."""
    x = torch.round(randn(800, 3, 4, scale=3.0) * 8) / 8
    x[0, 0], x[1, 1] = 0.0, -0.0
    y = torch.round(randn(801, 4, scale=3.0) * 8) / 8
    x[2] = y  # ties row: x == y there
    x[1, 2] = y[2] + 2.0 ** -F_BITS  # one unit apart
    return x, y


def comparison_sizes(kind: str, shape, n: int, paired: bool = False) -> dict:
    """Request lengths of a comparison section on a tensor of this (result) shape."""
    shape = list(shape)
    cmp_shape = [2] + shape if paired else shape
    m = math.prod(cmp_shape)
    sizes = dict(numel=math.prod(shape), **ltz_request_bytes(m, n))
    if kind in ("relu", "clamp"):  # ltz_times: the bit and one value of its shape
        sizes["bit_product_request_bytes"] = bit_product_bytes(cmp_shape, [cmp_shape])
    else:
        sizes["dabits_request_bytes"] = dabits_bytes(cmp_shape, LTZ_POSITION)
    return sizes


EDGE_COUNTS = (SLICED_FROM - 1, SLICED_FROM)


def test_comparisons(inproc_matrix):
    n, provider = inproc_matrix.n, inproc_matrix.provider
    spec = load_spec("comparison")
    a, b = comparison_inputs()
    prim = randn(802, 7, scale=1e4)  # large values for the primitives
    prim[0] = 0.0
    # more than 64 elements: three sliced words per bit position, the last one padded;
    # magnitudes from 2^-16 (one unit) to 2^40, both signs, zero
    wide = torch.cat([_signed(803, 2.0 ** -16, 2.0 ** 40), randn(805, 109, scale=1e3),
                      torch.tensor([0.0])])
    # == on 40 elements compares 80 stacked differences: w = 2 (not ceil(40 / 64) = 1)
    eq_a = torch.round(randn(806, 5, 8) * 4) / 4
    eq_b = torch.round(randn(807, 5, 8) * 4) / 4
    eq_b[::2] = eq_a[::2]
    lo, hi = -0.5, 1.25
    # (name, section, paired, op on MPCTensors, op on plaintext)
    cases = [
        ("x < y", "lt", False, lambda x, y: x < y, lambda x, y: (x < y).double()),
        ("x > 0.25", "lt", False, lambda x, y: x > 0.25, lambda x, y: (x > 0.25).double()),
        ("x <= y", "lt", False, lambda x, y: x <= y, lambda x, y: (x <= y).double()),
        ("x >= y", "lt", False, lambda x, y: x.ge(y), lambda x, y: (x >= y).double()),
        ("x == y", "eq", True, lambda x, y: x == y, lambda x, y: (x == y).double()),
        ("x != y", "eq", True, lambda x, y: x.ne(y), lambda x, y: (x != y).double()),
        ("sign", "eq", True, lambda x, y: x.sign(), lambda x, y: torch.sign(x)),
        ("abs", "relu", False, lambda x, y: x.abs(), lambda x, y: x.abs()),
        ("relu", "relu", False, lambda x, y: x.relu(), lambda x, y: x.clamp(min=0)),
        ("clamp min", "relu", False, lambda x, y: x.clamp(min=lo), lambda x, y: x.clamp(min=lo)),
        ("clamp max", "relu", False, lambda x, y: x.clamp(max=hi), lambda x, y: x.clamp(max=hi)),
        ("clamp", "clamp", True, lambda x, y: x.clamp(lo, hi), lambda x, y: x.clamp(lo, hi)),
    ]

    def party():
        session = current()
        x, y, p = share(a, 0), share(b, n - 1), share(prim, 1)
        out = []
        for _, _, _, op, _ in cases:
            z, stats = measured(lambda: op(x, y))
            out.append((stats, z.decrypt()))
        bit, s_ltz = measured(lambda: ltz(session, p.share))
        r, s_relu = measured(lambda: relu(session, p.share))
        q = share(wide, n - 1)
        wide_bit, s_wide = measured(lambda: ltz(session, q.share))
        wide_relu, s_wide_relu = measured(lambda: q.relu())
        u, v = share(eq_a, 0), share(eq_b, 1)
        same, s_eq = measured(lambda: u == v)
        edges = []  # either side of SLICED_FROM: whole words, then sliced words
        for m in EDGE_COUNTS:
            e = share(wide[:m], 0)
            edge_bit, s_edge = measured(lambda: ltz(session, e.share))
            edges.append((s_edge, reveal(session, edge_bit)))
        return (out, (s_ltz, reveal(session, bit)), (s_relu, reveal(session, r)),
                (s_wide, reveal(session, wide_bit), s_wide_relu, wide_relu.decrypt(),
                 s_eq, same.decrypt()), edges)

    enc = encode(prim, F_BITS)
    enc_wide = encode(wide, F_BITS)
    for rank, (records, (s_ltz, bit), (s_relu, r), wide_out, edges) in enumerate(
            inproc_matrix.run(party)):
        kw = dict(n=n, rank=rank, provider=provider)
        for m, (stats, edge_bit) in zip(EDGE_COUNTS, edges):
            assert_costs(stats, spec, spec["ltz"], f"ltz of {m}", **kw,
                         **comparison_sizes("ltz", (m,), n))
            assert torch.equal(edge_bit, (enc_wide[:m] < 0).long()), f"ltz of {m}"
        s_wide, wide_bit, s_wide_relu, wide_relu, s_eq, same = wide_out
        assert_costs(s_wide, spec, spec["ltz"], "ltz of 130", **kw,
                     **comparison_sizes("ltz", wide.shape, n))
        assert torch.equal(wide_bit, (enc_wide < 0).long()), "ltz of 130"
        assert_costs(s_wide_relu, spec, spec["relu"], "relu of 130", **kw,
                     **comparison_sizes("relu", wide.shape, n))
        assert torch.equal(wide_relu, rounded(wide).clamp(min=0)), "relu of 130"
        assert_costs(s_eq, spec, spec["eq"], "== of 40", **kw,
                     **comparison_sizes("eq", eq_a.shape, n, True))
        assert torch.equal(same, (rounded(eq_a) == rounded(eq_b)).double()), "== of 40"
        for (name, section, paired, _, want_fn), (stats, value) in zip(cases, records):
            want = want_fn(rounded(a), rounded(b))
            assert_costs(stats, spec, spec[section], name, **kw,
                         **comparison_sizes(section, want.shape, n, paired))
            assert value.shape == want.shape and torch.equal(value, want), name
        assert_costs(s_ltz, spec, spec["ltz"], "ltz", **kw, **comparison_sizes("ltz", prim.shape, n))
        assert torch.equal(bit, (enc < 0).long()), "ltz"
        assert_costs(s_relu, spec, spec["relu"], "relu primitive", **kw,
                     **comparison_sizes("relu", prim.shape, n))
        assert torch.equal(r, enc.clamp(min=0)), "relu is exact in the ring"


# -- tournament max --------------------------------------------------------------------------------
def level_sizes(batch, length: int, k: int, selected: int, n: int, hot: bool = False) -> dict:
    """Sizes of one tournament level on a (*batch, length) tensor, request lengths included:
    its bit_product carries `selected` values of the pairs' shape, or (one-hot) the values
    and the masks (..., pairs, k)."""
    shape = [*batch, length // 2]
    value_shapes = [shape, [*shape, k]] if hot else [shape] * selected
    return dict(rows=math.prod(batch), length=length, k=k, selected=selected,
                bit_product_request_bytes=bit_product_bytes(shape, value_shapes),
                **ltz_request_bytes(math.prod(shape), n))


def tournament(spec: dict, section: dict, batch, k: int, selected: int, n: int,
               hot: bool = False) -> dict:
    """Sizes of [max_along_last.total] / [max_one_hot.total], from the per-level section
    (whose dealer formula gives the request bytes of each level)."""
    levels, bit_bytes, open_levels, dealer_words, dealer_bytes, length = 0, 0, 0, 0, 0, k
    level = section["level"]
    while length > 1:
        sizes = spec_sizes(spec, level, n, **level_sizes(batch, length, k, selected, n, hot))
        bit_bytes += (sizes["m"] + 7) // 8
        open_levels += tree_open_words(sizes["m"], n)
        dealer_words += tree_dealer_words(sizes["m"], n)
        dealer_bytes += evaluate(level["dealer"]["correction_party"]["dealer_bytes_sent"], **sizes)
        levels += 1
        length = (length + 1) // 2
    assert levels == (math.ceil(math.log2(k)) if k > 1 else 0)
    return dict(rows=math.prod(batch), k=k, selected=selected, levels=levels,
                bit_bytes=bit_bytes, tree_open_words_levels=open_levels,
                tree_dealer_words_levels=dealer_words, dealer_request_bytes_levels=dealer_bytes)


MAX_CASES = [((3, 2), True), ((2, 5), True), ((4, 1, 8), False), ((3, 1), True), ((7,), False)]


def test_tournament_max(inproc_matrix):
    n, provider = inproc_matrix.n, inproc_matrix.provider
    spec = load_spec("comparison")
    sec, hot_sec = spec["max_along_last"], spec["max_one_hot"]
    data = [randn(810 + i, *shape) for i, (shape, _) in enumerate(MAX_CASES)]
    scores = randn(821, 3, 5)

    def party():
        session = current()
        out = []
        for t, (_, with_index) in zip(data, MAX_CASES):
            x = share(t, 0)
            scale = 1 << F_BITS if with_index else 0
            (top, idx), stats = measured(lambda: max_along_last(session, x.share, scale))
            out.append((stats, reveal(session, top), reveal(session, idx)))
        x = share(scores, n - 1)
        (vals, inds), s_dim = measured(lambda: x.max(dim=1))
        whole, s_all = measured(lambda: x.min())
        hot, s_hot = measured(lambda: x.argmax(dim=1, one_hot=True))
        (top, mask), s_prim_hot = measured(lambda: max_one_hot(session, x.share))
        return (out, (s_dim, vals.decrypt(), inds.decrypt()), (s_all, whole.decrypt()),
                (s_hot, hot.decrypt()), (s_prim_hot, reveal(session, top), reveal(session, mask)))

    enc_scores = encode(scores, F_BITS)
    for rank, result in enumerate(inproc_matrix.run(party)):
        out, dim_max, all_min, hot, prim_hot = result
        kw = dict(n=n, rank=rank, provider=provider)
        for t, (shape, with_index), (stats, top, idx) in zip(data, MAX_CASES, out):
            batch, k, selected = shape[:-1], shape[-1], 2 if with_index else 1
            where = f"max_along_last {shape} index={with_index}"
            sizes = tournament(spec, sec, batch, k, selected, n)
            assert_costs(stats, spec, sec["total"], where, **kw, **sizes)
            if k == 2:  # a single level
                assert_costs(stats, spec, sec["level"], where, **kw,
                             **level_sizes(batch, k, k, selected, n))
            want = encode(t, F_BITS).max(-1)
            assert torch.equal(top, want.values), where
            if with_index:
                assert torch.equal(idx, want.indices << F_BITS), where
        # MPCTensor.max(dim): values and indices; min() of all: one row of 15
        stats, vals, inds = dim_max
        assert_costs(stats, spec, sec["total"], "x.max(dim=1)", **kw,
                     **tournament(spec, sec, [3], 5, 2, n))
        assert torch.equal(vals, rounded(scores).max(1).values)
        assert torch.equal(inds, rounded(scores).max(1).indices.double())
        stats, whole = all_min
        sizes = tournament(spec, sec, [], 15, 2, n)
        assert_costs(stats, spec, sec["total"], "x.min()", **kw, **sizes)
        assert float(whole) == float(rounded(scores).min())
        # one-hot: argmax(one_hot=True) is max_one_hot plus local work
        want_hot = F.one_hot(enc_scores.max(1).indices, 5)
        hot_sizes = tournament(spec, hot_sec, [3], 5, 2, n, hot=True)
        for stats, where in ((hot[0], "argmax one_hot"), (prim_hot[0], "max_one_hot")):
            assert_costs(stats, spec, hot_sec["total"], where, **kw, **hot_sizes)
        assert torch.equal(hot[1], want_hot.double())
        assert torch.equal(prim_hot[1], enc_scores.max(1).values)
        assert torch.equal(prim_hot[2], want_hot)


@on_matrix(n=3, backend="inproc")
def test_max_pool2d(matrix):
    """Windows of k = kh * kw, rows = N * C * H_out * W_out, values only (selected 1)."""
    n, provider = matrix.n, matrix.provider
    spec = load_spec("comparison")
    t = randn(830, 2, 1, 4, 6)

    def party():
        x = share(t, 0)
        y, stats = measured(lambda: x.max_pool2d(2))
        z, s3 = measured(lambda: x.max_pool2d(3, stride=1, padding=1))
        return stats, y.decrypt(), s3, z.decrypt()

    for rank, (stats, y, s3, z) in enumerate(matrix.run(party)):
        kw = dict(n=n, rank=rank, provider=provider)
        assert_costs(stats, spec, spec["max_along_last"]["total"], "max_pool2d(2)", **kw,
                     **tournament(spec, spec["max_along_last"], [2, 1, 2, 3], 4, 1, n))
        assert_costs(s3, spec, spec["max_along_last"]["total"], "max_pool2d(3, 1, 1)", **kw,
                     **tournament(spec, spec["max_along_last"], [2, 1, 4, 6], 9, 1, n))
        assert torch.equal(y, F.max_pool2d(rounded(t), 2))
        assert torch.equal(z, F.max_pool2d(rounded(t), 3, stride=1, padding=1))


# -- all pairs at once ------------------------------------------------------------------------------
def and_all_requests(c: int, pw: int) -> list[tuple[str, dict]]:
    """and_all's bands for c - 1 packed bit words of pw words each: groups of at most 5,
    then (c >= 7) the AND of the groups' two results."""
    count, out = c - 1, []
    while count > 1:
        groups = [list(range(a, min(a + 5, count))) for a in range(0, count, 5)]
        out.append(("band", {"inputs": count, "monomials": groups, "shape": [pw]}))
        count = len(groups)
    return out


def all_pairs_requests(batch, k: int, zero: int, n: int) -> list[tuple[str, dict]]:
    """The requests of max_all_pairs on a (*batch, k) tensor: msb of the pairs' differences,
    and_all, one bit_product of the win bits (..., k) and x."""
    c, rows = k + zero, math.prod(batch)
    if c == 1:
        return []
    m = rows * c * (c - 1) // 2
    shape = [*batch, k]
    return (tree_requests(m, n) + and_all_requests(c, (rows * k + 63) // 64)
            + [("bit_product", {"shape": shape, "value_shapes": [shape]})])


def all_pairs_sizes(batch, k: int, zero: int, n: int) -> dict:
    """The variables of [max_all_pairs] that are request lengths."""
    rows, c = math.prod(batch), k + zero
    m = rows * c * (c - 1) // 2
    return dict(rows=rows, k=k, zero=zero, **ltz_request_bytes(m, n),
                and_request_bytes=total_bytes(and_all_requests(c, (rows * k + 63) // 64)),
                bit_product_request_bytes=bit_product_bytes([*batch, k], [[*batch, k]]))


# (batch, k, with_zero): c = k + zero candidates from 2 to 10, and_all in 0, 1 and 2 rounds,
# msb on whole words (m < 13) and sliced, packed words of one and two words (rows * k > 64)
ALL_PAIRS_CASES = [((5,), 2, False), ((1,), 3, False), ((4, 3), 6, False), ((2,), 6, True),
                   ((3,), 7, False), ((10,), 10, False), ((13,), 9, True), ((2, 2), 1, True)]


def test_max_all_pairs(inproc_matrix):
    n, provider = inproc_matrix.n, inproc_matrix.provider
    spec = load_spec("comparison")
    section = spec["max_all_pairs"]
    data = []
    for i, (batch, k, _) in enumerate(ALL_PAIRS_CASES):
        t = torch.round(randn(1600 + i, *batch, k) * 4) / 4  # ties
        t.reshape(-1, k)[::3, -1] = t.reshape(-1, k)[::3, 0]
        data.append(t)

    def party():
        session, out, seen = current(), [], []
        session.provider.observers.append(lambda r: seen.append((r["kind"], r["params"])))
        for t, (_, _, zero) in zip(data, ALL_PAIRS_CASES):
            x = share(t, n - 1)
            seen.clear()
            (top, hot), stats = measured(lambda: max_all_pairs(session, x.share, with_zero=zero))
            out.append((stats, list(seen), reveal(session, top), reveal(session, hot)))
        session.provider.observers.pop()
        return out

    for rank, records in enumerate(inproc_matrix.run(party)):
        for t, (batch, k, zero), (stats, seen, top, hot) in zip(data, ALL_PAIRS_CASES, records):
            where = f"max_all_pairs {batch} k={k} with_zero={zero}"
            assert seen == all_pairs_requests(batch, k, int(zero), n), where
            if k + zero > 1:
                assert_costs(stats, spec, section, where, n=n, rank=rank, provider=provider,
                             **all_pairs_sizes(batch, k, int(zero), n))
            else:
                assert stats["rounds"] == stats["bytes_sent"] == 0, where
            enc_t = encode(t, F_BITS)
            cand = torch.cat([enc_t, torch.zeros_like(enc_t[..., :1])], -1) if zero else enc_t
            want = cand.max(-1)
            assert torch.equal(top, want.values), where
            want_hot = F.one_hot(want.indices, k + int(zero))[..., :k]
            assert torch.equal(hot, want_hot), where


# -- nonlinear functions ------------------------------------------------------------------------
# The correlation requests each function makes, in order (what the sections' `requests`
# list): the test compares them with what the provider saw, and the dealer's request bytes
# are their lengths.
F_EXTRA = 13  # h of the reciprocal's rescaling: power_weights(2, -(j + 1 - f)) for f = 16
SQUARINGS, WIDE_SQUARINGS = 5, 8


def lazy_req(xs, ys, x_bits: int, y_bits: int, square: bool = False) -> tuple[str, dict]:
    return ("lazy_triple", {"x_shape": list(xs), "y_shape": list(ys), "x_bits": x_bits,
                            "y_bits": y_bits, "square": square})


def triple_req(shape) -> tuple[str, dict]:
    return ("triple", {"op": "mul", "a_shape": list(shape), "b_shape": list(shape), "kwargs": {}})


def trunc_req(shape, bits: int) -> tuple[str, dict]:
    return ("trunc", {"shape": list(shape), "bits": bits})


def exp_requests(shape, squarings: int) -> list:
    """z^2 (a square of the settled input), z^2 times the bracket, the squarings at 24
    pending bits and the last but one's result at 32."""
    return ([lazy_req(shape, shape, 0, 0, True), lazy_req(shape, shape, 24, 38)]
            + [lazy_req(shape, shape, 24, 24, True)] * (squarings - 1)
            + [lazy_req(shape, shape, 32, 32, True)])


def lead_requests(shape, n: int) -> list:
    """leading_bit_weighted on x of this shape: carry-save, then the sliced prefix and
    suffix OR (from SLICED_FROM = 21 elements) or the whole-word adder and prefix OR, then
    one b2a of all 64 positions."""
    numel = math.prod(shape)
    out = [("btriple", {"shape": [numel]})] * (n - 2)
    if numel < 21:
        first = ("held_btriple", {"shape": list(shape)}) if n == 2 else ("btriple", {"shape": [numel]})
        out += [first] + [("band", {"inputs": 1 + max(map(max, monos)), "monomials": listed(monos),
                                    "shape": [numel]}) for monos in (COMBINE, COMBINE, COMBINE_LAST)]
        out += [("band", {"inputs": 4, "monomials": [[0, 1, 2, 3]], "shape": [numel]})] * 3
    else:
        w = (numel + 63) // 64
        rows = [64, w]
        out.append(("held_btriple", {"shape": rows}) if n == 2 else ("btriple", {"shape": [64 * w]}))
        for t in (1, 4, 16):
            monos = [((0, t), 1), ((0, 2 * t), 1, (1, t)), ((0, 3 * t), 1, (1, t), (1, 2 * t))]
            monos += [(1, (1, t), (1, 2 * t), (1, 3 * t))] if t != 16 else []
            out.append(("band", {"inputs": 2, "monomials": listed(monos), "shape": rows}))
        for t in (1, 4, 16):
            out.append(("band", {"inputs": 1, "monomials": listed([((0, -3 * t), (0, -2 * t),
                                                                     (0, -t), 0)]), "shape": rows}))
    return out + [("dabits", {"shape": list(shape), "positions": list(range(64))})]


def reciprocal_requests(shape, n: int) -> list:
    numel = math.prod(shape)
    return (lead_requests(shape, n) + [triple_req(shape), trunc_req([numel], 46)]
            + [lazy_req(shape, shape, *bits) for bits in ((0, 16), (16, 16), (16, 16, True),
                                                         (16, 16), (16, 0))])


def inv_sqrt_requests(shape, n: int, root: bool = False) -> list:
    numel = math.prod(shape)
    steps = [(16, 16, True), (0, 16), (16, 16), (17, 17, True), (0, 16), (17, 16)]
    tail = [(0, 17), (16, 0)] if root else [(17, 0)]
    return (lead_requests(shape, n) + [triple_req(shape), trunc_req([numel], 46), triple_req(shape)]
            + [lazy_req(shape, shape, *bits) for bits in steps + tail])


def log_requests(shape, n: int) -> list:
    numel = math.prod(shape)
    sq, plain = lazy_req(shape, shape, 0, 0, True), lazy_req(shape, shape, 0, 0)
    return (lead_requests(shape, n) + [triple_req(shape), trunc_req([numel], 46), triple_req(shape)]
            + [sq, trunc_req([numel], 16), plain, sq, trunc_req([2 * numel], 16)]
            + [plain] * 3 + [sq, trunc_req([4 * numel], 16), trunc_req(shape, 16)])


def sigmoid_requests(shape, n: int) -> list:
    one, two = [1, *shape], [2, *shape]
    return ([lazy_req(shape, shape, 0, 0, True), lazy_req(shape, shape, 15, 15, True),
             lazy_req(one, two, 0, 31), lazy_req(one, two, 23, 31)]
            + tree_requests(3 * math.prod(shape), n)
            + [("bit_product", {"shape": [3, *shape], "value_shapes": [two]})])


def erf_requests(shape, n: int) -> list:
    numel = math.prod(shape)
    sign = tree_requests(numel, n) + [("bit_product", {"shape": list(shape),
                                                       "value_shapes": [list(shape)]})]
    newton = [(16, 32), (32, 16), (16, 16, True), (32, 16), (16, 16, True), (32, 16)]
    sq, plain = lazy_req(shape, shape, 0, 0, True), lazy_req(shape, shape, 0, 0)
    return (sign + sign + [lazy_req(shape, shape, *bits) for bits in newton]
            + [trunc_req(shape, 32), sq, trunc_req([numel], 16)]
            + exp_requests(shape, WIDE_SQUARINGS)
            + [sq, trunc_req([numel], 16), plain, sq, trunc_req([2 * numel], 16),
               triple_req(shape), trunc_req([numel], 16), trunc_req(shape, 16),
               lazy_req(shape, shape, 0, 16), trunc_req([numel], 16), triple_req(shape)])


def gelu_requests(shape, n: int) -> list:
    """t = (x/4)^2, t^2, t^2 times three rows, t^4 times one (Estrin's scheme); the
    polynomial's truncation riding on msb of [x + 4, x - 4]; one bit_product of the three
    region bits with the polynomial (1 row) and (0, x/2, -x/2) (3 rows)."""
    one, three = [1, *shape], [3, *shape]
    return ([lazy_req(shape, shape, 0, 0, True), lazy_req(shape, shape, 13, 13, True),
             lazy_req(one, three, 23, 29), lazy_req(shape, shape, 23, 29), trunc_req(shape, 28)]
            + tree_requests(2 * math.prod(shape), n)
            + [("bit_product", {"shape": three, "value_shapes": [one, three]})])


ELEMENTWISE_REQUESTS = {
    "exp": lambda shape, n: exp_requests(shape, SQUARINGS),
    "reciprocal": reciprocal_requests, "inv_sqrt": inv_sqrt_requests,
    "sqrt": lambda shape, n: inv_sqrt_requests(shape, n, root=True), "log": log_requests,
    "sigmoid": sigmoid_requests, "tanh": sigmoid_requests, "erf": erf_requests,
    "gelu": gelu_requests,
}


def sums_powers_requests(sums) -> list:
    """The 12 powers of t, affine in the pending row sums (bits 32): 1, 2, 4, 4 products."""
    return [lazy_req(sums, sums, *bits) for bits in (
        (32, 32, True), (16, 32), (16, 16, True), (16, 32), (16, 16), (16, 16), (16, 16, True),
        (16, 32), (16, 16), (16, 16), (16, 16))]


def tournament_requests(batch, k: int, n: int) -> list:
    """max_along_last's, values only: each level msb of the pairs, one bit_product."""
    out, length = [], k
    while length > 1:
        shape = [*batch, length // 2]
        out += tree_requests(math.prod(shape), n) + [("bit_product", {"shape": shape,
                                                                       "value_shapes": [shape]})]
        length = (length + 1) // 2
    return out


def softmax_path(k: int) -> str:
    return "all_pairs" if 2 <= k <= 10 else "tournament"


def softmax_requests(name: str, shape, dim: int, n: int) -> list:
    shape = list(shape)
    k = shape[dim]
    batch = shape[:dim % len(shape)] + shape[dim % len(shape) + 1:]
    sums = list(shape)
    sums[dim] = 1
    if softmax_path(k) == "all_pairs":
        out = all_pairs_requests(batch, k, 0, n) + exp_requests(shape, WIDE_SQUARINGS)
        out += sums_powers_requests(sums)
        if name == "softmax":
            out += [lazy_req(sums, sums, 16, 32), lazy_req(sums, sums, 32, 16),
                    lazy_req(shape, shape, 16, 32)]
        return out
    out = tournament_requests(batch, k, n) + exp_requests(shape, WIDE_SQUARINGS)
    out.append(trunc_req(sums, 16))
    if name == "softmax":
        return out + reciprocal_requests(sums, n) + [lazy_req(shape, shape, 16, 16 + F_EXTRA)]
    return out + log_requests(sums, n)


def _spread(seed: int, lo: float, hi: float, extra=()) -> torch.Tensor:
    return torch.cat([uniform(seed, (30 - len(extra),), lo, hi),
                      torch.tensor(extra, dtype=torch.float64)])


def _signed(seed: int, lo: float, hi: float, extra=()) -> torch.Tensor:
    """Magnitudes log-uniform in [lo, hi] with random signs (30 values)."""
    mag = torch.exp(uniform(seed, (30 - len(extra),), math.log(lo), math.log(hi)))
    sign = torch.where(torch.rand(mag.shape, generator=gen(seed + 1)) < 0.5, -1.0, 1.0)
    return torch.cat([mag * sign, torch.tensor(extra, dtype=torch.float64)])


# name: (inputs in the stated domain, the plaintext function); each is held to its
# ERROR_BOUNDS entry (the one table, in mpc_ml/primitives/approximations.py)
ELEMENTWISE = {
    "exp": (_spread(900, -8, 8, (-8.0, 8.0, 0.0)), torch.exp),
    "reciprocal": (_signed(901, 2.0 ** -10, 2.0 ** 40, (1.0, -2.0 ** -15 * 5, 2.0 ** 45)),
                   torch.reciprocal),
    "inv_sqrt": (_signed(902, 2.0 ** -10, 2.0 ** 40, (1.0, 2.0 ** 45)).abs(), torch.rsqrt),
    "sqrt": (_signed(903, 2.0 ** -10, 2.0 ** 40, (0.0, 1.0, 2.0 ** 45)).abs(), torch.sqrt),
    "log": (_signed(904, 2.0 ** -10, 2.0 ** 40, (1.0, 2.0, 2.0 ** 45)).abs(), torch.log),
    "sigmoid": (_spread(905, -30, 30, (-300.0, 300.0, 0.0, 8.0, -8.0, 2.0 ** 45)), torch.sigmoid),
    "tanh": (_spread(906, -10, 10, (-150.0, 150.0, 0.0, 4.0, -4.0, -2.0 ** 45)), torch.tanh),
    "erf": (_spread(907, -6, 6, (-1e4, 1e4, 0.0)), torch.special.erf),
    "gelu": (_spread(908, -6, 6, (-50.0, 50.0, 0.0)), F.gelu),
}
# Each function on 30 elements (the normalisation on bit slices, from 21), 20 (whole words;
# sigmoid's msb of 60 sliced) and 3 (every msb on whole words).
PARTS = (30, 20, 3)
# (shape, dim): k = 6, 5, 4, 2 and 10 (and_all in 1, 0 and 2 rounds; msb sliced and on
# whole words) take all pairs; k = 12 and k = 1 the tournament (0 levels for k = 1).
SOFTMAX_CASES = [((3, 6), 1), ((2, 5, 3), 1), ((4,), 0), ((5, 2), 1), ((2, 10), -1),
                 ((2, 12), 1), ((3, 1), 1)]


def softmax_sizes(comparison: dict, shape, dim: int, n: int) -> dict:
    """The variables a softmax section needs beyond numel, k and request_bytes: the
    tournament's (levels and bit bytes depend on the rows' count only, not their shape)."""
    k = shape[dim]
    rows = math.prod(shape) // k
    sizes = tournament(comparison, comparison["max_along_last"], [rows], k, 1, n)
    return {key: sizes[key] for key in ("levels", "bit_bytes", "tree_open_words_levels",
                                        "tree_dealer_words_levels")}


def observing(session, seen: list):
    """Record the requests the provider sees (kind, params) into seen."""
    session.provider.observers.append(lambda r: seen.append((r["kind"], r["params"])))


@on_matrix(backend="inproc")
def test_functions(matrix):
    """Rounds, bytes, messages and (dealer) the dealer counters of every function per
    approximations.toml, on three sizes each, the requests as listed; and each function's
    ERROR_BOUNDS entry on inputs in its domain."""
    n, provider = matrix.n, matrix.provider
    spec = load_spec("approximations")
    soft_in = [randn(950 + i, *shape, scale=4.0) for i, (shape, _) in enumerate(SOFTMAX_CASES)]

    def party():
        session, out, seen = current(), {}, []
        observing(session, seen)
        for name, (t, _) in ELEMENTWISE.items():
            runs = []
            for size in PARTS:
                x = share(t[:size], 0)
                seen.clear()
                y, stats = measured(lambda: getattr(x, name)())
                runs.append((stats, list(seen), y.decrypt()))
            out[name] = runs
        for name in ("softmax", "log_softmax"):
            runs = []
            for t, (_, dim) in zip(soft_in, SOFTMAX_CASES):
                x = share(t, n - 1)
                seen.clear()
                y, stats = measured(lambda: getattr(x, name)(dim))
                runs.append((stats, list(seen), y.decrypt()))
            out[name] = runs
        session.provider.observers.pop()
        return out

    comparison = load_spec("comparison")
    for rank, out in enumerate(matrix.run(party)):
        kw = dict(n=n, rank=rank, provider=provider)
        for name, (t, fn) in ELEMENTWISE.items():
            bound = ERROR_BOUNDS[name]
            for size, (stats, seen, y) in zip(PARTS, out[name]):
                part = t[:size]
                want_requests = ELEMENTWISE_REQUESTS[name](list(part.shape), n)
                assert seen == want_requests, f"{name} of {size}: requests"
                assert_costs(stats, spec, spec[name], f"{name} of {size}", numel=size,
                             request_bytes=total_bytes(want_requests), **kw)
                x = rounded(part)
                assert bool(bound.in_domain(x).all()), f"{name}: inputs outside {bound.domain}"
                want = fn(x)
                err = (y - want).abs()
                worst = f"{float(err.max()):.3g} at x = {float(part[err.argmax()]):.6g}"
                assert bool((err <= bound.allowed(x, want)).all()), (
                    f"{name}: error {worst}, over {bound.describe()}")
        for name in ("softmax", "log_softmax"):
            for t, (shape, dim), (stats, seen, y) in zip(soft_in, SOFTMAX_CASES, out[name]):
                k = shape[dim]
                where = f"{name} {shape} dim {dim}"
                want_requests = softmax_requests(name, shape, dim, n)
                assert seen == want_requests, f"{where}: requests"
                assert_costs(stats, spec, spec[name][softmax_path(k)], where, numel=t.numel(),
                             k=k, request_bytes=total_bytes(want_requests),
                             **softmax_sizes(comparison, shape, dim, n), **kw)
                want = getattr(torch, name)(rounded(t), dim)
                err = (y - want).abs()
                assert bool((err <= ERROR_BOUNDS[name].allowed(rounded(t), want)).all()), (
                    f"{where}: error {float(err.max()):.3g}, over {ERROR_BOUNDS[name].describe()}")


LEAD_SIZES = (3, 20, 21, 64, 130)


@on_matrix(backend="inproc")
def test_normalisation_and_exp_wide(matrix):
    """[normalisation] either side of its SLICED_FROM = 21 (and across sliced words), and
    [exp_wide], called directly: costs, requests, and the normalisation's sums exactly."""
    n, provider = matrix.n, matrix.provider
    spec = load_spec("approximations")
    values = [torch.cat([torch.tensor([0.0, -2.0 ** -16, 2.0 ** -16, -3.0, 2.0 ** 40]),
                         randn(1700 + m, max(m - 5, 0), scale=100.0)])[:m] for m in LEAD_SIZES]
    weights = torch.stack([torch.arange(64, dtype=torch.int64),
                           torch.ones(64, dtype=torch.int64)], 1)  # sum j bit_j, and the count

    def party():
        session, out, seen = current(), [], []
        observing(session, seen)
        for t in values:
            x = share(t, 0)
            seen.clear()
            sums, stats = measured(lambda: leading_bit_weighted(session, x.share, weights))
            out.append((stats, list(seen), reveal(session, sums)))
        x = share(values[3], 1)
        seen.clear()
        y, stats = measured(lambda: x._exp_wide())
        out.append((stats, list(seen), y.decrypt()))
        session.provider.observers.pop()
        return out

    for rank, out in enumerate(matrix.run(party)):
        kw = dict(n=n, rank=rank, provider=provider)
        for t, (stats, seen, sums) in zip(values, out):
            shape = list(t.shape)
            assert seen == lead_requests(shape, n), f"normalisation of {t.numel()}: requests"
            assert_costs(stats, spec, spec["normalisation"], f"normalisation of {t.numel()}",
                         numel=t.numel(), request_bytes=total_bytes(lead_requests(shape, n)), **kw)
            enc_t = encode(t, F_BITS)
            magnitude = torch.where(enc_t < 0, -enc_t - 1, enc_t)  # the ones' complement
            lead = torch.where(magnitude > 0, torch.floor(torch.log2(magnitude.double())), 0.0)
            negative, found = (enc_t < 0).long(), (magnitude > 0).long()
            assert torch.equal(sums[:, 0], lead.long() * found + 63 * negative), t.numel()
            assert torch.equal(sums[:, 1], found + negative), t.numel()
        stats, seen, y = out[-1]
        shape = list(values[3].shape)
        assert seen == exp_requests(shape, WIDE_SQUARINGS)
        assert_costs(stats, spec, spec["exp_wide"], "exp_wide of 64", numel=64,
                     request_bytes=total_bytes(exp_requests(shape, WIDE_SQUARINGS)), **kw)


# The ends of the stated domains (ERROR_BOUNDS, repeated in approximations.toml): softmax
# with x - max = -a, where exp's squarings are closest to blowing up, and reciprocal at its
# smallest magnitude (with exp's polynomial at 29 fractional bits, exp broke below x = -512:
# v^4 passed the exact truncation's 2^62); sigmoid (all x) at the largest encodable
# magnitudes and either side of its pieces' edges +-8, tanh at +-2^45 and around +-4.
def _domain_end(name: str) -> float:
    return float(re.findall(r"\d+", ERROR_BOUNDS[name].domain)[-1])


U16 = 2.0 ** -16


@pytest.mark.parametrize("name", ("sigmoid", "tanh", "softmax", "reciprocal"))
def test_functions_at_the_ends_of_their_stated_domains(name):
    bound = ERROR_BOUNDS[name]
    if name == "reciprocal":
        assert bound.domain.startswith("|x| in [2^-")
        low = 2.0 ** -float(re.findall(r"2\^-(\d+)", bound.domain)[0])
        t, fn = torch.tensor([low, -low, 2 * low, -3 * low]), torch.reciprocal
    elif name == "softmax":
        a = _domain_end(name)
        assert bound.domain == f"x - max >= -{a:g}"
        t, fn = torch.tensor([0.0, -a, -a / 2, -1.0]), lambda v: torch.softmax(v, 0)
    elif name == "sigmoid":
        assert bound.domain == "all x"
        top = 2.0 ** 46 - 1.5  # below max_encodable(16) = 2^46
        t = torch.tensor([-top, top, -8 - U16, -8.0, -8 + U16, 8 - U16, 8.0, 8 + U16],
                         dtype=torch.float64)
        fn = torch.sigmoid
    else:
        assert bound.domain == "[-2^45, 2^45]"
        a = 2.0 ** 45
        t = torch.tensor([-a, a, -4 - U16, -4.0, 4 - U16, 4.0, 4 + U16], dtype=torch.float64)
        fn = torch.tanh
    assert bool(bound.in_domain(t.double()).all()), (name, t)

    def party():
        x = share(t.double(), 0)
        return (x.softmax(0) if name == "softmax" else getattr(x, name)()).decrypt()

    value = mpc.run(party, world_size=2, provider="tfp")[0]
    want = fn(rounded(t.double()))
    err = (value - want).abs()
    assert bool((err <= bound.allowed(rounded(t.double()), want)).all()), (
        f"{name} at {t.tolist()}: errors {err.tolist()}, over {bound.describe()}")
