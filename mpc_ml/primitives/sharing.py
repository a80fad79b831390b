"""Additive sharing over Z_2^64: input sharing, zero sharing, opening.

A value x is held as shares x_0 .. x_{n-1} with sum x_i = x mod 2^64.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ..session import Session


def zero_share(session: Session, shape: Sequence[int],
               device: torch.device | str | None = None) -> torch.Tensor:
    """This party's share of a fresh sharing of zero; costs no traffic.

    z_i = sum_{j > i} G(s_ij) - sum_{j < i} G(s_ij), where s_ij is the pairwise seed of
    parties i and j. Each G(s_ij) appears once with + and once with -, so sum z_i = 0,
    and any n-1 parties learn nothing of the remaining party's z_i.
    """
    z = torch.zeros(tuple(shape), dtype=torch.int64)
    for j, stream in session.zero_streams.items():
        draw = stream.random_ring(shape)
        z = z + draw if j > session.rank else z - draw
    return z if device is None else z.to(device)


def share_input(session: Session, value: torch.Tensor | None, src: int,
                shape: Sequence[int] | None = None,
                tag: int = 0) -> tuple[torch.Tensor, int]:
    """This party's share of src's encoded value (int64 on src), and src's `tag`.

    1. src sends [tag, ndim, *shape] to every other party, which checks the shape
       against `shape` if given (a mismatch is an error here, not garbage later); the
       tag carries a small integer of metadata (the plaintext dtype);
    2. every party takes a zero share z_i; src adds its value: x_src = z_src + x.
    Rounds 1; bytes 8 * (ndim + 2) from src to each other party; no data bytes.
    A non-src party passes value=None, or an empty tensor on the device it wants.
    """
    comm = session.comm
    if not 0 <= src < session.world_size:
        raise ValueError(f"src={src} is not a party rank (world size {session.world_size})")
    if session.rank == src:
        if value is None:
            raise ValueError(f"party {src} is the source of encrypt() and must pass a tensor")
        if shape is not None and tuple(shape) != tuple(value.shape):
            raise ValueError(f"party {src}: shape={tuple(shape)} does not match the tensor's "
                             f"shape {tuple(value.shape)}")
        announce = torch.tensor([tag, value.dim(), *value.shape], dtype=torch.int64)
        comm.exchange({p: announce for p in comm.peers}, [])
        return zero_share(session, value.shape, value.device) + value, tag
    announced = comm.exchange({}, [src])[src]
    if announced.dtype != torch.int64 or announced.dim() != 1 or len(announced) < 2 \
            or int(announced[1]) != len(announced) - 2:
        raise ValueError(f"party {session.rank}: malformed shape announcement from party {src}")
    src_shape = tuple(int(d) for d in announced[2:])
    if shape is not None and tuple(shape) != src_shape:
        raise ValueError(f"party {session.rank} passed shape={tuple(shape)} to encrypt(), "
                         f"but party {src}'s tensor has shape {src_shape}")
    device = value.device if value is not None else None
    return zero_share(session, src_shape, device), int(announced[0])


def ride(session: Session, share: torch.Tensor, on_open: Callable[[torch.Tensor], None]) -> None:
    """Queue the opening of an arithmetic share to travel with the next opening of any
    kind (open_shares, open_words, open_bits): no round of its own, 8 (n - 1) bytes per
    element. on_open gets the opened value. Every party queues the same riders in the
    same order (SPMD), so the messages stay aligned."""
    session.riders.append((share, on_open))


def take_riders(session: Session) -> tuple[list[torch.Tensor], Callable[[torch.Tensor], None]]:
    """The queued riders' flat shares (emptying the queue), and the function that hands
    each rider its slice of their opened concatenation."""
    riders, session.riders = session.riders, []

    def deliver(total: torch.Tensor) -> None:
        offset = 0
        for share, on_open in riders:
            on_open(total[offset:offset + share.numel()].reshape(share.shape))
            offset += share.numel()
    return [share.reshape(-1) for share, _ in riders], deliver


def flush_riders(session: Session) -> None:
    """Open the queued riders now, in a round of their own (when a rider's value is
    needed before any other opening)."""
    if session.riders:
        open_shares(session, [])


def open_shares(session: Session, shares: list[torch.Tensor]) -> list[torch.Tensor]:
    """Reveal several shared tensors to every party in one round (with the queued riders).

    Each party sends the concatenation of its shares to every other party and sums
    what it receives. Rounds 1; bytes 8 * (n - 1) * total numel sent per party.
    """
    rider_flat, deliver = take_riders(session)
    parts = [s.reshape(-1) for s in shares] + rider_flat
    flat = torch.cat(parts) if len(parts) > 1 else parts[0]
    total = session.comm.all_reduce_sum(flat)
    out, offset = [], 0
    for s in shares:
        out.append(total[offset:offset + s.numel()].reshape(s.shape).to(s.device))
        offset += s.numel()
    deliver(total[offset:])
    return out


def reveal(session: Session, share: torch.Tensor, dst: int | None = None) -> torch.Tensor | None:
    """The shared value on every party (dst=None) or on dst only (others get None).

    Rounds 1; bytes 8 * numel to each receiving party from every other party.
    """
    if dst is None:
        return open_shares(session, [share])[0]
    if not 0 <= dst < session.world_size:
        raise ValueError(f"dst={dst} is not a party rank (world size {session.world_size})")
    parts = session.comm.gather(share, dst)
    if parts is None:
        return None
    total = parts[session.rank].clone()
    for r, p in enumerate(parts):
        if r != session.rank:
            total += p.to(total.device)
    return total
