"""What the test files share: the configuration matrix, seeded data, encrypting and
measuring inside a party, comparing with torch, spec-table checks, and sockets, links
and tcp sessions run as threads of the test process.

Test files import from here (`from helpers import ...`: pytest puts tests/ on sys.path,
since tests/ is not a package; spawned and mpiexec'd parties get the same sys.path, so
party bodies defined here pickle by reference). conftest.py holds only fixtures and
hooks; no test file imports another.
"""
from __future__ import annotations

import itertools
import json
import socket
import subprocess
import threading
import time
from typing import Callable, NamedTuple

import pytest
import torch

import mpc_ml as mpc
from mpc_ml.comm import DEALER_RANK, CommError, frames, tcp
from mpc_ml.core.encoding import encode
from mpc_ml.core.specs import evaluate, evaluate_table
from mpc_ml.launch import BACKENDS as BACKEND_REGISTRY
from mpc_ml.launch import run_tcp_dealer, tcp_session
from mpc_ml.providers import PROVIDERS as PROVIDER_REGISTRY

# -- the configuration matrix: every configuration the public API promises ------------------
WORLD_SIZES = (2, 3, 4)
BACKENDS = tuple(BACKEND_REGISTRY)  # inproc, tcp, mpi (make test installs mpi4py, mpich)
PROVIDERS = tuple(PROVIDER_REGISTRY)  # tfp, dealer


class PartyConfig(NamedTuple):
    """One configuration of the matrix: how many parties, started how, fed by whom."""

    n: int
    backend: str
    provider: str

    @property
    def id(self) -> str:
        return f"n{self.n}-{self.backend}-{self.provider}"

    def run(self, fn: Callable, **kwargs) -> list:
        """mpc.run(fn) in this configuration (kwargs: args, kwargs, config, tls_dir)."""
        return mpc.run(fn, world_size=self.n, backend=self.backend, provider=self.provider,
                       **kwargs)


MATRIX = [PartyConfig(*c) for c in itertools.product(WORLD_SIZES, BACKENDS, PROVIDERS)]


def _values(v) -> tuple:
    return tuple(v) if isinstance(v, (tuple, list)) else (v,)


def configs(n=WORLD_SIZES, backend=BACKENDS, provider=PROVIDERS) -> list[PartyConfig]:
    """The matrix's configurations with these party counts, backends and providers (each
    one value or a tuple), in the matrix's order."""
    chosen = [c for c in MATRIX if c.n in _values(n) and c.backend in _values(backend)
              and c.provider in _values(provider)]
    assert chosen, f"no configuration of the matrix has n={n}, {backend}, {provider}"
    return chosen


INPROC = configs(backend="inproc")  # n x provider in threads: the cheap, wide runs


def matrix_params(chosen) -> list:
    return [pytest.param(c, id=c.id) for c in chosen]


def on_matrix(*picked, **only) -> pytest.MarkDecorator:
    """Narrow the `matrix` fixture of a test to some of the matrix: the configurations
    picked as (n, backend, provider) tuples, or those that configs(**only) selects."""
    chosen = [PartyConfig(*c) for c in picked] if picked else configs(**only)
    outside = [c.id for c in chosen if c not in MATRIX]
    assert not outside, f"not configurations of the matrix: {outside}"
    return pytest.mark.parametrize("matrix", matrix_params(chosen), indirect=True)


# -- seeded data ------------------------------------------------------------------------------
FIXED_POINT_UNIT = 2.0 ** -16


def seeded(name: str) -> torch.Generator:
    """A generator seeded by a name: the same data in every party thread or process."""
    g = torch.Generator()
    g.manual_seed(sum(ord(c) * (i + 1) for i, c in enumerate(name)))
    return g


def gen(seed: int) -> torch.Generator:
    """A generator seeded by a number (an explicit generator: inproc parties are threads
    sharing torch's global RNG, so nothing relies on torch.manual_seed)."""
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def rnd(name: str, *shape, lo: float = -1.0, hi: float = 1.0) -> torch.Tensor:
    """Seeded float32 uniform data in [lo, hi)."""
    return torch.rand(tuple(shape), generator=seeded(name), dtype=torch.float32) * (hi - lo) + lo


def randn(seed: int, *shape, scale: float = 1.0) -> torch.Tensor:
    """Seeded float64 normal data; the shape as numbers or one tuple."""
    size = shape[0] if len(shape) == 1 and isinstance(shape[0], tuple) else shape
    return torch.randn(tuple(size), generator=gen(seed), dtype=torch.float64) * scale


def snap(t: torch.Tensor) -> torch.Tensor:
    """Round to multiples of 2^-16: the values encrypt() shares exactly."""
    return torch.round(t / FIXED_POINT_UNIT) * FIXED_POINT_UNIT


def rounded(t: torch.Tensor, bits: int = 16) -> torch.Tensor:
    """t as the parties see it after fixed-point encoding."""
    return encode(t, bits).to(torch.float64) / 2 ** bits


