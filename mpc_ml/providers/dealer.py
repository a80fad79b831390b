"""Dealer: a process that is not a compute party makes every correlation.

At start the dealer agrees a PRG seed with each party by X25519 key agreement (its
only exchange with most parties; no seed crosses the link). Afterwards only the last
party talks to it: it sends each correlation request as it reaches the operation,
keeps computing (opening its masked inputs, doing its local products) and collects the
correction when it needs it, so the dealer's work (e.g. the product a @ b) overlaps the
parties' instead of sitting on their critical path. The dealer learns shapes, never
data; it must not collude with any party.

Offline phase (protocols/offline.toml): `DealerProvider.prefetch(requests, repeats)`
announces a traced request list and a repeat count in a few control messages; the
dealer then makes the correlations of every repeat, in order, and streams their
corrections without waiting for requests, at most `window` repeats ahead of what the
last party has collected (it acknowledges each collected repeat with {"ack": 1}). The
parties check every request against the announced one and send none of them; when the
prefetched requests are used up they go back to one request per correlation.
"""
from __future__ import annotations

import collections
import hmac
import json
import sys
from dataclasses import dataclass

import torch


from ..comm import CommError, CommTimeout, Link, PeerError, Stats, message_bytes
from ..core.keys import PUBLIC_KEY_BYTES, KeyAgreement, transcript
from ..core.prg import ALGORITHMS as PRG_ALGORITHMS, PRG
from . import attestation
from .base import (PREFETCH_WINDOW, Correlation, CorrelationGenerator, PrefetchDivergence, Provider,
                   canonical, check_prefetch, draw_shares, kind_of)

ACK = {"ack": 1}
"""The last party's acknowledgement of one prefetched repeat, once it has collected every
correction of it (9 bytes of JSON)."""
ANNOUNCE_CHUNK_BYTES = 60_000
"""The largest announcement message (its compact JSON), below the 64 KiB control-frame cap."""
MAX_PREFETCH_REQUESTS = 1 << 20
"""The longest request list (counting repeated requests) a dealer accepts in one announcement."""
MAX_PREFETCH_REPEATS = 1 << 30
MAX_PREFETCH_WINDOW = 64
ANNOUNCEMENT_KEYS = {"more", "prefetch", "repeats", "window"}


def _json_len(value: object) -> int:
    return len(json.dumps(value, separators=(",", ":"), sort_keys=True))


def run_lengths(requests: list[dict]) -> list[list]:
    """[[count, request], ...]: the list with consecutive equal requests merged."""
    runs: list[list] = []
    last = None
    for request in requests:
        key = canonical(request)
        if key == last:
            runs[-1][0] += 1
        else:
            runs.append([1, request])
            last = key
    return runs


def announcement(requests: list[dict], repeats: int, window: int = PREFETCH_WINDOW,
                 chunk_bytes: int | None = None) -> list[dict]:
    """The control messages that announce a prefetch: the run-length encoded list
    ([count, request] entries), cut in order into messages of at most chunk_bytes
    (default ANNOUNCE_CHUNK_BYTES) of compact JSON, each {"more", "prefetch", "repeats",
    "window"}; "more" is true on all but the last."""
    limit = ANNOUNCE_CHUNK_BYTES if chunk_bytes is None else chunk_bytes
    empty = _json_len({"more": False, "prefetch": [], "repeats": repeats, "window": window})
    chunks: list[list] = [[]]
    size = empty
    for entry in run_lengths(requests):
        n = _json_len(entry)
        if empty + n > limit:
            raise ValueError(f"prefetch: a request of {n} bytes does not fit an announcement "
                             f"message of {limit} bytes: {entry[1]}")
        if chunks[-1] and size + 1 + n > limit:
            chunks.append([])
            size = empty
        size += n + (1 if len(chunks[-1]) else 0)
        chunks[-1].append(entry)
    return [{"more": i < len(chunks) - 1, "prefetch": chunk, "repeats": repeats, "window": window}
            for i, chunk in enumerate(chunks)]


