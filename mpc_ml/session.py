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
from .core.prg import PRG, SEED_BYTES, new_seed
from .providers import PROVIDERS, Provider

_local = threading.local()


def check_job(world_size: int, provider: str, config: Config | None = None) -> None:
    """The checks every way of starting a job makes: a known provider, at least two
    parties, and settings that are correct for this many parties (ValueError otherwise)."""
    if provider not in PROVIDERS:
        raise ValueError(f"unknown provider {provider!r}; choose one of {tuple(PROVIDERS)}")
    if not isinstance(world_size, int) or isinstance(world_size, bool) or world_size < 2:
        raise ValueError(f"a job needs at least two parties (world_size >= 2), got {world_size!r}")
    if config is not None and config.truncation == "local" and world_size != 2:
        raise ValueError("truncation='local' is only correct for 2 parties")


class Session:
    """Everything one party needs to run protocols."""

    def __init__(self, comm: Communicator, config: Config, provider: str,
                 dealer_link: Link | None = None):
        check_job(comm.world_size, provider, config)
        self.comm, self.config = comm, config
        self.rank, self.world_size = comm.rank, comm.world_size
        self.own = PRG(new_seed())
        self.pairwise = self._agree_pairwise_seeds()
        self.zero_streams = {j: prg.derive("zero") for j, prg in self.pairwise.items()}
        self.provider: Provider = PROVIDERS[provider].create(
            self.rank, self.world_size, self.own, self.pairwise, dealer_link,
            config.comm_timeout_s)
        self.op_observers: list = []
        """Callables (op, out, inputs, ctx) shown every MPCTensor op (e.g. a CorrelationTrace)."""
        self.reset_stats()

    def _agree_pairwise_seeds(self) -> dict[int, PRG]:
        """Party i < j picks the seed of pair (i, j) and sends it to j (one round, set-up).

        Party 0 appends a seed common to all parties (self.common: public randomness
        such as dropout masks, which reveals nothing about data).
        """
        mine = {j: new_seed() for j in range(self.rank + 1, self.world_size)}
        common = new_seed() if self.rank == 0 else b""
        outgoing = {j: torch.frombuffer(bytearray(s + common), dtype=torch.uint8)
                    for j, s in mine.items()}
        got = self.comm.exchange(outgoing, list(range(self.rank)))
        seeds = dict(mine)
        for i, t in got.items():
            expected = SEED_BYTES * (2 if i == 0 else 1)
            if t.dtype != torch.uint8 or t.numel() != expected:
                raise ValueError(f"party {self.rank}: malformed seed from party {i}")
            raw = bytes(t.numpy().tobytes())
            seeds[i] = raw[:SEED_BYTES]
            if i == 0:
                common = raw[SEED_BYTES:]
        self.common = PRG(common)
        return {j: PRG(s) for j, s in seeds.items()}

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
