"""Correlation trace: what each op asked the provider for (kind, shapes), in program order.

    with mpc.tensor.trace_correlations() as trace:
        model(x)
    trace.entries  # [TraceEntry(op=Op.MATMUL, requests=[{"kind": "triple", ...}, ...]), ...]

The requests a model makes depend only on shapes, never on data, so one traced
forward/backward tells a dealer what to make ahead for the next batches.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from ..core.ops import Op
from ..session import Session, current

if TYPE_CHECKING:
    from .mpctensor import MPCTensor


@dataclass
class TraceEntry:
    """One recorded op and the correlation requests it made (possibly none)."""

    op: Op
    shape: tuple
    requests: list[dict] = field(default_factory=list)


class CorrelationTrace:
    """An observer of the provider's requests and of the recording point."""

    def __init__(self, session: Session):
        self.session = session
        self.entries: list[TraceEntry] = []
        self._pending: list[dict] = []

    def on_request(self, request: dict) -> None:
        """Provider observer: a request made by the op now running."""
        self._pending.append(request)

    def __call__(self, op: Op, out: MPCTensor, inputs: tuple, ctx: dict) -> None:
        """Op observer: the op finished; the requests since the last op are its own."""
        self.entries.append(TraceEntry(op, tuple(out.shape), self._pending))
        self._pending = []

    def requests(self) -> list[dict]:
        """Every request in order (what a dealer must make for one more run)."""
        return [r for e in self.entries for r in e.requests] + self._pending

    def __enter__(self) -> "CorrelationTrace":
        self.session.provider.observers.append(self.on_request)
        self.session.op_observers.append(self)
        return self

    def __exit__(self, *exc) -> Literal[False]:
        self.session.provider.observers.remove(self.on_request)
        self.session.op_observers.remove(self)
        return False


def trace_correlations(session: Session | None = None) -> CorrelationTrace:
    """A context manager recording this party's correlation requests, op by op."""
    return CorrelationTrace(session or current())
