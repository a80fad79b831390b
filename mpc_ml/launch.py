"""Starting parties: mpc.run (threads, processes or MPI ranks on this machine) and mpc.init.

mpc.init() in a party process reads its place from the environment, which
`mpc-ml launch` (or a deployment recipe) sets:

    MPC_RANK, MPC_WORLD_SIZE      this party and the number of compute parties
    MPC_PARTY_ADDRS               HOST:PORT of every party, comma-separated, rank order
    MPC_PROVIDER                  tfp | dealer
    MPC_DEALER_ADDR               HOST:PORT of the dealer (provider dealer)
    MPC_TLS_DIR                   certificate directory (`mpc-ml certs`): every connection
                                  is mutually authenticated TLS 1.3; unset or empty: plain tcp
    MPC_PRECISION_BITS, MPC_TRUNCATION, MPC_COMM_TIMEOUT_S, MPC_CONNECT_TIMEOUT_S
                                  Config overrides
    MPC_BACKEND                   tcp (default) | mpi; under mpiexec without MPC_RANK: mpi
    MPC_TORCH_THREADS             torch's thread count in this party

A launched party whose uncaught error is a lost peer (PeerError, CommTimeout) exits
with PEER_FAILURE_EXIT, so that a launcher can name the party that failed first.

Processes are spawned, never forked (forking breaks CUDA and deadlocks threaded BLAS).
"""
from __future__ import annotations

import atexit
import multiprocessing as mp
import os
import pickle
import queue
import sys
import threading
import time
import traceback
from typing import Any, Callable

import torch

from .comm import BACKENDS, DEALER_RANK, CommTimeout, Communicator, PeerError
from .comm import tcp
from .comm.inproc import InprocHub
from .comm.tls import TLSConfig, check_directory
from .config import PROTOCOL_VERSION, Config
from .providers import PROVIDERS, serve_dealer
from .session import Session, activate, current, is_active


class PartyError(RuntimeError):
    """A party (or the dealer) raised; carries its rank and traceback."""

    def __init__(self, rank: int, kind: str, message: str, tb: str):
        who = "the dealer" if rank == DEALER_RANK else f"party {rank}"
        super().__init__(f"{who} failed with {kind}: {message}\n--- traceback of {who} ---\n{tb}")
        self.rank, self.kind, self.message, self.traceback = rank, kind, message, tb


def _hello(rank: int, world_size: int, config: Config) -> dict:
    return {"rank": rank, "world_size": world_size, **config.agreed_fields()}


