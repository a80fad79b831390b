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
import secrets
import socket
import sys
import threading
import time
from typing import Any, Callable

import torch

from ..comm import DEALER_RANK, CommTimeout, Communicator, PeerError, tcp
from ..comm.inproc import InprocHub
from ..comm.tls import TLSConfig, check_directory
from ..config import PROTOCOL_VERSION, Config
from ..providers import DEFAULT_PROVIDER, serve_dealer
from ..session import Session, activate, check_job, current, is_active
from . import mpi
from .results import PEER_FAILURE_EXIT, describe, pick_error, pickle_result


def _hello(rank: int, world_size: int, provider: str, config: Config) -> dict:
    return {"rank": rank, "world_size": world_size, "provider": provider, **config.agreed_fields()}


INSECURE_HINT = ("give every party (and the dealer) a --tls DIR from `mpc-ml certs`, or opt out "
                 "explicitly with Config(allow_insecure=True), MPC_ALLOW_INSECURE=1 or "
                 "--allow-insecure")


def check_transport(who: str, addrs: list[str], tls: object | None, config: Config) -> None:
    """Refuse plain tcp between addresses that are not all loopback, unless opted out."""
    remote = [a for a in addrs if a and not tcp.is_loopback(a)]
    if remote and tls is None and not config.allow_insecure:
        raise ValueError(f"{who}: {', '.join(remote)} not on loopback and TLS is off, so shares "
                         f"would cross the network in the clear; {INSECURE_HINT}")


# -- sessions over each backend -----------------------------------------------------
def tcp_session(rank: int, world_size: int, addrs: list[str], provider: str, config: Config,
                dealer_addr: str | None = None, listener: socket.socket | None = None,
                tls: TLSConfig | None = None) -> Session:
    """Connect this party to the mesh (and the dealer) and agree on seeds.

    tls: this party's TLSConfig (every connection TLS 1.3, both sides authenticated and
    checked against their ranks), or None for plain tcp.
    """
    if len(addrs) != world_size:
        raise ValueError(f"{len(addrs)} party addresses for world size {world_size}")
    check_transport(f"party {rank}", [*addrs, dealer_addr or ""], tls, config)
    hello = _hello(rank, world_size, provider, config)
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


def local_session(config: Config | None = None) -> Session:
    """A 1-party world, active in this thread: this process holds every value, so nothing
    is private. For trying code in a notebook (CrypTen's init() without a launcher does
    this), never for data that must stay private; the protocols run as for n parties."""
    comm = Communicator(0, 1, {}, (config or Config()).comm_timeout_s)
    session = Session(comm, config or Config(), "tfp", one_party=True)
    activate(session)
    return session


def run_tcp_dealer(listener: socket.socket, world_size: int, config: Config,
                   tls: TLSConfig | None = None) -> int:
    """The dealer's main: accept every party on listener, serve until they finish.

    tls: the dealer's TLSConfig (rank DEALER_RANK), or None for plain tcp.
    """
    host, port = listener.getsockname()[:2]
    if config.dealer_attest == "none":  # attested, the seeds come from the quoted key
        check_transport("the dealer", [f"{host}:{port}" if ":" not in host else f"[{host}]:{port}"],
                        tls, config)
    hello = {"rank": DEALER_RANK, "world_size": world_size, "protocol_version": PROTOCOL_VERSION}
    try:
        links = tcp.accept(listener, DEALER_RANK, hello, set(range(world_size)),
                           config.connect_timeout_s, config.max_frame_bytes, wrap=tls)
    finally:
        listener.close()
    return serve_dealer(links, world_size, config.dealer_idle_timeout_s, config.dealer_attest)


