"""Bad input and broken peers: clear errors, fast, never a hang."""
import os
import socket
import struct
import threading
import time

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import mpc_ml as mpc
from mpc_ml.comm import CommError, CommTimeout, FrameError, PeerError, frames, tcp
from mpc_ml.launch import tcp_session

FAST = mpc.Config(comm_timeout_s=10.0, connect_timeout_s=10.0)


# -- party bodies (module level: the tcp backend pickles them) --------------------------
def raise_in_party_one():
    x = mpc.encrypt(torch.ones(3) if mpc.rank() == 0 else None, src=0, shape=(3,))
    if mpc.rank() == 1:
        raise KeyError("boom in party one")
    return (x * x).decrypt()  # party 0 blocks here until party 1's death is noticed


def die_hard_in_party_one():
    x = mpc.encrypt(torch.ones(3) if mpc.rank() == 0 else None, src=0, shape=(3,))
    if mpc.rank() == 1:
        os._exit(3)  # no exception, no goodbye: the process just vanishes
    return (x * x).decrypt()


def wrong_shape_encrypt():
    t = torch.ones(2, 3) if mpc.rank() == 0 else None
    return mpc.encrypt(t, src=0, shape=(2, 3) if mpc.rank() != 1 else (3, 2)).decrypt()


@pytest.mark.parametrize("backend", ["inproc", "tcp"])
@pytest.mark.parametrize("provider", ["tfp", "dealer"])
def test_exception_in_a_party_names_it(backend, provider):
    start = time.monotonic()
    with pytest.raises(mpc.PartyError, match="party 1 failed with KeyError") as info:
        mpc.run(raise_in_party_one, world_size=3, backend=backend, provider=provider, config=FAST)
    assert info.value.rank == 1
    assert "boom in party one" in str(info.value) and "Traceback" in info.value.traceback
    assert time.monotonic() - start < 30  # peers noticed the death, not the 10 s timeout chain


def test_dead_process_is_reported():
    start = time.monotonic()
    with pytest.raises(mpc.PartyError, match="party 1 failed with ProcessDied"):
        mpc.run(die_hard_in_party_one, world_size=2, backend="tcp", config=FAST)
    assert time.monotonic() - start < 30


@pytest.mark.parametrize("backend", ["inproc", "tcp"])
def test_wrong_shape_encrypt(backend):
    with pytest.raises(mpc.PartyError, match=r"party 1 passed shape=\(3, 2\).*shape \(2, 3\)"):
        mpc.run(wrong_shape_encrypt, world_size=3, backend=backend, config=FAST)


def test_unknown_names_fail_before_starting():
    with pytest.raises(ValueError, match="unknown backend 'carrier-pigeon'"):
        mpc.run(raise_in_party_one, backend="carrier-pigeon")
    with pytest.raises(ValueError, match="unknown provider 'oracle'"):
        mpc.run(raise_in_party_one, provider="oracle")
    with pytest.raises(ValueError, match="world_size"):
        mpc.run(raise_in_party_one, world_size=1)
    with pytest.raises(ValueError, match="unknown truncation"):
        mpc.Config(truncation="round-ish")


def test_tcp_needs_a_picklable_function():
    with pytest.raises(TypeError, match="module-level function"):
        mpc.run(lambda: 1, backend="tcp")


def test_encrypt_errors():
    def body():
        errors = []
        if mpc.rank() == 0:  # the source fails while encoding, before any traffic
            for bad in (torch.tensor([float("nan")]), torch.tensor([1e20]), torch.tensor([1j])):
                try:
                    mpc.encrypt(bad, src=0)
                except (ValueError, TypeError) as e:
                    errors.append(f"{type(e).__name__}: {e}")
        return errors

    errors = mpc.run(body, world_size=2)[0]
    assert [e.split(":")[0] for e in errors] == ["ValueError", "ValueError", "TypeError"]
    assert "NaN" in errors[0] and "fixed-point range" in errors[1]


def test_src_out_of_range():
    def body():
        mpc.encrypt(torch.ones(1), src=5)

    with pytest.raises(mpc.PartyError, match="src=5 is not a party rank"):
        mpc.run(body, world_size=2)


def test_not_initialised():
    with pytest.raises(RuntimeError, match="not initialised"):
        mpc.encrypt(torch.ones(1))


# -- frames over a real socket pair ------------------------------------------------------
@pytest.fixture
def socket_links():
    a, b = socket.socketpair()
    left = tcp.TcpLink(a, 0, 1, max_frame_bytes=1 << 20)
    right = tcp.TcpLink(b, 1, 0, max_frame_bytes=1 << 20)
    yield left, right
    left.close()
    right.close()