class _Expected:
    """The prefetched requests a party expects next: `repeats` times one list."""

    def __init__(self, runs: list[list], repeats: int):
        self.keys = [(count, canonical(request)) for count, request in runs]
        self.length = sum(count for count, _ in runs)
        self.repeats = repeats
        self.index = 0  # requests consumed so far, over all repeats
        self._run = self._offset = 0

    def expected(self) -> str:
        return self.keys[self._run][1]

    def advance(self) -> bool:
        """Consume the expected request; True where it is the last one of a repeat."""
        self.index += 1
        self._offset += 1
        if self._offset < self.keys[self._run][0]:
            return False
        self._run, self._offset = self._run + 1, 0
        if self._run < len(self.keys):
            return False
        self._run = 0
        return True

    @property
    def used_up(self) -> bool:
        return self.index == self.length * self.repeats


class DealerProvider(Provider):
    """A party's end of the dealer: local draws, plus corrections for the last party."""

    name = "dealer"
    needs_dealer = True

    def __init__(self, rank: int, world_size: int, link: Link, timeout: float,
                 measurements: list[str] | None = None,
                 allowed_tcb: tuple[str, ...] = attestation.DEFAULT_TCB_STATUSES,
                 prg: str = "aes"):
        super().__init__()
        self.rank, self.world_size = rank, world_size
        self.link, self.timeout = link, timeout
        self.traffic = Stats()
        self.dealer = party_seed_agreement(link, rank, timeout, measurements, allowed_tcb, prg)
        self._stream = PRG(self.dealer.seed, prg)
        self.is_correction_party = rank == world_size - 1
        self._pending: collections.deque[tuple[Correlation, bool]] = collections.deque()
        """Correlations whose corrections are still to come, each with whether it ends a
        prefetched repeat (its collection is then acknowledged)."""
        self._expected: collections.deque[_Expected] = collections.deque()
        self._diverged: str | None = None
        self._link_failed: str | None = None  # what link_failure found (a message it took)
        self._public_pending: collections.deque[Correlation] = collections.deque()
        """(Not the last party) correlations whose public components are still to come."""

    @classmethod
    def create(cls, rank: int, world_size: int, own: PRG, pairwise: dict[int, PRG],
               dealer_link: Link | None, timeout: float,
               measurements: list[str] | None = None,
               allowed_tcb: tuple[str, ...] = attestation.DEFAULT_TCB_STATUSES) -> "DealerProvider":
        if dealer_link is None:
            raise ValueError("provider 'dealer' needs a connection to a dealer")
        return cls(rank, world_size, dealer_link, timeout, measurements, allowed_tcb,
                   own.algorithm)

    def prefetch(self, requests: list[dict], repeats: int, window: int = PREFETCH_WINDOW) -> None:
        """Announce the next `repeats` runs of `requests`: the last party sends the list
        (run-length encoded, in messages under the control-frame cap) and the repeat
        count to the dealer, which makes all their correlations in order and streams the
        corrections, at most `window` repeats ahead of what this party has collected.
        Then every party checks each request against the announced one (a difference
        raises PrefetchDivergence) and the last party sends none of them. Every party
        must call it at the same point with the same list (SPMD); calls queue up, each
        after the previous one's requests. No party-to-party traffic."""
        check_prefetch(requests, repeats, window)
        if self._diverged:
            raise PrefetchDivergence(self._diverged)
        if not requests or not repeats:
            return
        for what, value, high in (("requests", len(requests), MAX_PREFETCH_REQUESTS),
                                  ("repeats", repeats, MAX_PREFETCH_REPEATS),
                                  ("window", window, MAX_PREFETCH_WINDOW)):
            if value > high:
                raise ValueError(f"prefetch: {what} must be at most {high} (a dealer refuses "
                                 f"more), got {value}")
        runs = run_lengths(list(requests))
        messages = announcement(list(requests), repeats, window) if self.is_correction_party else []
        self._expected.append(_Expected(runs, repeats))
        for msg in messages:
            self._send(msg)

    def _send(self, msg: dict) -> None:
        self.link.send(msg)
        self.traffic.messages += 1
        self.traffic.bytes_sent += message_bytes(msg)

    def _check_expected(self, request: dict) -> bool:
        """The request is the next prefetched one (else PrefetchDivergence, for good);
        True where it ends a repeat."""
        plan = self._expected[0]
        got = canonical(request)
        if got != plan.expected():
            k = plan.index
            self._diverged = (
                f"party {self.rank}: the computation diverged from the prefetched correlations "
                f"at request #{k}: expected {plan.expected()}, got {got} (request {k % plan.length}"
                f" of repeat {k // plan.length + 1} of {plan.repeats} of a {plan.length}-request "
                "list; after prefetch, every party must run the traced computation again, "
                "exactly and in the same order, once per repeat)")
            self._expected.clear()
            raise PrefetchDivergence(self._diverged)
        ends_repeat = plan.advance()
        if plan.used_up:
            self._expected.popleft()
        return ends_repeat

    def _correlation(self, request: dict) -> Correlation:
        if self._diverged:
            raise PrefetchDivergence(self._diverged)
        prefetched = bool(self._expected)
        ends_repeat = self._check_expected(request) if prefetched else False
        free, derived = draw_shares(self._stream, request,
                                    with_derived=not self.is_correction_party, rank=self.rank,
                                    device=self.device)
        kind = kind_of(request)
        public = kind.public_shapes(request["params"])
        if not self.is_correction_party:
            if not public:
                return Correlation(free, derived)
            corr = Correlation(free, derived, fetch=self._collect_public_until,
                               public_shapes=public)
            self._public_pending.append(corr)
            return corr
        if not prefetched:
            self._send(request)
        derived_shapes = kind.derived_shapes(request["params"])
        corr = Correlation(free, fetch=self._collect_until, n_derived=len(derived_shapes),
                           public_shapes=public, derived_shapes=derived_shapes)
        self._pending.append((corr, ends_repeat))
        return corr

    def _receive(self, count: int, shapes: list | None = None) -> list:
        """The next `count` tensors from the dealer (a dict is its error), each checked
        against its expected shape (int64; corrections and public key material alike)."""
        got = []
        for i in range(count):
            msg = self.link.recv(self.timeout)
            if isinstance(msg, dict):
                raise CommError(f"party {self.rank}: the dealer failed: {msg.get('error', msg)}")
            if shapes is not None and (msg.dtype != torch.int64 or tuple(msg.shape) != tuple(shapes[i])):
                raise CommError(f"party {self.rank}: malformed correlation data from the dealer: "
                                f"{msg.dtype} {tuple(msg.shape)}, expected int64 {tuple(shapes[i])}")
            got.append(msg)
        self.traffic.bytes_received += sum(message_bytes(m) for m in got)
        return [m.to(self.device) for m in got]  # on the party's device, once

    def _collect_public_until(self, target: Correlation) -> None:
        """(Not the last party) receive public components, in request order, until
        target's have arrived."""
        while target._public is None:
            corr = self._public_pending.popleft()
            corr.set_public(self._receive(corr.n_public, corr.public_shapes))

    def _collect_until(self, target: Correlation) -> None:
        """Receive corrections, in request order, until target's have arrived; acknowledge
        each prefetched repeat whose corrections have all arrived."""
        while target._derived is None:
            corr, ends_repeat = self._pending.popleft()
            corr.set_derived(self._receive(corr.n_derived, corr.derived_shapes))
            if corr.n_public:
                corr.set_public(self._receive(corr.n_public, corr.public_shapes))
            if ends_repeat:
                self._send(ACK)

    def link_failure(self) -> str | None:
        """Why the dealer link is down, without waiting: the dealer hung up (its link's
        reader saw the end at once) or sent something while nothing was due; None while it
        looks up, and always while correlation data is due (pending, or prefetched: the
        next collection tells then). What it finds wrong stays wrong: stop using this
        provider. For a caller that idles (the inference service's heartbeat)."""
        if self._link_failed or self._pending or self._public_pending or self._expected:
            return self._link_failed
        try:
            msg = self.link.recv(0)
        except CommTimeout:
            return None
        except CommError as e:
            return str(e)
        if isinstance(msg, dict):
            why = f"the dealer failed: {msg.get('error', msg)}"
        else:
            why = (f"the dealer sent {msg.dtype} {tuple(msg.shape)} data while no correlation "
                   "was due")
        self._link_failed = why  # the link is out of step for good
        return why

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
                   measurements: list[str], allowed_tcb: tuple[str, ...]) -> tuple[bytes, str]:
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
        sim_root=sim_platform().root_pem if mode == "sim" else None,
        collateral=msg.get("collateral"), allowed_tcb_statuses=allowed_tcb)
    return attestation.attestation_transcript(quote, dealer_key, nonces), verified.mrenclave


