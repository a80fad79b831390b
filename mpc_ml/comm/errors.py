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


def peer_name(rank: int) -> str:
    """Human name of a rank in errors ('party 2', 'the dealer', 'a client')."""
    if rank == DEALER_RANK:
        return "the dealer"
    return "a client" if rank < 0 else f"party {rank}"
