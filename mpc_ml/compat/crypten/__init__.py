"""CrypTen 0.4.1's API on mpc_ml: `import mpc_ml.compat.crypten as crypten`, or
`mpc_ml.compat.install()` so that `import crypten` itself resolves here.

What differs from CrypTen, and what is refused, is in docs/migrating-from-crypten.md:
the default provider is mpc_ml's dealer (CrypTen's TTP), run_multiprocess runs the
parties as threads, a failing party raises instead of returning None, and nothing
received from a peer is ever unpickled.
"""
from __future__ import annotations

import atexit
import builtins
import logging
import os
from typing import Any, Callable

import torch

from ... import launch as _launch
from ...session import activate, check_job, current as _current, is_active as _is_active
from ...tensor import MPCTensor, cat, enable_grad, no_grad, settle, stack, where
from ...tensor.binary_tensor import BinaryTensor
from . import communicator as comm, mpc, nn, optim, rendezvous
from .config import cfg
from .cryptensor import CrypTensor, as_cryptensor
from .mpc import ptype

communicator = comm
"""CrypTen's crypten.communicator (crypten.communicator.get().get_rank())."""

_initialised_here = False


def init(config_file: str | None = None, party_name: str | None = None,
         device: str | None = None) -> None:
    """Join the parties, as CrypTen's init does from its environment:

    - inside run_multiprocess (or mpc.run): nothing to do;
    - a party started by `mpc-ml launch` or mpiexec (MPC_RANK / MPC_WORLD_SIZE): its links;
    - CrypTen's launchers' RANK, WORLD_SIZE and RENDEZVOUS (file:// or tcp://): the
      parties learn each other's addresses there (rendezvous.py) and link up with mpc_ml's
      handshake; cfg.mpc.provider TTP needs MPC_DEALER_ADDR (`mpc-ml dealer -n N`);
    - none of these (a notebook): a 1-party world, where this process holds every value
      and nothing is private (CrypTen does the same; it prints so).
    """
    global _initialised_here
    if config_file is not None:
        raise ValueError("crypten.init(config_file=): set crypten.cfg's keys in code instead "
                         "(mpc_ml reads no YAML)")
    if _is_active():
        return
    env = os.environ
    config = cfg.config()
    if "MPC_RANK" in env or env.get("MPC_BACKEND") == "mpi":
        _launch.init(config)
    elif "RENDEZVOUS" in env:
        rank, world_size = int(env["RANK"]), int(env["WORLD_SIZE"])
        provider = cfg.provider()
        dealer = env.get("MPC_DEALER_ADDR")
        if provider == "dealer" and not dealer:
            raise RuntimeError("crypten.init(): cfg.mpc.provider is TTP (mpc_ml's dealer): start "
                               f"`mpc-ml dealer -n {world_size} --listen HOST:PORT` and set "
                               "MPC_DEALER_ADDR=HOST:PORT in every party, or set "
                               "crypten.cfg.mpc.provider = 'TFP' (party 0 then sees every "
                               "correlation)")
        check_job(world_size, provider, config)
        addrs, listener = rendezvous.addresses(env["RENDEZVOUS"], rank, world_size,
                                               config.connect_timeout_s)
        activate(_launch.tcp_session(rank, world_size, addrs, provider, config, dealer,
                                     listener))
        atexit.register(_launch.shutdown)
    else:
        builtins.print("crypten.init(): no launcher environment: a 1-party world, in which this "
                       "process holds every value and nothing is private")
        _launch.local_session(config)
    cfg.locked = True
    _initialised_here = True


def uninit() -> None:
    """Leave the parties (what init set up; run_multiprocess's parties end with it)."""
    global _initialised_here
    if _initialised_here:
        _launch.shutdown()
        _initialised_here, cfg.locked = False, False


def is_initialized() -> bool:
    """Whether this thread or process is a party."""
    return _is_active()


def is_encrypted_tensor(obj: Any) -> bool:
    """Whether obj is private (an MPCTensor or a BinaryTensor)."""
    return isinstance(obj, (MPCTensor, BinaryTensor))


def cryptensor(tensor: Any = None, src: int = 0, ptype: ptype = ptype.arithmetic,
               requires_grad: bool = False, broadcast_size: bool = False,
               precision: int | None = None, device: str | None = None
               ) -> CrypTensor | BinaryTensor:
    """src's tensor, secret-shared. Every party may pass a tensor of the right shape (only
    src's values are used), or None (src announces the shape: broadcast_size)."""
    if ptype not in (mpc.arithmetic, mpc.binary):
        raise ValueError(f"crypten.cryptensor: unknown ptype {ptype!r}")
    if precision is not None and precision != _current().config.precision_bits:
        raise ValueError(f"crypten.cryptensor(precision={precision}): mpc_ml encodes every "
                         "tensor at cfg.encoder.precision_bits, set before the parties start")
    if tensor is not None and not isinstance(tensor, torch.Tensor):
        tensor = torch.as_tensor(tensor, dtype=torch.get_default_dtype())
    if isinstance(tensor, torch.Tensor) and not tensor.is_floating_point():
        tensor = tensor.to(torch.get_default_dtype())
    out = _encrypt(tensor, src, device)
    if ptype is mpc.binary:
        if requires_grad:
            raise ValueError("crypten.cryptensor(ptype=binary, requires_grad=True): bitwise "
                             "operations have no gradient")
        return BinaryTensor.from_arithmetic(out)
    out = as_cryptensor(out)
    return out.requires_grad_() if requires_grad else out