# -- inside a party ---------------------------------------------------------------------------
def enc(t: torch.Tensor, src: int = 0) -> "mpc.MPCTensor":
    """src's t, secret-shared (every party generated the same t; only src's copy is used)."""
    return mpc.encrypt(t if mpc.rank() == src else None, src=src, shape=t.shape)


def measured(fn):
    """(fn(), this party's stats for exactly that call)."""
    mpc.reset_stats()
    out = fn()
    return out, mpc.stats()


# -- against torch ------------------------------------------------------------------------------
def assert_near(got, expected, tol: float, what: str) -> None:
    """|got - expected| <= tol * max(1, max |expected|), and the same shape."""
    assert got is not None, f"{what}: got None"
    expected = torch.as_tensor(expected).detach().to(torch.float64)
    got = torch.as_tensor(got).detach().to(torch.float64)
    assert tuple(got.shape) == tuple(expected.shape), \
        f"{what}: shape {tuple(got.shape)} != torch's {tuple(expected.shape)}"
    bound = tol * max(1.0, expected.abs().max().item() if expected.numel() else 1.0)
    err = (got - expected).abs().max().item() if expected.numel() else 0.0
    assert err <= bound, f"{what}: max error {err:.3g} > {bound:.3g}"


# -- protocol specs (protocols/*.toml) --------------------------------------------------------
COUNTERS = ("rounds", "bytes_sent", "bytes_received", "messages")
DEALER_COUNTERS = ("dealer_bytes_sent", "dealer_bytes_received", "dealer_messages")
PROSE_KEYS = {"tfp", "note", "summary"}  # strings in formula tables that are not formulas


def request_bytes(kind: str, **params) -> int:
    """Length of a correlation request as the specs define it (compact sorted JSON)."""
    return len(json.dumps({"kind": kind, "params": params}, separators=(",", ":"),
                          sort_keys=True))


def dealer_counters(dealer: dict, rank: int, **sizes) -> dict:
    """The dealer_* counters a spec's [dealer] table predicts for one party: one table
    for all, or the correction party's and the others'."""
    if "all" in dealer:
        table = dealer["all"]
    else:
        is_corr = rank == evaluate(dealer["correction_rank"], rank=rank, **sizes)
        table = dealer["correction_party" if is_corr else "others"]
    return evaluate_table(table, rank=rank, **sizes)


def formula_tables(node: dict, path: tuple = ()):
    """(path, table) of every cost, dealer and sizes table of a spec, at any depth."""
    for key, value in node.items():
        if isinstance(value, dict):
            here = path + (key,)
            if any(k in ("cost", "dealer", "sizes") for k in here):
                yield here, value
            yield from formula_tables(value, here)


def check_spec(spec: dict, name: str, keys, references, names: dict) -> None:
    """What every spec states: its name, the keys filled in, the semi-honest model, the
    references; and every formula of its cost, dealer and sizes tables is an integer
    with `names` bound, each role's cost table giving exactly COUNTERS and each dealer
    table DEALER_COUNTERS."""
    assert spec["name"] == name
    for key in keys:
        assert spec[key], f"{name}: empty {key}"
    assert "semi-honest" in spec["security_model"].lower()
    for ref in references:
        assert any(ref in r for r in spec["references"]), f"{name}: no {ref} reference"
    n_roles = 0
    for path, table in formula_tables(spec):
        formulas = {k: v for k, v in table.items() if isinstance(v, str) and k not in PROSE_KEYS}
        for key, formula in formulas.items():
            assert isinstance(evaluate(formula, **names), int), (path, key)
        if path[-2:-1] == ("cost",):  # one role's party-to-party counters
            n_roles += 1
            assert set(formulas) == set(COUNTERS), (path, sorted(formulas))
        elif path[-2:-1] == ("dealer",):  # one role's dealer counters
            assert set(formulas) == set(DEALER_COUNTERS), (path, sorted(formulas))
    assert n_roles >= 1, f"{name}: no cost tables"


# -- sockets, links and tcp sessions in threads -----------------------------------------------
def listeners(count: int, host: str = "127.0.0.1") -> tuple[list[socket.socket], list[str]]:
    """count listening sockets on free ports, and their addresses."""
    socks = [tcp.listen(f"{host}:0") for _ in range(count)]
    return socks, [f"{host}:{s.getsockname()[1]}" for s in socks]


def free_addresses(count: int, host: str = "127.0.0.1") -> list[str]:
    """Addresses nobody listens on (their ports were free a moment ago)."""
    socks, addrs = listeners(count, host)
    for s in socks:
        s.close()
    return addrs


def link_pair(max_frame_bytes: int = 1 << 20, wrap=None) -> tuple[tcp.TcpLink, tcp.TcpLink]:
    """TcpLinks of party 0 and party 1 on the two ends of a socket pair; wrap(a, b), if
    given, returns the sockets to use instead (a TLS handshake, say) and the ranks they
    carry, as (a, b, rank_a, rank_b)."""
    a, b = socket.socketpair()
    ra, rb = 0, 1
    if wrap is not None:
        a, b, ra, rb = wrap(a, b)
    return tcp.TcpLink(a, ra, rb, max_frame_bytes), tcp.TcpLink(b, rb, ra, max_frame_bytes)


