"""TCP backend: one socket per pair of parties, a reader thread per socket.

The reader thread drains the socket into a queue as frames arrive, so two parties
that send large tensors to each other at once never deadlock on full buffers, and a
peer that dies is noticed at once (EOF or reset) instead of at the next timeout.

Mesh set-up: party i listens on its address, connects to every j < i and accepts
every j > i. The first frame on each connection is a hello (control message) naming
the rank and the settings every party must share; a mismatch is refused with an error
naming both values.

TLS (comm/tls.py) comes in through the `wrap` hook: wrap(sock, server_side=..., peer=...)
returns a socket-like object that TcpLink reads and writes. When it has a
`certified_rank` (the rank the peer proved with its certificate), connect compares it
with the rank it dialled and accept with the rank the peer's hello claims; a mismatch is
refused with an error naming both.
"""
from __future__ import annotations

import ipaddress
import queue
import socket
import sys
import threading
import time
from typing import Any, Callable

import torch

from . import frames
from .base import Link, Message
from .errors import (CLIENT_RANK, CommError, CommTimeout, FrameError, PeerError, client_index,
                     peer_name)

Wrap = Callable[..., Any]
"""wrap(sock, server_side=..., peer=...) -> a socket-like object (comm/tls.py's TLSConfig)."""

_CLOSED = object()
RECV_CHUNK = 1 << 22
GROW_START = 1 << 20
"""Payloads up to this size are read straight into their tensor; larger ones into buffers
that double as bytes arrive, so a peer that announces a large frame and then stalls
holds at most about twice what it really sent."""


def parse_address(addr: str) -> tuple[str, int]:
    """'host:port' -> (host, port), with a clear error."""
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"address {addr!r} is not HOST:PORT")
    return host.strip("[]") or "127.0.0.1", int(port)


def is_loopback(addr: str) -> bool:
    """Whether HOST:PORT names this machine only (127.0.0.0/8, ::1, localhost)."""
    host, _ = parse_address(addr)
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve anywhere


def listen(addr: str) -> socket.socket:
    """A listening socket on addr; a port in use is a clear error."""
    host, port = parse_address(addr)
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise CommError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    sock.listen(64)
    return sock


