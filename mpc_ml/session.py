"""A party's session: its rank, communicator, PRGs, provider and config, in one object.

Every MPCTensor holds the session it belongs to; the *current* session (what
mpc.encrypt, mpc.rank() and friends use) is per thread, so the in-process backend can
run several parties as threads of one interpreter.
"""
from __future__ import annotations

import json
import threading

import torch

from .comm import Communicator, Link
from .config import Config
from .core.keys import PUBLIC_KEY_BYTES, SEAL_OVERHEAD, KeyAgreement, seal, transcript, unseal
from .core.prg import PRG, SEED_BYTES, new_seed
from .providers import PROVIDERS, Provider
from .providers.attestation import AttestationError, parse_measurements

_local = threading.local()


def check_job(world_size: int, provider: str, config: Config | None = None,
              one_party: bool = False) -> None:
    """The checks every way of starting a job makes: a known provider, at least two
    parties (one_party: exactly one, launch.local_session), and settings that are correct
    for this many parties (ValueError otherwise)."""
    if provider not in PROVIDERS:
        raise ValueError(f"unknown provider {provider!r}; choose one of {tuple(PROVIDERS)}")
    if one_party:
        if world_size != 1 or provider != "tfp":
            raise ValueError("a 1-party world has world size 1 and provider 'tfp'")
    elif not isinstance(world_size, int) or isinstance(world_size, bool) or world_size < 2:
        raise ValueError(f"a job needs at least two parties (world_size >= 2), got {world_size!r}")
    if config is not None and config.truncation == "local" and world_size != 2:
        raise ValueError("truncation='local' is only correct for 2 parties")
    if config is not None and config.comparison == "fss" and (world_size != 2 or provider != "dealer"):
        raise ValueError("comparison='fss' is a 2-party protocol with a dealer (its keys come "
                         f"from the dealer to both parties); got {world_size} parties and provider "
                         f"{provider!r}: use comparison='circuit'")


