"""Truncation: divide a shared fixed-point value by 2^bits after a product.

Exact variant (default), after Escudero et al., "Improved primitives for MPC over
mixed arithmetic-binary circuits", CRYPTO 2020 (probabilistic truncation with the
mask's top bit). Requires |x| < 2^62 as a signed value.
1. obtain [r] (r uniform in Z_2^64), [r' >> bits] where r' = r mod 2^63, and
   [msb(r)] from the provider;
2. y = x + 2^62 (so 0 <= y < 2^63); open c = y + r (one round; c is uniform);
3. with c' = c mod 2^63: y + r' = c' + 2^63 w where the carry w = msb(c) xor msb(r),
   a linear function of [msb(r)] since msb(c) is public; so
   y >> bits = (c' >> bits) - (r' >> bits) + 2^(63-bits) w - borrow, borrow in {0, 1};
4. x >> bits = that - 2^(62-bits).
The result is within 1 unit of x / 2^bits; nothing wraps, so no catastrophic error.

Local variant (SecureML, Mohassel & Zhang 2017), 2 parties only: x_0 >> bits and
-((-x_1) >> bits). No traffic; within 1 unit except with probability about
|x| / 2^63 per element, when the result is wrong by about 2^(64-bits).
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from ..providers.base import LOW_63
from ..session import Session
from .sharing import open_shares, ride

OFFSET_BITS = 62


def public_part(c: torch.Tensor, bits: int) -> torch.Tensor:
    """The public term of the truncated value from the opened c: with u = (r mod 2^63) >>
    bits, v = 2^(63 - bits) msb(r) and sigma = 1 - 2 msb(c), the truncation of x is
    public_part(c) - [u] + sigma [v] (steps 3-4 above)."""
    c_msb = (c >> 63) & 1
    return ((c & LOW_63) >> bits) + (c_msb << (63 - bits)) - (1 << (OFFSET_BITS - bits))


def mask_for_truncation(session: Session, x: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """What a party opens to truncate x with mask r: x + 2^62 (party 0 adds it) + r."""
    y = x + (1 << OFFSET_BITS) if session.rank == 0 else x
    return y + r.to(x.device)


class PendingTruncation:
    """An exact truncation split at its opening: open `masked` (alone, with other
    openings, or as a rider), then `finish(c)` gives the share of x / 2^bits."""

    def __init__(self, session: Session, x: torch.Tensor, bits: int):
        self.session, self.bits = session, bits
        self.corr = session.provider.request("trunc", shape=list(x.shape), bits=bits)
        self.masked = mask_for_truncation(session, x, self.corr.free[0])

    def finish(self, c: torch.Tensor) -> torch.Tensor:
        bits = self.bits
        r_shifted, r_msb = (t.to(c.device) for t in self.corr.derived())
        c_msb = (c >> 63) & 1
        # [w] = c_msb + [r_msb] - 2 c_msb [r_msb]; the public c_msb term is party 0's.
        # (in place: these tensors are as large as the product being truncated)
        out = c_msb * r_msb
        out.mul_(-2).add_(r_msb).mul_(1 << (63 - bits)).sub_(r_shifted)
        if self.session.rank == 0:
            c.bitwise_and_(LOW_63).bitwise_right_shift_(bits)
            out.add_(c).add_(c_msb.mul_(1 << (63 - bits))).sub_(1 << (OFFSET_BITS - bits))
        return out


def truncate_local(session: Session, x: torch.Tensor, bits: int) -> torch.Tensor:
    """The local variant (2 parties): x_0 >> bits and -((-x_1) >> bits)."""
    return x >> bits if session.rank == 0 else -((-x) >> bits)


def truncate(session: Session, x: torch.Tensor, bits: int, exact: bool = False) -> torch.Tensor:
    """Share of x / 2^bits (see the module docstring for the two methods); exact forces
    the exact one whatever config.truncation (values held far above 2^f, whose local
    truncation would fail often)."""
    if bits == 0:
        return x
    if session.config.truncation == "local" and not exact:
        return truncate_local(session, x, bits)
    pending = PendingTruncation(session, x, bits)
    (c,) = open_shares(session, [pending.masked])
    return pending.finish(c)


def truncate_later(session: Session, x: torch.Tensor, bits: int,
                   done: Callable[[torch.Tensor], None], exact: bool = False) -> None:
    """Truncate x with the next opening of any kind (a rider: no round of its own); done
    gets the share of x / 2^bits. Under truncation='local' it is done at once."""
    if bits == 0 or (session.config.truncation == "local" and not exact):
        done(truncate(session, x, bits))
        return
    pending = PendingTruncation(session, x, bits)
    ride(session, pending.masked, lambda c: done(pending.finish(c)))
