"""Network profiles between Linux network namespaces (root only).

One namespace per node (each party and the dealer), named mpcb-<i>, each with a veth
pair whose host end is a port of the bridge mpcb-br in the root namespace and whose
inner end, eth0, has the address 10.77.0.<i+1>/24. Bandwidth: `tc qdisc ... tbf` on
every eth0 (each node's egress; so each direction of each pair of nodes gets the
rate). Latency: netem is not available here, so it is injected in user space by
benchmarks/netdelay.py (each process delays the frames it sends by RTT / 2). TCP
buffers: net.ipv4.tcp_rmem / tcp_wmem of each namespace allow 4x the profile's
bandwidth-delay product (at least 4 MiB).

Everything with the mpcb prefix is removed at start (leftovers of a killed run) and
on exit (try/finally in Network.__exit__).
"""
from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass

PREFIX = "mpcb"
BRIDGE = f"{PREFIX}-br"
SUBNET = "10.77.0"


@dataclass(frozen=True)
class Profile:
    name: str
    rate_mbit: float | None  # None: no shaping
    rtt_ms: float            # injected in user space (0: none)

    @property
    def bdp_bytes(self) -> int:
        if not self.rate_mbit:
            return 0
        return int(self.rate_mbit * 1e6 / 8 * self.rtt_ms / 1e3)


PROFILES = {
    "lan": Profile("lan", None, 0.0),
    "lan1g": Profile("lan1g", 1000.0, 0.5),
    "wan400": Profile("wan400", 400.0, 40.0),
    "wan100": Profile("wan100", 100.0, 80.0),
}


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def available() -> str | None:
    """None when namespaces can be made here, else why not."""
    if shutil.which("ip") is None or shutil.which("tc") is None:
        return "the ip and tc commands are missing"
    import os
    if os.geteuid() != 0:
        return "network namespaces need root"
    name = f"{PREFIX}-probe"
    try:
        r = _ip("netns", "add", name, check=False)
        if r.returncode:
            return f"ip netns add failed: {r.stderr.strip()}"
    finally:
        _ip("netns", "del", name, check=False)
    return None


def cleanup() -> None:
    """Remove every namespace and link with our prefix."""
    r = _ip("netns", "list", check=False)
    for line in r.stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        if name.startswith(PREFIX + "-"):
            _ip("netns", "del", name, check=False)
    r = _ip("-o", "link", "show", check=False)
    for line in r.stdout.splitlines():
        parts = line.split(":")
        if len(parts) > 1:
            link = parts[1].strip().split("@")[0]
            if link.startswith(PREFIX):
                _ip("link", "del", link, check=False)


class Network:
    """`with Network(nodes, profile) as net:` net.ns[i], net.addr[i] for node i; the nodes
    in `unshaped` get no bandwidth limit (a dealer whose keys count as an offline phase)."""

    def __init__(self, nodes: int, profile: Profile, unshaped: tuple[int, ...] = ()):
        self.nodes, self.profile, self.unshaped = nodes, profile, set(unshaped)
        self.ns = [f"{PREFIX}-{i}" for i in range(nodes)]
        self.addr = [f"{SUBNET}.{i + 1}" for i in range(nodes)]

    def __enter__(self) -> "Network":
        cleanup()
        try:
            self._build()
        except BaseException:
            cleanup()
            raise
        return self

    def __exit__(self, *exc) -> None:
        cleanup()

    def _build(self) -> None:
        _ip("link", "add", BRIDGE, "type", "bridge")
        _ip("link", "set", BRIDGE, "up")
        buf = max(4 << 20, 4 * self.profile.bdp_bytes)
        for i, ns in enumerate(self.ns):
            host, inner = f"{PREFIX}{i}h", f"{PREFIX}{i}n"
            _ip("netns", "add", ns)
            _ip("link", "add", host, "type", "veth", "peer", "name", inner)
            _ip("link", "set", inner, "netns", ns)
            _ip("link", "set", host, "master", BRIDGE)
            _ip("link", "set", host, "up")
            _ip("-n", ns, "link", "set", inner, "name", "eth0")
            _ip("-n", ns, "addr", "add", f"{self.addr[i]}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("-n", ns, "link", "set", "lo", "up")
            for key in ("net.ipv4.tcp_rmem", "net.ipv4.tcp_wmem"):
                subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-q", "-w",
                                f"{key}=4096 131072 {buf}"], capture_output=True, check=False)
            if self.profile.rate_mbit and i not in self.unshaped:
                rate = self.profile.rate_mbit
                burst = max(64 * 1024, int(rate * 1e6 / 8 / 250))  # >= one 4 ms tick
                limit = max(4 << 20, 2 * self.profile.bdp_bytes)
                subprocess.run(["ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", "eth0",
                                "root", "tbf", "rate", f"{rate:g}mbit", "burst", str(burst),
                                "limit", str(limit)], capture_output=True, text=True, check=True)

    def prefix(self, i: int) -> list[str]:
        """The command prefix that runs a process in node i's namespace."""
        return ["ip", "netns", "exec", self.ns[i]]
