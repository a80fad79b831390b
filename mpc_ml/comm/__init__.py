"""Communication layer: knows tensors and messages, nothing of shares."""
from .base import (DEALER_RANK, CommError, CommTimeout, Communicator, FrameError, Link,
                   PeerError, Stats, peer_name)

BACKENDS = ("inproc", "tcp", "mpi")

__all__ = ["BACKENDS", "DEALER_RANK", "CommError", "CommTimeout", "Communicator", "FrameError",
           "Link", "PeerError", "Stats", "peer_name"]
