"""Communication: links to peers (inproc, tcp, tls, mpi), typed frames, traffic counts.

Knows tensors and small control messages, nothing of shares. Imports only core/ and
config. Every blocking receive has a timeout; counting happens in Communicator.
"""
from .base import Communicator, Link, Message, Stats, message_bytes
from .errors import (CLIENT_RANK, DEALER_RANK, CommError, CommTimeout, FrameError, PeerError,
                     client_index, client_rank, peer_name)

__all__ = ["CLIENT_RANK", "DEALER_RANK", "CommError", "CommTimeout", "Communicator", "FrameError",
           "Link", "Message", "PeerError", "Stats", "client_index", "client_rank", "message_bytes",
           "peer_name"]
