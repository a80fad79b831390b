"""A private inference service: compute parties that stay up and answer many outside
clients at once, batching their requests into shared forward passes.

Every compute party calls `serve_clients(model, listen, ...)` in its session (`mpc-ml
serve` does it for you). The model owner's weights are shared once at start. Then each
party runs, besides its main thread:

- an accept thread on its client-facing address; each connection shakes hands in a
  thread of its own (TLS with a client certificate when `wrap` is given, the hello),
  so a stray or silent connection holds up nobody (at most MAX_HANDSHAKES at once, each
  cut at HANDSHAKE_TIMEOUT_S; at most max_clients clients connected, at most
  max_clients_per_identity of them with one identity: a client certificate with TLS, the
  peer's address host without);
- one reader per client link, which checks every frame (an int64 share, non-empty, the
  model's sample shape, at most max_batch rows, a frame size cap) and files it in this
  party's table of pending requests as (client token, request number, share). A bad
  frame, a wrong shape or a disconnect drops that client's link only, and so does
  client_idle_timeout_s with no frame from the client and no answer to it;
- one sender per client link, so that a client that reads slowly holds up only its own
  thread (one that lets max_pending answers pile up unread is dropped; a dropped
  client's link is closed once its last error is out, or after DROP_GRACE_S).

The main threads run one step after another, all parties in lockstep:

1. party 0 (the scheduler) waits until its queue holds requests, then up to max_wait_ms
   more (or until max_batch rows are queued), and picks a plan: a list of
   (client token, request number, rows, certified client) in arrival order, at most
   max_batch rows; with no batch due for a heartbeat (nothing queued, or a queue still
   within max_wait_ms) it sends an idle plan, and once stopped and drained a stop plan.
   The plan is broadcast (one small JSON tensor).
2. every party claims the plan's shares from its table, waiting at most STRAGGLER_WAIT_S
   for those not arrived yet; one gather of verdicts (session.gather_verdicts) tells
   every party which requests all of them hold (same rows, same certified client).
3. a request not yet arrived somewhere is deferred: it goes back to the head of party 0's
   queue and is planned again, while the rest of the batch runs, so a client that
   stalls holds up nobody; once party 0 has held it request_timeout_s (the plan says
   so) it is waited for once more and then missing. A request missing anywhere, or
   refused anywhere, is dropped on every party: its client is told why (an error frame)
   and disconnected; the other requests go on. The held shares are stacked
   along dim 0 and run in one private forward pass; the output share is re-randomised
   with a fresh sharing of zero and split, and each client is sent only its own rows.

A client's requests are numbered by their order on each link, so one client's n links
(matched by the random 128-bit token of its hello, and with TLS by the certified client
index, which must be the same at every party) need no other framing. Only shapes are
logged (logger "mpc_ml.serving": which client asked for how many rows), never values.

The dealer: every step (an idle plan each heartbeat included) each party looks at its
link to the dealer without waiting (DealerProvider.link_failure: the link's reader has
seen the dealer hang up, or the dealer sent something while nothing was due) and says
so in its verdict; a dealer gone anywhere stops every party with an InferenceError
naming the dealer, within a heartbeat or so, and every client is told.

Stopping: `stop` (a threading.Event; `mpc-ml serve` sets it on SIGINT/SIGTERM) makes
party 0 close its listener, finish the requests it had received, and broadcast a stop
plan; a stop asked of any other party reaches party 0 in the next verdict. Every party
then tells its clients, closes their links and returns. A party that dies stops the
others: their next step raises InferenceError naming it, and every client still
connected is told so. Nobody runs half a service.
"""
from __future__ import annotations

import json
import logging
import math
import queue
import re
import socket
import sys
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from ..comm import CLIENT_RANK, CommError, CommTimeout, client_index, frames, peer_name, tcp
from ..config import PROTOCOL_VERSION
from ..nn import Module
from ..primitives.sharing import zero_share
from ..session import Session, current
from ..tensor import MPCTensor
from .inference import (InferenceError, _check_client_hello, _check_rank, _client_error,
                        _forward, _model_device, _prepare)

log = logging.getLogger("mpc_ml.serving")