def party_seed_agreement(link: Link, rank: int, timeout: float,
                         measurements: list[str] | None = None,
                         allowed_tcb: tuple[str, ...] = attestation.DEFAULT_TCB_STATUSES,
                         prg: str = "aes") -> DealerHello:
    """A party's seed shared with the dealer: the dealer's X25519 public key arrives, the
    party answers with its own and a fresh nonce, and both derive the seed (no seed
    crosses the link). An attesting dealer then sends a quote whose report data holds the
    hash of that key and of every party's nonce: the seed is bound to the attested key,
    so verifying the quote and using the seed are one act (RA-TLS's idea). With pinned
    measurements, a dealer that does not attest one of them is refused. The party names
    its PRG algorithm (Config.prg), which the dealer's draws for it then use."""
    hello = link.recv(timeout)
    dealer_key = _public_key_of(hello, f"party {rank}: the dealer")
    mode = hello.get("attest", "none")
    if mode not in ("none", *attestation.MODES):
        raise attestation.AttestationError(f"party {rank}: the dealer announces attestation "
                                           f"mode {mode!r}", "config")
    agreement, nonce = KeyAgreement(), attestation.new_nonce()
    link.send({"x25519": agreement.public.hex(), "nonce": nonce.hex(), "prg": prg})
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
                                      measurements or [], allowed_tcb)
    if not measurements:
        print(f"mpc_ml: party {rank}: the dealer attested measurement {measured}; pin it with "
              "MPC_DEALER_MEASUREMENT or Config(dealer_measurement=...)", file=sys.stderr)
    return DealerHello(seed, mode, digest, measured)


