"""Dealer: a process that is not a compute party makes every correlation.

At start the dealer agrees a PRG seed with each party by X25519 key agreement (its
only exchange with most parties; no seed crosses the link). Afterwards only the last
party talks to it: it sends each correlation request as it reaches the operation,
keeps computing (opening its masked inputs, doing its local products) and collects the
correction when it needs it, so the dealer's work (e.g. the product a @ b) overlaps the
parties' instead of sitting on their critical path. The dealer learns shapes, never
data; it must not collude with any party.
"""
from __future__ import annotations

import collections


from ..comm import CommError, Link, PeerError, Stats, message_bytes
from ..core.keys import PUBLIC_KEY_BYTES, KeyAgreement, transcript
from ..core.prg import PRG
from .base import Correlation, CorrelationGenerator, Provider, draw_shares, kind_of


class DealerProvider(Provider):
    """A party's end of the dealer: local draws, plus corrections for the last party."""

    name = "dealer"
    needs_dealer = True

    def __init__(self, rank: int, world_size: int, link: Link, timeout: float):
        super().__init__()
        self.rank, self.world_size = rank, world_size
        self.link, self.timeout = link, timeout
        self.traffic = Stats()
        self._stream = PRG(party_seed_agreement(link, rank, timeout))
        self.is_correction_party = rank == world_size - 1
        self._pending: collections.deque[Correlation] = collections.deque()

    @classmethod
    def create(cls, rank: int, world_size: int, own: PRG, pairwise: dict[int, PRG],
               dealer_link: Link | None, timeout: float) -> "DealerProvider":
        if dealer_link is None:
            raise ValueError("provider 'dealer' needs a connection to a dealer")
        return cls(rank, world_size, dealer_link, timeout)

    def _correlation(self, request: dict) -> Correlation:
        free, derived = draw_shares(self._stream, request, with_derived=not self.is_correction_party)
        if not self.is_correction_party:
            return Correlation(free, derived)
        self.link.send(request)
        self.traffic.messages += 1
        self.traffic.bytes_sent += message_bytes(request)
        corr = Correlation(free, fetch=self._collect_until,
                           n_derived=len(kind_of(request).derived_shapes(request["params"])))
        self._pending.append(corr)
        return corr

    def _collect_until(self, target: Correlation) -> None:
        """Receive corrections, in request order, until target's have arrived."""
        while target._derived is None:
            corr = self._pending.popleft()
            derived = []
            for _ in range(corr.n_derived):
                msg = self.link.recv(self.timeout)
                if isinstance(msg, dict):
                    raise CommError(f"party {self.rank}: the dealer failed: "
                                    f"{msg.get('error', msg)}")
                derived.append(msg)
            self.traffic.bytes_received += sum(message_bytes(d) for d in derived)
            corr.set_derived(derived)

    def stats(self) -> dict:
        return {f"dealer_{k}": v for k, v in self.traffic.as_dict().items() if k != "rounds"}

    def reset_stats(self) -> None:
        self.traffic.reset()

    def close(self) -> None:
        self.link.close()


def _public_key_of(msg, who: str) -> bytes:
    if not isinstance(msg, dict) or not isinstance(msg.get("x25519"), str):
        raise CommError(f"{who} sent no X25519 public key")
    try:
        key = bytes.fromhex(msg["x25519"])
    except ValueError:
        raise CommError(f"{who} sent a malformed X25519 public key") from None
    if len(key) != PUBLIC_KEY_BYTES:
        raise CommError(f"{who} sent a public key of {len(key)} bytes")
    return key


def _seed_context(rank: int, dealer_key: bytes, party_key: bytes) -> bytes:
    return transcript("dealer", rank, dealer_key, party_key)


def party_seed_agreement(link: Link, rank: int, timeout: float) -> bytes:
    """A party's seed shared with the dealer: the dealer's X25519 public key arrives, the
    party answers with its own, both derive the seed (no seed crosses the link)."""
    dealer_key = _public_key_of(link.recv(timeout), f"party {rank}: the dealer")
    agreement = KeyAgreement()
    link.send({"x25519": agreement.public.hex()})
    return agreement.derive(dealer_key, "dealer seed", _seed_context(rank, dealer_key,
                                                                       agreement.public))


def serve_dealer(links: dict[int, Link], world_size: int, idle_timeout: float) -> int:
    """Agree a seed with every party, then answer the last party's requests until it
    hangs up. Returns the number of correlations served.
    """
    served = 0
    try:
        agreement = KeyAgreement()
        for link in links.values():
            link.send({"x25519": agreement.public.hex()})
        seeds = {}
        for rank, link in links.items():
            party_key = _public_key_of(link.recv(idle_timeout), f"the dealer: party {rank}")
            seeds[rank] = agreement.derive(party_key, "dealer seed",
                                           _seed_context(rank, agreement.public, party_key))
        generator = CorrelationGenerator([PRG(seeds[r]) for r in range(world_size)],
                                         correction_party=world_size - 1)
        last = links[world_size - 1]
        while True:
            try:
                request = last.recv(idle_timeout)
            except PeerError:
                return served  # the last party is done
            if not isinstance(request, dict):
                raise CommError(f"the dealer expected a request from party {world_size - 1}, "
                                f"got a tensor of shape {tuple(request.shape)}")
            try:
                _, corrections = generator.generate(request)
            except (ValueError, KeyError, TypeError, RuntimeError) as e:
                last.send({"error": f"bad correlation request {request}: {e}"})
                raise CommError(f"the dealer refused a request: {e}") from None
            for c in corrections:
                last.send(c)
            served += 1
    finally:
        for link in links.values():
            link.close()