_TOKEN = re.compile(r"[0-9a-f]{32}")
_IDLE, _BATCH, _STOP = "idle", "batch", "stop"
_CLOSE = object()  # in a client's outbox: close the link after what came before
HANDSHAKE_TIMEOUT_S = tcp.HELLO_TIMEOUT_S
"""A connection's whole handshake (TLS, then the hello; a refusal's last read) must end
within this long of its accept: past it, the accept thread shuts the socket (the socket's
own timeout bounds each read only, which a client that trickles bytes never hits)."""
MAX_HANDSHAKES = 64
"""Connections shaking hands at once, per party: more are closed at accept (each holds a
thread and up to a frame of memory; HANDSHAKE_TIMEOUT_S frees a place)."""
DROP_GRACE_S = 2.0
"""A dropped client's link is closed once what was queued for it (a last error) has gone
out, or after this long: nobody reads it any more, and a sender stuck on a client that
does not read must not keep it open (its reader would buffer whatever it goes on sending)."""
STRAGGLER_WAIT_S = 0.05
"""How long a party waits for a planned request's share that has not reached it yet; then
the request is deferred to the next plan (the rest of the batch runs without it), until
party 0 has held it request_timeout_s: then it is waited for once more, and dropped."""
DEALER_KEEPALIVE_S = 600.0
"""After this long without a batch, the parties ask the dealer for one small correlation
(a 1-element product), so that a dealer's idle timeout (Config.dealer_idle_timeout_s,
an hour by default) never ends an idle service."""


@dataclass
class _Client:
    """One client's link to this party and its requests not yet served."""

    token: str
    name: str
    certified: int | None
    link: tcp.TcpLink
    identity: str = ""
    """What max_clients_per_identity counts: 'client K' (its certificate) with TLS, else
    'address HOST' (the peer's address host)."""
    next_seq: int = 0
    heard_at: float = field(default_factory=time.monotonic)
    """When this client last sent a frame or was sent an answer: its idle clock. (A request
    in flight does not stop it: one that only some party ever receives would then keep its
    client, and its share, at that party for good.)"""
    pending: dict = field(default_factory=dict)
    open: bool = True
    outbox: queue.Queue = field(default_factory=queue.Queue)
    """What its sender thread sends, in order: the hello reply, answers, a last error."""