def serve_dealer(links: dict[int, Link], world_size: int, idle_timeout: float,
                 attest: str = "none", platform: attestation.SimPlatform | None = None,
                 device: torch.device | str | None = None) -> int:
    """Agree a seed with every party (and, attesting, quote the agreement key and every
    party's nonce), then answer the last party's requests and prefetch announcements
    until it hangs up, making the correlations on device (None: the host; a GPU makes a
    large matmul's triple products there, its sends staged through pinned memory).
    Returns the number of correlations served.
    """
    try:
        agreement = KeyAgreement()
        for link in links.values():
            link.send({"x25519": agreement.public.hex(), "attest": attest})
        seeds, nonces, prgs = {}, {}, {}
        for rank, link in links.items():
            msg = link.recv(idle_timeout)
            party_key = _public_key_of(msg, f"the dealer: party {rank}")
            nonces[rank] = msg.get("nonce", "")
            prgs[rank] = msg.get("prg", "aes")
            seeds[rank] = agreement.derive(party_key, "dealer seed",
                                           _seed_context(rank, agreement.public, party_key))
        if attest != "none":
            if attest == "sim":
                print(f"mpc_ml: the dealer: {attestation.SIM_WARNING}", file=sys.stderr)
            ordered = [bytes.fromhex(nonces[r]) for r in range(world_size)]
            quote = attestation.make_dealer_quote(
                attest, attestation.report_data_for(agreement.public, ordered),
                sim_platform=platform or (sim_platform() if attest == "sim" else None))
            # sgx: the collateral (TCB info, QE identity, CRLs) is signed by Intel, so the
            # untrusted host may fetch it and pass it on
            collateral = attestation.fetch_collateral(quote) if attest == "sgx" else None
            for link in links.values():
                link.send({"quote": quote.hex(), "nonces": [n.hex() for n in ordered],
                           "collateral": collateral})
        if len(set(prgs.values())) != 1 or prgs[0] not in PRG_ALGORITHMS:
            raise ValueError(f"the dealer: the parties name PRG algorithms {prgs}; they must name "
                           f"one of {PRG_ALGORITHMS}, the same")
        generator = CorrelationGenerator([PRG(seeds[r], prgs[r]) for r in range(world_size)],
                                         correction_party=world_size - 1, device=device)
        return _serve_requests(links[world_size - 1], world_size - 1, generator, idle_timeout,
                               [links[r] for r in range(world_size - 1)])
    finally:
        for link in links.values():
            link.close()


class _Refused(CommError):
    """The last party sent something the dealer cannot serve (it is told, then the job ends)."""


