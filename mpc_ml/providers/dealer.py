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
import hmac
import sys
from dataclasses import dataclass


from ..comm import CommError, Link, PeerError, Stats, message_bytes
from ..core.keys import PUBLIC_KEY_BYTES, KeyAgreement, transcript
from ..core.prg import PRG
from . import attestation
from .base import Correlation, CorrelationGenerator, Provider, draw_shares, kind_of


class DealerProvider(Provider):
    """A party's end of the dealer: local draws, plus corrections for the last party."""

    name = "dealer"
    needs_dealer = True

    def __init__(self, rank: int, world_size: int, link: Link, timeout: float,
                 measurements: list[str] | None = None):
        super().__init__()
        self.rank, self.world_size = rank, world_size
        self.link, self.timeout = link, timeout
        self.traffic = Stats()
        self.dealer = party_seed_agreement(link, rank, timeout, measurements)
        self._stream = PRG(self.dealer.seed)
        self.is_correction_party = rank == world_size - 1
        self._pending: collections.deque[Correlation] = collections.deque()

    @classmethod
    def create(cls, rank: int, world_size: int, own: PRG, pairwise: dict[int, PRG],
               dealer_link: Link | None, timeout: float,
               measurements: list[str] | None = None) -> "DealerProvider":
        if dealer_link is None:
            raise ValueError("provider 'dealer' needs a connection to a dealer")
        return cls(rank, world_size, dealer_link, timeout, measurements)

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


SIM_PLATFORM_SEED = b"mpc_ml sim platform: a public key, so it protects nothing"
"""The sim 'platform' is public: any dealer and party derive the same root from it."""


def sim_platform() -> attestation.SimPlatform:
    """The software signer of attestation mode sim (its root is what parties trust)."""
    return attestation.SimPlatform(seed=SIM_PLATFORM_SEED)


@dataclass
class DealerHello:
    """What a party learned of its dealer at set-up."""

    seed: bytes
    attest: str = "none"
    transcript: bytes | None = None
    """SHA-256 over the quote, the attested key and every nonce: equal on every party iff
    they all attested the same dealer in the same session."""
    measurement: str | None = None


def _verify_dealer(msg, rank: int, mode: str, dealer_key: bytes, nonce: bytes,
                   measurements: list[str]) -> tuple[bytes, str]:
    """The dealer's quote checked: signature, debug bit, measurement, attested key, nonce."""
    if not isinstance(msg, dict) or not isinstance(msg.get("quote"), str) \
            or not isinstance(msg.get("nonces"), list):
        raise attestation.AttestationError(f"party {rank}: the dealer sent no attestation quote",
                                           "malformed")
    try:
        quote = bytes.fromhex(msg["quote"])
        nonces = [bytes.fromhex(n) for n in msg["nonces"]]
    except (TypeError, ValueError):
        raise attestation.AttestationError(f"party {rank}: malformed attestation message",
                                           "malformed") from None
    if rank >= len(nonces) or not hmac.compare_digest(nonces[rank], nonce):
        raise attestation.AttestationError(
            f"party {rank}: the dealer's attestation does not carry this party's nonce "
            "(a replayed quote?)", "nonce")
    pinned = measurements or [attestation.parse_quote(quote).body.mr_enclave.hex()]
    verified = attestation.verify_quote(
        quote, mode=mode, expected_measurements=pinned,
        expected_report_data=attestation.report_data_for(dealer_key, nonces),
        sim_root=sim_platform().root_pem if mode == "sim" else None)
    return attestation.attestation_transcript(quote, dealer_key, nonces), verified.mrenclave


def party_seed_agreement(link: Link, rank: int, timeout: float,
                         measurements: list[str] | None = None) -> DealerHello:
    """A party's seed shared with the dealer: the dealer's X25519 public key arrives, the
    party answers with its own and a fresh nonce, and both derive the seed (no seed
    crosses the link). An attesting dealer then sends a quote whose report data holds the
    hash of that key and of every party's nonce: the seed is bound to the attested key,
    so verifying the quote and using the seed are one act (RA-TLS's idea). With pinned
    measurements, a dealer that does not attest one of them is refused."""
    hello = link.recv(timeout)
    dealer_key = _public_key_of(hello, f"party {rank}: the dealer")
    mode = hello.get("attest", "none")
    if mode not in ("none", *attestation.MODES):
        raise attestation.AttestationError(f"party {rank}: the dealer announces attestation "
                                           f"mode {mode!r}", "config")
    agreement, nonce = KeyAgreement(), attestation.new_nonce()
    link.send({"x25519": agreement.public.hex(), "nonce": nonce.hex()})
    seed = agreement.derive(dealer_key, "dealer seed", _seed_context(rank, dealer_key,
                                                                       agreement.public))
    if mode == "none":
        if measurements:
            raise attestation.AttestationError(
                f"party {rank}: this party pins the dealer measurement {', '.join(measurements)}, "
                "but the dealer does not attest (start it with `mpc-ml dealer --attest sgx`)",
                "unavailable")
        return DealerHello(seed)
    if mode == "sim":
        print(f"mpc_ml: party {rank}: dealer {attestation.SIM_WARNING}", file=sys.stderr)
    digest, measured = _verify_dealer(link.recv(timeout), rank, mode, dealer_key, nonce,
                                      measurements or [])
    if not measurements:
        print(f"mpc_ml: party {rank}: the dealer attested measurement {measured}; pin it with "
              "MPC_DEALER_MEASUREMENT or Config(dealer_measurement=...)", file=sys.stderr)
    return DealerHello(seed, mode, digest, measured)


def serve_dealer(links: dict[int, Link], world_size: int, idle_timeout: float,
                 attest: str = "none", platform: attestation.SimPlatform | None = None) -> int:
    """Agree a seed with every party (and, attesting, quote the agreement key and every
    party's nonce), then answer the last party's requests until it hangs up. Returns the
    number of correlations served.
    """
    served = 0
    try:
        agreement = KeyAgreement()
        for link in links.values():
            link.send({"x25519": agreement.public.hex(), "attest": attest})
        seeds, nonces = {}, {}
        for rank, link in links.items():
            msg = link.recv(idle_timeout)
            party_key = _public_key_of(msg, f"the dealer: party {rank}")
            nonces[rank] = msg.get("nonce", "")
            seeds[rank] = agreement.derive(party_key, "dealer seed",
                                           _seed_context(rank, agreement.public, party_key))
        if attest != "none":
            if attest == "sim":
                print(f"mpc_ml: the dealer: {attestation.SIM_WARNING}", file=sys.stderr)
            ordered = [bytes.fromhex(nonces[r]) for r in range(world_size)]
            quote = attestation.make_dealer_quote(
                attest, attestation.report_data_for(agreement.public, ordered),
                sim_platform=platform or (sim_platform() if attest == "sim" else None))
            for link in links.values():
                link.send({"quote": quote.hex(), "nonces": [n.hex() for n in ordered]})
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
