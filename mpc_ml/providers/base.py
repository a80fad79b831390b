"""Correlated randomness: what a correlation is, and how its shares are made.

A correlation has *free* components, uniformly random (Beaver's a, b; a truncation
mask r), and *derived* components, functions of the free ones (c = a (x) b; the
truncated mask and its top bit). Every party i holds a PRG stream shared with the
generator (the dealer, or party 0 under the trusted-first-party provider). For each
correlation, in program order, party i draws its shares of the free components from
its stream, then its shares of the derived ones, except the *correction party*, who
instead gets derived - sum(other parties' derived shares) from the generator. So the
generator sends data to one party only; all other shares cost nothing to deliver.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Callable

import torch

from .. import ring
from ..prg import PRG

Shape = tuple


def _bilinear_out_shape(op: str, a_shape: Shape, b_shape: Shape, kwargs: dict) -> Shape:
    a = torch.empty(a_shape, device="meta")
    b = torch.empty(b_shape, device="meta")
    return tuple(ring._float_op(op)(a, b, **kwargs).shape)


class CorrelationKind:
    """How to make one kind of correlation from its parameters."""

    def __init__(self, free: Callable[[dict], list], derived: Callable[[dict], list],
                 derive: Callable[[dict, list], list]):
        self.free_shapes, self.derived_shapes, self.derive = free, derived, derive


def _triple_derive(p: dict, free: list) -> list:
    return [ring.bilinear(p["op"], free[0], free[1], **p["kwargs"])]


def _trunc_derive(p: dict, free: list) -> list:
    (r,) = free
    low = r & ((1 << 63) - 1)
    return [low >> p["bits"], (r >> 63) & 1]


KINDS: dict[str, CorrelationKind] = {
    # Beaver triple for a bilinear op: a, b uniform; c = op(a, b).
    "triple": CorrelationKind(
        free=lambda p: [tuple(p["a_shape"]), tuple(p["b_shape"])],
        derived=lambda p: [_bilinear_out_shape(p["op"], tuple(p["a_shape"]), tuple(p["b_shape"]),
                                               p["kwargs"])],
        derive=_triple_derive),
    # Truncation mask: r uniform; (r mod 2^63) >> bits; msb(r).
    "trunc": CorrelationKind(
        free=lambda p: [tuple(p["shape"])],
        derived=lambda p: [tuple(p["shape"]), tuple(p["shape"])],
        derive=_trunc_derive),
}


def kind_of(request: dict) -> CorrelationKind:
    try:
        return KINDS[request["kind"]]
    except KeyError:
        raise ValueError(f"unknown correlation kind {request.get('kind')!r}") from None


def draw_shares(stream: PRG, request: dict, with_derived: bool) -> tuple[list, list]:
    """One party's shares drawn from its stream: (free, derived or [])."""
    kind = kind_of(request)
    free = [stream.random_ring(s) for s in kind.free_shapes(request["params"])]
    derived = ([stream.random_ring(s) for s in kind.derived_shapes(request["params"])]
               if with_derived else [])
    return free, derived


class CorrelationGenerator:
    """Makes correlations for all parties from their streams (dealer, or TFP's party 0)."""

    def __init__(self, streams: list[PRG], correction_party: int):
        self.streams, self.correction_party = streams, correction_party

    def generate(self, request: dict) -> tuple[list, list]:
        """(the correction party's free shares, its derived shares)."""
        kind = kind_of(request)
        total_free = None
        others_derived = None
        mine_free = None
        for i, stream in enumerate(self.streams):
            is_corr = i == self.correction_party
            free, derived = draw_shares(stream, request, with_derived=not is_corr)
            if is_corr:
                mine_free = free
            total_free = free if total_free is None else [t + f for t, f in zip(total_free, free)]
            if derived:
                others_derived = (derived if others_derived is None
                                  else [t + d for t, d in zip(others_derived, derived)])
        full = kind.derive(request["params"], total_free)
        corrections = full if others_derived is None else [f - o for f, o in zip(full, others_derived)]
        return mine_free, corrections


class Correlation:
    """This party's shares of one correlation; derived shares may arrive later."""

    def __init__(self, free: list, derived: list | None = None,
                 fetch: Callable[["Correlation"], None] | None = None, n_derived: int = 0):
        self.free = free
        self._derived = derived
        self._fetch = fetch
        self.n_derived = n_derived

    def set_derived(self, derived: list) -> None:
        self._derived = derived

    def derived(self) -> list:
        """The derived shares (waits for the generator where they come from it)."""
        if self._derived is None:
            self._fetch(self)
        return self._derived


class Provider(ABC):
    """Source of correlations for one party."""

    name: str

    @abstractmethod
    def request(self, kind: str, **params) -> Correlation:
        """This party's shares of a new correlation (same call order on every party)."""

    def stats(self) -> dict:
        """Traffic to and from a dealer (empty where there is none)."""
        return {}

    def reset_stats(self) -> None:
        pass

    def close(self) -> None:
        pass


def make_request(kind: str, **params) -> dict:
    """A JSON-able correlation request."""
    request = {"kind": kind, "params": params}
    kind_of(request)
    return request
