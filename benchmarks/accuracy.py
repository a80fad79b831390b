#!/usr/bin/env python
"""Accuracy table: every nonlinear function against torch, and exactness of the rest.

Parties run as threads (mpc.run, backend inproc, provider tfp, default Config). Each
function is evaluated on a fixed grid over its domain; the grid points are multiples of
2^-16 (the fixed-point resolution), so the shared inputs are exactly the grid and the
error is the function's own. Party 0 returns the decrypted results; errors are taken
against torch in float64. Each function's target is its entry in the one table of
error bounds, mpc_ml.primitives.approximations.ERROR_BOUNDS, per element:

    c absolute             |err| <= c
    c * max(1, |f(x)|)     |err| <= c * max(1, |true|)   (relative above 1, absolute below)
    ... + c |x|            plus c times the input's magnitude

and a row passes when every grid point meets its target. The exact operations (relu,
comparisons, max/argmax, max_pool2d) are checked on --exact-n random inputs in
+-1e4 for mismatches with torch; a comparison of two values closer than 2^-16 but not
equal (a near-tie the encoding may merge) is left out and counted. Also measured: each
function's communication rounds (mpc.stats) and the documented results outside the
domain.

    python benchmarks/accuracy.py                          # print the Markdown
    python benchmarks/accuracy.py --out docs/accuracy.md   # and write it
    python benchmarks/accuracy.py --points 2001 --exact-n 10000 --world-size 3

Exits 1 when a row misses its target.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (benchmarks/common.py: the Markdown table writer)

import mpc_ml as mpc  # noqa: E402
from mpc_ml.nn.export import layer_norm  # noqa: E402
from mpc_ml.primitives.approximations import ERROR_BOUNDS, ErrorBound  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
UNIT = 2.0 ** -16  # fixed-point resolution at the default precision_bits
LOGIT_ROWS_OF = 10  # softmax / log_softmax rows


def snap(t: torch.Tensor) -> torch.Tensor:
    """Round to multiples of 2^-16 (what encrypt() shares)."""
    return torch.round(t / UNIT) * UNIT


def linear(lo: float, hi: float) -> Callable[[int], torch.Tensor]:
    return lambda n: snap(torch.linspace(lo, hi, n, dtype=torch.float64))


def logspaced(lo_exp: float, hi_exp: float, alternate: bool = False,
              zero: bool = False) -> Callable[[int], torch.Tensor]:
    """n points 2^e for e evenly spaced in [lo_exp, hi_exp]; optionally alternating sign
    (both signs over the whole range) and with an exact 0 first."""
    def make(n: int) -> torch.Tensor:
        t = snap(torch.logspace(lo_exp, hi_exp, n, base=2, dtype=torch.float64))
        if alternate:
            t[1::2] = -t[1::2]
        if zero:
            t[0] = 0.0
        return t
    return make


def logits(scale: float, width: int = LOGIT_ROWS_OF) -> Callable[[int], torch.Tensor]:
    """n // width rows of `width` random logits: N(0, scale^2), or uniform in +-scale if
    negative (rows of 10 take the all-pairs max and the polynomials in the sum, rows of
    more than 10 the tournament and the reciprocal / log)."""
    def make(n: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(7)
        rows = max(1, n // width)
        if scale > 0:
            t = torch.randn(rows, width, generator=g, dtype=torch.float64) * scale
        else:
            t = (torch.rand(rows, width, generator=g, dtype=torch.float64) * 2 - 1) * -scale
        return snap(t)
    return make


def quotient_inputs(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x on [-100, 100] against y on [0.1, 100] in a fixed random order."""
    g = torch.Generator().manual_seed(11)
    x = snap(torch.linspace(-100, 100, n, dtype=torch.float64))
    y = snap(torch.linspace(0.1, 100, n, dtype=torch.float64))[torch.randperm(n, generator=g)]
    return x, y


ATTENTION_KEYS = 128  # a BERT-base / GPT-2 sequence
HIDDEN = 768