def join_all(threads: list[threading.Thread], timeout: float, what: str = "a party") -> None:
    """Start the threads, wait for them all; fail if one is still running after timeout."""
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    assert not any(t.is_alive() for t in threads), f"{what} hung"


def tcp_sessions(configs: list, *, world_sizes: list[int] | None = None, addr_count=None,
                 tls=None, dealer: bool = False, dealer_tls=None,
                 timeout: float = 40) -> dict:
    """One tcp_session per config, each party a thread of this process (no process
    start-up), and a dealer thread if `dealer`; each party closes its session at once.
    world_sizes: what each party believes (default len(configs)); addr_count: how many
    party addresses there are (default the largest world size); tls(rank): a party's
    TLSConfig or None. {rank: (error text or None, seconds)} once every thread has
    finished, the dealer under DEALER_RANK."""
    world_sizes = world_sizes or [len(configs)] * len(configs)
    socks, addrs = listeners(addr_count or max(world_sizes))
    dealer_socks, dealer_addrs = listeners(1) if dealer else ([None], [None])
    results: dict = {}

    def timed(rank, body):
        start = time.monotonic()
        try:
            body()
            results[rank] = (None, time.monotonic() - start)
        except CommError as e:
            results[rank] = (str(e), time.monotonic() - start)

    def party(rank):
        n = world_sizes[rank]
        tcp_session(rank, n, addrs[:n], "dealer" if dealer else "tfp", configs[rank],
                    dealer_addrs[0], listener=socks[rank],
                    tls=tls(rank) if tls else None).close()

    threads = [threading.Thread(target=timed, args=(r, lambda r=r: party(r)))
               for r in range(len(configs))]
    if dealer:
        threads.append(threading.Thread(target=timed, args=(DEALER_RANK, lambda: run_tcp_dealer(
            dealer_socks[0], world_sizes[0], configs[0], tls=dealer_tls))))
    try:
        join_all(threads, timeout, "a party in the handshake")
    finally:
        for s in socks:
            s.close()
    return results


# -- network namespaces: separate hosts on one machine -------------------------------------------
NETNS_PREFIX = "mpct"


def sh(*args: str) -> None:
    """Run a command (ip, tc), failing loudly."""
    subprocess.run(args, check=True, capture_output=True)


def cleanup_namespaces() -> None:
    """Remove the namespaces, bridge and veths the `hosts` fixture made."""
    for ns in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split():
        if ns.startswith(NETNS_PREFIX):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    for link in (f"{NETNS_PREFIX}br", *(f"{NETNS_PREFIX}v{i}" for i in range(3))):
        subprocess.run(["ip", "link", "del", link], capture_output=True)


# -- the benchmark scripts, loaded as modules -----------------------------------------------------
def load_benchmark(name: str):
    """benchmarks/<name>.py as a module (a script, not a package: loaded from its file)."""
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", path)
    module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- hostile inference clients: each sends share 0 to party 0 properly and spoils party 1's ---------
def mid_frame(client, shares) -> None:
    """Half a frame to party 1, then the client dies: no "done", its sockets closed."""
    client.links[0].send(shares[0])
    header = frames.tensor_header(shares[1])
    client.links[1].send_raw(header + bytes(frames.tensor_payload(shares[1]))[:8])
    client._close_links()


def garbage(client, shares) -> None:
    """Bytes that are no frame at all to party 1."""
    client.links[0].send(shares[0])
    client.links[1].send_raw(b"GET / HTTP/1.1\r\n\r\n")


def float_share(client, shares) -> None:
    """A float64 tensor, not an int64 share, to party 1."""
    client.links[0].send(shares[0])
    client.links[1].send(shares[1].double())


# -- devices: where the device tests put their kernels and shares ---------------------------------
def _test_devices() -> list[str]:
    """['cpu'], plus 'cuda' where torch sees a GPU. MPC_ML_TEST_DEVICE=cuda demands the GPU
    (an error at collection where there is none, so a GPU run cannot pass on the CPU
    alone); MPC_ML_TEST_DEVICE=cpu keeps to the CPU."""
    import os

    asked = os.environ.get("MPC_ML_TEST_DEVICE", "").strip().lower()
    if asked not in ("", "cpu", "cuda"):
        raise RuntimeError(f"MPC_ML_TEST_DEVICE={asked!r}: set it to cpu or cuda, or leave it unset")
    if asked == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("MPC_ML_TEST_DEVICE=cuda, but torch.cuda.is_available() is False "
                           f"(torch {torch.__version__}, built for CUDA {torch.version.cuda})")
    return ["cpu"] + (["cuda"] if asked != "cpu" and torch.cuda.is_available() else [])


DEVICES = _test_devices()
"""The devices the device tests (test_limbs, test_device_prg, test_cuda_path) are
parametrized over: on a CPU-only machine just 'cpu', so nothing is skipped there."""
