"""Deployment files: which party runs where, read by `mpc-ml launch --config FILE`.

A TOML file names every compute party (and the dealer) with the address it listens
on, where to start it (this machine, a network namespace, an ssh destination) and the
settings every party must share:

    [job]
    provider = "dealer"          # tfp | dealer
    tls = "certs"                # optional: directory made by `mpc-ml certs`
    precision_bits = 16          # optional Config overrides
    comm_timeout_s = 60

    [[party]]
    address = "10.0.0.1:29500"   # HOST:PORT it listens on
    ssh = "alice@10.0.0.1"       # optional: start it over ssh (also ssh_port, ssh_key,
                                 # ssh_options = ["UserKnownHostsFile=..."])
    netns = "ns0"                # optional: start it in this network namespace
    python = "/opt/venv/bin/python"   # optional: interpreter there

    [dealer]                     # needed with provider = "dealer"
    address = "10.0.0.9:29600"

Parties are listed in rank order. From the file come the environment each party's
`mpc.init()` reads (see mpc_ml.launch) and the command that starts it.
"""
from __future__ import annotations

import os
import queue
import shlex
import signal
import subprocess
import sys
import threading
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from ..comm.tcp import parse_address
from ..config import DEALER_ATTEST_MODES, Config
from ..providers import DEFAULT_PROVIDER
from ..session import check_job
from .results import PEER_FAILURE_EXIT

CONFIG_KEYS = {"precision_bits": "MPC_PRECISION_BITS", "truncation": "MPC_TRUNCATION",
               "comparison": "MPC_COMPARISON",
               "comm_timeout_s": "MPC_COMM_TIMEOUT_S", "allow_insecure": "MPC_ALLOW_INSECURE",
               "dealer_measurement": "MPC_DEALER_MEASUREMENT",
               "dealer_allowed_tcb": "MPC_DEALER_ALLOWED_TCB"}
"""[job] keys: the Config field and the variable that carries it (a list is comma-joined)."""


def _env_value(value: object) -> str:
    """A [job] value as an environment variable holds it (lists comma-joined)."""
    return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


@dataclass
class Endpoint:
    """Where one process (a party or the dealer) listens and how to start it."""

    address: str
    ssh: str | None = None
    ssh_port: int | None = None
    ssh_key: str | None = None
    ssh_options: list[str] = field(default_factory=list)
    netns: str | None = None
    python: str | None = None

    def prefix(self) -> list[str]:
        """The command words that put a process on its host or namespace."""
        words: list[str] = []
        if self.ssh:
            words = ["ssh", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=accept-new"]
            if self.ssh_port:
                words += ["-p", str(self.ssh_port)]
            if self.ssh_key:
                words += ["-i", self.ssh_key]
            for option in self.ssh_options:
                words += ["-o", option]
            words.append(self.ssh)
        if self.netns:
            words += ["ip", "netns", "exec", self.netns]
        return words


@dataclass
class Deployment:
    """A parsed deployment file."""

    parties: list[Endpoint]
    provider: str = DEFAULT_PROVIDER
    dealer: Endpoint | None = None
    tls: str | None = None
    settings: dict = field(default_factory=dict)
    base_dir: Path = Path(".")
    dealer_attest: str = "none"
    """[dealer] attest = "sim" | "sgx": the dealer proves what it runs (`--attest`)."""

    @property
    def world_size(self) -> int:
        return len(self.parties)

    def endpoints(self) -> list[Endpoint]:
        """Every process's endpoint: the parties, then the dealer if there is one."""
        return [*self.parties, *([self.dealer] if self.dealer else [])]

    def _python(self, endpoint: Endpoint) -> str:
        return endpoint.python or sys.executable

    def _tls_dir(self) -> str | None:
        if self.tls is None:
            return None
        path = Path(self.tls)
        return str(path if path.is_absolute() else (self.base_dir / path).resolve())

    def party_env(self, rank: int) -> dict[str, str]:
        """The environment mpc.init() reads in party `rank`."""
        env = {"MPC_RANK": str(rank), "MPC_WORLD_SIZE": str(self.world_size),
               "MPC_BACKEND": "tcp", "MPC_PROVIDER": self.provider,
               "MPC_PARTY_ADDRS": ",".join(p.address for p in self.parties)}
        if self.dealer is not None:
            env["MPC_DEALER_ADDR"] = self.dealer.address
        if self.tls:
            env["MPC_TLS_DIR"] = self._tls_dir()
        for key, value in self.settings.items():
            env[CONFIG_KEYS[key]] = _env_value(value)
        if os.environ.get("MPC_JOB_ID"):  # `mpc-ml launch` names each job for shared dealers
            env["MPC_JOB_ID"] = os.environ["MPC_JOB_ID"]
        return env

    def _party_run(self, rank: int, script: str, args: list[str]) -> list[str]:
        assignments = [f"{k}={v}" for k, v in sorted(self.party_env(rank).items())]
        return ["env", *assignments, self._python(self.parties[rank]), script, *args]

    def _dealer_run(self) -> list[str]:
        if self.dealer is None:
            raise ValueError("this deployment has no dealer")
        run = [self._python(self.dealer), "-m", "mpc_ml", "dealer", "--listen", self.dealer.address,
               "-n", str(self.world_size)]
        if self.tls:
            run += ["--tls", self._tls_dir()]
        if self.dealer_attest != "none":
            run += ["--attest", self.dealer_attest]
        settings = [f"{CONFIG_KEYS[k]}={_env_value(v)}" for k, v in sorted(self.settings.items())]
        return ["env", *settings, *run] if settings else run

    def processes(self, script: str, args: list[str]) -> dict[str, tuple[Endpoint, list[str]]]:
        """Every process to start, by name ('dealer', 'party 0', ...): (where, argv there)."""
        out = {"dealer": (self.dealer, self._dealer_run())} if self.dealer is not None else {}
        out.update({f"party {r}": (p, self._party_run(r, script, args))
                    for r, p in enumerate(self.parties)})
        return out

    def commands(self, script: str, args: list[str]) -> dict[str, list[str]]:
        """argv on this machine that starts each process where the file puts it."""
        placed = {}
        for name, (endpoint, run) in self.processes(script, args).items():
            # a remote shell parses one string
            placed[name] = endpoint.prefix() + ([shlex.join(run)] if endpoint.ssh else run)
        return placed


def _endpoint(table: dict, where: str) -> Endpoint:
    unknown = set(table) - {"address", "ssh", "ssh_port", "ssh_key", "ssh_options", "netns", "python"}
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)}")
    if "address" not in table:
        raise ValueError(f"{where}: needs an address = \"HOST:PORT\"")
    parse_address(table["address"])
    return Endpoint(**table)