def causal_scores(n: int) -> torch.Tensor:
    """Rows of 128 attention scores N(0, 3^2) under a causal mask: row i keeps keys 0..i
    (i mod 128), the others at -500, where attention clamps a mask (nn/export.py)."""
    t = logits(3.0, ATTENTION_KEYS)(n)
    keep = torch.arange(ATTENTION_KEYS) <= (torch.arange(len(t)) % ATTENTION_KEYS)[:, None]
    return torch.where(keep, t, torch.full_like(t, -500.0))


def hidden_states(n: int) -> torch.Tensor:
    """64 rows of 768 hidden features, row r N(mean_r, sigma_r^2) with sigma_r log-spaced
    over [0.3, 100] and mean_r in +-10 (n is ignored: the rows are whole)."""
    g = torch.Generator().manual_seed(13)
    sigma = torch.logspace(math.log10(0.3), 2, 64, dtype=torch.float64)[:, None]
    mean = (torch.rand(64, 1, generator=g, dtype=torch.float64) * 2 - 1) * 10
    return snap(mean + sigma * torch.randn(64, HIDDEN, generator=g, dtype=torch.float64))


# layer_norm is (x - mean) * inv_sqrt(var + eps): inv_sqrt's relative bound on 1/sigma, and
# as much again for the roundings of var (a mean of truncated squares) and of the product.
LAYER_NORM_BOUND = dataclasses.replace(
    ERROR_BOUNDS["inv_sqrt"], method="(x - mean) * inv_sqrt(var + eps)",
    tolerance=2 * ERROR_BOUNDS["inv_sqrt"].tolerance,
    domain="var + eps in (0, 2^45]",
    in_domain=lambda x: (x.var(-1, keepdim=True, correction=0) <= 2.0 ** 45).expand_as(x))


# x / y is x * reciprocal(y): the reciprocal's bound on the quotient, plus the 2^-16
# resolution of 1/y scaled by |x|; its domain is the reciprocal's, for y.
QUOTIENT_BOUND = dataclasses.replace(ERROR_BOUNDS["reciprocal"], method="x * reciprocal(y)",
                                     per_input=UNIT)


@dataclass
class Row:
    """One function on one grid over (part of) its domain: private op, torch op, bound."""

    name: str  # the function: its key in ERROR_BOUNDS
    domain: str  # what the grid covers
    make: Callable[[int], torch.Tensor | tuple]  # grid size -> input(s)
    private: Callable  # MPCTensor(s) -> MPCTensor
    plain: Callable  # float64 tensor(s) -> tensor
    grid: str = "linear"
    bound: ErrorBound | None = None  # default ERROR_BOUNDS[name]

    def __post_init__(self):
        if self.bound is None:
            self.bound = ERROR_BOUNDS[self.name]


