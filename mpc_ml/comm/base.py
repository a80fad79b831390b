"""Communicator: collectives over point-to-point links, with traffic counted here.

A Link is one ordered, reliable pipe to one peer that carries two kinds of message:
tensors (sent as dtype, shape and raw bytes) and small control dicts (JSON). Backends
only provide links; every collective and all statistics live in Communicator.

Counting rules (the protocol specs in protocols/ are written against them):
- bytes_sent / bytes_received count payload bytes: a tensor's raw data, a control
  message's JSON text. Frame headers (16 + 8 * ndim bytes on tcp) are not counted.
- messages counts messages sent.
- rounds counts communication steps this party took part in: every call of send,
  recv, exchange, all_gather, broadcast or gather that moved at least one message to
  or from this party is one round. Messages that travel in the same step share it.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, fields
from typing import Union

import torch

from .errors import FrameError, peer_name
from .frames import encode_control

Message = Union[torch.Tensor, dict]


def message_bytes(msg: Message) -> int:
    """Payload size of a message as counted in stats."""
    if isinstance(msg, torch.Tensor):
        return msg.numel() * msg.element_size()
    return len(encode_control(msg))


class Link(ABC):
    """An ordered, reliable message pipe to one peer."""

    peer: int
    pinned_for: torch.device | None = None
    """A CUDA device: receive tensor payloads into page-locked host memory for it
    (receive_for), so that their copy to the device is one DMA."""

    def receive_for(self, device: torch.device | str) -> None:
        """Received tensors are bound for device: pinned for a CUDA one."""
        device = torch.device(device)
        self.pinned_for = device if device.type == "cuda" else None

    @abstractmethod
    def send(self, msg: Message) -> None:
        """Queue a message for the peer (may block on flow control, never on the peer's reads)."""

    @abstractmethod
    def recv(self, timeout: float) -> Message:
        """The next message; PeerError if the peer went away, CommTimeout after `timeout` s."""

    @abstractmethod
    def close(self) -> None:
        """Release the link; the peer's pending and later receives fail with PeerError."""


@dataclass
class Stats:
    """Traffic counters of one party."""

    rounds: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    messages: int = 0

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def reset(self) -> None:
        for f in fields(self):
            setattr(self, f.name, 0)


class Communicator:
    """Collectives among the compute parties over one Link per peer."""

    def __init__(self, rank: int, world_size: int, links: dict[int, Link], timeout: float):
        self.rank, self.world_size, self.timeout = rank, world_size, timeout
        self.links = links
        self.stats = Stats()
        expected = set(range(world_size)) - {rank}
        if set(links) != expected:
            raise ValueError(f"party {rank}: links to {sorted(links)}, expected {sorted(expected)}")

    def receive_for(self, device: torch.device | str) -> None:
        """Received tensors are bound for device: for a CUDA one every link receives them
        into pinned host memory (they stay host tensors: control bytes are read there,
        and shares are moved where they are used)."""
        for link in self.links.values():
            link.receive_for(device)

    @property
    def peers(self) -> list[int]:
        return [p for p in range(self.world_size) if p != self.rank]

    # -- point to point, counted -------------------------------------------------
    def _send(self, msg: Message, dst: int) -> None:
        if dst == self.rank or dst not in self.links:
            raise ValueError(f"party {self.rank} cannot send to rank {dst}")
        self.links[dst].send(msg)
        self.stats.messages += 1
        self.stats.bytes_sent += message_bytes(msg)

    def _recv(self, src: int) -> Message:
        if src == self.rank or src not in self.links:
            raise ValueError(f"party {self.rank} cannot receive from rank {src}")
        msg = self.links[src].recv(self.timeout)
        self.stats.bytes_received += message_bytes(msg)
        return msg

    def _recv_tensor(self, src: int) -> torch.Tensor:
        msg = self._recv(src)
        if not isinstance(msg, torch.Tensor):
            raise FrameError(f"party {self.rank} expected a tensor from {peer_name(src)}, "
                             f"got a control message {sorted(msg)}")
        return msg

    # -- collectives: each is one round -------------------------------------------
    def send(self, tensor: torch.Tensor, dst: int) -> None:
        """Send one tensor to dst."""
        self._send(tensor, dst)
        self.stats.rounds += 1

    def recv(self, src: int) -> torch.Tensor:
        """Receive one tensor from src."""
        out = self._recv_tensor(src)
        self.stats.rounds += 1
        return out

    def exchange(self, outgoing: dict[int, torch.Tensor], sources: list[int]) -> dict[int, torch.Tensor]:
        """Send outgoing[p] to each p, then receive one tensor from each rank in sources."""
        for dst, t in outgoing.items():
            self._send(t, dst)
        received = {src: self._recv_tensor(src) for src in sources}
        if outgoing or sources:
            self.stats.rounds += 1
        return received

    def all_gather(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        """Every party's tensor, in rank order (tensors may differ in shape)."""
        got = self.exchange({p: tensor for p in self.peers}, self.peers)
        got[self.rank] = tensor
        return [got[r] for r in range(self.world_size)]

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum of every party's tensor (int64 sums wrap mod 2^64)."""
        parts = [t.to(tensor.device) for t in self.all_gather(tensor)]
        total = parts[0].clone()
        for t in parts[1:]:
            total += t
        return total

    def broadcast(self, tensor: torch.Tensor | None, src: int) -> torch.Tensor:
        """src's tensor on every party."""
        if self.rank == src:
            self.exchange({p: tensor for p in self.peers}, [])
            return tensor
        return self.exchange({}, [src])[src]

    def gather(self, tensor: torch.Tensor, dst: int) -> list[torch.Tensor] | None:
        """Every party's tensor at dst (rank order), None elsewhere."""
        if self.rank == dst:
            got = self.exchange({}, self.peers)
            got[self.rank] = tensor
            return [got[r] for r in range(self.world_size)]
        self.exchange({dst: tensor}, [])
        return None

    # -- control messages (handshakes, not counted as protocol rounds) -------------
    def send_control(self, msg: dict, dst: int) -> None:
        self._send(msg, dst)

    def recv_control(self, src: int) -> dict:
        msg = self._recv(src)
        if not isinstance(msg, dict):
            raise FrameError(f"party {self.rank} expected a control message from "
                             f"{peer_name(src)}, got a tensor")
        return msg

    def close(self) -> None:
        for link in self.links.values():
            link.close()
