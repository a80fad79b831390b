"""Hostile input: a scripted peer that speaks the wire format and sends bad things to a real
listening party. For each: a named error or a dropped connection within the timeout, no
hang, the victim's memory bounded by what was really sent, honest parties' data intact.
Also the safe defaults: no seed on any link, tfp says it is insecure, plain tcp off
loopback refused, every agreed setting in the handshake."""
from __future__ import annotations

import json
import socket
import struct
import subprocess
import sys
import threading
import time

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import mpc_ml as mpc
from helpers import free_addresses
from mpc_ml.comm import CommError, CommTimeout, FrameError, frames, tcp
from mpc_ml.comm.inproc import InprocLink
from mpc_ml.launch import tcp_session
from mpc_ml.session import current

FAST = mpc.Config(connect_timeout_s=6, comm_timeout_s=3)


def header(kind=frames.KIND_TENSOR, code=1, ndim=1, length=8, magic=frames.MAGIC,
           version=frames.FRAME_VERSION) -> bytes:
    return frames.HEADER.pack(magic, version, kind, code, ndim, length)




@pytest.fixture
def link_pair():
    """Two TcpLinks over a real socket pair: `raw` writes bytes as a hostile peer would."""
    a, b = socket.socketpair()
    raw, victim = tcp.TcpLink(a, 1, 0, 1 << 20), tcp.TcpLink(b, 0, 1, 1 << 20)
    yield raw, victim
    raw.close()
    victim.close()


# -- frames on an established link -----------------------------------------------------------
VALID_FRAMES = [
    frames.control_frame({"rank": 1, "world_size": 2, "x25519": "00" * 32}),
    frames.tensor_header(torch.arange(6).reshape(2, 3)) + bytes(frames.tensor_payload(
        torch.arange(6).reshape(2, 3))),
    frames.tensor_header(torch.zeros(0, dtype=torch.uint8)),
]


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(VALID_FRAMES), st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)),
                                               max_size=6), st.integers(0, 60))
def test_mutated_frames_give_a_message_or_a_named_error(frame, flips, cut):
    """Random byte flips and truncations of valid frames: the victim's receive returns a
    message or raises a CommError naming the peer, within the timeout, never anything else."""
    data = bytearray(frame)
    for pos, value in flips:
        if pos < len(data):
            data[pos] = value
    data = bytes(data[:len(data) - cut] if cut < len(data) else data)
    a, b = socket.socketpair()
    victim = tcp.TcpLink(b, 0, 1, 1 << 20)
    try:
        a.sendall(data)
        start = time.monotonic()
        try:
            msg = victim.recv(0.1)
            assert isinstance(msg, (dict, torch.Tensor))
        except CommTimeout:
            pass  # a truncated frame: the peer still owes bytes; the receive gives up in time
        except CommError as e:
            assert "party 1" in str(e), e
        assert time.monotonic() - start < 2.0
    finally:
        a.close()
        victim.close()


@pytest.mark.parametrize("raw, message", [
    (header(kind=frames.KIND_CONTROL, code=0, ndim=0, length=2 << 30), "exceeds the cap"),
    (header(kind=frames.KIND_CONTROL, code=0, ndim=0, length=1 << 17), "control frame of 131072"),
    (header(ndim=3, length=0) + struct.pack("<3q", 1 << 40, 1 << 40, 0), "cannot be allocated"),
    (header(ndim=2, length=0) + struct.pack("<2q", 1 << 60, 0), r"larger than 2\^48"),
])
def test_hostile_headers_are_named_errors_at_once(link_pair, raw, message):
    sender, victim = link_pair
    sender.send_raw(raw)
    start = time.monotonic()
    with pytest.raises(FrameError, match=message) as e:
        victim.recv(5.0)
    assert time.monotonic() - start < 1.0 and "party 1" in str(e.value)


