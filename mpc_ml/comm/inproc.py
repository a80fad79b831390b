"""In-process backend: parties are threads, links are queues (fast tests)."""
from __future__ import annotations

import queue

import torch

from .base import Link, Message
from .errors import CommTimeout, PeerError, peer_name

_CLOSED = object()


class InprocHub:
    """The queues between every ordered pair of endpoints of one run."""

    def __init__(self):
        self._queues: dict[tuple[int, int], queue.Queue] = {}

    def _queue(self, src: int, dst: int) -> queue.Queue:
        # dict.setdefault is atomic under the GIL, so threads agree on one queue.
        return self._queues.setdefault((src, dst), queue.Queue())

    def link(self, me: int, peer: int) -> "InprocLink":
        """The link from endpoint `me` to endpoint `peer` (ranks; the dealer is -1)."""
        return InprocLink(me, peer, self._queue(me, peer), self._queue(peer, me))


class InprocLink(Link):
    """One direction pair of queues between two threads."""

    def __init__(self, me: int, peer: int, outbox: queue.Queue, inbox: queue.Queue):
        self.me, self.peer = me, peer
        self._outbox, self._inbox = outbox, inbox
        self._closed = False

    def send(self, msg: Message) -> None:
        if self._closed:
            raise PeerError(peer_name(self.me), "already closed its link")
        # Copy: the sender may change its tensor in place after sending.
        self._outbox.put(msg.clone() if isinstance(msg, torch.Tensor) else dict(msg))

    def recv(self, timeout: float) -> Message:
        try:
            msg = self._inbox.get(timeout=timeout)
        except queue.Empty:
            raise CommTimeout(f"{peer_name(self.me)}: no message from {peer_name(self.peer)} "
                              f"within {timeout:g} s") from None
        if msg is _CLOSED:
            self._inbox.put(_CLOSED)  # later receives fail the same way
            raise PeerError(peer_name(self.peer))
        return msg

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._outbox.put(_CLOSED)