ROWS = [
    Row("exp", "[-8, 8]", linear(-8, 8), lambda x: x.exp(), torch.exp),
    Row("reciprocal", "[0.1, 100]", linear(0.1, 100), lambda x: x.reciprocal(), torch.reciprocal),
    Row("reciprocal", "±[2^-15, 2^45]", logspaced(-15, 45, alternate=True),
        lambda x: x.reciprocal(), torch.reciprocal, "log, ± alternating"),
    Row("sqrt", "[0.01, 100]", linear(0.01, 100), lambda x: x.sqrt(), torch.sqrt),
    Row("sqrt", "[0, 2^45]", logspaced(-16, 45, zero=True), lambda x: x.sqrt(), torch.sqrt,
        "log, and 0"),
    Row("inv_sqrt", "[0.01, 100]", linear(0.01, 100), lambda x: x.inv_sqrt(), torch.rsqrt),
    Row("inv_sqrt", "[2^-16, 2^45]", logspaced(-16, 45), lambda x: x.inv_sqrt(), torch.rsqrt,
        "log"),
    Row("log", "[0.01, 100]", linear(0.01, 100), lambda x: x.log(), torch.log),
    Row("log", "[2^-16, 2^45]", logspaced(-16, 45), lambda x: x.log(), torch.log, "log"),
    Row("sigmoid", "[-10, 10]", linear(-10, 10), lambda x: x.sigmoid(), torch.sigmoid),
    Row("sigmoid", "±[2^-16, 2^45]", logspaced(-16, 45, alternate=True), lambda x: x.sigmoid(),
        torch.sigmoid, "log, ± alternating"),
    Row("tanh", "[-10, 10]", linear(-10, 10), lambda x: x.tanh(), torch.tanh),
    Row("tanh", "±[2^-16, 2^45]", logspaced(-16, 45, alternate=True), lambda x: x.tanh(),
        torch.tanh, "log, ± alternating"),
    Row("erf", "[-6, 6]", linear(-6, 6), lambda x: x.erf(), torch.erf),
    Row("erf", "[-1e4, 1e4]", linear(-1e4, 1e4), lambda x: x.erf(), torch.erf),
    Row("gelu", "[-6, 6]", linear(-6, 6), lambda x: x.gelu(), F.gelu),
    Row("cos", "[-100, 100]", linear(-100, 100), lambda x: x.cos(), torch.cos),
    Row("sin", "[-100, 100]", linear(-100, 100), lambda x: x.sin(), torch.sin),
    Row("softmax", "rows of 10, N(0, 5²)", logits(5.0), lambda x: x.softmax(-1),
        lambda t: torch.softmax(t, -1), "random"),
    Row("softmax", "rows of 10, U(±350)", logits(-350.0), lambda x: x.softmax(-1),
        lambda t: torch.softmax(t, -1), "random"),
    Row("softmax", "rows of 16, N(0, 5²)", logits(5.0, 16), lambda x: x.softmax(-1),
        lambda t: torch.softmax(t, -1), "random"),
    Row("log_softmax", "rows of 10, N(0, 5²)", logits(5.0), lambda x: x.log_softmax(-1),
        lambda t: torch.log_softmax(t, -1), "random"),
    Row("log_softmax", "rows of 16, N(0, 5²)", logits(5.0, 16), lambda x: x.log_softmax(-1),
        lambda t: torch.log_softmax(t, -1), "random"),
    Row("x / y", "x ∈ [-100, 100], y ∈ [0.1, 100]", quotient_inputs, lambda x, y: x / y,
        torch.div, "linear, y shuffled", QUOTIENT_BOUND),
    # attention's ranges (BERT-base, GPT-2 small): the keys, the feed-forward, the hidden width
    Row("softmax", "rows of 128, N(0, 3²) (attention scores)", logits(3.0, ATTENTION_KEYS),
        lambda x: x.softmax(-1), lambda t: torch.softmax(t, -1), "random"),
    Row("softmax", "rows of 128, U(±40)", logits(-40.0, ATTENTION_KEYS),
        lambda x: x.softmax(-1), lambda t: torch.softmax(t, -1), "random"),
    Row("softmax", "rows of 128, N(0, 3²), causal mask at -500", causal_scores,
        lambda x: x.softmax(-1), lambda t: torch.softmax(t, -1), "random"),
    Row("gelu", "[-10, 10] (feed-forward)", linear(-10, 10), lambda x: x.gelu(), F.gelu),
    Row("layer_norm", "rows of 768, N(μ, σ²), σ ∈ [0.3, 100], |μ| <= 10", hidden_states,
        lambda x: layer_norm(x, [HIDDEN], eps=1e-12),
        lambda t: F.layer_norm(t, [HIDDEN], eps=1e-12), "random", LAYER_NORM_BOUND),
]

