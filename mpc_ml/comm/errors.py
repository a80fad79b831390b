"""What can go wrong on a link, and how peers are named in errors."""
from __future__ import annotations


class CommError(RuntimeError):
    """A communication failure."""


class PeerError(CommError):
    """A peer closed its connection or died; names the peer."""

    def __init__(self, peer: str, detail: str = "closed the connection"):
        super().__init__(f"{peer} {detail}")
        self.peer = peer


class CommTimeout(CommError):
    """No message arrived from a peer in time."""


class FrameError(CommError):
    """A malformed, oversized or unexpected frame."""


DEALER_RANK = -1
CLIENT_RANK = -2  # an inference client outside the compute parties, or a peer not yet known


def client_rank(index: int) -> int:
    """The rank standing for inference client `index` (certified by its certificate)."""
    return CLIENT_RANK - 1 - index


def client_index(rank: int) -> int | None:
    """Which client a rank from client_rank() names (None for parties, dealer, unknown)."""
    return CLIENT_RANK - 1 - rank if rank < CLIENT_RANK else None


def peer_name(rank: int) -> str:
    """Human name of a rank in errors ('party 2', 'the dealer', 'client 0', 'a client')."""
    if rank == DEALER_RANK:
        return "the dealer"
    if rank < CLIENT_RANK:
        return f"client {client_index(rank)}"
    return "a client" if rank < 0 else f"party {rank}"