class _Clients:
    """This party's client side: the listener, the handshakes, the readers and the table
    of pending requests, shared with the main thread under one condition variable."""

    def __init__(self, session: Session, listener: socket.socket, sample: tuple[int, ...],
                 max_batch: int, max_pending: int, wrap: tcp.Wrap | None,
                 max_clients: int = 256, max_per_identity: int = 16,
                 idle_timeout_s: float | None = 300.0):
        self.me, self.session, self.listener = session.rank, session, listener
        self.sample, self.max_batch, self.max_pending, self.wrap = sample, max_batch, max_pending, wrap
        self.max_clients, self.max_per_identity = max_clients, max_per_identity
        self.idle_timeout_s = idle_timeout_s
        # a share of max_batch rows, with room for its header; control frames are small
        self.frame_cap = max(1 << 16, 8 * max_batch * math.prod(sample) + 1024)
        self.cond = threading.Condition()
        self.clients: dict[str, _Client] = {}
        self.queue: deque = deque()  # (token, seq, rows, arrival): party 0 schedules from it
        self.gone: OrderedDict[str, str] = OrderedDict()  # recent drops: token -> why
        self.accepting = True
        self.handshaking: dict[int, tuple[socket.socket, float]] = {}  # -> (socket, deadline)
        self.closing: dict[int, tuple[_Client, float]] = {}  # dropped, link open: -> deadline
        self.busy_at = time.monotonic()  # party 0: the last batch or dealer keep-alive
        self.threads: list[threading.Thread] = []
        self._threads_lock = threading.Lock()

    # -- connections ------------------------------------------------------------------
    def start(self) -> None:
        self._spawn(self._accept_loop, "accept")

    def _spawn(self, target: Callable, what: str, *args) -> None:
        t = threading.Thread(target=target, args=args, daemon=True,
                             name=f"mpc-serve-{self.me}-{what}")
        t.start()
        with self._threads_lock:
            self.threads = [u for u in self.threads if u.is_alive()] + [t]

    def _accept_loop(self) -> None:
        self.listener.settimeout(0.2)
        while self.accepting:
            self._cut_late_handshakes()
            try:
                sock, source = self.listener.accept()
            except (socket.timeout, BlockingIOError):
                continue
            except OSError as e:  # out of file descriptors, say: not the end of the service
                if not self.accepting:
                    return
                log.warning("party %d: cannot accept a connection: %s", self.me, e)
                time.sleep(0.2)
                continue
            with self.cond:
                full = len(self.handshaking) >= MAX_HANDSHAKES
                if not full:
                    self.handshaking[id(sock)] = (sock, time.monotonic() + HANDSHAKE_TIMEOUT_S)
            if full:
                log.warning("party %d: closed a connection from %s:%s at once: %d connections "
                            "shake hands already", self.me, *source[:2], MAX_HANDSHAKES)
                sock.close()
                continue
            try:
                self._spawn(self._handshake, "handshake", sock, source)
            except RuntimeError as e:  # no thread to be had
                log.warning("party %d: cannot serve a connection: %s", self.me, e)
                self._handshake_over(sock)
                sock.close()

    def _cut_late_handshakes(self) -> None:
        now = time.monotonic()
        with self.cond:
            late = [sock for sock, deadline in self.handshaking.values() if deadline < now]
            stuck = [c for c, deadline in self.closing.values() if deadline < now]
        for client in stuck:  # a sender stuck on a client that does not read
            client.link.close()
        for sock in late:  # wakes its handshake thread, which drops it
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _handshake_over(self, sock: socket.socket) -> None:
        with self.cond:
            self.handshaking.pop(id(sock), None)

    def _refuse(self, sock, where: str, problem: str) -> None:
        log.warning("party %d: refused a client connecting from %s: %s", self.me, where, problem)
        try:
            sock.sendall(frames.control_frame({"error": f"party {self.me}: {problem}"}))
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        raw = getattr(sock, "raw", sock)  # under TLS, the socket beneath
        try:  # read until the client hangs up: closing on its unread hello would reset the
            raw.settimeout(2.0)  # connection and destroy the error message
            while raw.recv(1 << 16):
                pass
        except OSError:
            pass
        raw.close()

    def _handshake(self, sock: socket.socket, source: tuple) -> None:
        try:
            client = self._shake(sock, source)
        finally:
            self._handshake_over(sock)
        if client is not None:
            self._read_loop(client)  # this thread goes on as the client's reader

    def _shake(self, sock: socket.socket, source: tuple) -> _Client | None:
        """TLS and the hello of one accepted connection: the client, or None if dropped."""
        where = f"{source[0]}:{source[1]}"
        certified = None
        try:
            tcp.tune(sock)
            sock.settimeout(HANDSHAKE_TIMEOUT_S)
            if self.wrap is not None:
                sock = self.wrap(sock, server_side=True, peer=None)
                rank = getattr(sock, "certified_rank", None)
                certified = client_index(rank) if rank is not None else None
                if certified is None:
                    return self._refuse(sock, where, (
                        f"{peer_name(rank)}'s certificate was presented in the client role; only a "
                        "client certificate (`mpc-ml certs DIR --clients K`) is accepted"))
            link = tcp.TcpLink(sock, self.me, CLIENT_RANK, self.frame_cap)
        except (CommError, OSError) as e:
            log.warning("party %d: dropped a connection from %s: %s", self.me, where, e)
            sock.close()
            return None
        try:
            hello = link.recv(HANDSHAKE_TIMEOUT_S)
        except CommError as e:
            log.warning("party %d: dropped a connection from %s: %s", self.me, where,
                        _client_error(self.me, e))
            link.close()
            return None
        problem = _check_client_hello(hello, self.session)
        token = hello.get("token") if isinstance(hello, dict) else None
        if problem is None and not (isinstance(token, str) and _TOKEN.fullmatch(token)):
            problem = "the hello carries no client token (32 hex digits); this party runs a " \
                      "service, which matches a client's links by it"
        name = (f"client {certified}" if certified is not None
                else f"client {str(token)[:8]} (unauthenticated, from {where})")
        identity = f"client {certified}" if certified is not None else f"address {source[0]}"
        with self.cond:
            if problem is None and not self.accepting:
                problem = "the service is stopping"
            if problem is None and token in self.clients:
                problem = "a client with this token is connected already"
            if problem is None and token in self.gone:  # a reconnection would number its
                # requests from 0 again, and (token, number) names a request across parties
                problem = "this client token was used already; a new session needs a new one"
            if problem is None and len(self.clients) >= self.max_clients:
                problem = (f"the service serves its limit of {self.max_clients} client"
                           f"{'s' * (self.max_clients != 1)} at once; try again later")
            if problem is None and sum(c.identity == identity for c in self.clients.values()) \
                    >= self.max_per_identity:
                k = self.max_per_identity
                problem = (f"{identity} holds its limit of {k} connection{'s' * (k != 1)} to "
                           "this service at once (max_clients_per_identity); try again later")
            if problem is None:
                client = _Client(token, name, certified, link, identity)
                self.clients[token] = client
                self._spawn(self._send_loop, "sender", client)
        if problem is not None:
            log.warning("party %d: refused a client connecting from %s: %s", self.me, where, problem)
            try:
                link.send({"error": f"party {self.me}: {problem}"})
            except CommError:
                pass
            link.close()
            return None
        log.info("party %d: %s connected", self.me, name)
        client.outbox.put({"rank": self.me, "world_size": self.session.world_size,
                           "protocol_version": PROTOCOL_VERSION, "service": True,
                           "precision_bits": self.session.config.precision_bits})
        return client

    def _send_loop(self, client: _Client) -> None:
        """The client's sender: a client that reads slowly holds up only this thread."""
        while True:
            msg = client.outbox.get()
            if msg is _CLOSE:
                break
            try:
                client.link.send(msg)
            except CommError as e:  # drop() queues the _CLOSE this loop ends on
                self.drop(client, str(_client_error(self.me, e)), tell=False)
        client.link.close()
        with self.cond:
            self.closing.pop(id(client), None)

    def answer(self, client: _Client, share: torch.Tensor) -> None:
        """Queue a client's answer; one that lets max_pending answers pile up unread is
        dropped (its link closed at once, which frees its sender)."""
        if client.outbox.qsize() >= self.max_pending:
            return self.drop(client, "the client does not read its answers", tell=False,
                             force=True)
        with self.cond:
            client.heard_at = time.monotonic()
        client.outbox.put(share)

    def _check_share(self, msg) -> str | None:
        if isinstance(msg, dict):
            return f"the client sent an unknown message {msg!r:.200}"
        if msg.dtype != torch.int64:
            return f"the client sent a {msg.dtype} tensor, not an int64 share"
        if msg.dim() == 0 or msg.numel() == 0:
            return f"the client sent a share of shape {tuple(msg.shape)}; a request is a " \
                   "non-empty batch"
        if tuple(msg.shape[1:]) != self.sample:
            return f"the client sent a share of shape {tuple(msg.shape)}; this model takes " \
                   f"batches of {self.sample}"
        if msg.shape[0] > self.max_batch:
            return f"the client sent a request of {msg.shape[0]} rows; this service takes at " \
                   f"most {self.max_batch} (max_batch)"
        return None

    def _idle_left(self, client: _Client) -> float:
        """Seconds until nothing has come from this client, nor gone to it as an answer,
        for idle_timeout_s (0 once that is so)."""
        with self.cond:
            return max(0.0, client.heard_at + self.idle_timeout_s - time.monotonic())

    def _read_loop(self, client: _Client) -> None:
        while True:
            wait = 3600.0
            if self.idle_timeout_s is not None:
                left = self._idle_left(client)
                if left == 0.0:
                    return self.drop(client, f"the client sent nothing for "
                                     f"{self.idle_timeout_s:g} s (client_idle_timeout_s)",
                                     tell=True)
                wait = min(wait, left)
            try:
                msg = client.link.recv(max(wait, 0.01))
            except CommTimeout:
                continue
            except CommError as e:
                reason = None if not client.open else str(_client_error(self.me, e))
                if reason and reason.endswith("the inference client closed the connection"):
                    reason = None  # a client that simply left
                return self.drop(client, reason, tell=True)
            if isinstance(msg, dict) and msg.get("op") == "done":
                return self.drop(client, None, tell=False)
            problem = self._check_share(msg)
            with self.cond:
                client.heard_at = time.monotonic()
                if not client.open:
                    return
                if problem is None and len(client.pending) >= self.max_pending:
                    problem = f"more than {self.max_pending} requests in flight"
                if problem is None:
                    seq, client.next_seq = client.next_seq, client.next_seq + 1
                    client.pending[seq] = msg
                    if self.me == 0:  # the scheduler's queue; the others only claim
                        self.queue.append((client.token, seq, int(msg.shape[0]),
                                           time.monotonic()))
                    self.cond.notify_all()
            if problem is not None:
                return self.drop(client, problem, tell=True)
            log.info("party %d: %s asked request %d of shape %s", self.me, client.name, seq,
                     tuple(msg.shape))
            del msg

    def drop(self, client: _Client, why: str | None, tell: bool, force: bool = False) -> None:
        """Disconnect one client (telling it why, if tell) once what is queued for it has
        gone out, or at once if force; its pending requests go."""
        if why and not why.startswith(f"party {self.me}: "):
            why = f"party {self.me}: {why}"
        with self.cond:
            if not client.open:
                return
            client.open = False
            if self.clients.get(client.token) is client:
                del self.clients[client.token]
            client.pending.clear()
            self.gone[client.token] = (why or "the client left").removeprefix(f"party {self.me}: ")
            while len(self.gone) > 1024:
                self.gone.popitem(last=False)
            if not force:
                self.closing[id(client)] = (client, time.monotonic() + DROP_GRACE_S)
            self.cond.notify_all()
        if why:
            log.warning("dropped %s: %s", client.name, why)
        if tell and why:
            client.outbox.put({"error": why})
        client.outbox.put(_CLOSE)
        if force:
            client.link.close()

    def close(self, why: str) -> None:
        """Stop accepting; tell every client why and disconnect it."""
        with self.cond:
            self.accepting = False
            clients = list(self.clients.values())
            shaking = [sock for sock, _ in self.handshaking.values()]
        try:
            self.listener.close()
        except OSError:
            pass
        for sock in shaking:  # a handshake in progress ends now, not at its deadline
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for client in clients:
            self.drop(client, why, tell=True)
        deadline = time.monotonic() + 2.0  # a handshake still in its hello timeout is left
        with self._threads_lock:
            threads = list(self.threads)
        for t in threads:
            if t is not threading.current_thread():
                t.join(timeout=max(0.0, deadline - time.monotonic()))
        with self.cond:
            clients += [c for c, _ in self.closing.values()]
        for client in clients:  # a sender still stuck on a client that does not read
            client.link.close()

    # -- the main thread's side ----------------------------------------------------------
    def next_plan(self, stopping: Callable[[], bool], max_wait_s: float, heartbeat_s: float,
                  stopped_at: list, late_s: float) -> dict:
        """Party 0: the next plan (a batch, idle after a heartbeat, or stop once drained)."""
        idle_at = time.monotonic() + heartbeat_s
        with self.cond:
            while True:
                now = time.monotonic()
                if stopping() and not stopped_at:
                    stopped_at.append(now)
                    self.accepting = False
                # requests of dropped clients, and after a stop those that came later, go
                while self.queue and (self.queue[0][0] not in self.clients
                                      or (stopped_at and self.queue[0][3] > stopped_at[0])):
                    self.queue.popleft()
                if self.queue:
                    rows = sum(e[2] for e in self.queue)
                    due = self.queue[0][3] + max_wait_s
                    if rows >= self.max_batch or now >= due or stopped_at:
                        self.busy_at = now
                        return {"op": _BATCH, "entries": self._take_batch(late_s)}
                    if now >= idle_at:  # a max_wait_ms longer than the heartbeat: the others
                        return {"op": _IDLE}  # must hear from party 0 before comm_timeout_s
                    self.cond.wait(min(due - now, idle_at - now, 0.2))
                elif stopped_at:
                    return {"op": _STOP}
                elif now >= idle_at:
                    if now - self.busy_at < DEALER_KEEPALIVE_S:
                        return {"op": _IDLE}
                    self.busy_at = now
                    return {"op": _IDLE, "keepalive": True}
                else:
                    self.cond.wait(min(idle_at - now, 0.2))

    def _take_batch(self, late_s: float) -> list:
        entries, rows, rest, now = [], 0, deque(), time.monotonic()
        self.planned, held_back = {}, set()
        while self.queue:
            token, seq, n, arrival = self.queue.popleft()
            client = self.clients.get(token)
            if client is None or seq not in client.pending:
                continue
            if rows + n > self.max_batch or token in held_back:
                rest.append((token, seq, n, arrival))
                held_back.add(token)  # a client's answers leave in the order it asked
                continue
            entries.append([token, seq, n, client.certified, now - arrival >= late_s])
            self.planned[token, seq] = arrival
            rows += n
        self.queue = rest
        return entries

    def requeue(self, entries: list) -> None:
        """Party 0: deferred requests go back to the head of the queue, as they arrived."""
        with self.cond:
            back = [(e[0], e[1], e[2], self.planned[e[0], e[1]]) for e in entries]
            self.queue.extendleft(reversed(back))

    def claim(self, entries: list, wait_s: float) -> tuple[list, list, list]:
        """This party's (client, share) of each of the plan's requests, taken from its
        table (None where it holds none), why not where it never will, and whether it is
        one still to come (not arrived within wait_s)."""
        deadline = time.monotonic() + wait_s
        with self.cond:
            while True:
                found = [self._lookup(e) for e in entries]
                left = deadline - time.monotonic()
                if all(f is not None for f in found) or left <= 0:
                    break
                self.cond.wait(left)
            held, why, later = [], [], []
            for entry, f in zip(entries, found):
                ok, detail = f if f is not None else (False, None)
                client = self.clients.get(entry[0]) if ok else None
                held.append((client, client.pending.pop(entry[1])) if ok else None)
                why.append(None if ok or f is None else f"party {self.me}: {detail}")
                later.append(f is None)
        return held, why, later

    def give_back(self, entry: list, held: tuple | None) -> None:
        """A deferred request's share goes back into its client's table."""
        if held is not None:
            with self.cond:
                if held[0].open:
                    held[0].pending[entry[1]] = held[1]

    def _lookup(self, entry: list) -> tuple[bool, str | None] | None:
        """(held, why not) of one plan entry, or None while its share may still come."""
        if not (isinstance(entry, list) and len(entry) == 5 and isinstance(entry[0], str)
                and all(isinstance(v, int) for v in entry[1:3])
                and isinstance(entry[4], bool)):
            return False, "a malformed plan entry"
        token, seq, rows, certified, _ = entry
        client = self.clients.get(token)
        if client is None:
            return False, self.gone.get(token, "the client is not connected here")
        if certified != client.certified:
            return False, (f"the client presented the certificate of client {client.certified} "
                           f"here and of client {certified} to party 0")
        share = client.pending.get(seq)
        if share is None:
            return None if seq >= client.next_seq else (False, "the request is gone")
        if share.shape[0] != rows:
            return False, f"a share of {share.shape[0]} rows, where party 0 has {rows}"
        return True, None