def check_device(device: str) -> torch.device:
    """Config.device as a torch.device this party has (ValueError otherwise: a CUDA
    device on a torch without CUDA, or past the GPUs there are)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"Config.device {device!r} is not a device: {e}") from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if dev.index is not None and dev.index >= count or not count:
            raise ValueError(f"Config.device {device!r}: this process's torch sees "
                             f"{count} CUDA device(s)")
    return dev


class Session:
    """Everything one party needs to run protocols."""

    def __init__(self, comm: Communicator, config: Config, provider: str,
                 dealer_link: Link | None = None, one_party: bool = False):
        check_job(comm.world_size, provider, config, one_party)
        device = check_device(config.device)
        self.comm, self.config = comm, config
        self.rank, self.world_size = comm.rank, comm.world_size
        self.own = PRG(new_seed(), config.prg)
        self.pairwise = self._agree_pairwise_seeds(
            json.dumps(config.agreed_fields(), sort_keys=True).encode())
        self.zero_streams = {j: prg.derive("zero") for j, prg in self.pairwise.items()}
        self.provider: Provider = PROVIDERS[provider].create(
            self.rank, self.world_size, self.own, self.pairwise, dealer_link,
            config.comm_timeout_s, parse_measurements(config.dealer_measurement),
            tuple(s.strip() for s in config.dealer_allowed_tcb.split(",") if s.strip()))
        self.provider.device = device
        comm.receive_for(self.provider.device)  # CUDA: received into pinned memory
        if dealer_link is not None:
            dealer_link.receive_for(self.provider.device)
        if self.provider.needs_dealer:
            self._agree_on_the_dealer()
        self.op_observers: list = []
        """Callables (op, out, inputs, ctx) shown every MPCTensor op (e.g. a CorrelationTrace)."""
        self.riders: list = []
        """Arithmetic openings queued to travel with the next opening (primitives.ride)."""
        self._masks_made = 0  # fixed masks handed out (new_mask_id), the same count on every party
        self.reset_stats()

    def _agree_pairwise_seeds(self, context: bytes = b"") -> dict[int, PRG]:
        """Pair seeds by X25519 key agreement, and the seed common to all parties (2 rounds).

        1. every party sends its ephemeral X25519 public key to every peer;
        2. parties i and j derive s_ij = HKDF(X25519(k_i, K_j), "pair seed", i, j, K_i, K_j,
           context) (context: the agreed settings), and a single-use sealing key likewise;
        3. party 0 draws the common seed (public randomness such as dropout masks, which
           reveals nothing about data) and sends it sealed to every peer.
        No seed crosses a link in the clear (core/keys.py).
        """
        agreement = KeyAgreement()
        peers = [j for j in range(self.world_size) if j != self.rank]
        mine = torch.frombuffer(bytearray(agreement.public), dtype=torch.uint8)
        got = self.comm.exchange({j: mine for j in peers}, peers)
        seeds, sealing = {}, {}
        for j, t in got.items():
            if t.dtype != torch.uint8 or t.numel() != PUBLIC_KEY_BYTES:
                raise ValueError(f"party {self.rank}: malformed public key from party {j}")
            theirs = bytes(t.numpy().tobytes())
            low, high = sorted([(self.rank, agreement.public), (j, theirs)])
            pair = transcript(low[0], high[0], low[1], high[1], context)
            seeds[j] = agreement.derive(theirs, "pair seed", pair, SEED_BYTES)
            sealing[j] = agreement.derive(theirs, "pair sealing key", pair, 32)
        if self.rank == 0:
            common = new_seed()
            self.comm.exchange({j: torch.frombuffer(bytearray(seal(sealing[j], common)),
                                                    dtype=torch.uint8) for j in peers}, [])
        else:
            t = self.comm.recv(0)
            if t.dtype != torch.uint8 or t.numel() != SEED_BYTES + SEAL_OVERHEAD:
                raise ValueError(f"party {self.rank}: malformed common seed from party 0")
            common = unseal(sealing[0], bytes(t.numpy().tobytes()))
        self.common = PRG(common, self.config.prg)
        return {j: PRG(s, self.config.prg) for j, s in seeds.items()}

    def _agree_on_the_dealer(self) -> None:
        """Every party attested the same dealer in this session (or none attested): one
        exchange of the attestation transcript hashes, before any correlation is used."""
        dealer = self.provider.dealer
        mine = dealer.transcript.hex() if dealer.transcript else None
        theirs = self.gather_verdicts({"attestation": mine})
        differ = [r for r, v in enumerate(theirs) if v.get("attestation") != mine]
        if differ:
            raise AttestationError(f"party {self.rank}: attestation: party "
                                   f"{', '.join(map(str, differ))} attested another dealer (or "
                                   "another session) than this party", "transcript")

    def gather_verdicts(self, verdict: dict) -> list[dict]:
        """Every party's verdict (a small JSON object), in rank order, on every party: one
        all_gather, so that all parties can raise the same error together. A malformed
        verdict from a peer is a ValueError naming it."""
        raw = json.dumps(verdict, sort_keys=True).encode()
        gathered = self.comm.all_gather(torch.frombuffer(bytearray(raw), dtype=torch.uint8))
        verdicts = []
        for rank, t in enumerate(gathered):
            if rank == self.rank:
                verdicts.append(verdict)
                continue
            try:
                if t.dtype != torch.uint8 or t.dim() != 1:
                    raise ValueError("not a byte string")
                got = json.loads(bytes(t.numpy().tobytes()).decode())
                if not isinstance(got, dict):
                    raise ValueError("not a JSON object")
            except (ValueError, UnicodeDecodeError) as e:
                raise ValueError(f"party {self.rank}: malformed verdict from party {rank}: {e}") from None
            verdicts.append(got)
        return verdicts

    def new_mask_id(self) -> int:
        """The id of a new fixed mask (beaver.fixed_mask_product): every party counts its
        requests for one in program order, so the ids agree."""
        self._masks_made += 1
        return self._masks_made - 1

    def stats(self) -> dict:
        """Traffic since the last reset: the communicator's, plus the dealer link's."""
        return {**self.comm.stats.as_dict(), **self.provider.stats()}

    def reset_stats(self) -> None:
        self.comm.stats.reset()
        self.provider.reset_stats()

    def close(self) -> None:
        self.provider.close()
        self.comm.close()


def current() -> Session:
    """This thread's session."""
    session = getattr(_local, "session", None)
    if session is None:
        raise RuntimeError("mpc_ml is not initialised in this party: call mpc.init() "
                           "(or run the function through mpc.run / mpc-ml launch)")
    return session


def is_active() -> bool:
    return getattr(_local, "session", None) is not None


def activate(session: Session | None) -> None:
    """Make session this thread's current one (None clears it)."""
    _local.session = session
