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


def fixed_mask_product(session: Session, op: str, x: torch.Tensor, y: torch.Tensor,
                       opened: tuple[int, torch.Tensor] | None,
                       **kwargs) -> tuple[torch.Tensor, tuple[int, torch.Tensor]]:
    """(share of op(x, y), y's opening) for a fixed y (a model's weights) whose mask b is
    the same in every product with it: the first product opens y - b with x - a as Beaver
    does; later ones pass that `opened` (mask id, f = y - b) back and open x - a only, so
    that their bytes do not grow with y (protocols/fixed_mask.toml). The dealer makes
    c = a (x) b for a fresh a and that b each time. y's share is not read once opened.

    Rounds 1; bytes 8 * (n - 1) * (numel(x) + numel(y) the first time, numel(x) later).
    """
    kwargs = {k: _jsonable(v) for k, v in kwargs.items()}
    mask = opened[0] if opened else session.new_mask_id()
    corr = session.provider.request("fixed_triple", op=op, a_shape=list(x.shape),
                                    b_shape=list(y.shape), kwargs=kwargs, mask=mask)
    a, b = (t.to(x.device) for t in corr.free)
    if opened is None:
        e, f = open_shares(session, [x - a, y - b])
    else:
        (e,), f = open_shares(session, [x - a]), opened[1].to(x.device)
    force = session.config.force_limbs
    z = ring.bilinear(op, a, f, force, **kwargs)
    z += ring.bilinear(op, e, b + f if session.rank == 0 else b, force, **kwargs)
    z += corr.derived()[0].to(z.device)
    return z, (mask, f)


def beaver_product(session: Session, op: str, x: torch.Tensor, y: torch.Tensor,
                   **kwargs) -> torch.Tensor:
    """Share of op(x, y) for shared x, y, at double fixed-point scale (not truncated).

    Rounds 1; bytes 8 * (n - 1) * (numel(x) + numel(y)) sent per party.
    """
    kwargs = {k: _jsonable(v) for k, v in kwargs.items()}
    return beaver_many(session, [(op, x, y, kwargs)])[0]