def _send_json(session: Session, obj: dict | None) -> dict:
    """Party 0's plan on every party (one broadcast of its JSON text)."""
    if session.rank == 0:
        raw = json.dumps(obj, separators=(",", ":")).encode()
        session.comm.broadcast(torch.frombuffer(bytearray(raw), dtype=torch.uint8), 0)
        return obj
    t = session.comm.broadcast(None, 0)
    try:
        if t.dtype != torch.uint8 or t.dim() != 1:
            raise ValueError("not a byte string")
        plan = json.loads(bytes(t.numpy().tobytes()).decode())
        if not isinstance(plan, dict) or plan.get("op") not in (_IDLE, _BATCH, _STOP):
            raise ValueError("not a plan")
    except (ValueError, UnicodeDecodeError) as e:
        raise InferenceError(f"party {session.rank}: malformed plan from party 0: {e}") from None
    return plan


@dataclass
class ServiceStats:
    """What a party's service did: requests answered and dropped, batches, traffic."""

    requests: int = 0
    dropped: int = 0
    batches: int = 0
    rows: int = 0
    keepalives: int = 0
    batch_log: list = field(default_factory=list)
    """(requests, rows, bytes_sent, bytes_received, rounds, dealer_bytes_received, end time
    (time.time())) of each batch, the last 10000; traffic counts the batch's plan and
    verdicts too."""

    def as_dict(self) -> dict:
        """The counters as a plain dict (batch_log as lists)."""
        return {"requests": self.requests, "dropped": self.dropped, "batches": self.batches,
                "rows": self.rows, "keepalives": self.keepalives,
                "batch_log": [list(b) for b in self.batch_log]}