# Results outside the domain as mpc_ml/primitives/approximations.py documents them:
# (op, input, what the docs say, the value that implies or None where any value will do).
OUT_OF_DOMAIN = [
    ("reciprocal", 0.0, "0", 0.0),
    ("reciprocal", -4.0, "-0.25 (negative x is in the domain)", -0.25),
    ("sqrt", -4.0, "sqrt(|x|) = 2", 2.0),
    ("sqrt", 0.0, "0", 0.0),
    ("inv_sqrt", -4.0, "inv_sqrt(|x|) = 0.5", 0.5),
    ("inv_sqrt", 0.0, "0", 0.0),
    ("log", -4.0, "log(|x|) = 1.386", math.log(4)),
    ("log", 0.0, "an unspecified finite value", None),
    ("exp", 16.0, "beyond the stated accuracy (x > 12.5; about 0.4% low at 16)", None),
    ("exp", 22.0, "overflow (x > 21)", None),
    ("exp", -75.0, "e^x ≈ 0 (garbage only below -80)", 0.0),
    ("exp", -100.0, "garbage (x < -80)", None),
]


def _encrypt(t: torch.Tensor, src: int) -> "mpc.MPCTensor":
    return mpc.encrypt(t if mpc.rank() == src else None, src=src, shape=t.shape)


def _measure(fn: Callable, *xs) -> tuple[torch.Tensor, int]:
    """(decrypted fn(*xs), rounds fn took)."""
    mpc.reset_stats()
    y = fn(*xs)
    rounds = mpc.stats()["rounds"]
    return y.decrypt().to(torch.float64), rounds


def functions_party(points: int) -> dict | None:
    """Party body: every row's decrypted result and rounds, and the out-of-domain results."""
    rows = []
    for row in ROWS:
        inputs = row.make(points)
        inputs = inputs if isinstance(inputs, tuple) else (inputs,)
        private = [_encrypt(t, i % mpc.world_size()) for i, t in enumerate(inputs)]
        rows.append(_measure(row.private, *private))
    ood = []
    for op, x, _, _ in OUT_OF_DOMAIN:
        value = _encrypt(torch.tensor([x], dtype=torch.float64), 0)
        ood.append(_measure(getattr(mpc.MPCTensor, op), value)[0].item())
    return {"rows": rows, "out_of_domain": ood} if mpc.rank() == 0 else None