def _encrypt(tensor, src: int, device) -> MPCTensor:
    from ...tensor import encrypt
    mine = _current().rank == src
    shape = None if mine or tensor is None else tensor.shape
    return encrypt(tensor if mine else None, src=src, shape=shape, device=device)


def print(*args: Any, in_order: bool = False, dst: int = 0, **kwargs: Any) -> None:
    """builtins.print on party dst only, or on every party in rank order (in_order=True)."""
    session = _current()
    if not in_order:
        if session.rank == dst:
            builtins.print(*args, **kwargs)
        return
    for rank in range(session.world_size):
        if rank == session.rank:
            builtins.print(*args, **kwargs)
        comm.get().barrier()


def log(*args: Any, in_order: bool = False, dst: int = 0, **kwargs: Any) -> None:
    """logging.info on party dst only, or on every party in rank order."""
    session = _current()
    text = " ".join(str(a) for a in args)
    for rank in range(session.world_size) if in_order else [dst]:
        if rank == session.rank:
            logging.info(text)
        if in_order:
            comm.get().barrier()


# -- files: plain objects from one party, shares per party; nothing received is unpickled ----
def save_from_party(obj: Any, f: Any, src: int = 0, save_closure: Callable = torch.save,
                    **kwargs: Any) -> None:
    """Party src writes the plaintext obj (torch.save); the others write nothing; all then
    wait for it (a barrier, as CrypTen), so the file exists when any party goes on."""
    if isinstance(obj, MPCTensor):
        raise NotImplementedError("crypten.save_from_party: saving an encrypted tensor is not "
                                  "supported (as in CrypTen); use crypten.save for its shares")
    if _current().rank == src:
        save_closure(obj, f, **kwargs)
    comm.get().barrier()


def load_from_party(f: Any = None, preloaded: Any = None, encrypted: bool = False,
                    model_class: Any = None, src: int = 0, load_closure: Callable | None = None,
                    **kwargs: Any) -> MPCTensor:
    """Party src loads a tensor (torch.load with weights_only=True) and shares it; the
    others learn only its shape. Modules are refused: load the state dict on src and use
    crypten.nn.from_pytorch(model, dummy_input).encrypt(src=src)."""
    if encrypted:
        raise NotImplementedError("crypten.load_from_party(encrypted=True): use crypten.load")
    value = None
    if _current().rank == src:
        value = preloaded
        if value is None:
            value = (load_closure or _safe_load)(f, **kwargs)
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"crypten.load_from_party: party {src} loaded a "
                            f"{type(value).__name__}; only tensors are shared (a model's weights: "
                            "from_pytorch(model, dummy_input).encrypt(src=src))")
    out = cryptensor(value, src=src)
    out.src = src
    return out


def save(obj: Any, f: Any, src: int | None = None, **kwargs: Any) -> None:
    """Each party writes its own share of an encrypted obj (a tensor file torch.load reads
    with weights_only=True; f may contain "{rank}"). A plain tensor is written by party src
    (default 0): save_from_party, as CrypTen's tutorials call save(x, f, src=...)."""
    if not isinstance(obj, MPCTensor):
        save_from_party(obj, f, src=src or 0, **kwargs)
        return
    if src is not None:
        raise ValueError("crypten.save(encrypted, f, src=): every party saves its own share; "
                         "leave src out")
    session = obj.session
    settle([obj])
    torch.save({"share": obj.share, "precision_bits": session.config.precision_bits,
                "world_size": session.world_size, "rank": session.rank,
                "float64": obj.dtype == torch.float64}, _party_file(f, session.rank))


def load(f: Any, src: int | None = None, **kwargs: Any) -> MPCTensor:
    """This party's share saved by crypten.save, checked against this session; with src,
    party src's plain tensor shared (load_from_party: the older CrypTen's load(f, src=),
    which CrypTen's tutorials 3 and 4 call and 0.4.1 refuses)."""
    if src is not None:
        return load_from_party(f, src=src, **kwargs)
    session = _current()
    saved = _safe_load(_party_file(f, session.rank))
    expected = {"precision_bits": session.config.precision_bits,
                "world_size": session.world_size, "rank": session.rank}
    if not isinstance(saved, dict) or not isinstance(saved.get("share"), torch.Tensor) or any(
            saved.get(k) != v for k, v in expected.items()) or saved["share"].dtype != torch.int64:
        raise ValueError(f"crypten.load: {f!r} is not party {session.rank}'s share saved by "
                         f"crypten.save in this setting ({expected})")
    dtype = torch.float64 if saved.get("float64") else torch.get_default_dtype()
    return CrypTensor(saved["share"], session, dtype)


def _party_file(f: Any, rank: int) -> Any:
    return f.replace("{rank}", str(rank)) if isinstance(f, str) else f


def _safe_load(f: Any, **kwargs: Any) -> Any:
    return torch.load(f, weights_only=True, **kwargs)


def set_grad_enabled(mode: bool) -> Any:
    """CrypTen's set_grad_enabled: enable_grad() or no_grad()."""
    return enable_grad() if mode else no_grad()


__all__ = ["BinaryTensor", "CrypTensor", "cat", "cfg", "comm", "communicator", "cryptensor",
           "enable_grad", "init", "is_encrypted_tensor", "is_initialized", "load",
           "load_from_party", "log", "mpc", "nn", "no_grad", "optim", "print", "ptype", "save",
           "save_from_party", "set_grad_enabled", "stack", "uninit", "where"]