def serve_clients(model: Module, listen: str | socket.socket, *, model_owner: int = 0,
                  sample_shape: Sequence[int], max_batch: int = 64, max_wait_ms: float = 5.0,
                  request_timeout_s: float | None = None, stop: threading.Event | None = None,
                  wrap: tcp.Wrap | None = None, max_pending: int = 8, max_clients: int = 256,
                  max_clients_per_identity: int = 16, client_idle_timeout_s: float | None = 300.0,
                  ready: Callable[[str], None] | None = None) -> dict:
    """Run the inference service on this party until stopped; every compute party calls it.

    listen: this party's client-facing HOST:PORT, or a listening socket (closed at the
    end). model_owner's weights are shared once, before any client is accepted.
    sample_shape: the model's input shape after the batch dimension (checked on every
    request). Requests that arrive within max_wait_ms of the first queued one are run
    together, at most max_batch rows per forward pass (a larger request is refused);
    a request whose share has not reached every party request_timeout_s (default: 5 s,
    at most half of comm_timeout_s) after it reached party 0 is lost (its client is told
    and disconnected); until then it is retried batch after batch, holding up nobody.
    A model whose output for a row depends on other rows is refused unless max_batch is
    1 (the model owner checks, while its weights are still plaintext). stop: set it (on
    any party) to finish the requests party 0 has received and return. wrap: the parties'
    TLS (TLSConfig); clients must then present a client certificate. max_pending: a
    client's requests in flight (and answers unread) per party; max_clients: clients
    connected to a party at once (one more is refused at its hello); besides them at most
    MAX_HANDSHAKES connections shake hands, each cut at HANDSHAKE_TIMEOUT_S.
    max_clients_per_identity: clients connected to a party at once with one identity (one
    more is refused at its hello): with wrap, the client certificate's index; without, the
    peer's address host (so clients behind one NAT share it). client_idle_timeout_s: a
    client from which no frame has come, and to which no answer has gone, for this long is
    dropped, freeing its place (keep it above the longest a request waits for its answer);
    None: never.
    ready(address) is called once the service listens. Returns this party's ServiceStats
    as a dict; a dead party, or a dealer gone (provider "dealer": noticed at the next step,
    idle ones included), raises InferenceError naming it, on every party still running.
    """
    session = current()
    _check_rank(session, "model_owner", model_owner)
    if max_batch < 1 or max_wait_ms < 0 or max_pending < 1 or max_clients < 1 \
            or max_clients_per_identity < 1:
        raise ValueError(f"need max_batch >= 1, max_wait_ms >= 0, max_pending >= 1, "
                         f"max_clients >= 1 and max_clients_per_identity >= 1; got {max_batch}, "
                         f"{max_wait_ms}, {max_pending}, {max_clients}, {max_clients_per_identity}")
    if client_idle_timeout_s is not None and not client_idle_timeout_s > 0:
        raise ValueError(f"client_idle_timeout_s={client_idle_timeout_s!r} must be positive "
                         "(or None: never)")
    if request_timeout_s is None:
        request_timeout_s = min(5.0, session.config.comm_timeout_s / 2)
    if not 0 < request_timeout_s < session.config.comm_timeout_s:
        raise ValueError(f"request_timeout_s={request_timeout_s:g} must be positive and below "
                         f"comm_timeout_s={session.config.comm_timeout_s:g} (the other parties "
                         "wait that long for a party's verdict)")
    sample = tuple(int(d) for d in sample_shape)
    stop = stop or threading.Event()
    listener = tcp.listen(listen) if isinstance(listen, str) else listen
    where = "{}:{}".format(*listener.getsockname()[:2])
    try:
        if wrap is None:
            if not tcp.is_loopback(where) and not session.config.allow_insecure:
                raise InferenceError(
                    f"party {session.rank}: serving clients at {where} without TLS would let anyone "
                    "who can connect read the shares of a client; give wrap=TLSConfig(...) (--tls "
                    "DIR) or opt out with Config(allow_insecure=True), MPC_ALLOW_INSECURE=1 or "
                    "--allow-insecure")
            print(f"mpc_ml: party {session.rank} serves inference clients at {where} without TLS",
                  file=sys.stderr)
        mixes = (_mixes_rows(model, sample) if session.rank == model_owner and max_batch > 1
                 else None)
        model = _prepare(model, model_owner)
        _agree_settings(session, {"sample_shape": list(sample), "max_batch": max_batch,
                                  "tls": wrap is not None})
        try:
            mixes = session.gather_verdicts({"mixes": mixes})[model_owner].get("mixes")
        except ValueError as e:
            raise InferenceError(str(e)) from None
        if mixes:
            raise InferenceError(
                f"party {session.rank}: the model's output for one row depends on the other rows "
                f"of its batch (checked by the model owner, party {model_owner}, on a random "
                "batch); batching would put one client's input into another's answer: serve it "
                "with max_batch=1")
    except BaseException:
        listener.close()
        raise
    device = _model_device(model)
    heartbeat = min(1.0, session.config.comm_timeout_s / 4)
    straggler_s = min(STRAGGLER_WAIT_S, request_timeout_s)
    clients = _Clients(session, listener, sample, max_batch, max_pending, wrap, max_clients,
                       max_clients_per_identity, client_idle_timeout_s)
    dealer_failure = getattr(session.provider, "link_failure", None)  # provider "dealer"
    stats = ServiceStats()
    stopping = {"asked": False}
    stopped_at: list = []
    clients.start()
    log.info("party %d: serving clients at %s (max batch %d rows, max wait %g ms)",
             session.rank, where, max_batch, max_wait_ms)
    if ready is not None:
        ready(where)
    ending = "the service stopped"
    try:
        while True:
            plan, before = None, session.stats()
            if session.rank == 0:
                plan = clients.next_plan(lambda: stop.is_set() or stopping["asked"],
                                         max_wait_ms / 1e3, heartbeat, stopped_at,
                                         request_timeout_s)
            try:
                plan = _send_json(session, plan)
                entries = plan.get("entries", []) if plan["op"] == _BATCH else []
                if not isinstance(entries, list):
                    raise InferenceError(f"party {session.rank}: malformed plan from party 0")
                held, why, later = clients.claim(entries, straggler_s)
                verdicts = session.gather_verdicts({
                    "why": why, "later": later, "stop": stop.is_set(),
                    "dealer": dealer_failure() if dealer_failure is not None else None})
            except ValueError as e:
                raise InferenceError(str(e)) from None
            gone = [(r, v["dealer"]) for r, v in enumerate(verdicts) if v.get("dealer")]
            if gone:
                raise InferenceError(f"party {session.rank}: the service stops: " + "; ".join(
                    f"party {r}: {what}" for r, what in gone))
            if any(v.get("stop") for v in verdicts):
                stopping["asked"] = True
            said = [v.get("why") for v in verdicts]
            slow = [v.get("later") for v in verdicts]
            if any(not isinstance(w, list) or len(w) != len(entries) for w in said + slow):
                raise InferenceError(f"party {session.rank}: a malformed verdict")
            run, deferred = [], []
            for i, entry in enumerate(entries):
                reason = "; ".join(str(w[i]) for w in said if w[i] is not None) or None
                missing = [r for r, w in enumerate(slow) if w[i] is True]
                behind = any(d[0] == entry[0] for d in deferred)  # a client's order holds
                if reason is None and (behind or (missing and not entry[4])):
                    deferred.append(entry)  # retried in the next plan: nobody waits for it
                    clients.give_back(entry, held[i])
                    continue
                if reason is None and missing:
                    reason = "; ".join(f"party {r}: no share of this request reached party {r} "
                                       f"within {request_timeout_s:g} s" for r in missing)
                run.append((entry, held[i], reason))
            if deferred and session.rank == 0:
                clients.requeue(deferred)
            _run_batch(session, model, device, clients, run, stats, before)
            if plan.get("keepalive") is True:  # one correlation from the dealer
                z = MPCTensor(zero_share(session, (1,)), session)
                _ = z * z
                stats.keepalives += 1
                log.info("party %d: kept the dealer link alive (no batch for %g s)",
                         session.rank, DEALER_KEEPALIVE_S)
            if plan["op"] == _STOP:
                break
    except CommError as e:
        ending = f"party {session.rank}: the service stops: {e}"
        raise InferenceError(ending) from None
    except BaseException as e:
        ending = (str(e) if isinstance(e, InferenceError)
                  else f"party {session.rank}: the service stops: {type(e).__name__}: {e}")
        raise
    finally:
        clients.close(ending)
    log.info("party %d: stopped after %d requests (%d dropped) in %d batches", session.rank,
             stats.requests, stats.dropped, stats.batches)
    return stats.as_dict()


