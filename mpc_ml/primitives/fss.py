"""Comparison by function secret sharing: [x < 0] in one online round (2 parties).

Boyle, Chandran, Gilboa, Gupta, Ishai, Kohli, Lai: "Function Secret Sharing for
Mixed-Mode and Fixed-Point Secure Computation", EUROCRYPT 2021 (the DCF of core/dcf.py
and the sign from a masked opening, their section 4). Per element, the dealer draws a
mask r (additively shared) and gives each party a DCF key for
f(y) = (1 - 2 msb(r)) [y < r mod 2^63], and shares of msb(r):

1. open c = x + r (one round; c is uniform, so nothing about x is revealed);
2. with c' = c mod 2^63, the borrow out of the low 63 bits of c - r is w = [c' < r'],
   and msb(x) = msb(c) xor msb(r) xor w. The keys give shares of
   f(c') = (1 - 2 msb(r)) w, so z = msb(r) xor w = [msb(r)] + f(c') is shared
   additively, and [x < 0] = msb(c) + (1 - 2 msb(c)) [z], msb(c) public.
Exact for every x in Z_2^64 read as signed (no bound on |x|). The keys are large:
about 1.5 KB per element to each party (spec: protocols/fss_comparison.toml). The keys'
PRG is the session's (Config.prg): with "chacha20" the keys are evaluated in torch ops on
the shares' device, with "aes" on the host.
"""
from __future__ import annotations

import torch

from ..core import dcf
from ..providers.base import DCF_MAX_ELEMENTS, LOW_63
from ..session import Session
from .sharing import open_shares


def ltz_fss(session: Session, x: torch.Tensor) -> torch.Tensor:
    """Additive integer shares of [x < 0] (0 or 1): one round, DCF keys from the dealer."""
    flat = x.reshape(-1)
    if not flat.numel():
        return torch.zeros_like(x)
    chunks = [flat[i:i + DCF_MAX_ELEMENTS] for i in range(0, flat.numel(), DCF_MAX_ELEMENTS)]
    corrs = [session.provider.request("dcf_ltz", numel=c.numel()) for c in chunks]
    opened = open_shares(session, [c + corr.free[0].to(c.device) for c, corr in zip(chunks, corrs)])
    out = []
    for i, c in enumerate(opened):
        corr, corrs[i] = corrs[i], None  # each chunk's key (1536 B per element) freed after use
        (msb_r,) = corr.derived()
        part = dcf.PublicKeyPart(*(t.to(c.device) for t in corr.public()))
        f = dcf.evaluate(session.rank, corr.free[1].to(c.device), part, c & LOW_63,
                         session.config.prg)
        z = msb_r.to(c.device) + f
        msb_c = (c >> 63) & 1
        bit = z * (1 - 2 * msb_c)
        out.append(bit + msb_c if session.rank == 0 else bit)
    return (torch.cat(out) if len(out) > 1 else out[0]).reshape(x.shape)