VICTIM = r"""
import json, resource, socket, sys
from mpc_ml.comm import CommError, tcp
listener = tcp.listen("127.0.0.1:0")
print(listener.getsockname()[1], flush=True)
sock, _ = listener.accept()
link = tcp.TcpLink(sock, 0, 1, 1 << 30)
def peak_kib():  # the largest address space so far: counts memory allocated, touched or not
    for line in open("/proc/self/status"):
        if line.startswith("VmPeak:"):
            return int(line.split()[1])
before, rss = peak_kib(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    link.recv(float(sys.argv[1]))
    outcome = "message"
except CommError as e:
    outcome = f"{type(e).__name__}: {e}"
print(json.dumps({"outcome": outcome, "grew_kib": peak_kib() - before,
                  "rss_grew_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss}),
      flush=True)
"""


def test_a_peer_that_announces_900_mb_and_stalls_costs_what_it_sent():
    """Memory follows bytes received: 900 MB announced, 2 MB sent, then silence."""
    proc = subprocess.Popen([sys.executable, "-c", VICTIM, "3"], stdout=subprocess.PIPE, text=True)
    try:
        port = int(proc.stdout.readline())
        with socket.create_connection(("127.0.0.1", port)) as s:
            length = 900 << 20
            s.sendall(header(ndim=1, length=length) + struct.pack("<q", length // 8))
            s.sendall(b"\0" * (2 << 20))
            report = json.loads(proc.stdout.readline())
    finally:
        proc.kill()
        proc.wait()
    assert report["outcome"].startswith("CommTimeout: party 0: no message from party 1")
    assert report["grew_kib"] < 64 << 10, report  # address space: under 64 MiB, not 900
    assert report["rss_grew_kib"] < 64 << 10, report


# -- set-up: strays are dropped, the job goes on --------------------------------------------------
def _stray(addr: str, payload: bytes | None, hold: float = 0.0) -> None:
    host, port = tcp.parse_address(addr)
    deadline = time.monotonic() + 5
    while True:
        try:
            s = socket.create_connection((host, port))
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            threading.Event().wait(0.01)
    if payload:
        s.sendall(payload)
    threading.Event().wait(hold)  # a silent peer just holds its connection open
    s.close()


def test_stray_connections_during_set_up_are_dropped_and_the_job_finishes(capfd):
    addrs = free_addresses(2)
    listener = tcp.listen(addrs[0])
    results: dict[int, object] = {}

    def party(rank: int) -> None:
        try:
            session = tcp_session(rank, 2, addrs, "tfp", FAST, listener=listener if rank == 0 else None)
            from mpc_ml.session import activate
            activate(session)
            x = mpc.encrypt(torch.tensor([1.5, -2.0]), src=0)
            y = mpc.encrypt(torch.tensor([2.0, 3.0]), src=1)
            results[rank] = (x * y).decrypt()
            activate(None)
            session.close()
        except BaseException as e:
            results[rank] = e

    strays = [b"GET / HTTP/1.1\r\n\r\n",                                       # garbage
              header(kind=frames.KIND_CONTROL, code=0, ndim=0, length=2 << 30),  # 2 GiB claim
              frames.control_frame({"rank": 7, "world_size": 2}),               # unknown rank
              b"\x16\x03\x01\x00\xa5"]                                            # a TLS hello
    victim = threading.Thread(target=party, args=(0,))
    victim.start()
    threads = [threading.Thread(target=_stray, args=(addrs[0], p)) for p in strays]
    threads.append(threading.Thread(target=_stray, args=(addrs[0], None, 1.0)))  # silent
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    honest = threading.Thread(target=party, args=(1,))
    honest.start()
    victim.join(30)
    honest.join(30)
    assert not victim.is_alive() and not honest.is_alive()
    for r in (0, 1):
        assert torch.allclose(results[r], torch.tensor([3.0, -6.0])), results[r]
    err = capfd.readouterr().err
    assert err.count("dropped a connection") >= 4, err


def test_a_peer_with_another_provider_is_refused_naming_it():
    addrs = free_addresses(2)
    out: dict[int, str] = {}

    def party(rank: int) -> None:
        try:
            tcp_session(rank, 2, addrs, "tfp" if rank == 0 else "dealer", FAST,
                        dealer_addr="127.0.0.1:1")
        except (CommError, ValueError) as e:
            out[rank] = str(e)

    threads = [threading.Thread(target=party, args=(r,)) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert "provider='dealer'" in out[0] and "provider='tfp'" in out[0], out


# -- safe defaults ------------------------------------------------------------------------------
def test_plain_tcp_off_loopback_is_refused_before_any_connection():
    with pytest.raises(ValueError, match="not on loopback and TLS is off") as e:
        tcp_session(0, 2, ["10.9.8.7:5000", "10.9.8.6:5000"], "tfp", FAST)
    for way_out in ("--tls", "allow_insecure=True", "MPC_ALLOW_INSECURE=1", "--allow-insecure"):
        assert way_out in str(e.value)


def test_the_default_provider_is_the_dealer_and_tfp_says_it_is_insecure(capfd):
    def party():
        return type(current().provider).__name__

    assert mpc.run(party, 2) == ["DealerProvider"] * 2
    assert "insecure" not in capfd.readouterr().err
    assert mpc.run(party, 3, provider="tfp") == ["TrustedFirstParty"] * 3
    err = capfd.readouterr().err  # (party threads may interleave their lines)
    assert all(err.count(f"party {r}: provider 'tfp' is insecure") == 1 for r in range(3)), err


def test_no_seed_and_no_input_share_crosses_any_link(monkeypatch):
    """Every byte on every link (parties and dealer) of a run: no pair, common or dealer
    seed appears in it, nor the input's plaintext or any party's share of it."""
    sent: list[bytes] = []
    real_send = InprocLink.send

    def recording(self, msg):
        sent.append(msg.numpy().tobytes() if isinstance(msg, torch.Tensor)
                    else json.dumps(msg).encode())
        return real_send(self, msg)

    monkeypatch.setattr(InprocLink, "send", recording)
    secret = torch.tensor([3.25, -1.5, 1000.0, 0.0078125], dtype=torch.float64)

    def party():
        session = current()
        x = mpc.encrypt(secret if mpc.rank() == 0 else None, src=0, shape=secret.shape)
        y = (x * x).decrypt(dst=1)
        seeds = [p.seed for p in session.pairwise.values()] + [session.common.seed,
                                                               session.provider._stream.seed]
        return seeds, x.share.numpy().tobytes(), y

    outs = mpc.run(party, 3, provider="dealer")
    traffic = b"|".join(sent)
    assert len(sent) > 20
    for seeds, share, _ in outs:
        for seed in seeds:
            assert seed not in traffic and seed.hex().encode() not in traffic
        assert share not in traffic
    encoded = (secret * 2 ** 16).round().to(torch.int64).numpy().tobytes()
    assert encoded not in traffic and secret.numpy().tobytes() not in traffic
    assert torch.allclose(outs[1][2], secret * secret, rtol=1e-4)


def test_a_public_integer_beyond_2_31_is_refused_not_wrapped():
    def party():
        x = mpc.encrypt(torch.tensor([1.0, 2.0]), src=0)
        with pytest.raises(ValueError, match="too large"):
            x * torch.tensor([2 ** 40, 1])
        return (x * torch.tensor([2 ** 30, 3])).decrypt()

    assert torch.equal(mpc.run(party, 2)[0], torch.tensor([2.0 ** 30, 6.0]))


@pytest.mark.parametrize("damage", ["deep_json", "overflowing_shape", "truncated", "wrong_digest"])
def test_every_party_refuses_a_crafted_checkpoint_together(tmp_path, damage):
    from mpc_ml.nn.checkpoint import MAGIC, CheckpointError, party_path

    path = str(tmp_path / "ckpt-{rank}.mpc")

    def save():
        model = mpc.nn.Linear(3, 2)
        model.encrypt(src=0)
        model.save_shares(path)

    mpc.run(save, 2)
    target = party_path(path, 1)
    data = open(target, "rb").read()
    length = int.from_bytes(data[len(MAGIC):len(MAGIC) + 8], "little")
    head = json.loads(data[len(MAGIC) + 8:len(MAGIC) + 8 + length])
    body = data[len(MAGIC) + 8 + length:]
    if damage == "deep_json":
        raw = ("[" * 100000 + "]" * 100000).encode()
    elif damage == "overflowing_shape":
        head["entries"][0]["shape"] = [1 << 62, 1 << 62]
        raw = json.dumps(head).encode()
    elif damage == "wrong_digest":
        head["content_sha256"] = "00" * 32
        raw = json.dumps(head).encode()
    else:
        raw, body = json.dumps(head).encode(), body[:len(body) // 2]
    with open(target, "wb") as f:
        f.write(MAGIC + len(raw).to_bytes(8, "little") + raw + body)

    def load():
        model = mpc.nn.Linear(3, 2)
        try:
            model.load_shares(path)
        except CheckpointError as e:
            return str(e)
        return "loaded"

    out = mpc.run(load, 2)
    assert all("party 1 refused" in o for o in out), out


# -- inference clients have an identity ---------------------------------------------------------
def _serve_tls(certs, socks, result):
    from mpc_ml.comm.tls import TLSConfig
    from mpc_ml.serving import serve_client

    def body():
        model = mpc.nn.Linear(4, 2)
        return serve_client(model, socks[mpc.rank()], model_owner=0, sample_shape=(4,),
                            wrap=TLSConfig(certs, mpc.rank()))

    try:
        result["out"] = mpc.run(body, 2, config=FAST)
    except BaseException as e:
        result["error"] = e


@pytest.mark.parametrize("presented", ["client", "party", "dealer"])
def test_a_tls_server_accepts_only_client_certificates(tmp_path, presented):
    from mpc_ml.comm import DEALER_RANK, client_rank
    from mpc_ml.comm.tls import TLSConfig, make_certificates
    from mpc_ml.serving import InferenceClient, InferenceError

    certs = tmp_path / "certs"
    make_certificates(certs, 2, dealer=True, clients=2)
    assert (certs / "client-1.pem").is_file() and (certs / "client-1.key").stat().st_mode & 0o077 == 0
    socks = [tcp.listen("127.0.0.1:0") for _ in range(2)]
    addrs = [f"127.0.0.1:{s.getsockname()[1]}" for s in socks]
    result: dict = {}
    server = threading.Thread(target=_serve_tls, args=(certs, socks, result), daemon=True)
    server.start()
    rank = {"client": client_rank(1), "party": 1, "dealer": DEALER_RANK}[presented]
    try:
        with InferenceClient(addrs, connect_timeout_s=10, timeout_s=10,
                             wrap=TLSConfig(certs, rank)) as client:
            y = client.predict(torch.ones(3, 4))
        outcome = y.shape
    except InferenceError as e:
        outcome = str(e)
    server.join(60)
    assert not server.is_alive()
    if presented == "client":
        assert outcome == (3, 2) and result["out"] == [1, 1], (outcome, result)
    else:
        assert "presented in the client role" in str(result.get("error")), result


def test_a_client_certificate_on_a_party_port_is_a_stray(tmp_path, capfd):
    """A client holds a certificate from the parties' own CA: on a party's mesh port during
    set-up, claiming a party's rank, it is dropped (not a misconfigured party that would
    abort the job)."""
    from mpc_ml.comm import client_rank
    from mpc_ml.comm.tls import TLSConfig, make_certificates
    from mpc_ml.session import activate

    certs = tmp_path / "certs"
    make_certificates(certs, 2, clients=1)
    addrs = free_addresses(2)
    listener = tcp.listen(addrs[0])
    results: dict[int, object] = {}

    def party(rank: int) -> None:
        try:
            session = tcp_session(rank, 2, addrs, "tfp", FAST, tls=TLSConfig(certs, rank),
                                  listener=listener if rank == 0 else None)
            activate(session)
            results[rank] = (mpc.encrypt(torch.tensor([1.5, -2.0]), src=0) * 2).decrypt()
            activate(None)
            session.close()
        except BaseException as e:
            results[rank] = e

    def impostor() -> None:
        try:
            tcp.connect(addrs[0], client_rank(0), 0, {"rank": 1, "world_size": 2}, 5,
                        FAST.max_frame_bytes, TLSConfig(certs, client_rank(0)))
        except Exception:  # refused or dropped: either way it is not in the job
            pass

    victim = threading.Thread(target=party, args=(0,))
    victim.start()
    stray = threading.Thread(target=impostor)
    stray.start()
    stray.join(30)
    honest = threading.Thread(target=party, args=(1,))
    honest.start()
    victim.join(30)
    honest.join(30)
    for r in (0, 1):
        assert torch.allclose(results[r], torch.tensor([3.0, -4.0])), results[r]
    assert "client 0's certificate" in capfd.readouterr().err