def init(config: Config | None = None) -> Session:
    """Set up this party from the environment (idempotent); returns its session."""
    if is_active():
        return current()
    env = os.environ
    if "MPC_RANK" not in env:
        if env.get("MPC_BACKEND") == "mpi" or mpi.under_mpiexec():
            if "MPC_TORCH_THREADS" in env:
                torch.set_num_threads(int(env["MPC_TORCH_THREADS"]))
            session = mpi.mpi_session(env.get("MPC_PROVIDER", DEFAULT_PROVIDER), Config.from_env(config))
            activate(session)
            return session
    if "MPC_RANK" not in env or "MPC_WORLD_SIZE" not in env:
        raise RuntimeError("mpc.init(): this process is not a launched party (MPC_RANK and "
                           "MPC_WORLD_SIZE are unset); start it with `mpc-ml launch` or "
                           "use mpc.run")
    rank, world_size = int(env["MPC_RANK"]), int(env["MPC_WORLD_SIZE"])
    backend = env.get("MPC_BACKEND", "tcp")
    provider = env.get("MPC_PROVIDER", DEFAULT_PROVIDER)
    check_job(world_size, provider)
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
def run(fn: Callable, world_size: int = 2, backend: str = "inproc", provider: str = DEFAULT_PROVIDER,
        args: tuple = (), kwargs: dict | None = None, config: Config | None = None,
        tls_dir: str | os.PathLike | None = None) -> list[Any]:
    """Run fn(*args, **kwargs) in world_size parties; returns each party's result in rank order.

    An exception in any party is raised here as PartyError naming the party.
    tls_dir (backend "tcp" only): a directory from `mpc-ml certs DIR --parties N
    [--dealer]`; every connection is then mutually authenticated TLS 1.3.
    """
    runner = backend_runner(backend)
    config = config or Config()
    if not config.job_id:
        config = config.replace(job_id=secrets.token_hex(8))
    check_job(world_size, provider, config)
    if tls_dir is not None:
        if backend != "tcp":
            raise ValueError(f"tls_dir needs backend 'tcp', got {backend!r}")
        tls_dir = os.path.abspath(tls_dir)
        check_directory(tls_dir, world_size, dealer=provider == "dealer")
    extra = {"tls_dir": tls_dir} if tls_dir is not None else {}
    return runner(fn, world_size, provider, tuple(args), kwargs or {}, config, **extra)


def run_inproc(fn: Callable, world_size: int, provider: str, args: tuple, kwargs: dict,
               config: Config) -> list[Any]:
    """The inproc backend: each party (and the dealer) a thread of this interpreter."""
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
            errors[rank] = describe(e)
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
                         config.dealer_idle_timeout_s, config.dealer_attest)
        except BaseException as e:
            errors[DEALER_RANK] = describe(e)

    threads = [threading.Thread(target=party, args=(r,), name=f"mpc-party-{r}")
               for r in range(world_size)]
    if provider == "dealer":
        threads.append(threading.Thread(target=dealer, name="mpc-dealer"))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise pick_error(errors)
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
        results.put((rank, "error", describe(e)))
    finally:
        if session is not None:
            session.close()


def _dealer_process(listener, world_size, config, results, tls_dir=None) -> None:
    torch.set_num_threads(1)
    try:
        tls = TLSConfig(tls_dir, DEALER_RANK) if tls_dir else None
        run_tcp_dealer(listener, world_size, config, tls=tls)
        results.put((DEALER_RANK, "ok", b""))
    except BaseException as e:
        results.put((DEALER_RANK, "error", describe(e)))


def run_tcp(fn: Callable, world_size: int, provider: str, args: tuple, kwargs: dict,
            config: Config, tls_dir: str | None = None, start: str = "spawn") -> list[Any]:
    """The tcp backend: each party (and the dealer) a spawned process on loopback.

    start="fork" forks them instead (POSIX): fn may then be a closure, as in CrypTen's
    run_multiprocess (mpc_ml.compat.crypten), and each party has its own torch RNG."""
    if start == "spawn":
        try:
            pickle.dumps((fn, args, kwargs))
        except Exception as e:
            raise TypeError("mpc.run(backend='tcp') pickles fn, args and kwargs to start each "
                            f"party process; use a module-level function ({e})") from None
    ctx = mp.get_context(start)
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
        raise pick_error(errors)
    return [outs[r] for r in range(world_size)]


BACKENDS: dict[str, Callable[..., list[Any]]] = {
    "inproc": run_inproc,
    "tcp": run_tcp,
    "mpi": mpi.run_mpi,
}
"""mpc.run's backends: name -> runner(fn, world_size, provider, args, kwargs, config).
A new backend is a Link in comm/ and an entry here."""


def backend_runner(name: str) -> Callable[..., list[Any]]:
    """The runner of a backend, or a ValueError listing the known ones."""
    try:
        return BACKENDS[name]
    except KeyError:
        raise ValueError(f"unknown backend {name!r}; choose one of {tuple(BACKENDS)}") from None