def exact_inputs(n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """a, b uniform in +-1e4 (not snapped: encryption rounds them), b = a at every 10th;
    a as rows of 10 with ties: every 10th row repeats its max, every 10th from the 5th its min."""
    g = torch.Generator().manual_seed(3)
    a = (torch.rand(n, generator=g, dtype=torch.float64) * 2 - 1) * 1e4
    b = (torch.rand(n, generator=g, dtype=torch.float64) * 2 - 1) * 1e4
    b[::10] = a[::10]
    rows = a.reshape(-1, 10).clone()
    rows[::10, 9] = rows[::10].max(1).values
    rows[5::10, 8] = rows[5::10].min(1).values
    return a, b, rows


def pool_side(n: int) -> int:
    """Side of the 1x4xSxS image made from the first 4 S^2 of the n inputs."""
    return math.isqrt(n // 4)


def exact_party(n: int) -> dict | None:
    """Party body: relu, comparisons, max/argmax, min/argmin, max_pool2d on n inputs."""
    a, b, rows = exact_inputs(n)
    x, y, r = _encrypt(a, 0), _encrypt(b, 1 % mpc.world_size()), _encrypt(rows, 0)
    s = pool_side(n)
    out = {"relu": _measure(lambda v: v.relu(), x)}
    for op in ("lt", "le", "gt", "ge", "eq", "ne"):
        out[op] = _measure(getattr(mpc.MPCTensor, op), x, y)
    out["max"] = _measure(lambda v: v.max(1)[0], r)
    out["argmax"] = _measure(lambda v: v.argmax(1), r)
    out["min"] = _measure(lambda v: v.min(1)[0], r)
    out["argmin"] = _measure(lambda v: v.argmin(1), r)
    out["max_pool2d"] = _measure(lambda v: v[:4 * s * s].reshape(1, 4, s, s).max_pool2d(3, 2, 1), x)
    return out if mpc.rank() == 0 else None


def exact_expected(n: int) -> dict:
    """What torch gives on the encoded inputs: {op: (expected, near-tie mask to leave out)}."""
    a, b, rows = exact_inputs(n)
    qa, rows = snap(a), snap(rows)
    near = ((a - b).abs() < UNIT) & (a != b)
    exp = {"relu": (qa.clamp(min=0), torch.zeros(n, dtype=torch.bool))}
    for op in ("lt", "le", "gt", "ge", "eq", "ne"):
        exp[op] = (getattr(torch, op)(a, b).double(), near)
    for op in ("max", "min"):
        values, indices = getattr(rows, op)(1)
        exp[op] = (values, torch.zeros(values.shape, dtype=torch.bool))
        exp["arg" + op] = (indices.double(), torch.zeros(values.shape, dtype=torch.bool))
    s = pool_side(n)
    pooled = F.max_pool2d(qa[:4 * s * s].reshape(1, 4, s, s), 3, 2, 1)
    exp["max_pool2d"] = (pooled, torch.zeros(pooled.shape, dtype=torch.bool))
    return exp


# -- report --------------------------------------------------------------------------------
def fmt(v: float) -> str:
    return "0" if v == 0 else f"{v:.2e}"


def function_rows(results: dict, points: int) -> tuple[str, bool]:
    head = ["function", "domain", "grid", "max abs err", "mean abs err", "max err / max(1,|f|)",
            "worst at", "target", "pass", "rounds"]
    cells, ok = [], True
    for row, (got, rounds) in zip(ROWS, results["rows"]):
        inputs = row.make(points)
        inputs = inputs if isinstance(inputs, tuple) else (inputs,)
        true = row.plain(*inputs)
        err = (got - true).abs()
        over = err / row.bound.allowed(inputs[0], true)
        worst = int(over.argmax())
        at = ", ".join(f"{t.reshape(-1)[worst].item():.6g}" for t in inputs)
        if row.name.endswith("softmax") or row.name == "layer_norm":
            at = f"row {worst // true.shape[-1]}"
        # the bound holds on the domain: a grid must stay inside it (x / y: the divisor's)
        inside = bool(row.bound.in_domain(inputs[-1]).all())
        passed = inside and bool((over <= 1).all())
        ok &= passed
        rel = (err / true.abs().clamp(min=1.0)).max().item()
        verdict = "pass" if passed else "**FAIL**" if inside else "**FAIL** (grid outside the domain)"
        cells.append([row.name, row.domain, f"{true.numel():,} {row.grid}", fmt(err.max().item()),
                      fmt(err.mean().item()), fmt(rel), at, row.bound.describe(), verdict, rounds])
    return common.markdown_table(head, cells), ok


def exact_rows(results: dict, n: int) -> tuple[str, bool]:
    head = ["op", "inputs", "compared", "mismatches", "near-ties left out", "rounds"]
    cells, ok = [], True
    for op, (expected, leave_out) in exact_expected(n).items():
        got, rounds = results[op]
        got = got.reshape(expected.shape)
        bad = int(((got != expected) & ~leave_out).sum())
        ok &= bad == 0
        if op in ("lt", "le", "gt", "ge", "eq", "ne"):
            what = "x vs y (y = x at every 10th)"
        elif op == "relu":
            what = "x"
        elif op == "max_pool2d":
            what = f"x as a 1x4x{pool_side(n)}x{pool_side(n)} image, kernel 3, stride 2, padding 1"
        else:
            what = "rows of 10, dim 1 (ties: 1 row in 10 has its max twice, 1 its min twice)"
        cells.append([op, what, f"{expected.numel():,}", bad if bad == 0 else f"**{bad}**",
                      int(leave_out.sum()), rounds])
    return common.markdown_table(head, cells), ok


def report(fn_results: dict, exact_results: dict, args, seconds: float) -> tuple[str, bool]:
    command = " ".join(["python", "benchmarks/accuracy.py", *sys.argv[1:]])
    fn_table, fn_ok = function_rows(fn_results, args.points)
    ex_table, ex_ok = exact_rows(exact_results, args.exact_n)
    ood_cells, ood_ok = [], True
    for (op, x, doc, value), got in zip(OUT_OF_DOMAIN, fn_results["out_of_domain"]):
        agrees = value is None or abs(got - value) <= 1e-3 * max(1.0, abs(value))
        ood_ok &= agrees
        ood_cells.append([op, f"{x:g}", f"{got:.6g}", doc,
                          "—" if value is None else "yes" if agrees else "**no**"])
    ood_table = common.markdown_table(["op", "x", "result", "documented", "as documented"],
                                      ood_cells)
    text = "\n".join([
        "# Accuracy of mpc_ml's private functions",
        "",
        f"Generated by `{command}` ({args.world_size} parties, backend inproc, provider tfp, "
        f"default Config: precision_bits = 16; torch {torch.__version__}; {seconds:.0f} s). "
        "Do not edit by hand: rerun the command.",
        "",
        "## Nonlinear functions against torch (float64)",
        "",
        "Grid points are multiples of 2^-16, so the shared input is exactly the grid point. "
        "Targets are the bounds of `ERROR_BOUNDS` (mpc_ml/primitives/approximations.py) and hold "
        "per point: `c absolute` is \\|err\\| <= c; `c * max(1, \\|f(x)\\|)` is relative above 1 "
        "and absolute below, f the true value; `+ c \\|x\\|` adds c times the input's magnitude "
        "(x / y: the reciprocal's bound and the 2^-16 resolution of 1/y times \\|x\\|). Rows with "
        "a wide domain test the whole domain that ERROR_BOUNDS states; rounds are party 0's "
        "communication rounds for the whole call.",
        "",
        "The last five rows are attention's ranges (BERT-base, GPT-2 small): 128 keys, scores "
        "scaled by 1/sqrt(d), a causal mask, the feed-forward's GELU inputs, and LayerNorm over "
        "768 features. GELU is PUMA's piecewise form (Dong et al., PUMA, 2023, arXiv:2307.12533, "
        "sec. 4: a polynomial on [-4, 4], relu outside); softmax subtracts the row's max before "
        "exp, as PUMA and CrypTen do (Knott et al., NeurIPS 2021), then multiplies by a "
        "Newton reciprocal of the sum; LayerNorm's 1/sqrt(var + eps) is the normalised Newton "
        "inverse square root of the inv_sqrt row (CrypTen's method with a shallower "
        "normalisation). Models are held to these bounds end to end in tests/test_export.py "
        "and the bench rows bert_base and gpt2_small.",
        "",
        fn_table,
        "",
        f"## Exact operations on {args.exact_n:,} random inputs in ±1e4",
        "",
        "Inputs are float64, uniform in ±1e4, and go through encryption's rounding; the "
        "expected values are torch's on the rounded inputs (comparisons: on the raw inputs, "
        "leaving out pairs closer than 2^-16 that are not equal). Every mismatch counts.",
        "",
        ex_table,
        "",
        "## Documented results outside the domain",
        "",
        "No error can be raised without revealing the input, so out-of-domain inputs give "
        "a result instead of an exception; the docs say which. `as documented` checks the "
        "result against the value the docs give or imply (within 1e-3·max(1, \\|value\\|)); "
        "— where the docs promise no value.",
        "",
        ood_table,
        "",
    ])
    return text, fn_ok and ex_ok and ood_ok


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--points", type=int, default=10_001, help="grid points per function")
    p.add_argument("--exact-n", type=int, default=10**6, help="random inputs for exact ops")
    p.add_argument("--world-size", type=int, default=2)
    p.add_argument("--out", type=Path, help="also write the Markdown here")
    args = p.parse_args(argv)
    if args.exact_n % 10 or args.exact_n < 40:
        p.error("--exact-n must be a multiple of 10, at least 40")
    start = time.perf_counter()
    fn_results = mpc.run(functions_party, world_size=args.world_size, provider="tfp",
                         args=(args.points,))[0]
    exact_results = mpc.run(exact_party, world_size=args.world_size, provider="tfp",
                            args=(args.exact_n,))[0]
    text, ok = report(fn_results, exact_results, args, time.perf_counter() - start)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
