"""Nonlinear functions on shares (exp, log, reciprocal, sqrt, sigmoid, tanh, erf, softmax, cos, sin).

Written once against shares and the primitives, so they work for any number of parties
and either provider. They truncate exactly whatever config.truncation says: their
intermediates sit far above 2^f (up to 2^54), where local truncation would often fail.
ERROR_BOUNDS below is the one table of each function's method,
domain and error (for the default precision_bits = 16): the tests, the accuracy report
(benchmarks/accuracy.py -> docs/accuracy.md) and the validation mode all read it.

Outside the domain (no error can be raised without revealing data): exp(x) for
x > 12.5 loses accuracy (0.4% at 16), overflows beyond 21 and for x < -80 is garbage
(erf and softmax use a wider exp, right down to -710); reciprocal(0) = 0, and
reciprocal(-2^-16) = 0 (the ones' complement used for negative inputs is 0 there); sqrt,
inv_sqrt and log of a negative x give their value at |x|; inv_sqrt(0) = sqrt(0) = 0;
log(0) is an unspecified finite value; tanh(x) for |x| > 2^46 - 4 (the last 4 of the
encodable range) is garbage: 2x + 8 wraps in its comparisons.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ..core.encoding import encode
from ..session import Session
from .beaver import beaver_many
from .binary import bit_products, msb
from .comparison import ALL_PAIRS_UP_TO, ltz_times, max_all_pairs, max_along_last
from .lazy_product import lazy_products
from .normalization import SIGN_BIT, leading_bit_weighted
from .truncation import truncate, truncate_later

Operand = torch.Tensor | tuple[torch.Tensor, int]
"""A settled share, or (share, bits still to truncate): a pending product (lazy_product.py)."""


def _split(x: Operand) -> tuple[torch.Tensor, int]:
    return x if isinstance(x, tuple) else (x, 0)

EXP_SQUARINGS = 5
"""x.exp(): z = x / 32, accurate on [-8, 8], garbage below about -89 (p(z) > 1 there)."""
EXP_WIDE_SQUARINGS = 8
"""The exp inside sigmoid, tanh, erf and softmax: z = x / 256, nothing wrong down to -710."""
EXP_DOMAIN = 8.0
EXP_MAX_INPUT = 12.0
P_EXP = 24
"""Fractional bits of exp's polynomial."""
RECIPROCAL_STEPS = 2
ERF_STEPS = 3
INV_SQRT_STEPS = 2
LOG_DEGREE = 8
ERF_CLAMP = 4.0
# Abramowitz & Stegun 7.1.26: erf(x) = 1 - t (a1 + a2 t + ... + a5 t^4) e^(-x^2), t = 1/(1 + p x)
ERF_P = 0.3275911
ERF_A = (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)