@pytest.mark.parametrize("tensor", [
    torch.arange(12, dtype=torch.int64).reshape(3, 4), torch.tensor(7, dtype=torch.int64),
    torch.zeros(0, 5, dtype=torch.int64), torch.tensor([True, False]),
    torch.randn(2, 3, dtype=torch.float64), torch.arange(5, dtype=torch.uint8),
    torch.arange(6, dtype=torch.int64).reshape(2, 3).t()])  # non-contiguous
def test_tensor_frames_round_trip(socket_links, tensor):
    left, right = socket_links
    left.send(tensor)
    got = right.recv(5)
    assert got.dtype == tensor.dtype and torch.equal(got, tensor)


def test_control_frames_round_trip(socket_links):
    left, right = socket_links
    left.send({"rank": 3, "nested": [1, "x"]})
    assert right.recv(5) == {"rank": 3, "nested": [1, "x"]}


def header(kind=frames.KIND_TENSOR, code=1, ndim=1, length=8, magic=frames.MAGIC, version=1):
    return frames.HEADER.pack(magic, version, kind, code, ndim, length)


@pytest.mark.parametrize("raw, message", [
    (b"GET / HTTP/1.1\r\n\r\n", "bad frame magic"),
    (header(version=9), "frame version 9"),
    (header(kind=7), "unknown frame kind 7"),
    (header(code=99), "unknown dtype code 99"),
    (header(ndim=40), "40 dims"),
    (header(length=1 << 30), "exceeds the cap"),
    (header(length=16) + struct.pack("<q", 3) + b"\0" * 16, "does not match payload"),
    (header(length=8) + struct.pack("<q", -1), "negative dimension"),
    (header(kind=frames.KIND_CONTROL, code=0, ndim=0, length=5) + b"[1,2]", "not a JSON object"),
    (header(kind=frames.KIND_CONTROL, code=0, ndim=0, length=3) + b"{x]", "malformed control"),
])
def test_malformed_frames_are_refused(socket_links, raw, message):
    left, right = socket_links
    left.send_raw(raw)
    with pytest.raises(FrameError, match=message):
        right.recv(5)
    with pytest.raises(FrameError):  # and the link stays failed
        right.recv(5)


def test_oversized_frame_is_refused_before_allocation(socket_links):
    left, right = socket_links
    left.send_raw(header(ndim=1, length=1 << 62))
    with pytest.raises(FrameError, match="exceeds the cap"):
        right.recv(5)


def test_peer_closing_mid_frame(socket_links):
    left, right = socket_links
    left.send_raw(header(length=64) + struct.pack("<q", 8) + b"\0" * 10)
    left.close()
    with pytest.raises(PeerError, match="party 0 closed the connection mid-frame"):
        right.recv(5)


def test_receive_timeout_names_the_silent_peer(socket_links):
    _, right = socket_links
    with pytest.raises(CommTimeout, match="party 1: no message from party 0 within 0.2 s"):
        right.recv(0.2)


def test_closed_peer_is_named(socket_links):
    left, right = socket_links
    left.close()
    with pytest.raises(PeerError, match="party 0 closed the connection"):
        right.recv(5)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_frame_decoder_fuzz(data):
    """Arbitrary bytes decode to a message or raise FrameError, nothing else."""
    try:
        frames.decode_frame(data, max_bytes=1 << 16)
    except FrameError:
        pass


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=64))
def test_frame_decoder_fuzz_after_valid_header(tail):
    try:
        frames.decode_frame(header(length=len(tail)) + tail, max_bytes=1 << 16)
    except FrameError:
        pass


# -- connection set-up ---------------------------------------------------------------------
def test_port_in_use_is_a_clear_error():
    taken = tcp.listen("127.0.0.1:0")
    try:
        port = taken.getsockname()[1]
        with pytest.raises(CommError, match=f"cannot listen on 127.0.0.1:{port}"):
            tcp.listen(f"127.0.0.1:{port}")
    finally:
        taken.close()


def test_mismatched_config_is_refused_at_handshake():
    listeners = [tcp.listen("127.0.0.1:0") for _ in range(2)]
    addrs = [f"127.0.0.1:{s.getsockname()[1]}" for s in listeners]
    configs = [FAST, FAST.replace(precision_bits=20)]
    errors = {}

    def party(rank):
        try:
            tcp_session(rank, 2, addrs, "tfp", configs[rank], listener=listeners[rank]).close()
        except CommError as e:
            errors[rank] = str(e)

    threads = [threading.Thread(target=party, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert "precision_bits" in errors[0] and "precision_bits" in errors[1]
    assert "refus" in errors[1]


def test_unreachable_peer_times_out_with_its_name():
    free = tcp.listen("127.0.0.1:0")
    addr = f"127.0.0.1:{free.getsockname()[1]}"
    free.close()  # nobody listens there now
    with pytest.raises(CommError, match="cannot reach party 0"):
        tcp.connect(addr, 1, 0, {"rank": 1}, timeout=0.5, max_frame_bytes=1 << 20)