def _mixes_rows(model: Module, sample: tuple[int, ...]) -> bool | None:
    """The model owner's check, in plaintext on a random batch, that each row's output
    depends on that row alone: four rows at once against two pairs (a size of 1 may be
    specialised by the export). None where it cannot tell (already private, or it fails)."""
    if model.encrypted:
        return None
    x = torch.randn(4, *sample, generator=torch.Generator().manual_seed(0))
    try:
        with torch.no_grad():
            whole = model.eval()(x.to(_model_device(model)))
            pairs = torch.cat([model(x[:2].to(whole.device)), model(x[2:].to(whole.device))])
    except Exception:  # a model that wants other inputs: not for this check to judge
        return None
    if not isinstance(whole, torch.Tensor) or not isinstance(pairs, torch.Tensor):
        return None
    if whole.shape != pairs.shape:
        return True
    return not torch.allclose(whole.float(), pairs.float(), rtol=1e-3, atol=1e-4)


def _agree_settings(session: Session, mine: dict) -> None:
    """Every party serves the same sample shape and batch cap, with or without TLS (one
    gather at start; a difference is refused by name on every party)."""
    try:
        theirs = session.gather_verdicts(mine)
    except ValueError as e:
        raise InferenceError(str(e)) from None
    for key, value in mine.items():
        values = [v.get(key) for v in theirs]
        if any(v != values[0] for v in values):
            seen = ", ".join(f"party {r}: {v!r}" for r, v in enumerate(values))
            raise InferenceError(f"party {session.rank}: the parties serve with different "
                                 f"{key} ({seen}); refusing to start")


