"""Correlation trace: what each op asked the provider for (kind, shapes), in program order.

    with mpc.tensor.trace_correlations() as trace:
        model(x)
    trace.entries  # [TraceEntry(op=Op.MATMUL, requests=[{"kind": "triple", ...}, ...]), ...]

The requests a model makes depend only on shapes, never on data, so one traced
forward/backward tells a dealer what to make ahead for the next batches:

    with mpc.tensor.trace_correlations() as trace:
        train_step(batch0)                 # an ordinary run (one dealer round trip per op)
    trace.prefetch(repeats=N)              # every party, at the same point (SPMD)
    for batch in next_n_batches:
        train_step(batch)                  # corrections stream in; no request goes out

Each of the N runs must make exactly the traced requests in the traced order (same
shapes, same ops); the first difference raises
mpc_ml.providers.base.PrefetchDivergence on every party, naming the request.
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

    def prefetch(self, repeats: int, window: int | None = None) -> None:
        """Have the next `repeats` runs' correlations made ahead from this trace (see prefetch)."""
        prefetch(self, repeats, self.session, window)

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


def prefetch(trace_or_requests: CorrelationTrace | list[dict], repeats: int,
             session: Session | None = None, window: int | None = None) -> None:
    """Announce that the next `repeats` runs make the requests of this trace (or list), in
    order, so the provider makes their correlations ahead (the offline phase).

    Under the dealer provider the last party sends the list and the count to the dealer
    once; the dealer streams every correction of the `repeats` runs, at most `window`
    runs (default 2) ahead of what the party has collected, and no request is sent per
    op until the prefetched ones are used up (then one per op again). Under 'tfp' it
    does nothing (nothing waits there). Traffic: protocols/offline.toml.
    SPMD: every party must call it at the same point of its program, with the same list
    (the same trace), and then run the traced computation `repeats` times; a run that
    makes a different request raises PrefetchDivergence on every party. Calls queue up:
    a second prefetch applies after the first one's runs.
    """
    session = session or current()
    requests = (trace_or_requests.requests() if isinstance(trace_or_requests, CorrelationTrace)
                else list(trace_or_requests))
    if window is None:
        session.provider.prefetch(requests, repeats)
    else:
        session.provider.prefetch(requests, repeats, window=window)
