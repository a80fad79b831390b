"""`crypten.comm.get()`: the communicator of CrypTen's API on mpc_ml's links.

Collectives move plain tensors between the parties (as torch.distributed would); the
values are the caller's, nothing here is secret-shared. Integer tensors travel as they
are; floating-point ones are sent as their int64 bit patterns and restored.
"""
from __future__ import annotations

import builtins
from typing import Any

import torch

from ...session import Session, current


class ReduceOp:
    """The reductions all_reduce and reduce take (SUM only, as CrypTen uses)."""

    SUM = "sum"


def _wire(t: torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(t).contiguous()
    if t.dtype == torch.int64:
        return t
    if t.dtype == torch.float64:
        return t.view(torch.int64)
    if t.dtype.is_floating_point or t.dtype in (torch.int32, torch.int16, torch.int8,
                                                torch.uint8, torch.bool):
        return t.double().view(torch.int64) if t.dtype.is_floating_point else t.long()
    raise TypeError(f"crypten.comm: cannot send a {t.dtype} tensor")


def _unwire(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    if like.dtype.is_floating_point:
        return t.view(torch.float64).to(like.dtype)
    return t.to(like.dtype)


class Communicator:
    """CrypTen's communicator methods on this party's session."""

    def __init__(self, session: Session):
        self.session = session

    @property
    def _comm(self):
        return self.session.comm

    def get_rank(self) -> int:
        """This party's rank."""
        return self.session.rank

    def get_world_size(self) -> int:
        """The number of parties."""
        return self.session.world_size

    def send(self, tensor: torch.Tensor, dst: int) -> None:
        """Send a plain tensor to party dst."""
        self._comm.send(_wire(tensor), dst)

    def recv(self, tensor: torch.Tensor, src: int | None = None) -> torch.Tensor:
        """Receive into tensor (in place, its shape must match) from src; returns it."""
        if src is None:
            raise ValueError("crypten.comm.recv: mpc_ml needs the sender's rank (src=)")
        got = _unwire(self._comm.recv(src), tensor)
        if got.shape != tensor.shape:
            raise ValueError(f"crypten.comm.recv: party {src} sent shape {tuple(got.shape)}, "
                             f"the buffer has {tuple(tensor.shape)}")
        tensor.copy_(got)
        return tensor

    def broadcast(self, input: torch.Tensor, src: int, group: Any = None,
                  batched: bool = False) -> Any:
        """src's tensor on every party, written into input in place (and returned)."""
        if batched:
            return [self.broadcast(t, src) for t in input]
        got = _unwire(self._comm.broadcast(_wire(input) if self.get_rank() == src else None, src),
                      input)
        if got.shape == input.shape:
            input.copy_(got)
            return input
        return got

    def gather(self, tensor: torch.Tensor, dst: int) -> list[torch.Tensor | None]:
        """Every party's tensor, in rank order, on dst; [None] elsewhere."""
        out = self._comm.gather(_wire(tensor), dst)
        return [None] if out is None else [_unwire(t, tensor) for t in out]

    def all_gather(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        """Every party's tensor, in rank order, on every party."""
        return [_unwire(t, tensor) for t in self._comm.all_gather(_wire(tensor))]

    def all_reduce(self, input: torch.Tensor, op: str = ReduceOp.SUM, batched: bool = False) -> Any:
        """The sum over the parties, on every party."""
        if batched:
            return [self.all_reduce(t, op) for t in input]
        _check_op(op)
        return builtins.sum(self.all_gather(input))

    def reduce(self, input: torch.Tensor, dst: int, op: str = ReduceOp.SUM,
               batched: bool = False) -> Any:
        """The sum over the parties on dst (None elsewhere)."""
        if batched:
            return [self.reduce(t, dst, op) for t in input]
        _check_op(op)
        parts = self.gather(input, dst)
        return None if parts == [None] else builtins.sum(parts)

    def scatter(self, scatter_list: list[torch.Tensor] | None, src: int, size: Any = None,
                dtype: torch.dtype | None = None) -> torch.Tensor:
        """Party i gets scatter_list[i] from src."""
        me = self.get_rank()
        if me == src:
            if len(scatter_list or []) != self.get_world_size():
                raise ValueError("crypten.comm.scatter: src needs one tensor per party")
            for dst, t in enumerate(scatter_list):
                if dst != me:
                    self.send(t, dst)
            return scatter_list[me]
        if size is None:
            raise ValueError("crypten.comm.scatter: the receivers pass size=")
        buffer = torch.empty(size, dtype=dtype or torch.get_default_dtype())
        return self.recv(buffer, src)

    def barrier(self) -> None:
        """Return once every party has reached it."""
        self._comm.all_gather(torch.zeros(1, dtype=torch.int64))

    def get_communication_stats(self) -> dict:
        """rounds, bytes and time as CrypTen names them."""
        s = self.session.stats()
        return {"rounds": s["rounds"], "bytes": s["bytes_sent"], "time": 0.0}

    def reset_communication_stats(self) -> None:
        """Zero the traffic counters."""
        self.session.reset_stats()

    def print_communication_stats(self) -> None:
        """Print them, as CrypTen does."""
        s = self.get_communication_stats()
        print(f"====Communication Stats====\nRounds: {s['rounds']}\nBytes: {s['bytes']}")


def _check_op(op) -> None:
    if op not in (ReduceOp.SUM, "SUM") and getattr(op, "name", None) != "SUM":
        raise ValueError(f"crypten.comm: mpc_ml reduces with SUM only, got {op!r}")


def get() -> Communicator:
    """This party's communicator (crypten.comm.get())."""
    return Communicator(current())


def is_initialized() -> bool:
    """Whether this thread is a party."""
    from ...session import is_active
    return is_active()