def _check_names(world_size: int, backend: str, provider: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {BACKENDS}")
    if provider not in PROVIDERS:
        raise ValueError(f"unknown provider {provider!r}; choose one of {PROVIDERS}")
    if not isinstance(world_size, int) or world_size < 2:
        raise ValueError(f"world_size must be an integer >= 2, got {world_size!r}")


# -- sessions over each backend -----------------------------------------------------
def tcp_session(rank: int, world_size: int, addrs: list[str], provider: str, config: Config,
                dealer_addr: str | None = None, listener=None,
                tls: TLSConfig | None = None) -> Session:
    """Connect this party to the mesh (and the dealer) and agree on seeds.

    tls: this party's TLSConfig (every connection TLS 1.3, both sides authenticated and
    checked against their ranks), or None for plain tcp.
    """
    if len(addrs) != world_size:
        raise ValueError(f"{len(addrs)} party addresses for world size {world_size}")
    hello = _hello(rank, world_size, config)
    listener = listener or tcp.listen(addrs[rank])
    try:
        links = tcp.connect_mesh(rank, addrs, listener, hello, config.connect_timeout_s,
                                 config.max_frame_bytes, wrap=tls)
    finally:
        listener.close()
    comm = Communicator(rank, world_size, links, config.comm_timeout_s)
    dealer_link = None
    try:
        if provider == "dealer":
            if not dealer_addr:
                raise ValueError("provider 'dealer' needs the dealer's address (MPC_DEALER_ADDR)")
            dealer_link = tcp.connect(dealer_addr, rank, DEALER_RANK, hello,
                                      config.connect_timeout_s, config.max_frame_bytes, wrap=tls)
        return Session(comm, config, provider, dealer_link)
    except BaseException:
        comm.close()
        if dealer_link is not None:
            dealer_link.close()
        raise


def run_tcp_dealer(listener, world_size: int, config: Config, tls: TLSConfig | None = None) -> int:
    """The dealer's main: accept every party on listener, serve until they finish.

    tls: the dealer's TLSConfig (rank DEALER_RANK), or None for plain tcp.
    """
    hello = {"rank": DEALER_RANK, "world_size": world_size, "protocol_version": PROTOCOL_VERSION}
    try:
        links = tcp.accept(listener, DEALER_RANK, hello, set(range(world_size)),
                           config.connect_timeout_s, config.max_frame_bytes, wrap=tls)
    finally:
        listener.close()
    return serve_dealer(links, world_size, config.dealer_idle_timeout_s)


def init(config: Config | None = None) -> Session:
    """Set up this party from the environment (idempotent); returns its session."""
    if is_active():
        return current()
    env = os.environ
    if "MPC_RANK" not in env:
        from .mpi_launch import mpi_session, under_mpiexec
        if env.get("MPC_BACKEND") == "mpi" or under_mpiexec():
            if "MPC_TORCH_THREADS" in env:
                torch.set_num_threads(int(env["MPC_TORCH_THREADS"]))
            session = mpi_session(env.get("MPC_PROVIDER", "tfp"), Config.from_env(config))
            activate(session)
            return session
    if "MPC_RANK" not in env or "MPC_WORLD_SIZE" not in env:
        raise RuntimeError("mpc.init(): this process is not a launched party (MPC_RANK and "
                           "MPC_WORLD_SIZE are unset); start it with `mpc-ml launch` or "
                           "use mpc.run")
    rank, world_size = int(env["MPC_RANK"]), int(env["MPC_WORLD_SIZE"])
    backend = env.get("MPC_BACKEND", "tcp")
    provider = env.get("MPC_PROVIDER", "tfp")
    _check_names(world_size, backend, provider)
    if backend != "tcp":
        raise ValueError(f"mpc.init() from the environment supports backend 'tcp', got {backend!r}")
    if "MPC_TORCH_THREADS" in env:
        torch.set_num_threads(int(env["MPC_TORCH_THREADS"]))
    config = Config.from_env(config)
    addrs = env.get("MPC_PARTY_ADDRS", "").split(",")
    tls = TLSConfig(env["MPC_TLS_DIR"], rank) if env.get("MPC_TLS_DIR") else None
    session = tcp_session(rank, world_size, addrs, provider, config, env.get("MPC_DEALER_ADDR"),
                          tls=tls)
    activate(session)
    atexit.register(shutdown)  # close the links (and stop their reader threads) at exit
    sys.excepthook = _exit_marking_peer_failures
    return session


PEER_FAILURE_EXIT = 75
"""Exit status of a launched party that failed because a peer did (EX_TEMPFAIL), so that
the launcher can name the party that failed first."""


def _exit_marking_peer_failures(kind, value, tb) -> None:
    """Print the traceback; a party that only lost a peer exits with PEER_FAILURE_EXIT."""
    sys.__excepthook__(kind, value, tb)
    if issubclass(kind, (PeerError, CommTimeout)):
        sys.stdout.flush()
        sys.stderr.flush()
        shutdown()
        os._exit(PEER_FAILURE_EXIT)


def shutdown() -> None:
    """Close this thread's session (a launched script may call it; exit does too)."""
    if is_active():
        current().close()
        activate(None)


# -- mpc.run ---------------------------------------------------------------------------
def _describe(exc: BaseException) -> tuple[str, str, str]:
    return type(exc).__name__, str(exc), "".join(traceback.format_exception(exc))


def _pick_error(errors: dict[int, tuple[str, str, str]]) -> PartyError:
    """The root cause: a party's own error beats the others' 'peer went away' errors."""
    secondary = (PeerError.__name__, "CommTimeout")
    ranks = sorted(errors, key=lambda r: (errors[r][0] in secondary, r == DEALER_RANK, r))
    r = ranks[0]
    return PartyError(r, *errors[r])


def run(fn: Callable, world_size: int = 2, backend: str = "inproc", provider: str = "tfp",
        args: tuple = (), kwargs: dict | None = None, config: Config | None = None,
        tls_dir: str | os.PathLike | None = None) -> list[Any]:
    """Run fn(*args, **kwargs) in world_size parties; returns each party's result in rank order.

    An exception in any party is raised here as PartyError naming the party.
    tls_dir (backend "tcp" only): a directory from `mpc-ml certs DIR --parties N
    [--dealer]`; every connection is then mutually authenticated TLS 1.3.
    """
    _check_names(world_size, backend, provider)
    if tls_dir is not None:
        if backend != "tcp":
            raise ValueError(f"tls_dir needs backend 'tcp', got {backend!r}")
        tls_dir = os.path.abspath(tls_dir)
        check_directory(tls_dir, world_size, dealer=provider == "dealer")
    config = config or Config()
    if config.truncation == "local" and world_size != 2:
        raise ValueError("truncation='local' is only correct for 2 parties")
    kwargs = kwargs or {}
    if backend == "inproc":
        return _run_inproc(fn, world_size, provider, args, kwargs, config)
    if backend == "mpi":
        from .mpi_launch import run_mpi
        return run_mpi(fn, world_size, provider, args, kwargs, config)
    return _run_tcp(fn, world_size, provider, args, kwargs, config, tls_dir)


def _run_inproc(fn, world_size, provider, args, kwargs, config) -> list[Any]:
    hub = InprocHub()
    results: dict[int, Any] = {}
    errors: dict[int, tuple[str, str, str]] = {}

    def party(rank: int) -> None:
        session = None
        try:
            comm = Communicator(rank, world_size, {j: hub.link(rank, j) for j in range(world_size)
                                                   if j != rank}, config.comm_timeout_s)
            dealer_link = hub.link(rank, DEALER_RANK) if provider == "dealer" else None
            session = Session(comm, config, provider, dealer_link)
            activate(session)
            results[rank] = fn(*args, **kwargs)
        except BaseException as e:  # reported to the caller below
            errors[rank] = _describe(e)
        finally:
            activate(None)
            if session is not None:
                session.close()
            else:
                for j in range(world_size):
                    if j != rank:
                        hub.link(rank, j).close()
                hub.link(rank, DEALER_RANK).close()

    def dealer() -> None:
        try:
            serve_dealer({r: hub.link(DEALER_RANK, r) for r in range(world_size)}, world_size,
                         config.dealer_idle_timeout_s)
        except BaseException as e:
            errors[DEALER_RANK] = _describe(e)

    threads = [threading.Thread(target=party, args=(r,), name=f"mpc-party-{r}")
               for r in range(world_size)]
    if provider == "dealer":
        threads.append(threading.Thread(target=dealer, name="mpc-dealer"))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise _pick_error(errors)
    return [results[r] for r in range(world_size)]


def _party_process(rank, world_size, fn, args, kwargs, provider, config, addrs, listener,
                   dealer_addr, threads, results, tls_dir=None) -> None:
    torch.set_num_threads(threads)
    session = None
    try:
        tls = TLSConfig(tls_dir, rank) if tls_dir else None
        session = tcp_session(rank, world_size, addrs, provider, config, dealer_addr, listener,
                              tls=tls)
        activate(session)
        results.put((rank, "ok", pickle_result(fn(*args, **kwargs), rank)))
    except BaseException as e:
        results.put((rank, "error", _describe(e)))
    finally:
        if session is not None:
            session.close()


def pickle_result(out: Any, rank: int) -> bytes:
    """A party's return value for the launcher that started it.

    Plain pickle copies tensors by value (multiprocessing's own pickler would pass
    shared-memory handles that die with the party's process). This only connects a
    launcher to its own child; nothing from another party is unpickled.
    """
    try:
        return pickle.dumps(out)
    except (pickle.PicklingError, TypeError, AttributeError) as e:
        raise TypeError(f"the return value of party {rank} cannot be sent back: {e}") from None


def _dealer_process(listener, world_size, config, results, tls_dir=None) -> None:
    torch.set_num_threads(1)
    try:
        tls = TLSConfig(tls_dir, DEALER_RANK) if tls_dir else None
        run_tcp_dealer(listener, world_size, config, tls=tls)
        results.put((DEALER_RANK, "ok", b""))
    except BaseException as e:
        results.put((DEALER_RANK, "error", _describe(e)))


def _run_tcp(fn, world_size, provider, args, kwargs, config, tls_dir=None) -> list[Any]:
    try:
        pickle.dumps((fn, args, kwargs))
    except Exception as e:
        raise TypeError("mpc.run(backend='tcp') pickles fn, args and kwargs to start each party "
                        f"process; use a module-level function ({e})") from None
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    listeners = [tcp.listen("127.0.0.1:0") for _ in range(world_size)]
    addrs = [f"127.0.0.1:{s.getsockname()[1]}" for s in listeners]
    threads = max(1, (os.cpu_count() or 1) // world_size)
    procs: dict[int, mp.Process] = {}
    dealer_addr = None
    try:
        if provider == "dealer":
            dl = tcp.listen("127.0.0.1:0")
            dealer_addr = f"127.0.0.1:{dl.getsockname()[1]}"
            procs[DEALER_RANK] = ctx.Process(target=_dealer_process, name="mpc-dealer",
                                             args=(dl, world_size, config, results, tls_dir))
            procs[DEALER_RANK].start()
            dl.close()
        for r in range(world_size):
            procs[r] = ctx.Process(target=_party_process, name=f"mpc-party-{r}", args=(
                r, world_size, fn, args, kwargs, provider, config, addrs, listeners[r],
                dealer_addr, threads, results, tls_dir))
            procs[r].start()
            listeners[r].close()
        return _collect(procs, results, world_size, config)
    finally:
        for s in listeners:
            s.close()
        for p in procs.values():
            if p.is_alive():
                p.kill()
            p.join()


def _collect(procs: dict[int, mp.Process], results, world_size: int, config: Config) -> list[Any]:
    """Wait for every process's report; a process that dies silently is an error too."""
    outs: dict[int, Any] = {}
    errors: dict[int, tuple[str, str, str]] = {}
    pending = set(procs)
    grace_deadline = None
    while pending:
        try:
            rank, status, payload = results.get(timeout=0.2)
        except queue.Empty:
            dead = [r for r in pending if procs[r].exitcode is not None]
            if dead:
                try:  # its report may still be in the pipe
                    rank, status, payload = results.get(timeout=1.0)
                except queue.Empty:
                    for r in dead:
                        errors[r] = ("ProcessDied", f"exited with code {procs[r].exitcode} "
                                     "without reporting", "")
                        pending.discard(r)
                    continue
            elif grace_deadline is not None and time.monotonic() > grace_deadline:
                for r in pending:
                    errors[r] = ("CommTimeout", "still running after another party failed", "")
                break
            else:
                continue
        pending.discard(rank)
        if status == "ok":
            outs[rank] = pickle.loads(payload) if rank != DEALER_RANK else None
        else:
            errors[rank] = payload
            if grace_deadline is None:
                grace_deadline = time.monotonic() + config.comm_timeout_s + 5
    if errors:
        raise _pick_error(errors)
    return [outs[r] for r in range(world_size)]
