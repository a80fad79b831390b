"""CrypTen's launch environment (RANK, WORLD_SIZE, RENDEZVOUS) on mpc_ml's tcp links.

CrypTen's launchers set RENDEZVOUS to a torch.distributed init URL. Here it only tells
the parties each other's addresses; the links themselves are mpc_ml's (handshake, seeds
by key agreement, TLS where MPC_TLS_DIR is set):

- file:///path: each party appends one JSON line {"rank", "addr"} and reads the file
  until every rank has one (a file shared by the hosts, or local for one machine);
- tcp://host:port: party 0 listens there, the others send it their line, and it sends
  the full list back to each.

Each party listens on MPC_HOST (default 127.0.0.1) at a free port. Lines are capped at
4 KiB and checked (a rank in range, an address HOST:PORT, one address per rank).
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from urllib.parse import urlparse

from ...comm import tcp

MAX_LINE = 4096


class RendezvousError(RuntimeError):
    """The parties could not learn each other's addresses."""


def _entry(line: bytes | str, world_size: int) -> tuple[int, str]:
    try:
        entry = json.loads(line)
        rank, addr = entry["rank"], entry["addr"]
        if not isinstance(rank, int) or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank!r} out of range")
        tcp.parse_address(addr)
    except (ValueError, KeyError, TypeError) as e:
        raise RendezvousError(f"rendezvous: a malformed entry {line[:200]!r} ({e})") from None
    return rank, addr


def _merge(found: dict[int, str], rank: int, addr: str) -> None:
    if found.get(rank, addr) != addr:
        raise RendezvousError(f"rendezvous: two addresses for rank {rank} ({found[rank]} and "
                              f"{addr}): a file left from an earlier run? use a fresh one")
    found[rank] = addr


def _by_file(path: str, rank: int, world_size: int, me: str, timeout: float) -> list[str]:
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.write(json.dumps({"rank": rank, "addr": me}) + "\n")
        fcntl.flock(f, fcntl.LOCK_UN)
    deadline, delay = time.monotonic() + timeout, 0.01
    while True:
        found: dict[int, str] = {}
        with open(path, "rb") as f:
            for line in f.read(MAX_LINE * 4 * world_size).splitlines():
                if line.strip():
                    _merge(found, *_entry(line, world_size))
        if len(found) == world_size:
            return [found[r] for r in range(world_size)]
        if time.monotonic() > deadline:
            raise RendezvousError(f"rendezvous file {path}: only ranks {sorted(found)} of "
                                  f"{world_size} arrived within {timeout:g} s")
        time.sleep(delay)  # polling a file: the other parties write it when they start
        delay = min(delay * 2, 0.2)


def _read_line(sock: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(MAX_LINE)
        if not chunk:
            raise RendezvousError("rendezvous: a peer closed the connection mid-line")
        data += chunk
        if len(data) > MAX_LINE:
            raise RendezvousError("rendezvous: a line over 4 KiB")
    return data


def _by_tcp(where: str, rank: int, world_size: int, me: str, timeout: float) -> list[str]:
    if rank == 0:
        found = {0: me}
        server = tcp.listen(where)
        server.settimeout(timeout)
        peers = []
        try:
            while len(found) < world_size:
                try:
                    sock, _ = server.accept()
                except socket.timeout:
                    raise RendezvousError(f"rendezvous at {where}: only ranks {sorted(found)} "
                                          f"of {world_size} arrived within {timeout:g} s") from None
                sock.settimeout(timeout)
                peers.append(sock)
                _merge(found, *_entry(_read_line(sock), world_size))
            table = (json.dumps([found[r] for r in range(world_size)]) + "\n").encode()
            for sock in peers:
                sock.sendall(table)
        finally:
            for sock in peers:
                sock.close()
            server.close()
        return [found[r] for r in range(world_size)]
    host, port = tcp.parse_address(where)
    deadline = time.monotonic() + timeout
    while True:
        try:
            sock = socket.create_connection((host, port), timeout=timeout)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise RendezvousError(f"rendezvous: party 0 does not listen at {where}") from None
            time.sleep(0.05)  # party 0 may start later
    with sock:
        sock.sendall((json.dumps({"rank": rank, "addr": me}) + "\n").encode())
        try:
            table = json.loads(_read_line(sock))
        except ValueError:
            raise RendezvousError("rendezvous: party 0 sent a malformed table") from None
    if not isinstance(table, list) or len(table) != world_size or table[rank] != me:
        raise RendezvousError("rendezvous: party 0 sent a table that does not hold this party")
    for r, addr in enumerate(table):
        _entry(json.dumps({"rank": r, "addr": addr}), world_size)
    return table


def addresses(url: str, rank: int, world_size: int,
              timeout: float) -> tuple[list[str], socket.socket]:
    """(every party's address in rank order, this party's listening socket)."""
    host = os.environ.get("MPC_HOST", "127.0.0.1")
    listener = tcp.listen(f"{host}:0")
    me = f"{host}:{listener.getsockname()[1]}"
    parsed = urlparse(url)
    try:
        if parsed.scheme == "file":
            return _by_file(parsed.path, rank, world_size, me, timeout), listener
        if parsed.scheme in ("tcp", "env"):
            return _by_tcp(parsed.netloc, rank, world_size, me, timeout), listener
        raise RendezvousError(f"RENDEZVOUS={url!r}: mpc_ml reads file:// and tcp:// URLs")
    except BaseException:
        listener.close()
        raise