def tune(sock: socket.socket) -> None:
    """TCP_NODELAY and 4 MiB buffers: small messages go out at once, large ones stream."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, opt, 4 << 20)
        except OSError:
            pass


class TcpLink(Link):
    """A framed message pipe over one connected socket."""

    def __init__(self, sock: socket.socket, me: int, peer: int, max_frame_bytes: int):
        self.sock, self.me, self.peer = sock, me, peer
        self.max_frame_bytes = max_frame_bytes
        self.hello: dict | None = None  # the peer's hello, where this side accepted it
        self._inbox: queue.Queue = queue.Queue()
        self._send_lock = threading.Lock()
        self._closed = False
        sock.settimeout(None)
        self._reader = threading.Thread(target=self._read_loop, daemon=True,
                                        name=f"mpc-reader-{me}-from-{peer}")
        self._reader.start()

    # -- receiving -------------------------------------------------------------
    def _read_exact(self, view: memoryview) -> bool:
        """Fill view from the socket; False on a clean EOF before the first byte."""
        got = 0
        while got < len(view):
            n = self.sock.recv_into(view[got:], min(len(view) - got, RECV_CHUNK))
            if n == 0:
                if got == 0:
                    return False
                raise PeerError(peer_name(self.peer), "closed the connection mid-frame")
            got += n
        return True

    def _read_frame(self):
        header = bytearray(frames.HEADER_SIZE)
        if not self._read_exact(memoryview(header)):
            return _CLOSED
        kind, code, ndim, length = frames.parse_header(bytes(header), self.max_frame_bytes)
        if kind == frames.KIND_CONTROL:
            payload = bytearray(length)
            if length and not self._read_exact(memoryview(payload)):
                raise PeerError(peer_name(self.peer), "closed the connection mid-frame")
            return frames.parse_control(bytes(payload))
        dims = bytearray(8 * ndim)
        if ndim and not self._read_exact(memoryview(dims)):
            raise PeerError(peer_name(self.peer), "closed the connection mid-frame")
        shape = frames.parse_shape(bytes(dims), ndim, code, length)
        if length <= GROW_START:
            tensor, view = frames.empty_tensor(code, shape, self.pinned_for)
            if length and not self._read_exact(view):
                raise PeerError(peer_name(self.peer), "closed the connection mid-frame")
            return tensor
        return self._read_growing(code, shape, length)

    def _read_growing(self, code: int, shape: tuple, length: int):
        """A large payload: doubling chunks until half has arrived, then the tensor itself."""
        chunks, got = [], 0
        while got < length - got:
            chunk = bytearray(min(max(GROW_START, got), length - got))
            if not self._read_exact(memoryview(chunk)):
                raise PeerError(peer_name(self.peer), "closed the connection mid-frame")
            chunks.append(chunk)
            got += len(chunk)
        tensor, view = frames.empty_tensor(code, shape, self.pinned_for)
        offset = 0
        for chunk in chunks:
            view[offset:offset + len(chunk)] = chunk
            offset += len(chunk)
        del chunks
        if not self._read_exact(view[offset:]):
            raise PeerError(peer_name(self.peer), "closed the connection mid-frame")
        return tensor

    def _read_loop(self) -> None:
        try:
            while True:
                item = self._read_frame()
                self._inbox.put(item)
                if item is _CLOSED:
                    return
                del item  # hold no tensor while blocked in the next read
        except FrameError as e:
            self._inbox.put(FrameError(f"{peer_name(self.me)}: bad frame from "
                                       f"{peer_name(self.peer)}: {e}"))
            self._shutdown()
        except PeerError as e:
            self._inbox.put(e)
        except OSError as e:
            if not self._closed:
                self._inbox.put(PeerError(peer_name(self.peer), f"connection failed: {e}"))
            else:
                self._inbox.put(_CLOSED)
        except Exception as e:  # anything else still reaches the waiting receive, named
            self._inbox.put(FrameError(f"{peer_name(self.me)}: unreadable frame from "
                                       f"{peer_name(self.peer)}: {type(e).__name__}: {e}"))
            self._shutdown()

    def recv(self, timeout: float) -> Message:
        try:
            item = self._inbox.get(timeout=timeout)
        except queue.Empty:
            raise CommTimeout(f"{peer_name(self.me)}: no message from {peer_name(self.peer)} "
                              f"within {timeout:g} s") from None
        if item is _CLOSED or isinstance(item, Exception):
            self._inbox.put(item)  # every later receive fails the same way
            if item is _CLOSED:
                raise PeerError(peer_name(self.peer))
            raise item
        return item

    # -- sending -----------------------------------------------------------------
    def send(self, msg: Message) -> None:
        try:
            with self._send_lock:
                if isinstance(msg, torch.Tensor):
                    self.sock.sendall(frames.tensor_header(msg))
                    payload = frames.tensor_payload(msg)
                    if len(payload):
                        self.sock.sendall(payload)
                else:
                    self.sock.sendall(frames.control_frame(msg))
        except OSError as e:
            raise PeerError(peer_name(self.peer), f"cannot be reached: {e}") from None

    def send_raw(self, data: bytes) -> None:
        """Bytes exactly as given (for tests of the peer's frame checks)."""
        with self._send_lock:
            self.sock.sendall(data)

    def _shutdown(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._shutdown()
        self.sock.close()
        # Wait for the reader to see the closed socket and stop: a daemon thread still
        # holding a tensor when the interpreter exits aborts the process in C++.
        if self._reader is not threading.current_thread():
            self._reader.join(timeout=5)


def _check_hello(hello: dict, expected: dict, me: int, who: str) -> None:
    """Refuse a peer whose settings differ; keys only one side states are not compared,
    except the protocol version and world size, which every hello carries."""
    for key, mine in expected.items():
        theirs = hello.get(key)
        if key not in hello and key not in ("protocol_version", "world_size"):
            continue
        if theirs != mine:
            raise CommError(f"{peer_name(me)}: {who} runs with {key}={theirs!r}, "
                            f"this party with {key}={mine!r}; refusing the connection")


def connect(addr: str, me: int, peer: int, hello: dict, timeout: float,
            max_frame_bytes: int, wrap: Wrap | None = None) -> TcpLink:
    """Connect to a listening peer (retrying until it listens), exchange hellos."""
    host, port = parse_address(addr)
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        try:
            sock = socket.create_connection((host, port), timeout=max(0.1, deadline - time.monotonic()))
            break
        except OSError as e:
            if time.monotonic() + delay > deadline:
                raise CommError(f"{peer_name(me)}: cannot reach {peer_name(peer)} at {addr} "
                                f"within {timeout:g} s: {e}") from None
            time.sleep(delay)  # the peer may not listen yet: back off and retry
            delay = min(delay * 2, 0.5)
    tune(sock)
    if wrap is not None:
        sock.settimeout(max(0.1, deadline - time.monotonic()))  # bounds the handshake
        try:
            sock = wrap(sock, server_side=False, peer=peer)
        except BaseException:
            sock.close()
            raise
        certified = getattr(sock, "certified_rank", None)
        if certified is not None and certified != peer:
            error = (f"{peer_name(me)}: {peer_name(peer)} at {addr} presented the certificate "
                     f"of {peer_name(certified)}; refusing the connection")
            try:  # tell the peer why, in place of a hello
                sock.sendall(frames.control_frame({"error": error}))
            except OSError:
                pass
            sock.close()
            raise CommError(error)
    link = TcpLink(sock, me, peer, max_frame_bytes)
    link.send(hello)
    reply = link.recv(max(0.1, deadline - time.monotonic()))
    if not isinstance(reply, dict):
        link.close()
        raise FrameError(f"{peer_name(me)}: {peer_name(peer)} answered the hello with a tensor")
    if "error" in reply:
        link.close()
        raise CommError(f"{peer_name(me)}: refused by {peer_name(peer)}: {reply['error']}")
    try:
        _check_hello(reply, {**{k: hello[k] for k in hello if k != "rank"}, "rank": peer},
                     me, peer_name(peer))
    except CommError:
        link.close()
        raise
    return link


HELLO_TIMEOUT_S = 10.0
"""How long an accepted connection may take to present its hello before it is dropped."""


class Refused(CommError):
    """A well-formed peer of this job whose settings differ: the job cannot go on."""


def handshake(sock: socket.socket, source: tuple, me: int, hello: dict, ranks: set[int] | None,
              deadline: float, max_frame_bytes: int, wrap: Wrap | None) -> TcpLink:
    """One accepted connection to a link: TLS (or the refusal of TLS), its hello, checks.

    ranks: the ranks this side waits for, or None for any rank of the world size the hello
    states (a dealer serving many jobs); the peer's hello is kept as `link.hello`.
    A Refused error means a real peer with other settings; any other CommError (garbage,
    silence, a failed TLS handshake, a rank this party does not expect) marks a stray."""
    where = f"a peer connecting from {source[0]}:{source[1]}"
    tune(sock)  # TCP_NODELAY: without it small messages wait for delayed ACKs (~40 ms)
    sock.settimeout(max(0.1, min(deadline - time.monotonic(), HELLO_TIMEOUT_S)))
    try:
        if wrap is not None:
            sock = wrap(sock, server_side=True, peer=None)
        else:
            _refuse_tls(sock, me, where)
    except BaseException as e:
        sock.close()
        if isinstance(e, CommError):
            raise
        raise CommError(f"{peer_name(me)}: {where} failed the TLS handshake: {e}") from None
    link = TcpLink(sock, me, CLIENT_RANK, max_frame_bytes)
    try:
        first = link.recv(max(0.1, min(deadline - time.monotonic(), HELLO_TIMEOUT_S)))
    except CommError as e:  # named here by its address: its rank is not known yet
        link.close()
        if isinstance(e, CommTimeout):
            raise CommError(f"{peer_name(me)}: {where} sent no hello in time") from None
        if isinstance(e, PeerError):
            raise CommError(f"{peer_name(me)}: {where} {str(e)[len(e.peer) + 1:]}") from None
        unnamed = f"{peer_name(me)}: bad frame from {peer_name(CLIENT_RANK)}: "
        raise CommError(f"{peer_name(me)}: bad frame from {where}: "
                        f"{str(e).removeprefix(unnamed)}") from None
    if isinstance(first, dict) and "error" in first:  # it refused this party
        link.close()
        raise Refused(f"{peer_name(me)}: refused by {where}: {first['error']}")
    rank = first.get("rank") if isinstance(first, dict) else None
    if ranks is None and isinstance(first, dict) and isinstance(first.get("world_size"), int):
        ranks = set(range(first["world_size"]))
    try:
        if rank not in (ranks or ()):
            raise CommError(f"{peer_name(me)}: {where} claims rank {rank!r}, not one this "
                            f"party waits for")
        link.peer = rank
        certified = getattr(sock, "certified_rank", None)
        if certified is not None and client_index(certified) is not None:
            # a client certificate is no party's: whoever holds one is a stray here, and
            # must not abort the set-up as a misconfigured party would
            raise CommError(f"{peer_name(me)}: {where} presented {peer_name(certified)}'s "
                            f"certificate and claims rank {rank!r}; dropped")
        if certified is not None and certified != rank:
            raise Refused(f"{peer_name(me)}: {peer_name(rank)} presented the certificate of "
                           f"{peer_name(certified)}; refusing the connection")
        try:
            _check_hello(first, {k: v for k, v in hello.items() if k != "rank"}, me,
                         peer_name(rank))
        except CommError as e:
            raise Refused(str(e)) from None
        link.hello = first
    except CommError as e:
        try:
            link.send({"error": str(e)})  # tell the refused peer why
        except CommError:
            pass  # it is gone already
        link.close()
        raise
    return link


def accept(listener: socket.socket, me: int, hello: dict, ranks: set[int], timeout: float,
           max_frame_bytes: int, wrap: Wrap | None = None) -> dict[int, TcpLink]:
    """Accept one connection from each rank in `ranks`, checking each hello.

    Each accepted connection shakes hands in its own thread, so a silent one cannot hold
    up the real peers. A stray (garbage, silence, failed TLS, an unexpected rank) is
    logged to stderr and dropped; a peer of this job with other settings is refused and
    fails the set-up, naming the setting.
    """
    links: dict[int, TcpLink] = {}
    done: queue.Queue = queue.Queue()
    dropped: list[str] = []
    deadline = time.monotonic() + timeout
    pending = 0

    def shake(sock, source) -> None:
        try:
            done.put(handshake(sock, source, me, hello, ranks, deadline, max_frame_bytes, wrap))
        except BaseException as e:
            done.put(e)

    try:
        while len(links) < len(ranks):
            while True:  # collect finished handshakes
                try:
                    outcome = done.get_nowait()
                except queue.Empty:
                    break
                pending -= 1
                if isinstance(outcome, Refused) or not isinstance(outcome, (TcpLink, CommError)):
                    raise outcome
                if isinstance(outcome, CommError):
                    dropped.append(str(outcome))
                    print(f"mpc_ml: dropped a connection: {outcome}", file=sys.stderr)
                elif outcome.peer in links:
                    outcome.close()
                    dropped.append(f"a second connection claiming {peer_name(outcome.peer)}")
                else:
                    links[outcome.peer] = outcome
                    outcome.send(hello)
            if len(links) == len(ranks):
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                missing = sorted(ranks - set(links))
                extra = f" (dropped: {'; '.join(dropped)})" if dropped else ""
                raise CommError(f"{peer_name(me)}: {', '.join(peer_name(r) for r in missing)} "
                                f"did not connect within {timeout:g} s{extra}")
            listener.settimeout(min(remaining, 0.01) if pending else remaining)
            try:
                sock, source = listener.accept()
            except (socket.timeout, BlockingIOError):
                continue
            pending += 1
            threading.Thread(target=shake, args=(sock, source), daemon=True,
                             name=f"mpc-handshake-{me}").start()
    except BaseException:
        for link in links.values():
            link.close()
        raise
    return links


def _refuse_tls(sock: socket.socket, me: int, where: str) -> None:
    """A plain party refuses, with a clear error, a peer that opens a TLS handshake."""
    try:
        first = sock.recv(1, socket.MSG_PEEK)
    except OSError:
        return  # a timeout or reset: the hello's receive reports it
    if first == b"\x16":  # a TLS handshake record, where a frame starts with b"MPCF"
        try:
            sock.recv(1 << 16, getattr(socket, "MSG_DONTWAIT", 0))  # closing with it unread
        except OSError:                                             # would reset, not close
            pass
        raise CommError(f"{peer_name(me)}: {where} started a TLS handshake, but this party "
                        "runs without TLS; give every party (and the dealer) the same --tls "
                        "directory (MPC_TLS_DIR)")


def connect_mesh(rank: int, addrs: list[str], listener: socket.socket, hello: dict,
                 timeout: float, max_frame_bytes: int,
                 wrap: Wrap | None = None) -> dict[int, TcpLink]:
    """Links to every other party: connect to lower ranks, accept higher ones."""
    links: dict[int, TcpLink] = {}
    try:
        for peer in range(rank):
            links[peer] = connect(addrs[peer], rank, peer, hello, timeout, max_frame_bytes, wrap)
        links.update(accept(listener, rank, hello, set(range(rank + 1, len(addrs))),
                            timeout, max_frame_bytes, wrap))
    except BaseException:
        for link in links.values():
            link.close()
        raise
    return links
