"""Elementwise products of operands still to be truncated, in one round (lazy truncation).

A fixed-point product leaves its result at double scale; its truncation by `bits` is
paid when the value is next used. When that use is another elementwise product, the
truncation's masked opening is that product's Beaver opening, with the dealer
correlating the masks (spec: protocols/lazy_product.toml):

- an operand x still to be truncated opens d = x + 2^62 + r (as the exact truncation,
  truncation.py), so that trunc(x) = P(d) - [u] + sigma [v] with P public,
  u = (r mod 2^63) >> bits, v = 2^(63 - bits) msb(r), sigma = 1 - 2 msb(d) public;
- a settled operand y opens e = y - a (as Beaver), so y = e + [a].
Writing each operand as X = P_X + M_X with M_X = sum_i coef_i [comp_i] (public coef,
dealer-shared comp), X * Y = P_X P_Y + P_X M_Y + M_X P_Y + M_X M_Y, and M_X M_Y needs the
shares of the products comp_i * comp_j, which the dealer makes from the same masks.
Every opened value is uniformly masked, as in Beaver and the exact truncation: nothing
is revealed (Beaver, CRYPTO 1991; Escudero et al., CRYPTO 2020). The truncated value is
the exact truncation's (within 1 unit of x / 2^bits, no wrap failure); the product of the
truncated values is exact in Z_2^64.

Elementwise only: for matmul and conv, sigma varies along the contracted dimension and
the dealer cannot precompute sigma-weighted products.
"""
from __future__ import annotations

import torch

from ..providers.base import cross_pairs
from ..session import Session
from .beaver import beaver_many
from .sharing import open_shares
from .truncation import mask_for_truncation, public_part, truncate_local

Item = tuple[torch.Tensor, int, torch.Tensor, int]
"""(x, bits of x still to truncate, y, bits of y); bits 0 is a settled operand."""


def _operand(session: Session, opened: torch.Tensor, bits: int, comps: list[torch.Tensor]):
    """(public P, [(coef, comp share)]) with operand = P + sum coef * comp."""
    if bits == 0:
        return opened, [(1, comps[0])]
    sigma = 1 - 2 * ((opened >> 63) & 1)
    return public_part(opened, bits), [(-1, comps[0]), (sigma, comps[1])]


def lazy_products(session: Session, items: list[Item], exact: bool = False) -> list[torch.Tensor]:
    """Shares of trunc(x) * trunc(y) for each (x, x_bits, y, y_bits), elementwise with
    broadcasting, all in one round; `y is x` with equal bits is a square.

    Rounds 1; bytes 8 * (n - 1) * sum(numel(x) + numel(y)) sent per party (numel(x) for
    a square). Settled operands, none squared: plain Beaver (beaver.py). Under
    truncation='local' the pending operands are truncated locally first, unless exact
    (the approximations' operands, held far above 2^f).
    """
    if session.config.truncation == "local" and not exact:
        items = [(truncate_local(session, x, xb), 0, truncate_local(session, y, yb), 0)
                 for x, xb, y, yb in items]
    if all(xb == 0 and yb == 0 and y is not x for x, xb, y, yb in items):
        return beaver_many(session, [("mul", x, y, {}) for x, _, y, _ in items])
    requests, masked = [], []
    for x, xb, y, yb in items:
        square = y is x and xb == yb
        corr = session.provider.request("lazy_triple", x_shape=list(x.shape),
                                        y_shape=list(y.shape), x_bits=xb, y_bits=yb,
                                        square=square)
        free = [t.to(x.device) for t in corr.free]
        requests.append((corr, free, square))
        for value, bits, mask in ((x, xb, free[0]),) + (() if square else ((y, yb, free[1]),)):
            masked.append(mask_for_truncation(session, value, mask) if bits else value - mask)
    opened = open_shares(session, masked)
    out, k = [], 0
    for (x, xb, y, yb), (corr, free, square) in zip(items, requests):
        derived = [t.to(x.device) for t in corr.derived()]
        comps_x = [free[0]] if xb == 0 else derived[:2]
        rest = derived[2:] if xb else derived
        if square:
            comps_y = comps_x
        elif yb == 0:
            comps_y = [free[1]]
        else:
            comps_y, rest = rest[:2], rest[2:]
        px, mx = _operand(session, opened[k], xb, comps_x)
        py, my = (px, mx) if square else _operand(session, opened[k + 1], yb, comps_y)
        k += 1 if square else 2
        z = sum(c * s for c, s in my) * px
        z = z + (z if square else sum(c * s for c, s in mx) * py)
        for (i, j), prod in zip(cross_pairs(len(mx), len(my), square), rest):
            weight = mx[i][0] * my[j][0]
            z = z + (weight if square and i == j else 2 * weight if square else weight) * prod
        out.append(z + px * py if session.rank == 0 else z)
    return out
