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

from .. import ring
from ..session import Session
from .sharing import open_shares


def _jsonable(v):
    return list(v) if isinstance(v, tuple) else v


def beaver_product(session: Session, op: str, x: torch.Tensor, y: torch.Tensor,
                   **kwargs) -> torch.Tensor:
    """Share of op(x, y) for shared x, y, at double fixed-point scale (not truncated).

    Rounds 1; bytes 8 * (n - 1) * (numel(x) + numel(y)) sent per party.
    """
    kwargs = {k: _jsonable(v) for k, v in kwargs.items()}
    corr = session.provider.request("triple", op=op, a_shape=list(x.shape),
                                    b_shape=list(y.shape), kwargs=kwargs)
    a, b = (t.to(x.device) for t in corr.free)
    e, f = open_shares(session, [x - a, y - b])
    force = getattr(session.config, "force_limbs", False)
    z = ring.bilinear(op, a, f, force, **kwargs)
    z += ring.bilinear(op, e, b + f if session.rank == 0 else b, force, **kwargs)
    z += corr.derived()[0].to(z.device)
    return z