def _run_batch(session: Session, model: Module, device: torch.device, clients: _Clients,
               plan: list, stats: ServiceStats, before: dict) -> None:
    """Drop the requests some party lacks (each (entry, (client, share) or None, why not));
    run the rest in one pass, and answer each client on the link its share came by."""
    run = []
    for entry, held, reason in plan:
        if reason is not None:
            stats.dropped += 1
            client = held[0] if held is not None else clients.clients.get(entry[0])
            if client is not None:
                clients.drop(client, f"request {entry[1]} was not served: {reason}", tell=True)
        else:
            run.append((entry, held))
    if not run:
        return
    rows = [entry[2] for entry, _ in run]
    x = MPCTensor(torch.cat([share for _, (_, share) in run]).to(device), session)
    out = _forward(model, x).share
    if out.dim() == 0 or out.shape[0] != sum(rows):
        raise InferenceError(f"party {session.rank}: the model's output of shape "
                             f"{tuple(out.shape)} has no batch dimension of {sum(rows)}")
    out = (out + zero_share(session, out.shape, out.device)).cpu()  # fresh sharing
    for (_, (client, _)), part in zip(run, out.split(rows)):
        if client.open:  # else it left; its answer goes nowhere
            clients.answer(client, part.contiguous())
    after = session.stats()
    stats.requests += len(run)
    stats.rows += sum(rows)
    stats.batches += 1
    stats.batch_log.append((len(run), sum(rows), after["bytes_sent"] - before["bytes_sent"],
                            after["bytes_received"] - before["bytes_received"],
                            after["rounds"] - before["rounds"],
                            after.get("dealer_bytes_received", 0)
                            - before.get("dealer_bytes_received", 0),
                            time.time()))
    del stats.batch_log[:-10000]