@dataclass(frozen=True)
class ErrorBound:
    """A function's stated accuracy: |y - f(x)| <= tolerance * (max(1, |f(x)|) if relative
    else 1) + per_input * |x|, for x in the domain."""

    method: str
    domain: str
    in_domain: Callable[[torch.Tensor], torch.Tensor]
    tolerance: float
    relative: bool
    per_input: float = 0.0

    def allowed(self, x: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
        """The largest error allowed at each point (x and true broadcast together)."""
        scale = true.abs().clamp(min=1.0) if self.relative else torch.ones_like(true)
        return self.tolerance * scale + self.per_input * x.abs()

    def describe(self) -> str:
        """The bound as the specs and docs write it, e.g. "1e-3 * max(1, |f(x)|)"."""
        text = _short(self.tolerance) + (" * max(1, |f(x)|)" if self.relative else " absolute")
        return text + (f" + {_short(self.per_input)} |x|" if self.per_input else "")


def _short(value: float) -> str:
    mantissa, exponent = f"{value:e}".split("e")
    return f"{float(mantissa):g}e{int(exponent)}"


def _within(lo: float, hi: float) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda x: (x >= lo) & (x <= hi)


def _everywhere(x: torch.Tensor) -> torch.Tensor:
    return torch.ones_like(x, dtype=torch.bool)


ERROR_BOUNDS: dict[str, ErrorBound] = {
    "exp": ErrorBound("degree-4 fit at x/2^5 (24 fractional bits), 5 squarings at adaptive precision",
                      "[-8, 8]", _within(-8, 8), 1e-3, True),
    "reciprocal": ErrorBound("leading-bit normalisation, linear guess, 2 Newton steps, rescale",
                             "|x| in [2^-15, 2^45]",
                             lambda x: (x.abs() >= 2.0 ** -15) & (x.abs() <= 2.0 ** 45), 1e-3, True),
    "inv_sqrt": ErrorBound("normalisation, linear guess, 2 Newton steps, rescale", "(0, 2^45]",
                           lambda x: (x > 0) & (x <= 2.0 ** 45), 1e-3, True),
    "sqrt": ErrorBound("|m| * inv_sqrt(m) rescaled", "[0, 2^45]", _within(0, 2.0 ** 45), 1e-3, True),
    "log": ErrorBound("normalisation, degree-8 fit of ln on [0.5, 1], + e ln 2", "(0, 2^45]",
                      lambda x: (x > 0) & (x <= 2.0 ** 45), 1e-3, True),
    "sigmoid": ErrorBound("degree-7 fit of sigmoid(8w) in w = x/8 on [-8, 8], 0 below and 1 above "
                          "(three comparisons)", "all x", _everywhere, 5e-4, False),
    "tanh": ErrorBound("2 sigmoid(2x) - 1", "[-2^45, 2^45]", _within(-2.0 ** 45, 2.0 ** 45),
                       1e-3, False),
    "erf": ErrorBound("Abramowitz & Stegun 7.1.26 on min(|x|, 4), sign restored", "all x",
                      _everywhere, 3e-4, False),
    "gelu": ErrorBound("x / 2 + a degree-7 fit of x (Phi(x) - 1/2) in (x/4)^2 on [-4, 4], relu "
                       "outside", "x < 2^39 (its x / 2 term, held at 2^24, wraps above)",
                       lambda x: x < 2.0 ** 39, 5e-4, False),
    "softmax": ErrorBound("x - max (all pairs for k <= 10, else tournament), exp, sum, 1/sum "
                          "(degree-12 fit and a Newton step for k <= 10, else reciprocal)",
                          "x - max >= -700", _everywhere, 1e-3, False),
    "log_softmax": ErrorBound("(x - max) - log(sum exp(x - max)), the log a degree-12 fit in "
                              "the sum for k <= 10", "x - max >= -700", _everywhere, 1e-3, True),
    "cos": ErrorBound("angle addition: each party's share read as an angle, e^ix the product of "
                      "the parties' unit complex numbers (ceil(log2 n) product rounds)",
                      "|x| <= 2^30", _within(-2.0 ** 30, 2.0 ** 30), 5e-5, False),
    "sin": ErrorBound("angle addition: each party's share read as an angle, e^ix the product of "
                      "the parties' unit complex numbers (ceil(log2 n) product rounds)",
                      "|x| <= 2^30", _within(-2.0 ** 30, 2.0 ** 30), 5e-5, False),
}
"""Method, domain and error of every function here, at precision_bits = 16."""


class _Ops:
    """Share-level helpers for one session: batched products, constants, combinations."""

    def __init__(self, session: Session):
        self.s = session
        self.f = session.config.precision_bits

    def const(self, value: float, like: torch.Tensor, bits: int | None = None) -> torch.Tensor:
        """Shares of a public constant (party 0 holds it) at `bits` fractional bits."""
        enc = int(encode(value, bits if bits is not None else self.f))
        return torch.full_like(like, enc if self.s.rank == 0 else 0)

    def lazy(self, pairs: list, shift: int | None = None) -> list[tuple[torch.Tensor, int]]:
        """Products of pairs of operands (settled or pending), left pending by `shift`
        (default f): one round for all, the operands' own truncations included."""
        shift = self.f if shift is None else shift
        items = []
        for x, y in pairs:
            (xs, xb), (ys, yb) = _split(x), _split(y)
            items.append((xs, xb, xs if y is x else ys, xb if y is x else yb))
        return [(z, shift) for z in lazy_products(self.s, items, exact=True)]

    def settle(self, x: Operand) -> torch.Tensor:
        """A pending operand truncated (1 round); a settled one as it is."""
        share, bits = _split(x)
        return truncate(self.s, share, bits, exact=True)

    def mul(self, pairs: list, shift: int | None = None) -> list[torch.Tensor]:
        """Products of pairs of operands, truncated by `shift` (default f): 2 rounds for all."""
        zs = [z for z, _ in self.lazy(pairs, shift)]
        shift = self.f if shift is None else shift
        flat = truncate(self.s, torch.cat([z.reshape(-1) for z in zs]), shift, exact=True)
        out, offset = [], 0
        for z in zs:
            out.append(flat[offset:offset + z.numel()].reshape(z.shape))
            offset += z.numel()
        return out

    def mul1(self, x: torch.Tensor, y: torch.Tensor, shift: int | None = None) -> torch.Tensor:
        return self.mul([(x, y)], shift)[0]

    def mul_bits(self, pairs: list) -> list[torch.Tensor]:
        """x * bit for 0/1 integer bit shares: one round, no truncation."""
        return beaver_many(self.s, [("mul", x, b, {}) for x, b in pairs])

    def combine(self, terms: list, constant: float = 0.0, like: torch.Tensor | None = None) -> torch.Tensor:
        """constant + sum c_k x_k for public c_k: one truncation round."""
        acc = sum(x * int(encode(c, self.f)) for x, c in terms)
        acc = truncate(self.s, acc, self.f, exact=True)
        return acc + self.const(constant, acc) if constant else acc

    def affine(self, x: Operand, scale: float, constant: float) -> tuple[torch.Tensor, int]:
        """constant + scale x, left pending: no round (its truncation by f, plus x's own
        pending bits, is absorbed by the next lazy product). |x scale| 2^(2f + bits) must
        stay below 2^62: for the small values of the initial guesses only."""
        share, bits = _split(x)
        return share * int(encode(scale, self.f)) + self.const(constant, share, 2 * self.f + bits), \
            self.f + bits

    def power_weights(self, y_bound: float, exponents: np.ndarray) -> tuple[torch.Tensor, int]:
        """(weights, h): 2^exponents[j] for each leading-bit position j, with h extra
        fractional bits, as many as keep y * weight below 2^61 for |y| <= y_bound; the
        product y * (sum_j lead_j weights_j) is then truncated by f + h."""
        top = float(np.max(exponents))
        h = int(math.floor(61 - math.log2(y_bound * 2 ** self.f) - (top + self.f)))
        h = max(0, min(h, 40))
        return torch.tensor(np.round(np.exp2(exponents + self.f + h)), dtype=torch.int64), h

    def newton_reciprocal(self, d: Operand, y: Operand, steps: int) -> tuple[torch.Tensor, int]:
        """`steps` Newton steps y <- y (2 - d y) towards 1/d in steps + 1 rounds, the result
        left pending. With e = 1 - d y_0, step k is y_{k+1} = y_k (1 + e^(2^k)) (then
        1 - d y_{k+1} = e^(2^(k+1)), the Newton iterate exactly), and the square giving the
        next e^(2^(k+1)) shares its round with y's update. y keeps its own scale (at least
        f pending bits); each product's truncation is absorbed by the next."""
        f = self.f
        ((t, _),) = self.lazy([(d, y)])
        e = (self.const(1.0, t, 2 * f) - t, f)
        ys, yb = _split(y)
        if yb < f:
            ys, yb = ys << (f - yb), f
        for k in range(steps):
            last = k == steps - 1
            out = self.lazy([((ys, yb), e)] + ([] if last else [(e, e)]))
            ys = ys + (out[0][0] << (yb - f))
            e = e if last else out[1]
        return ys, yb

    def scaled(self, y: Operand, scale: torch.Tensor, h: int) -> tuple[torch.Tensor, int]:
        """y times a public-weighted share `scale` carrying h extra fractional bits, left
        pending (1 round)."""
        return self.lazy([(y, scale)], self.f + h)[0]


# -- exp ------------------------------------------------------------------------------
def _exp_coefficients(squarings: int) -> tuple[float, ...]:
    """Degree-4 polynomial for e^z: Taylor's for the wide variant (its values on very
    negative z stay in (0, 1), so the squarings vanish there), else a least-squares fit
    on z in [-8, 8] / 2^squarings at Chebyshev nodes (about 16 times more accurate)."""
    if squarings == EXP_WIDE_SQUARINGS:
        return tuple(1 / math.factorial(k) for k in range(5))
    half = EXP_DOMAIN / 2 ** squarings
    nodes = half * np.cos(np.pi * (np.arange(200) + 0.5) / 200)
    return tuple(np.polynomial.polynomial.polyfit(nodes, np.exp(nodes), 4))


def _exp_shares(ops: _Ops, x: torch.Tensor, squarings: int = EXP_SQUARINGS) -> tuple[torch.Tensor, int]:
    """e^x, left pending by f: z = x / 2^m, a degree-4 polynomial in 2 rounds, then m
    squarings (1 round each: every product absorbs the previous one's truncation).

    The polynomial runs at P = 24 fractional bits, as c0 + c1 z + z^2 (c2 + c3 z + c4 z^2):
    z^2 in round 1 (one opening: a square), then z^2 times the bracket in round 2, whose
    terms are formed locally at 2^62 (c4 z^2 from z^2's share times c4 at 14 bits: |z| <=
    1/4 keeps it below 2^62). Each squaring then lowers the precision to what keeps its
    product below 2^62 for inputs up to EXP_MAX_INPUT (the last two at f), so that the early
    squarings, whose errors are doubled m times, stay precise.
    """
    f, m, big = ops.f, squarings, P_EXP
    c0, c1, c2, c3, c4 = _exp_coefficients(squarings)
    v = x << (big - f - m) if big - f >= m else truncate(ops.s, x, m - (big - f), exact=True)

    def times(c: float, bits: int = big) -> torch.Tensor:  # c z at scale 2^(big + bits)
        return v * int(encode(c, bits))

    ((z2, _),) = ops.lazy([(v, v)], big)  # z^2 at 2^(2P)
    wide = 62 - 2 * big  # c4 z^2 at 2^62
    bracket = z2 * int(encode(c4, wide)) + times(c3, 62 - big) + ops.const(c2, v, 62)
    ((z2b, _),) = ops.lazy([((z2, big), (bracket, 62 - big))], big)
    t = (z2b + times(c1) + ops.const(c0, v, 2 * big), big)
    precision = big
    for j in range(m):
        remaining = m - j - 1
        if remaining <= 1:
            target = f
        else:
            largest = EXP_MAX_INPUT / 2 ** remaining
            target = min(big, int(math.floor(30 - largest / math.log(2))))
        (t,) = ops.lazy([(t, t)], 2 * precision - target)
        precision = target
    return t


def exp(session: Session, x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Shares of e^x, accurate on [-8, 8] (see ERROR_BOUNDS), left pending by f bits."""
    return _exp_shares(_Ops(session), x)


def exp_wide(session: Session, x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """e^x as exp, in 10 rounds instead of 7, but about 0 (not garbage) down to -710:
    for values that may be very negative (log-probabilities)."""
    return _exp_shares(_Ops(session), x, EXP_WIDE_SQUARINGS)


# -- range reduction: reciprocal, inv_sqrt, sqrt, log -----------------------------------------
_POSITIONS = np.arange(63, dtype=np.float64)


def _normalise(ops: _Ops, x: torch.Tensor, columns: list[torch.Tensor]):
    """(m, sign bit, weighted): x = m 2^(j + 1 - f) with 0.5 <= |m| <= 1 (m has x's sign),
    and sum_j lead_j column_j for each public int64 column (63 weights, one per leading-bit
    position j), all from one weighted B2A."""
    # 2^-(j + 1 - f) at 62 - f fractional bits is the integer 2^(61 - j)
    norm = torch.tensor([1 << (61 - j) if j <= 61 else 0 for j in range(63)], dtype=torch.int64)
    lead_columns = torch.stack([norm, *columns], 1)  # (63, k)
    weights = torch.zeros(64, lead_columns.shape[1] + 1, dtype=torch.int64)
    weights[:SIGN_BIT, :-1] = lead_columns
    weights[SIGN_BIT, -1] = 1
    sums = leading_bit_weighted(ops.s, x, weights)
    m = ops.mul1(x, sums[..., 0], 62 - ops.f)
    return m, sums[..., -1], [sums[..., k] for k in range(1, len(columns) + 1)]


def _exponents(ops: _Ops, power: float) -> np.ndarray:
    """power * (j + 1 - f) for every leading-bit position j."""
    return power * (_POSITIONS + 1 - ops.f)


def _reciprocal_shares(ops: _Ops, x: torch.Tensor) -> tuple[torch.Tensor, int]:
    weights, h = ops.power_weights(2.0, _exponents(ops, -1.0))
    m, sign, (scale,) = _normalise(ops, x, [weights])
    # y0 = sign(m) 48/17 - 32/17 m: relative error <= 1/17 on 0.5 <= |m| <= 1
    y, bits = ops.affine(m, -32 / 17, 48 / 17)
    y = (y - 2 * int(encode(48 / 17, 2 * ops.f)) * sign, bits)
    y = ops.newton_reciprocal(m, y, RECIPROCAL_STEPS)
    return ops.scaled(y, scale, h)  # y 2^-(j + 1 - f)


def reciprocal(session: Session, x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Shares of 1/x for either sign (see ERROR_BOUNDS), left pending; reciprocal(0) = 0."""
    return _reciprocal_shares(_Ops(session), x)


def _abs_m_and_inv_sqrt(ops: _Ops, x: torch.Tensor, columns: list[torch.Tensor]):
    m, sign, weighted = _normalise(ops, x, columns)
    (neg,) = ops.mul_bits([(m, sign)])
    m = m - 2 * neg  # |m|
    # y0 = 1.785 - 0.805 m: relative error 0.023 for 1/sqrt(m) on [0.5, 1]
    y = ops.affine(m, -0.805, 1.785)
    for _ in range(INV_SQRT_STEPS):  # y (3 - m y^2) / 2, each product's truncation in the next
        (y2,) = ops.lazy([(y, y)])
        ((t, bits),) = ops.lazy([(m, y2)])
        (y,) = ops.lazy([(y, (ops.const(3.0, t, 2 * ops.f) - t, bits))], ops.f + 1)
    return m, y, weighted


def inv_sqrt(session: Session, x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Shares of 1/sqrt(x) for x > 0 (see ERROR_BOUNDS), left pending."""
    ops = _Ops(session)
    weights, h = ops.power_weights(1.5, _exponents(ops, -0.5))
    _, y, (scale,) = _abs_m_and_inv_sqrt(ops, x, [weights])
    return ops.scaled(y, scale, h)


def sqrt(session: Session, x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Shares of sqrt(x) for x >= 0 (see ERROR_BOUNDS), left pending."""
    ops = _Ops(session)
    weights, h = ops.power_weights(1.1, _exponents(ops, 0.5))
    m, y, (scale,) = _abs_m_and_inv_sqrt(ops, x, [weights])
    (root_m,) = ops.lazy([(m, y)])  # sqrt(|m|) in [0.7, 1]
    return ops.scaled(root_m, scale, h)


def _log_poly_coefficients(degree: int) -> np.ndarray:
    """Least-squares fit of ln(0.75 + t) on t in [-0.25, 0.25] at Chebyshev nodes."""
    nodes = 0.25 * np.cos(np.pi * (np.arange(200) + 0.5) / 200)
    return np.polynomial.polynomial.polyfit(nodes, np.log(0.75 + nodes), degree)


_LOG_COEFFS = _log_poly_coefficients(LOG_DEGREE)


def log(session: Session, x: torch.Tensor) -> torch.Tensor:
    """Shares of the natural log for x > 0 (see ERROR_BOUNDS)."""
    ops = _Ops(session)
    exponent = torch.tensor(np.round((_POSITIONS + 1 - ops.f) * math.log(2) * 2 ** ops.f),
                            dtype=torch.int64)
    m, sign, (exponent_term,) = _normalise(ops, x, [exponent])  # (j + 1 - f) ln 2
    (neg,) = ops.mul_bits([(m, sign)])
    t = m - 2 * neg - ops.const(0.75, m)
    powers = {1: t}
    powers[2] = ops.mul1(t, t)
    powers[3], powers[4] = ops.mul([(powers[2], t), (powers[2], powers[2])])
    p5 = ops.mul([(powers[4], powers[k]) for k in range(1, 5)])
    powers.update({4 + k: p for k, p in zip(range(1, 5), p5)})
    poly = ops.combine([(powers[k], float(_LOG_COEFFS[k])) for k in range(1, LOG_DEGREE + 1)],
                       float(_LOG_COEFFS[0]))
    return poly + exponent_term


# -- sigmoid, tanh, erf, gelu --------------------------------------------------------------------
def _sign_and_abs(ops: _Ops, x: torch.Tensor):
    sign, (neg,) = ltz_times(ops.s, x, [x])
    return sign, x - 2 * neg


SIGMOID_EDGE = 8.0
"""sigmoid is 0 below -8 and 1 above 8 (off by at most 3.4e-4 there), a polynomial between."""
SIGMOID_DEGREE = 7
_W = 19
"""Fractional bits of w = x / 8 (x's share at 16 bits read at 19: exact)."""
_U = 23
"""Fractional bits the polynomial's operands are truncated to (their values reach 83)."""
_Q = 16
"""Fractional bits of its coefficients; every sum of terms is formed at 2^(2 _W + _Q) = 2^54."""


def _sigmoid_coefficients() -> np.ndarray:
    """g(w) = sigmoid(8 w) - 1/2 on w in [0, 1]: least squares at Chebyshev nodes, degree 7
    (error 2.1e-4), as monomial coefficients c_0 .. c_7 in w."""
    nodes = (np.cos(np.pi * (np.arange(400) + 0.5) / 400) + 1) / 2
    target = 1 / (1 + np.exp(-SIGMOID_EDGE * nodes)) - 0.5
    return np.polynomial.polynomial.polyfit(nodes, target, SIGMOID_DEGREE)


_SIGMOID_C = _sigmoid_coefficients()


def _sigmoid_shares(ops: _Ops, x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """sigmoid(x) in csa_rounds + 8 rounds (8 for 2 parties): the polynomial first, then
    three comparisons and one product by the region bits, left pending.

    With w = x / 8 and g as above, sigmoid(x) = 1/2 + E(w) + O(w) on [0, 8] and
    1 - sigmoid(-x) = 1/2 - E(w) + O(w) on [-8, 0), E and O the even and odd parts of g
    (so one set of powers serves both signs); 0 below -8 and 1 above 8. Rounds 1-3 make
    u = w^2, then u^2, w (c1 + c3 u), w (c5 + c7 u), then u^2 (c4 + c6 u), u^2 w (c5 + c7 u)
    (Estrin's scheme, coefficients folded into the linear factors). Then msb of
    [x + 8, x, x - 8] (csa_rounds + 4 rounds) gives bits lo, neg, hi; the regions [0, 8), [-8, 0) and
    [8, inf) are hi ^ neg, neg ^ lo and not hi (XOR: local), and one bit_products round
    multiplies the first two by P+ = 1/2 + E + O and P- = 1/2 - E + O and converts the third. Outside
    [-8, 8] the polynomial is garbage, but times a zero bit it is exactly 0 in the ring.
    """
    s, f = ops.s, ops.f
    w = x << (_W - 3 - f) if f <= _W - 3 else truncate(s, x, f + 3 - _W, exact=True)  # w = x/8 at 2^19
    c = [int(encode(float(v), _Q)) for v in _SIGMOID_C]
    top = 2 * _W + _Q

    def const(v: float, bits: int) -> torch.Tensor:
        return ops.const(v, x, bits)

    ((u, _),) = ops.lazy([(w, w)], 2 * _W - _U)  # share at 2^38, operand at 2^23

    def linear(a: int, b: int) -> tuple[torch.Tensor, int]:  # c_a + c_b u at 2^54
        return u * c[b] + (torch.full_like(u, c[a] << (2 * _W)) if s.rank == 0 else 0), top - _U

    u_op = (u, 2 * _W - _U)
    factors = (torch.stack([linear(1, 3)[0], linear(5, 7)[0]]), top - _U)
    (u2, _), (w_l, _) = ops.lazy([(u_op, u_op), (w.unsqueeze(0), factors)], _U)
    u2 = (u2, _U)  # u^2 at 2^46, operand at 2^23; w L1, w L2 at 2^42
    w_l1, w_l2 = w_l[0], w_l[1]
    stacked = torch.stack([linear(4, 6)[0], w_l2 << (top - _W - _U)])
    ((tail, _),) = ops.lazy([((u2[0].unsqueeze(0), _U), (stacked, top - _U))], _U)  # at 2^46
    lift = top - 2 * _U
    even = u * c[2] + (tail[0] << lift) + (torch.full_like(u, c[0] << (2 * _W)) if s.rank == 0 else 0)
    odd = (w_l1 << (top - _W - _U)) + (tail[1] << lift)
    half = const(0.5, top)
    probes = torch.stack([x + const(SIGMOID_EDGE, f), x, x - const(SIGMOID_EDGE, f)])
    lo, neg, hi = msb(s, probes)
    ones = 1 if s.rank == 0 else 0
    regions = torch.stack([hi ^ neg, neg ^ lo, hi ^ ones])
    values = torch.stack([half + even + odd, half - even + odd])  # for the first two regions
    above, (parts,) = bit_products(s, regions, [values])
    return parts[0] + parts[1] + (above[2] << top), top - f


def sigmoid(session: Session, x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Shares of 1 / (1 + e^-x) (see ERROR_BOUNDS), left pending."""
    return _sigmoid_shares(_Ops(session), x)


def tanh(session: Session, x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Shares of tanh(x) = 2 sigmoid(2x) - 1, left pending."""
    ops = _Ops(session)
    y, bits = _sigmoid_shares(ops, 2 * x)
    return 2 * y - ops.const(1.0, y, ops.f + bits), bits


def erf(session: Session, x: torch.Tensor) -> torch.Tensor:
    """Shares of the error function (Abramowitz & Stegun 7.1.26; see ERROR_BOUNDS)."""
    ops = _Ops(session)
    sign, a = _sign_and_abs(ops, x)
    _, (excess,) = ltz_times(ops.s, ops.const(ERF_CLAMP, a) - a, [a - ops.const(ERF_CLAMP, a)])
    a = a - excess  # min(|x|, 4)
    d = ops.affine(a, ERF_P, 1.0)  # in [1, 2.31], pending
    t = ops.settle(ops.newton_reciprocal(d, ops.affine(d, -0.395, 1.31), ERF_STEPS))  # y0 within 9%
    a2 = ops.mul1(a, a)
    e = _exp_shares(ops, -a2, EXP_WIDE_SQUARINGS)
    t2 = ops.mul1(t, t)
    t3, t4 = ops.mul([(t2, t), (t2, t2)])
    t5 = ops.mul1(t4, t)
    poly = ops.combine([(p, c) for p, c in zip((t, t2, t3, t4, t5), ERF_A)])
    value = ops.const(1.0, a) - ops.mul1(poly, e)
    (neg,) = ops.mul_bits([(value, sign)])
    return value - 2 * neg


GELU_EDGE = 4.0
"""gelu is relu below -4 and above 4 (off by at most 4 Phi(-4) = 1.3e-4 there)."""
_GW = 18
"""Fractional bits of w = x / 4 (x's share at 16 bits read at 18: exact)."""


def _gelu_coefficients() -> np.ndarray:
    """x (Phi(x) - 1/2), even in x, as a degree-7 polynomial in t = (x / 4)^2 on [0, 1]:
    least squares at Chebyshev nodes (error 2.0e-4)."""
    t = (np.cos(np.pi * (np.arange(400) + 0.5) / 400) + 1) / 2
    x = GELU_EDGE * np.sqrt(t)
    target = x * 0.5 * np.vectorize(math.erf)(x / math.sqrt(2))
    return np.polynomial.polynomial.polyfit(t, target, 7)


_GELU_C = _gelu_coefficients()


def gelu(session: Session, x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Shares of the exact GELU x Phi(x) (see ERROR_BOUNDS), left pending by 8 bits."""
    out, bits, _ = gelu_parts(session, x)
    return out, bits


def gelu_parts(session: Session, x: torch.Tensor) -> tuple[torch.Tensor, int, torch.Tensor]:
    """(GELU shares, pending bits, integer shares of [-4 <= x < 4]) in 9 rounds.

    gelu(x) = x / 2 + x (Phi(x) - 1/2), whose second term is even and smooth: on [-4, 4] a
    degree-7 polynomial E in t = (x/4)^2 (Estrin's scheme in 4 rounds: t; t^2; t^2 times
    [c2 + c3 t, c6 + c7 t, t^2]; t^4 times (c4 + c5 t + t^2 (c6 + c7 t))), outside it
    |x| / 2 (so gelu = relu there), as PUMA does piecewise (Dong et al. 2023). Then msb of
    [x + 4, x - 4] gives lo = [x < -4] and hi' = [x < 4]; the regions [-4, 4), [4, inf)
    and (-inf, -4) are hi' ^ lo, not hi' and lo, and one bit_products round multiplies E
    by the first and x / 2, -x / 2 by the others. E is garbage outside [-4, 4] but times a
    zero bit it is exactly 0; its truncation to 2^24 rides on the comparison.
    """
    ops = _Ops(session)
    f, s = ops.f, session
    w = x << (_GW - 2 - f) if f <= _GW - 2 else truncate(s, x, f + 2 - _GW, exact=True)  # x/4 at 2^18
    c = [int(encode(float(v), _Q)) for v in _GELU_C]
    top = 2 * _GW + _Q  # 52: where the linear factors and the sums are formed
    ((t, _),) = ops.lazy([(w, w)], 2 * _GW - _U)  # t at 2^36, operand at 2^23
    t_op = (t, 2 * _GW - _U)

    def linear(a: int, b: int) -> torch.Tensor:  # c_a + c_b t at 2^52
        return t * c[b] + (torch.full_like(t, c[a] << (2 * _GW)) if s.rank == 0 else 0)

    ((t2, _),) = ops.lazy([(t_op, t_op)], _U)  # t^2 at 2^46
    rows = torch.stack([linear(2, 3), linear(6, 7), t2 << (top - 2 * _U)])
    ((r3, _),) = ops.lazy([((t2.unsqueeze(0), _U), (rows, top - _U))], _U)  # at 2^46
    t2l23, t2l67, t4 = r3[0], r3[1], r3[2]
    inner = linear(4, 5) + (t2l67 << (top - 2 * _U))
    ((t4_inner, _),) = ops.lazy([((t4, _U), (inner, top - _U))], _U)
    lift = top - 2 * _U
    even = linear(0, 1) + (t2l23 << lift) + (t4_inner << lift)  # at 2^52
    low = 8
    settled: list[torch.Tensor] = []
    truncate_later(s, even, top - f - low, settled.append, exact=True)  # to 2^24, on msb's 1st opening
    edge = ops.const(GELU_EDGE, x)
    lo, below_hi = msb(s, torch.stack([x + edge, x - edge]))
    ones = 1 if s.rank == 0 else 0
    regions = torch.stack([below_hi ^ lo, below_hi ^ ones, lo])
    half = x << (low - 1)  # x / 2 at 2^24
    bits, (middle, tails) = bit_products(s, regions, [settled[0].unsqueeze(0),
                                                      torch.stack([torch.zeros_like(x), half, -half])])
    return half + middle[0] + tails[1] + tails[2], low, bits[0]


# -- softmax family ------------------------------------------------------------------------------
def _shift_by_max(session: Session, x: torch.Tensor, dim: int) -> torch.Tensor:
    """x - max(x, dim) (shares), numerically safe input for exp: all pairs compared at once
    for a short dim (max_all_pairs), else the tournament."""
    moved = x.movedim(dim, -1)
    if moved.shape[-1] <= ALL_PAIRS_UP_TO:
        top, _ = max_all_pairs(session, moved)
    else:
        top, _ = max_along_last(session, moved, 0)
    return (moved - top.unsqueeze(-1)).movedim(-1, dim)


SUM_DEGREE = 12
"""Degree of the fits of log s and 1/s on s in [1, k] (k <= ALL_PAIRS_UP_TO)."""


def _sum_fits(k: int) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares fits (at Chebyshev nodes) of log s and 1/s for s in [1, k], as monomial
    coefficients in t = (2 s - k - 1) / (k - 1) in [-1, 1]: for k = 10, errors 6.0e-5 and
    8.4e-4 relative."""
    t = np.cos(np.pi * (np.arange(400) + 0.5) / 400)
    s = 1 + (t + 1) / 2 * (k - 1)
    return (np.polynomial.polynomial.polyfit(t, np.log(s), SUM_DEGREE),
            np.polynomial.polynomial.polyfit(t, 1 / s, SUM_DEGREE))


def _powers(ops: _Ops, t: Operand, degree: int) -> dict[int, tuple[torch.Tensor, int]]:
    """t^1 .. t^degree, each pending by f, in ceil(log2 degree) rounds: round j multiplies
    t^(2^(j-1)) by each power up to 2^(j-1)."""
    share, bits = _split(t)
    powers = {1: (share, bits)}
    top = 1
    while top < degree:
        wanted = [i for i in range(1, top + 1) if top + i <= degree]
        base = powers[top]
        made = ops.lazy([(base, base) if i == top else (base, powers[i]) for i in wanted])
        powers.update({top + i: z for i, z in zip(wanted, made)})
        top *= 2
    return powers


def _on_sums(ops: _Ops, total: tuple[torch.Tensor, int], k: int) -> tuple[tuple, tuple]:
    """(log s, 1/s), each pending by 2f, for row sums s in [1, k] (shares pending), from one
    set of powers of t = (2 s - k - 1) / (k - 1): no normalisation."""
    a, b = 2 / (k - 1), -(k + 1) / (k - 1)
    powers = _powers(ops, ops.affine(total, a, b), SUM_DEGREE)
    out = []
    for c in _sum_fits(k):
        acc, _ = ops.affine(total, float(c[1]) * a, float(c[0] + c[1] * b))  # c0 + c1 t at 2^3f
        for j in range(2, SUM_DEGREE + 1):
            share, _ = powers[j]  # at 2^2f
            acc = acc + share * int(encode(float(c[j]), ops.f))
        out.append((acc, 2 * ops.f))
    return out[0], out[1]


def _exp_of_shifted(ops: _Ops, x: torch.Tensor, dim: int):
    shifted = _shift_by_max(ops.s, x, dim)
    e, bits = _exp_shares(ops, shifted, EXP_WIDE_SQUARINGS)
    return shifted, (e, bits), (e.sum(dim, keepdim=True), bits)


def softmax(session: Session, x: torch.Tensor, dim: int) -> tuple[torch.Tensor, int]:
    """Shares of softmax along dim: exp(x - max) / sum (see ERROR_BOUNDS), left pending.
    For k <= ALL_PAIRS_UP_TO, 1/sum is a polynomial in the sum (in [1, k]) refined by one
    Newton step; else the reciprocal."""
    ops = _Ops(session)
    _, e, total = _exp_of_shifted(ops, x, dim)
    k = x.shape[dim]
    if k <= ALL_PAIRS_UP_TO and k > 1:
        _, inv = _on_sums(ops, total, k)
        inv = ops.newton_reciprocal(total, inv, 1)
    else:
        inv = _reciprocal_shares(ops, ops.settle(total))
    return ops.lazy([(e, (inv[0].expand_as(e[0]), inv[1]))])[0]


def log_softmax_parts(session: Session, x: torch.Tensor, dim: int) -> tuple[
        torch.Tensor, int, Callable[[], tuple[torch.Tensor, int]] | None]:
    """(log_softmax shares, pending bits, probs): probs() makes softmax's shares (share,
    bits) for the gradient in one round, or is None (then the gradient takes exp of the
    result). For k <= ALL_PAIRS_UP_TO, log and 1/sum are polynomials in the sum."""
    ops = _Ops(session)
    shifted, e, total = _exp_of_shifted(ops, x, dim)
    k = x.shape[dim]
    if k <= ALL_PAIRS_UP_TO and k > 1:
        (log_sum, bits), inv = _on_sums(ops, total, k)
        out = (shifted << bits) - log_sum

        def probs() -> tuple[torch.Tensor, int]:
            return _Ops(session).lazy([(e, (inv[0].expand_as(e[0]), inv[1]))])[0]
        return out, bits, probs
    return shifted - log(session, ops.settle(total)), 0, None


def log_softmax(session: Session, x: torch.Tensor, dim: int) -> tuple[torch.Tensor, int]:
    """Shares of log_softmax along dim: (x - max) - log(sum exp(x - max)), left pending."""
    out, bits, _ = log_softmax_parts(session, x, dim)
    return out, bits


# -- cos, sin --------------------------------------------------------------------------------------
TRIG_BITS = 27
"""Fractional bits of each party's cos and sin of its own angle: every product lands at 2^54."""


def cos_sin(session: Session, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(shares of cos x, of sin x, pending bits) by angle addition over the parties' shares:
    ceil(log2 n) rounds of products (1 for 2 parties), no approximation but the roundings.

    1. Locally, party i reads its share x_i (at 2^f) as the angle
       theta_i = 2 pi ((x_i C) mod 2^64) / 2^64, C = round(2^(64 - f) / (2 pi)). The shares
       sum to x 2^f mod 2^64, and 2^64 units of x_i C are one whole turn, so
       sum_i theta_i = x (mod 2 pi), within 2 pi |x| 2^(f - 65) (C's rounding): the ring's
       wrap-around is the reduction mod 2 pi, for every x.
    2. Party i holds z_i = (cos theta_i, sin theta_i) at TRIG_BITS fractional bits, the
       others 0: a sharing of a value one party knows, without a message. theta_i is a
       function of x_i alone, so z_i tells party i nothing new.
    3. e^(ix) = prod_i z_i: each level multiplies pairs z_a z_b as one broadcast product
       [c_a, s_a] x [c_b, s_b] (four real products, opening 4 numel), then
       cos = c_a c_b - s_a s_b and sin = s_a c_b + c_a s_b (local); a level's truncation
       back to 2^TRIG_BITS rides in the next level's opening (lazy products).
    The result is left pending at 2^(2 TRIG_BITS). Error: the final truncation (1 unit),
    the roundings of the held values (2^-28 each) and C's (above).
    """
    f, n, unit = session.config.precision_bits, session.world_size, 1 << TRIG_BITS
    turns = x * round(2.0 ** (64 - f) / (2 * math.pi))  # mod 2^64: 2^64 is one turn
    theta = turns.to(torch.float64) * (2 * math.pi / 2.0 ** 64)
    own = torch.stack([torch.cos(theta), torch.sin(theta)]).mul(unit).round().to(torch.int64)
    none = torch.zeros_like(own)
    level = [(own if session.rank == i else none, 0) for i in range(n)]
    while len(level) > 1:
        pairs = list(zip(level[0::2], level[1::2]))
        items = [(a.unsqueeze(1), ab, b.unsqueeze(0), bb) for (a, ab), (b, bb) in pairs]
        products = lazy_products(session, items, exact=True)
        following = [(torch.stack([q[0, 0] - q[1, 1], q[0, 1] + q[1, 0]]), TRIG_BITS)
                     for q in products]
        level = following + ([level[-1]] if len(level) % 2 else [])
    both, _ = level[0]
    return both[0], both[1], 2 * TRIG_BITS - f
