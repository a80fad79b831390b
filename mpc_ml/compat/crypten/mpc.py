"""`crypten.mpc`: run_multiprocess, the ptypes, and the MPCTensor CrypTen's programs name."""
from __future__ import annotations

import enum
import functools
import secrets
from typing import Any, Callable

from ...launch.run import run_tcp
from ...session import check_job
from ...tensor import MPCTensor
from .config import cfg


class ptype(enum.Enum):
    """CrypTen's share types: arithmetic (additive over Z_2^64) and binary (XOR)."""

    arithmetic = 0
    binary = 1


arithmetic, binary = ptype.arithmetic, ptype.binary


def run_multiprocess(world_size: int, maxsize: int | None = None,
                     with_exception: bool = False) -> Callable[[Callable], Callable]:
    """Decorator: calling the function runs it as world_size parties, each with crypten
    initialised; returns every party's result in rank order.

    As in CrypTen, each party is a forked copy of this process (so closures work and each
    has its own torch RNG), here linked by mpc_ml's tcp backend on loopback; the provider
    is cfg.mpc.provider's (TTP: mpc_ml's dealer, a process too). Results come back from
    the children this call forked. A failing party raises mpc_ml.PartyError naming it,
    where CrypTen logged the error and returned None; maxsize and with_exception are
    accepted and unused.
    """
    def decorate(function: Callable) -> Callable:
        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> list[Any]:
            config, provider = cfg.config(), cfg.provider()
            cfg.locked = True
            try:
                check_job(world_size, provider, config)
                config = config.replace(job_id=secrets.token_hex(8))
                return run_tcp(function, world_size, provider, args, kwargs, config, start="fork")
            finally:
                cfg.locked = False
        return wrapper
    return decorate


__all__ = ["MPCTensor", "arithmetic", "binary", "ptype", "run_multiprocess"]