def load(path: str | Path) -> Deployment:
    """Read and check a deployment file."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{path}: not valid TOML: {e}") from None
    unknown = set(data) - {"job", "party", "dealer"}
    if unknown:
        raise ValueError(f"{path}: unknown sections {sorted(unknown)}")
    job = dict(data.get("job", {}))
    provider = job.pop("provider", DEFAULT_PROVIDER)
    tls = job.pop("tls", None)
    bad = set(job) - set(CONFIG_KEYS)
    if bad:
        raise ValueError(f"{path}: unknown [job] keys {sorted(bad)}")
    parties = [_endpoint(p, f"{path}: party {i}") for i, p in enumerate(data.get("party", []))]
    try:
        check_job(len(parties), provider, Config(**job))  # validates the values too
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    addresses = [p.address for p in parties]
    if len(set(addresses)) != len(addresses):
        raise ValueError(f"{path}: two parties share an address")
    dealer_table = dict(data.get("dealer", {}))
    attest = dealer_table.pop("attest", "none")
    if attest not in DEALER_ATTEST_MODES:
        raise ValueError(f"{path}: [dealer] attest = {attest!r}; choose one of {DEALER_ATTEST_MODES}")
    dealer = _endpoint(dealer_table, f"{path}: dealer") if "dealer" in data else None
    if (provider == "dealer") != (dealer is not None):
        raise ValueError(f"{path}: provider {provider!r} " + (
            "needs a [dealer] section" if dealer is None else "takes no [dealer] section"))
    return Deployment(parties, provider, dealer, tls, job, path.parent, attest)


def slurm_script(deployment: Deployment, script: str, args: list[str]) -> str:
    """An sbatch script that starts each process on the node named by its address's host
    (one srun step each, in the background) and waits for all of them."""
    processes = deployment.processes(script, args)
    lines = ["#!/bin/bash", "#SBATCH --job-name=mpc_ml", f"#SBATCH --ntasks={len(processes)}",
             "set -euo pipefail", ""]
    for name, (endpoint, run) in processes.items():
        host, _ = parse_address(endpoint.address)
        lines += [f"# {name}",
                  f"srun --nodes=1 --ntasks=1 --nodelist={shlex.quote(host)} {shlex.join(run)} &"]
    return "\n".join(lines + ["", "wait", ""])


def run_processes(commands: dict[str, list[str]], grace_s: float, env: dict | None = None) -> int:
    """Start every command, wait for all; 0 if every party exited 0.

    A watcher thread per process records when it exits, so the failure reported is the
    first one to happen (the parties it took down exit after it). Once a process fails,
    the others get grace_s to finish, then are killed. A dealer still waiting after every
    party succeeded is stopped: it has nothing left to serve.
    """
    procs = {name: subprocess.Popen(argv, env=env) for name, argv in commands.items()}
    parties = [n for n in procs if n != "dealer"]
    exits: queue.Queue = queue.Queue()

    def watch(name: str, proc: subprocess.Popen) -> None:
        code = proc.wait()
        exits.put((time.monotonic(), name, code))

    for name, proc in procs.items():
        threading.Thread(target=watch, args=(name, proc), daemon=True).start()
    ended: dict[str, tuple[float, int]] = {}
    deadline = None
    try:
        while len(ended) < len(procs):
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                when, name, code = exits.get(timeout=wait)
            except queue.Empty:
                break  # the grace period after a failure is over
            ended[name] = (when, code)
            if code != 0 and deadline is None:
                deadline = time.monotonic() + grace_s
            if all(ended.get(n, (0, None))[1] == 0 for n in parties):
                break  # every party succeeded
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
            proc.wait()
    # a party that only lost a peer (PEER_FAILURE_EXIT) is blamed last
    failures = sorted((code == PEER_FAILURE_EXIT, when, name, code)
                      for name, (when, code) in ended.items() if code != 0)
    if not failures and all(ended.get(n, (0, None))[1] == 0 for n in parties):
        return 0
    _, _, name, code = failures[0] if failures else (0, 0, "a party", 1)
    print(f"mpc-ml launch: {name} exited with code {code}", file=sys.stderr)
    return code if code > 0 else 1
