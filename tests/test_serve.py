"""The private inference service (serving/service.py, `mpc-ml serve`): concurrent clients
against plaintext torch, dynamic batching, each isolation case, the client limits (per
identity, idle clients), clean shutdown with requests in flight (and a stop while it
starts), a dead party or dealer, TLS client identity and what is logged.

The parties run as mpc.run(backend="inproc") in a background thread, each serving on a
loopback socket; clients are threads of the test. Waits are on events with deadlines
(the service's own log records mark when a request has reached a party), never sleeps.
"""
from __future__ import annotations

import errno
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

import mpc_ml as mpc
from helpers import float_share, garbage, listeners, mid_frame
from mpc_ml.comm import CommError, PeerError, client_rank
from mpc_ml.comm.tls import TLSConfig, make_certificates
from mpc_ml.serving import InferenceClient, InferenceError, demo_model, serve_clients

TOL = 1e-2  # as tests/test_inference.py
FAST = mpc.Config(comm_timeout_s=5.0, connect_timeout_s=10.0)
JOIN_S = 60
SAMPLE = (64,)

torch.manual_seed(0)
MODEL = demo_model().eval()
_CONVERT_LOCK = threading.Lock()  # from_pytorch patches torch process-wide: one at a time


def expected(x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return MODEL(x)


def data(seed: int, rows: int) -> torch.Tensor:
    return torch.randn(rows, *SAMPLE, generator=torch.Generator().manual_seed(seed))


class Arrivals(logging.Handler):
    """Counts the service's 'asked request' records per party; wait(k) blocks until every
    party has seen k requests (or fails after a deadline)."""

    def __init__(self, parties: int):
        super().__init__(logging.INFO)
        self.parties, self.counts, self.cond = parties, {}, threading.Condition()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        with self.cond:
            self.messages.append(text)
            m = re.match(r"party (\d+): .* asked request", text)
            if m:
                self.counts[int(m.group(1))] = self.counts.get(int(m.group(1)), 0) + 1
            self.cond.notify_all()

    def wait(self, k: int, parties=None, timeout: float = 20) -> None:
        parties = range(self.parties) if parties is None else parties
        with self.cond:
            assert self.cond.wait_for(lambda: all(self.counts.get(p, 0) >= k for p in parties),
                                      timeout), f"requests did not arrive: {self.counts}"


class Service:
    """serve_clients on n inproc parties in a background thread."""

    def __init__(self, n: int = 2, config: mpc.Config = FAST, wrap=None, body=None, **kwargs):
        self.socks, self.addrs = listeners(n)
        self.stop = threading.Event()
        self.result: dict = {}
        self.log = Arrivals(n)
        logger = logging.getLogger("mpc_ml.serving")
        logger.addHandler(self.log)
        logger.setLevel(logging.INFO)
        kwargs = {"max_wait_ms": 20.0, "request_timeout_s": 1.0, **kwargs}

        def party():
            with _CONVERT_LOCK:
                source = MODEL if mpc.rank() == 0 else demo_model()  # only party 0's weights count
                model = mpc.nn.from_pytorch(source, torch.zeros(2, *SAMPLE))
            if body is not None:
                return body(model, self)
            return serve_clients(model, self.socks[mpc.rank()], sample_shape=SAMPLE,
                                 stop=self.stop, wrap=wrap(mpc.rank()) if wrap else None, **kwargs)

        def target():
            try:
                self.result["out"] = mpc.run(party, world_size=n, config=config)
            except BaseException as e:  # checked by the test
                self.result["error"] = e
            finally:
                for s in self.socks:
                    s.close()
                logger.removeHandler(self.log)

        self.thread = threading.Thread(target=target, name="mpc-service", daemon=True)
        self.thread.start()

    def finish(self) -> dict:
        self.stop.set()
        self.thread.join(JOIN_S)
        assert not self.thread.is_alive(), "the service hung"
        return self.result


def eventually(attempt, timeout_s: float = 10.0):
    """attempt() until it returns something other than None (a party notices a client's
    departure when its reader sees the link close, an event no client can wait on), each
    retry after a short wait; fails past the deadline. Returns what attempt returned."""
    deadline, retry = time.monotonic() + timeout_s, threading.Event()
    while True:
        outcome = attempt()
        if outcome is not None:
            return outcome
        assert time.monotonic() < deadline, "the service did not get there in time"
        retry.wait(0.05)


def run_clients(addrs, jobs, **client_kwargs) -> dict:
    """Each job (seed, [rows of each request]) a client thread that sends its requests one
    after another, all clients starting together; {seed: [(x, y) or the error]}."""
    barrier = threading.Barrier(len(jobs))
    got: dict = {}

    def client(seed, sizes):
        out = got.setdefault(seed, [])
        try:
            with InferenceClient(addrs, **client_kwargs) as c:
                barrier.wait(20)
                for k, rows in enumerate(sizes):
                    x = data(1000 * seed + k, rows)
                    out.append((x, c.predict(x)))
        except BaseException as e:
            out.append(e)

    threads = [threading.Thread(target=client, args=job) for job in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(JOIN_S)
    assert not any(t.is_alive() for t in threads), "a client hung"
    return got


def assert_answers(got: list) -> None:
    assert got and all(isinstance(a, tuple) for a in got), got
    for x, y in got:
        torch.testing.assert_close(y, expected(x), atol=TOL, rtol=0)


# -- concurrent clients, batching --------------------------------------------------------
@pytest.mark.parametrize("n", [2, 3])
def test_concurrent_clients_each_get_their_own_answers(n):
    service = Service(n, max_wait_ms=50.0, max_batch=16)
    jobs = [(seed, [1 + (seed + k) % 3 for k in range(3)]) for seed in range(6)]
    got = run_clients(service.addrs, jobs)
    result = service.finish()
    assert "error" not in result, result.get("error")
    for seed, _ in jobs:
        assert_answers(got[seed])
    for stats in result["out"]:
        assert stats["requests"] == 18 and stats["dropped"] == 0
        assert stats["rows"] == sum(sum(s) for _, s in jobs)
        assert stats["batches"] < 18  # requests that arrived together shared a forward pass
        assert max(b[1] for b in stats["batch_log"]) <= 16


def test_what_a_party_keeps_does_not_grow_with_the_requests_served(monkeypatch):
    """After the answers, no party holds anything of them: the scheduling queue lives
    on party 0 only, the tables of pending requests are empty."""
    from mpc_ml.serving import service as service_module

    made = []

    class Recorded(service_module._Clients):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(service_module, "_Clients", Recorded)
    service = Service(max_wait_ms=1.0)
    with InferenceClient(service.addrs) as c:
        for k in range(6):
            c.predict(data(k, 1))
        assert len(made) == 2
        for party in made:
            with party.cond:
                assert not party.queue and not any(cl.pending for cl in party.clients.values()), \
                    (party.me, len(party.queue))
    result = service.finish()
    assert "error" not in result, result.get("error")


def test_batching_respects_max_batch_and_one_pass_per_batch():
    service = Service(max_wait_ms=10_000.0, max_batch=4)  # only full batches go early
    got = run_clients(service.addrs, [(seed, [2]) for seed in range(4)])  # 8 rows: 2 batches
    result = service.finish()
    for seed in range(4):
        assert_answers(got[seed])
    stats = result["out"][0]
    assert stats["batches"] == 2 and [b[:2] for b in stats["batch_log"]] == [[2, 4], [2, 4]]


def test_a_max_wait_longer_than_the_comm_timeout_keeps_the_parties_in_step():
    """While a queued request waits out max_wait_ms, party 0 still sends its heartbeat
    (idle plans), so the other parties' wait for the next plan never times out."""
    service = Service(config=mpc.Config(comm_timeout_s=1.0, connect_timeout_s=10.0),
                      max_wait_ms=1600.0, request_timeout_s=0.4)
    assert_answers(run_clients(service.addrs, [(1, [1])])[1])
    result = service.finish()
    assert "error" not in result, result.get("error")


# -- isolation -----------------------------------------------------------------------------
def _wrong_shape(client, shares):
    for link, s in zip(client.links, shares):
        link.send(s[:, :10])


def _different_rows(client, shares):
    client.links[0].send(shares[0])
    client.links[1].send(shares[1][:1])


def _stall(client, shares):
    client.links[0].send(shares[0])  # and nothing to party 1, the connection left open


def _too_many_rows(client, shares):
    for link, s in zip(client.links, shares):
        link.send(torch.cat([s] * 9)[:17])  # 17 rows, max_batch is 16


@pytest.mark.parametrize("misbehave,message", [
    (mid_frame, None),
    (garbage, r"request 0 was not served: party 1: bad frame from the inference client: bad "
               r"frame magic"),
    (float_share, r"party 1: the client sent a torch.float64 tensor"),
    (_wrong_shape, r"party 0: the client sent a share of shape \(2, 10\); this model takes "
                   r"batches of \(64,\)"),
    (_different_rows, r"request 0 was not served: party 1: a share of 1 rows, where party 0 has 2"),
    (_stall, r"request 0 was not served: party 1: no share of this request reached party 1 "
             r"within 1 s"),
    (_too_many_rows, r"party 0: the client sent a request of 17 rows; this service takes at "
                     r"most 16"),
], ids=["disconnect-mid-request", "garbage-frame", "float-share", "wrong-shape", "different-rows",
        "stall", "too-many-rows"])
def test_a_misbehaving_client_loses_only_its_own_request(misbehave, message):
    service = Service(max_wait_ms=100.0, max_batch=16)
    bad = InferenceClient(service.addrs, timeout_s=10)
    good_started = threading.Event()
    good: dict = {}

    def good_clients():
        good_started.set()
        good.update(run_clients(service.addrs, [(seed, [2, 1]) for seed in range(3)]))

    worker = threading.Thread(target=good_clients)
    worker.start()
    good_started.wait(10)
    misbehave(bad, bad.share(data(99, 2)))
    if bad.links:  # a client still listening is told why, and disconnected
        replies = []
        for link in bad.links:
            try:
                replies.append(link.recv(10)["error"])
            except CommError as e:  # a party that saw garbage hangs up at once
                replies.append(str(e))
        assert any(re.search(message, r) for r in replies), replies
        with pytest.raises(InferenceError):  # it is disconnected
            bad.predict(data(98, 1))
    bad.close()
    worker.join(JOIN_S)
    for seed in range(3):
        assert_answers(good[seed])
    assert_answers(run_clients(service.addrs, [(7, [3])])[7])  # the service still runs
    result = service.finish()
    assert "error" not in result, result.get("error")
    assert result["out"][0]["requests"] == 7


def test_a_stalled_share_does_not_hold_up_the_requests_batched_with_it():
    """A client that sends its share to party 0 only is retried, not waited for: the
    requests in its batch are answered at once, and it is dropped after request_timeout_s."""
    service = Service(max_wait_ms=100.0, request_timeout_s=2.0)
    bad = InferenceClient(service.addrs, timeout_s=10)
    with InferenceClient(service.addrs, timeout_s=10) as good:
        _stall(bad, bad.share(data(99, 2)))  # queued at party 0: the next batch is its
        service.log.wait(1, parties=[0])
        for seed in range(3):
            start = time.monotonic()
            x = data(seed, 1)
            torch.testing.assert_close(good.predict(x), expected(x), atol=TOL, rtol=0)
            assert time.monotonic() - start < 1.0  # not the stalled one's 2 s
        error = bad.links[0].recv(10)["error"]  # and the stalled one is dropped in time
        assert "no share of this request reached party 1 within 2 s" in error, error
    bad.close()
    result = service.finish()
    assert "error" not in result, result.get("error")
    assert result["out"][0]["requests"] == 3 and result["out"][0]["dropped"] == 1


def test_a_batch_keeps_each_clients_requests_in_order():
    """Answers go back in the order a client sent its requests (nothing else names them):
    a request that does not fit the batch holds back the same client's later ones."""
    from types import SimpleNamespace

    from mpc_ml.serving.service import _Client, _Clients

    session = SimpleNamespace(rank=0, world_size=2, config=mpc.Config())
    listener, _ = listeners(1)
    clients = _Clients(session, listener[0], SAMPLE, max_batch=4, max_pending=8, wrap=None)
    a, c = _Client("a" * 32, "client a", None, None), _Client("c" * 32, "client c", None, None)
    for client, rows in ((a, [3]), (c, [2, 1])):
        clients.clients[client.token] = client
        for seq, n in enumerate(rows):
            client.pending[seq] = torch.zeros(n, *SAMPLE, dtype=torch.int64)
            clients.queue.append((client.token, seq, n, time.monotonic()))
    first = [(e[0][0], e[1]) for e in clients._take_batch(10.0)]
    second = [(e[0][0], e[1]) for e in clients._take_batch(10.0)]
    assert first == [("a", 0)] and second == [("c", 0), ("c", 1)], (first, second)
    listener[0].close()


def test_a_client_that_does_not_read_its_answers_stalls_only_its_own_sender():
    """The main thread only queues answers; a sender stuck on a full socket (here a link
    whose send blocks until it is closed) gets its client dropped after max_pending."""
    from types import SimpleNamespace

    from mpc_ml.serving.service import _Client, _Clients

    class StuckLink:
        def __init__(self):
            self.closed, self.sent = threading.Event(), []

        def send(self, msg):
            self.sent.append(msg)
            if not self.closed.wait(20):  # a peer that never reads
                raise AssertionError("never unblocked")
            raise CommError("closed")

        def close(self):
            self.closed.set()

    session = SimpleNamespace(rank=0, world_size=2, config=mpc.Config())
    listener, _ = listeners(1)
    clients = _Clients(session, listener[0], SAMPLE, max_batch=4, max_pending=2, wrap=None)
    link = StuckLink()
    client = _Client("0" * 32, "client x", None, link)
    clients.clients[client.token] = client
    clients._spawn(clients._send_loop, "sender", client)
    for _ in range(4):  # the first blocks the sender, two wait, the fourth is one too many
        clients.answer(client, torch.zeros(1, 10, dtype=torch.int64))
    assert link.closed.wait(10) and not client.open and client.token not in clients.clients
    assert "does not read its answers" in clients.gone[client.token]
    clients.close("the test ends")  # returns: nothing is left blocked
    assert not any(t.is_alive() for t in clients.threads)


def test_a_dropped_client_whose_sender_is_stuck_is_closed_after_a_grace(monkeypatch):
    """A client dropped by its reader (too many requests in flight, a wrong shape) while
    its sender is stuck on a full socket: nobody reads its link any more, so the party
    closes it after DROP_GRACE_S instead of buffering what it goes on sending."""
    from types import SimpleNamespace

    from mpc_ml.serving import service as service_module
    from mpc_ml.serving.service import _Client, _Clients

    monkeypatch.setattr(service_module, "DROP_GRACE_S", 0.6)

    class StuckLink:
        def __init__(self):
            self.closed = threading.Event()

        def send(self, msg):
            self.closed.wait(20)
            raise CommError("closed")

        def close(self):
            self.closed.set()

    session = SimpleNamespace(rank=0, world_size=2, config=mpc.Config())
    listener, _ = listeners(1)
    clients = _Clients(session, listener[0], SAMPLE, max_batch=4, max_pending=2, wrap=None)
    clients.start()  # the accept thread's tick closes what is past its grace
    link = StuckLink()
    client = _Client("1" * 32, "client y", None, link)
    clients.clients[client.token] = client
    clients._spawn(clients._send_loop, "sender", client)
    clients.answer(client, torch.zeros(1, 10, dtype=torch.int64))  # blocks the sender
    start = time.monotonic()
    clients.drop(client, "the client sent a share of shape (2, 10)", tell=True)
    assert link.closed.wait(service_module.DROP_GRACE_S + 3), "the link stayed open"
    assert time.monotonic() - start >= service_module.DROP_GRACE_S - 0.1
    clients.close("the test ends")
    assert not any(t.is_alive() for t in clients.threads)


def test_a_client_that_leaves_between_requests_and_strays_are_dropped():
    service = Service()
    host, port = service.addrs[0].rsplit(":", 1)
    stray = socket.create_connection((host, int(port)))
    stray.sendall(b"\x00" * 64)  # garbage where a hello belongs
    with InferenceClient(service.addrs) as c:
        torch.testing.assert_close(c.predict(data(1, 2)), expected(data(1, 2)), atol=TOL, rtol=0)
    c2 = InferenceClient(service.addrs)
    c2._close_links()  # gone without "done"
    assert_answers(run_clients(service.addrs, [(3, [1])])[3])
    stray.close()
    result = service.finish()
    assert "error" not in result and result["out"][0]["requests"] == 2


class FlakyListener:
    """A listening socket whose first accepts fail as at a process's file limit (EMFILE)."""

    def __init__(self, sock, failures: int):
        self.sock, self.failures = sock, failures

    def accept(self):
        if self.failures:
            self.failures -= 1
            raise OSError(errno.EMFILE, "Too many open files")
        return self.sock.accept()

    def __getattr__(self, name):
        return getattr(self.sock, name)


def test_an_accept_that_fails_does_not_end_the_accepting():
    def body(model, service):
        return serve_clients(model, FlakyListener(service.socks[mpc.rank()], 1),
                             sample_shape=SAMPLE, stop=service.stop, request_timeout_s=1.0)

    service = Service(body=body)
    assert_answers(run_clients(service.addrs, [(1, [1])], connect_timeout_s=10, timeout_s=10)[1])
    result = service.finish()
    assert "error" not in result, result.get("error")


def test_the_connections_a_party_holds_are_capped():
    """max_clients connected (or shaking hands) at once; one more is refused by name, and
    the service goes on (a departed client's place is free again)."""
    service = Service(max_clients=1)
    first = InferenceClient(service.addrs, timeout_s=10)
    with pytest.raises(InferenceError, match="limit of 1 client"):
        InferenceClient(service.addrs, connect_timeout_s=5)
    first.close()

    def connect_after_the_departure():
        try:
            with InferenceClient(service.addrs, connect_timeout_s=5) as c:
                return c.predict(data(1, 1))
        except InferenceError:  # a party has not seen the first client leave yet
            return None
    torch.testing.assert_close(eventually(connect_after_the_departure), expected(data(1, 1)),
                               atol=TOL, rtol=0)
    result = service.finish()
    assert "error" not in result, result.get("error")


def test_one_identity_cannot_fill_the_client_slots(certs):
    """max_clients_per_identity: one client certificate holds at most K of the max_clients
    places; another identity still gets in (before, client 0 filled both places)."""
    service = Service(wrap=lambda rank: TLSConfig(certs, rank), max_clients=2,
                      max_clients_per_identity=1)
    tls = [TLSConfig(certs, client_rank(0)), TLSConfig(certs, client_rank(1))]
    first = InferenceClient(service.addrs, timeout_s=10, wrap=tls[0])
    with pytest.raises(InferenceError, match="client 0 holds its limit of 1 connection to this "
                                             r"service at once \(max_clients_per_identity\)"):
        InferenceClient(service.addrs, connect_timeout_s=5, wrap=tls[0])
    with InferenceClient(service.addrs, timeout_s=10, wrap=tls[1]) as other:
        torch.testing.assert_close(other.predict(data(1, 1)), expected(data(1, 1)), atol=TOL, rtol=0)
    torch.testing.assert_close(first.predict(data(2, 1)), expected(data(2, 1)), atol=TOL, rtol=0)
    first.close()
    result = service.finish()
    assert "error" not in result, result.get("error")


def test_without_tls_the_identity_is_the_address_host():
    service = Service(max_clients=8, max_clients_per_identity=2)
    clients = [InferenceClient(service.addrs, timeout_s=10) for _ in range(2)]
    with pytest.raises(InferenceError, match="address 127.0.0.1 holds its limit of 2 connections"):
        InferenceClient(service.addrs, connect_timeout_s=5)
    for c in clients:
        c.close()
    result = service.finish()
    assert "error" not in result, result.get("error")


def test_an_idle_client_is_dropped_and_its_place_freed():
    """client_idle_timeout_s: a client from which nothing comes, and to which no answer
    goes, for that long is dropped by every party, told why, and its place (here the only
    one) is free again; before, a connected client kept its place for good."""
    service = Service(max_clients=1, client_idle_timeout_s=3.0)
    idle = InferenceClient(service.addrs, timeout_s=20)
    x = data(1, 1)
    torch.testing.assert_close(idle.predict(x), expected(x), atol=TOL, rtol=0)
    with service.log.cond:  # then it says nothing: each party drops it
        assert service.log.cond.wait_for(lambda: all(any(
            f"party {r}: the client sent nothing for 3 s (client_idle_timeout_s)" in m
            for m in service.log.messages) for r in range(2)), 20), service.log.messages
    with pytest.raises(InferenceError, match="sent nothing for 3 s"):
        idle.predict(x)
    idle.close()
    with InferenceClient(service.addrs, connect_timeout_s=5, timeout_s=20) as next_one:
        torch.testing.assert_close(next_one.predict(x), expected(x), atol=TOL, rtol=0)
    result = service.finish()
    assert "error" not in result, result.get("error")


def test_a_handshake_that_trickles_is_cut_at_its_deadline(certs, monkeypatch):
    """A TLS handshake fed one byte at a time never hits the socket's per-read timeout;
    the party still cuts it at HANDSHAKE_TIMEOUT_S, so tricklers cannot pile up."""
    from mpc_ml.serving import service as service_module

    monkeypatch.setattr(service_module, "HANDSHAKE_TIMEOUT_S", 0.6)
    service = Service(wrap=lambda r: TLSConfig(certs, r))
    host, port = service.addrs[0].rsplit(":", 1)
    sock = socket.create_connection((host, int(port)))
    sock.sendall(b"\x16\x03\x01\x40\x00")  # a TLS record header announcing 16 KiB
    sock.settimeout(0.25)
    cut, start = False, time.monotonic()
    while time.monotonic() - start < 6:
        try:
            sock.sendall(b"\x00")
            if sock.recv(1 << 16) == b"":
                cut = True
                break
        except socket.timeout:
            continue
        except OSError:
            cut = True
            break
    sock.close()
    assert cut, "the trickling handshake was never cut"
    assert time.monotonic() - start < 3
    result = service.finish()
    assert "error" not in result, result.get("error")


def test_a_client_token_is_good_for_one_session(monkeypatch):
    """A token matches a client's links: one seen before (a client that left, or was
    dropped) is refused, so nothing of an old session pairs with a new one's."""
    from mpc_ml.serving import inference

    service = Service()
    with InferenceClient(service.addrs) as c:
        c.predict(data(1, 1))
    monkeypatch.setattr(inference.secrets, "token_hex", lambda _: c.token)

    def refusal_after_the_departure():
        with pytest.raises(InferenceError) as refused:
            InferenceClient(service.addrs, connect_timeout_s=5).close()
        return None if "connected already" in str(refused.value) else str(refused.value)
    assert "was used already" in eventually(refusal_after_the_departure)
    monkeypatch.undo()
    assert_answers(run_clients(service.addrs, [(2, [1])])[2])
    result = service.finish()
    assert "error" not in result, result.get("error")


# -- stopping ---------------------------------------------------------------------------------
def test_stop_finishes_the_requests_in_flight_then_refuses():
    service = Service(max_wait_ms=10_000.0, max_batch=64)  # requests wait for the stop
    got: dict = {}
    thread = threading.Thread(target=lambda: got.update(
        run_clients(service.addrs, [(seed, [1 + seed]) for seed in range(3)])))
    thread.start()
    service.log.wait(1)  # every party holds at least one request
    service.log.wait(3, parties=[0])  # party 0 holds all three
    start = time.monotonic()
    result = service.finish()
    thread.join(JOIN_S)
    assert time.monotonic() - start < 8  # the stop did not wait out max_wait_ms
    assert "error" not in result, result.get("error")
    for seed in range(3):
        assert_answers(got[seed])
    assert [s["requests"] for s in result["out"]] == [3, 3]
    with pytest.raises(InferenceError, match="cannot connect"):
        InferenceClient(service.addrs, connect_timeout_s=0.5)


def test_a_stop_asked_of_another_party_stops_the_service():
    def body(model, service):
        stop = service.stop if mpc.rank() == 1 else threading.Event()  # party 0's never set
        return serve_clients(model, service.socks[mpc.rank()], sample_shape=SAMPLE, stop=stop,
                             request_timeout_s=1.0)

    service = Service(body=body)
    assert_answers(run_clients(service.addrs, [(1, [2])])[1])
    result = service.finish()
    assert "error" not in result and [s["requests"] for s in result["out"]] == [1, 1]


def test_parties_with_different_settings_refuse_to_start():
    def body(model, service):
        return serve_clients(model, service.socks[mpc.rank()], sample_shape=SAMPLE,
                             max_batch=16 if mpc.rank() == 0 else 8, stop=service.stop)

    service = Service(body=body)
    service.thread.join(JOIN_S)
    error = service.result.get("error")
    assert isinstance(error, mpc.PartyError) and error.kind == "InferenceError", error
    assert "the parties serve with different max_batch (party 0: 16, party 1: 8)" in str(error)


class MixRows(torch.nn.Module):
    def forward(self, x):
        return x - x.mean(0, keepdim=True)  # each row's output depends on the whole batch


def test_a_model_that_mixes_the_rows_of_a_batch_is_refused_batching():
    """Batching stacks clients' requests: a model whose output for one row depends on the
    others (a batch statistic) would put one client's input into another's answer."""
    def body(model, service):
        with _CONVERT_LOCK:
            mixing = mpc.nn.from_pytorch(torch.nn.Sequential(torch.nn.Linear(64, 10), MixRows()),
                                         torch.zeros(2, *SAMPLE))
        return serve_clients(mixing, service.socks[mpc.rank()], sample_shape=SAMPLE,
                             stop=service.stop)

    service = Service(body=body)
    service.thread.join(20)
    error = service.finish().get("error")
    assert isinstance(error, mpc.PartyError) and error.kind == "InferenceError", error
    assert "depends on the other rows of its batch" in str(error) and "max_batch=1" in str(error)


def test_a_dead_party_stops_the_service_with_a_named_error():
    die = threading.Event()

    def body(model, service):
        session = mpc.session.current()

        def ready(_addr):
            if session.rank == 1:  # party 1 "dies": its links to the others go down
                threading.Thread(target=lambda: (die.wait(30), session.comm.close()),
                                 daemon=True).start()

        return serve_clients(model, service.socks[session.rank], sample_shape=SAMPLE,
                             stop=service.stop, request_timeout_s=1.0, ready=ready)

    service = Service(body=body, config=mpc.Config(comm_timeout_s=2.0))
    client = InferenceClient(service.addrs, timeout_s=20)
    torch.testing.assert_close(client.predict(data(1, 1)), expected(data(1, 1)), atol=TOL, rtol=0)
    die.set()
    with pytest.raises(InferenceError, match="party 1 closed the connection"):
        client.predict(data(2, 1))
    client.close()
    service.thread.join(JOIN_S)
    error = service.result.get("error")
    assert isinstance(error, mpc.PartyError) and error.kind == "InferenceError", error
    assert "party 0: the service stops: party 1 closed the connection" in str(error)


def test_an_idle_service_keeps_its_dealer_link_alive(monkeypatch):
    from mpc_ml.serving import service as service_module

    monkeypatch.setattr(service_module, "DEALER_KEEPALIVE_S", 0.0)  # every idle heartbeat
    service = Service(config=mpc.Config(comm_timeout_s=2.0))
    with service.log.cond:
        assert service.log.cond.wait_for(lambda: sum(
            "kept the dealer link alive" in m for m in service.log.messages) >= 2, 20)
    assert_answers(run_clients(service.addrs, [(1, [1])])[1])
    result = service.finish()
    assert "error" not in result and all(s["keepalives"] >= 1 for s in result["out"])


class DyingDealerLink:
    """A party's dealer link whose dealer "dies" when `die` is set: from then on every
    receive fails as a link whose dealer hung up does (PeerError naming the dealer)."""

    def __init__(self, link, die: threading.Event):
        self.link, self.die, self.peer = link, die, link.peer

    def send(self, msg):
        self.link.send(msg)

    def recv(self, timeout):
        if self.die.is_set():
            raise PeerError("the dealer")
        return self.link.recv(timeout)

    def close(self):
        self.link.close()


def test_a_dealer_that_dies_while_the_service_idles_stops_it_naming_the_dealer():
    """Before, an idle service noticed its dealer gone only at the next batch or the
    10-minute keep-alive; now within a heartbeat or so, on every party."""
    die = threading.Event()

    def body(model, service):
        session = mpc.session.current()
        if session.rank == 0:  # the dealer's end of party 0's link goes (party 1 still waits)
            session.provider.link = DyingDealerLink(session.provider.link, die)
        return serve_clients(model, service.socks[session.rank], sample_shape=SAMPLE,
                             stop=service.stop, request_timeout_s=1.0)

    service = Service(body=body, config=mpc.Config(comm_timeout_s=2.0))
    client = InferenceClient(service.addrs, timeout_s=20)
    torch.testing.assert_close(client.predict(data(1, 1)), expected(data(1, 1)), atol=TOL, rtol=0)
    die.set()  # the service is idle now
    service.thread.join(15)
    assert not service.thread.is_alive(), "the parties did not notice the dealer's death"
    with pytest.raises(InferenceError, match="party 0: the dealer closed the connection"):
        client.predict(data(2, 1))  # told, not left hanging
    client.close()
    error = service.result.get("error")
    assert isinstance(error, mpc.PartyError) and error.kind == "InferenceError", error
    assert "the service stops: party 0: the dealer closed the connection" in str(error)


# -- TLS: client identity, logging -----------------------------------------------------------
@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    directory = tmp_path_factory.mktemp("serve-certs")
    make_certificates(directory, parties=2, dealer=True, clients=2)
    return directory


def test_tls_clients_are_named_by_their_certificate_and_only_shapes_are_logged(certs):
    service = Service(wrap=lambda rank: TLSConfig(certs, rank))
    got = run_clients(service.addrs, [(0, [3]), (1, [1])], wrap=TLSConfig(certs, client_rank(0)))
    x = data(5, 2)
    with InferenceClient(service.addrs, wrap=TLSConfig(certs, client_rank(1))) as c:
        y = c.predict(x)
    messages = list(service.log.messages)
    result = service.finish()
    assert "error" not in result, result.get("error")
    assert_answers(got[0])
    assert_answers(got[1])
    torch.testing.assert_close(y, expected(x), atol=TOL, rtol=0)
    assert "party 0: client 1 asked request 0 of shape (2, 64)" in messages
    assert "party 1: client 0 asked request 0 of shape (3, 64)" in messages
    logged = "\n".join(messages)
    assert f"{x[0, 0].item():.4f}"[:6] not in logged and "tensor(" not in logged


@pytest.mark.parametrize("rank,who", [(1, "party 1"), (-1, "the dealer")])
def test_tls_refuses_a_party_or_dealer_certificate_in_the_client_role(certs, rank, who):
    service = Service(wrap=lambda r: TLSConfig(certs, r))
    with pytest.raises(InferenceError, match=f"{who}'s certificate was presented in the client "
                                             "role"):
        InferenceClient(service.addrs, wrap=TLSConfig(certs, rank), connect_timeout_s=5)
    with pytest.raises(InferenceError, match="requires TLS"):
        InferenceClient(service.addrs, connect_timeout_s=5)  # no certificate at all
    assert_answers(run_clients(service.addrs, [(2, [1])], wrap=TLSConfig(certs, client_rank(0)))[2])
    result = service.finish()
    assert "error" not in result, result.get("error")


def test_tls_client_identity_must_be_the_same_at_every_party(certs):
    service = Service(wrap=lambda r: TLSConfig(certs, r))
    tls = [TLSConfig(certs, client_rank(0)), TLSConfig(certs, client_rank(1))]
    client = InferenceClient(service.addrs, timeout_s=10,
                             wrap=lambda sock, server_side, peer: tls[peer](sock, server_side, peer))
    with pytest.raises(InferenceError, match="presented the certificate of client 1 here and of "
                                             "client 0 to party 0"):
        client.predict(data(1, 1))
    client.close()
    assert_answers(run_clients(service.addrs, [(4, [1])], wrap=tls[0])[4])
    result = service.finish()
    assert "error" not in result and result["out"][0]["dropped"] == 1


# -- mpc-ml serve --------------------------------------------------------------------------------
def _start_serve(argv, env_extra=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MPC_")}
    env.update({"MPC_COMM_TIMEOUT_S": "10", **(env_extra or {})})
    return subprocess.Popen([sys.executable, "-m", "mpc_ml", "serve", *argv], env=env,
                            cwd=Path(__file__).resolve().parents[1], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


class Lines:
    """A stream's lines, read in a thread; wait_for(pattern, count) blocks until seen."""

    def __init__(self, stream):
        self.lines, self.cond = [], threading.Condition()
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream):
        for line in stream:
            with self.cond:
                self.lines.append(line.rstrip("\n"))
                self.cond.notify_all()
        with self.cond:
            self.lines.append(None)
            self.cond.notify_all()

    def wait_for(self, pattern: str, count: int = 1, timeout: float = 120) -> list[str]:
        def seen():
            return [line for line in self.lines if line is not None and re.search(pattern, line)]
        with self.cond:
            ok = self.cond.wait_for(lambda: len(seen()) >= count or None in self.lines, timeout)
            found = seen()
        assert ok and len(found) >= count, f"no {pattern!r} in:\n" + "\n".join(
            line for line in self.lines if line is not None)
        return found

    def text(self) -> str:
        with self.cond:
            return "\n".join(line for line in self.lines if line is not None)


def _stop_serve(proc, signum=signal.SIGINT, timeout=60) -> int:
    os.kill(proc.pid, signum)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        pytest.fail("mpc-ml serve did not stop")


def test_cli_serve_answers_clients_and_stops_on_sigint_finishing_requests_in_flight():
    # port 0: each party's real port is what the first line names
    proc = _start_serve(["--max-wait-ms", "20000", "--max-batch", "32",
                         "--max-clients-per-identity", "2", "--client-idle-timeout-s", "60",
                         "--listen", "127.0.0.1:0,127.0.0.1:0"])
    out, err = Lines(proc.stdout), Lines(proc.stderr)
    try:
        first = out.wait_for(r".")[0]
        assert re.fullmatch(r"serving clients at 127\.0\.0\.1:[1-9]\d*,127\.0\.0\.1:[1-9]\d*",
                            first), first
        addrs = first.removeprefix("serving clients at ").split(",")
        got: dict = {}
        clients = threading.Thread(target=lambda: got.update(
            run_clients(addrs, [(seed, [seed + 1]) for seed in range(2)])))
        clients.start()
        err.wait_for(r"party 0: .* asked request 0", count=2)  # both queued at party 0
        err.wait_for(r"party 1: .* asked request 0", count=2)
        with pytest.raises(InferenceError, match="address 127.0.0.1 holds its limit of 2 "
                                                 "connections"):  # the options reach the parties
            InferenceClient(addrs, connect_timeout_s=5)
        code = _stop_serve(proc)  # the batch was waiting for max-wait-ms: the stop runs it
        clients.join(JOIN_S)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert code == 0, err.text()
    for seed in range(2):
        assert_answers(got[seed])
    assert "stopped after 2 requests" in err.text()


def _deployed_service(tmp_path, *serve_args: str):
    """A deployment file for 2 parties and a dealer on loopback, `mpc-ml dealer` started
    from it and `mpc-ml serve --rank R` for each party with serve_args: (the parties'
    client addresses, the dealer process, the party processes)."""
    from mpc_ml.cli.main import _free_addresses

    mesh = _free_addresses(3)
    (tmp_path / "service.toml").write_text(
        '[job]\nprovider = "dealer"\n'
        f'[[party]]\naddress = "{mesh[0]}"\n[[party]]\naddress = "{mesh[1]}"\n'
        f'[dealer]\naddress = "{mesh[2]}"\n')
    front = _free_addresses(2)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MPC_")}
    dealer = subprocess.Popen([sys.executable, "-m", "mpc_ml", "dealer", "--listen", mesh[2], "-n",
                               "2"], env=env, stderr=subprocess.DEVNULL, start_new_session=True)
    parties = [_start_serve(["--config", str(tmp_path / "service.toml"), "--rank", str(r),
                             "--listen", front[r], *serve_args]) for r in range(2)]
    return front, dealer, parties


def test_cli_serve_party_by_party_from_a_deployment_file_and_a_party_death(tmp_path):
    front, dealer, parties = _deployed_service(tmp_path, "--max-clients", "1")
    try:
        for r, p in enumerate(parties):
            assert Lines(p.stdout).wait_for(r".")[0] == f"party {r} serving clients at {front[r]}"
        errors = Lines(parties[0].stderr)
        got = run_clients(front, [(1, [2])])
        assert_answers(got[1])
        with InferenceClient(front, timeout_s=10) as first:  # --max-clients 1: one at a time
            with pytest.raises(InferenceError, match="limit of 1 client"):
                InferenceClient(front, connect_timeout_s=5)
            torch.testing.assert_close(first.predict(data(2, 1)), expected(data(2, 1)),
                                       atol=TOL, rtol=0)
        parties[1].kill()  # a party dies: party 0 stops, naming it
        assert parties[0].wait(30) == 1
        errors.wait_for(r"party 0: the service stops: party 1 (closed the connection|cannot be "
                        r"reached)")
        assert dealer.wait(30) == 0
    finally:
        for p in [*parties, dealer]:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)


def _poll(what, condition, timeout_s: float = 30.0, every_s: float = 0.002):
    """condition() until true (polled, with a deadline); fails naming what never came."""
    deadline, retry = time.monotonic() + timeout_s, threading.Event()
    while not condition():
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout_s} s"
        retry.wait(every_s)


def _catches(pid: int, signum: int) -> bool:
    """Whether process pid has a handler for signum (Linux: SigCgt in /proc/PID/status)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    caught = int(re.search(r"^SigCgt:\s*([0-9a-f]+)", status, re.M).group(1), 16)
    return bool(caught >> (signum - 1) & 1)


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for t in Path(f"/proc/{pid}/task").iterdir()
                for c in (t / "children").read_text().split()]
    except OSError:
        return []


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads /proc (Linux)")
@pytest.mark.parametrize("when,signum", [
    ("the command catches it", signal.SIGTERM),   # before, it had no handler until every
    ("a party process exists", signal.SIGINT),    # party was started, and the parties none
])                                                # while their Python loaded
def test_cli_serve_stopped_while_it_starts_exits_0_without_a_traceback(when, signum):
    """A stop signal before `serving clients at`: a clean stop (exit 0, no traceback). The
    SIGINT goes to the whole process group, as a terminal's Ctrl-C does. (Not covered: a
    signal in the first 2 s or so, while Python loads mpc_ml and torch, before the command
    runs: it meets the interpreter's defaults.)"""
    proc = _start_serve([])
    try:
        if when == "the command catches it":
            _poll("a SIGTERM handler", lambda: _catches(proc.pid, signal.SIGTERM))
            os.kill(proc.pid, signum)
        else:
            _poll("a party process", lambda: _children(proc.pid))
            os.killpg(proc.pid, signum)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert "serving clients at" not in out, out


def test_cli_serve_parties_stop_naming_a_dealer_that_died_while_idle(tmp_path):
    """The dealer (its own process, `mpc-ml dealer`) is killed while the service idles
    with a client connected: both parties exit 1 within seconds naming the dealer, and the
    client is told (before: nothing until the next batch or the 10-minute keep-alive)."""
    front, dealer, parties = _deployed_service(tmp_path, "--max-clients-per-identity", "1")
    try:
        errors = [Lines(p.stderr) for p in parties]
        for r, p in enumerate(parties):
            assert Lines(p.stdout).wait_for(r".")[0] == f"party {r} serving clients at {front[r]}"
        with InferenceClient(front, timeout_s=20) as client:
            torch.testing.assert_close(client.predict(data(1, 1)), expected(data(1, 1)),
                                       atol=TOL, rtol=0)
            with pytest.raises(InferenceError, match="address 127.0.0.1 holds its limit of 1 "
                                                     "connection to"):
                InferenceClient(front, connect_timeout_s=5)
            dealer.kill()
            dealer.wait()
            for p in parties:
                assert p.wait(20) == 1
            with pytest.raises(InferenceError, match="the dealer (closed the connection|"
                                                     "connection failed)"):
                client.predict(data(2, 1))
        for r, e in enumerate(errors):
            e.wait_for(rf"party {r}: the service stops: party \d: the dealer (closed the "
                       r"connection|connection failed)")
    finally:
        for p in [*parties, dealer]:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
