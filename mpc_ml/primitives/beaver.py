"""Beaver products: private (x) private for any bilinear op (mul, matmul, conv).

Beaver, "Efficient multiparty protocols using circuit randomization", CRYPTO 1991.

1. obtain [a], [b], [c] = [a (x) b] from the provider (shapes of x, y, x (x) y);
2. open e = x - a and f = y - b together (one round);
3. z_i = c_i + a_i (x) f + e (x) (b_i + [i = 0] f).
   Sum over i: c + a (x) f + e (x) b + e (x) f = x (x) y by bilinearity.
Two local products per party; the provider's product a (x) b is off the critical path
with a dealer (the last party collects c only at step 3).
"""
from __future__ import annotations

import torch

from ..core import ring
from ..session import Session
from .sharing import open_shares


def _jsonable(v):
    return list(v) if isinstance(v, tuple) else v


def beaver_many(session: Session, items: list[tuple]) -> list[torch.Tensor]:
    """Several Beaver products, (op, x, y, kwargs) each, with one opening round.

    Rounds 1; bytes 8 * (n - 1) * sum(numel(x) + numel(y)) sent per party.
    """
    corrs, masked = [], []
    for op, x, y, kwargs in items:
        corr = session.provider.request("triple", op=op, a_shape=list(x.shape),
                                        b_shape=list(y.shape), kwargs=kwargs)
        a, b = (t.to(x.device) for t in corr.free)
        corrs.append((corr, a, b))
        masked += [x - a, y - b]
    opened = open_shares(session, masked)
    force = session.config.force_limbs
    out = []
    for i, ((op, x, y, kwargs), (corr, a, b)) in enumerate(zip(items, corrs)):
        e, f = opened[2 * i], opened[2 * i + 1]
        z = ring.bilinear(op, a, f, force, **kwargs)
        z += ring.bilinear(op, e, b + f if session.rank == 0 else b, force, **kwargs)
        z += corr.derived()[0].to(z.device)
        out.append(z)
    return out


def beaver_product(session: Session, op: str, x: torch.Tensor, y: torch.Tensor,
                   **kwargs) -> torch.Tensor:
    """Share of op(x, y) for shared x, y, at double fixed-point scale (not truncated).

    Rounds 1; bytes 8 * (n - 1) * (numel(x) + numel(y)) sent per party.
    """
    kwargs = {k: _jsonable(v) for k, v in kwargs.items()}
    return beaver_many(session, [(op, x, y, kwargs)])[0]