class _Announced:
    """A prefetch announcement, gathered from its messages, then made repeat by repeat."""

    def __init__(self) -> None:
        self.runs: list[tuple[int, dict]] = []
        self.length = 0
        self.repeats = self.window = 0
        self.made = 0
        self.complete = False

    def add(self, msg: dict) -> None:
        """One announcement message, checked (ValueError says what is wrong)."""
        if set(msg) != ANNOUNCEMENT_KEYS:
            raise ValueError(f"an announcement has the keys {sorted(ANNOUNCEMENT_KEYS)}, "
                             f"got {sorted(msg)}")
        entries, more, repeats, window = (msg["prefetch"], msg["more"], msg["repeats"],
                                          msg["window"])
        if not isinstance(entries, list) or not isinstance(more, bool):
            raise ValueError("an announcement's 'prefetch' is a list and 'more' a boolean")
        for name, value, high in (("repeats", repeats, MAX_PREFETCH_REPEATS),
                                  ("window", window, MAX_PREFETCH_WINDOW)):
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= high:
                raise ValueError(f"an announcement's {name} must be an integer in 1..{high}, "
                                 f"got {value!r}")
        if self.runs and (repeats, window) != (self.repeats, self.window):
            raise ValueError("the messages of one announcement disagree on repeats or window")
        self.repeats, self.window = repeats, window
        for entry in entries:
            if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], int)
                    and not isinstance(entry[0], bool) and entry[0] >= 1
                    and isinstance(entry[1], dict) and isinstance(entry[1].get("params"), dict)):
                raise ValueError(f"an announcement entry is [count >= 1, request], got {entry!r}"
                                 [:300])
            count, request = entry
            kind = kind_of(request)
            kind.free_shapes(request["params"])
            kind.derived_shapes(request["params"])
            self.length += count
            if self.length > MAX_PREFETCH_REQUESTS:
                raise ValueError(f"an announcement of more than {MAX_PREFETCH_REQUESTS} requests")
            self.runs.append((count, request))
        if not more:
            if not self.length:
                raise ValueError("an announcement of no requests")
            self.complete = True


def _serve_requests(link: Link, rank: int, generator: CorrelationGenerator,
                    idle_timeout: float, others: list[Link] = ()) -> int:
    """Answer the last party: each request at once, each prefetch announcement by making
    its repeats in order while fewer than its window are unacknowledged; requests and
    announcements are served in the order they came. Returns when the party hangs up."""
    served = 0
    work: collections.deque = collections.deque()  # requests and complete announcements
    gathering: _Announced | None = None
    in_flight = 0  # prefetched repeats made and not yet acknowledged

    def refuse(what: str, detail: str) -> _Refused:
        link.send({"error": f"{what}: {detail}"})
        return _Refused(f"the dealer refused {what}: {detail}")

    def answer(request: dict) -> None:
        try:
            _, corrections, *public = generator.generate(request)
        except Exception as e:  # any malformed request is refused by name, never a crash
            raise refuse(f"the correlation request {request}"[:300],
                         str(e) or type(e).__name__) from None
        for c in corrections:
            link.send(c)
        for to in ([link, *others] if public else []):  # key material every party needs
            for p in public[0]:
                to.send(p)

    try:
        while True:
            if work:
                head = work[0]
                if isinstance(head, dict):
                    work.popleft()
                    answer(head)
                    served += 1
                    continue
                if head.made == head.repeats:
                    work.popleft()
                    continue
                if in_flight < head.window:
                    for count, request in head.runs:
                        for _ in range(count):
                            answer(request)
                    served += head.length
                    head.made += 1
                    in_flight += 1
                    continue
            try:
                msg = link.recv(idle_timeout)
            except PeerError:
                return served  # the last party is done
            if not isinstance(msg, dict):
                raise CommError(f"the dealer expected a request from party {rank}, "
                                f"got a tensor of shape {tuple(msg.shape)}")
            if "ack" in msg:
                if msg != ACK or not in_flight:
                    raise refuse(f"the acknowledgement {msg}"[:200],
                                 "no prefetched repeat is waiting for one" if msg == ACK
                                 else f"an acknowledgement is {ACK}")
                in_flight -= 1
            elif "prefetch" in msg:
                gathering = gathering or _Announced()
                try:
                    gathering.add(msg)
                except Exception as e:
                    raise refuse("a prefetch announcement", str(e) or type(e).__name__) from None
                if gathering.complete:
                    work.append(gathering)
                    gathering = None
            elif gathering is not None:
                raise refuse(f"the request {msg}"[:300], "it came in the middle of an announcement")
            else:
                work.append(msg)
    except PeerError:
        return served  # the party left while corrections were on their way
