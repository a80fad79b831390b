"""Faults: a party that raises, exits or is killed; bad arguments; broken, malformed and
mistyped frames; mismatched peers at the handshake; ports in use and peers out of
reach. Each is a clear error naming the party, fast, never a hang.

Party failures run across the backends that start parties differently (threads,
processes, mpiexec ranks); frames run over a real socket pair; handshakes run the
parties as threads of this process (tcp_session, no process start-up).
"""
import json
import multiprocessing
import os
import signal
import struct
import time

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import mpc_ml as mpc
from helpers import free_addresses, on_matrix, tcp_sessions
from mpc_ml.comm import CommError, CommTimeout, FrameError, PeerError, frames, tcp
from mpc_ml.config import PROTOCOL_VERSION, Config
from mpc_ml.launch import tcp_session

FAST = Config(comm_timeout_s=10.0, connect_timeout_s=10.0)
SHORT = Config(comm_timeout_s=5.0, connect_timeout_s=3.0)
# the killed party's peers must notice its death well before this timeout
KILLED = Config(comm_timeout_s=15.0, connect_timeout_s=15.0)


# -- party bodies (module level: the tcp and mpi backends pickle them) ---------------------
def raise_in_party_one():
    x = mpc.encrypt(torch.ones(3) if mpc.rank() == 0 else None, src=0, shape=(3,))
    if mpc.rank() == 1:
        raise KeyError("boom in party one")
    return (x * x).decrypt()  # the others block here until party 1's failure is noticed


def die_hard_in_party_one():
    x = mpc.encrypt(torch.ones(3) if mpc.rank() == 0 else None, src=0, shape=(3,))
    if mpc.rank() == 1:
        os._exit(3)  # no exception, no goodbye: the process just vanishes
    return (x * x).decrypt()


def wrong_shape_encrypt():
    t = torch.ones(2, 3) if mpc.rank() == 0 else None
    return mpc.encrypt(t, src=0, shape=(2, 3) if mpc.rank() != 1 else (3, 2)).decrypt()


def control_instead_of_share():
    session = mpc._current()
    x = mpc.encrypt(torch.ones(4) if mpc.rank() == 0 else None, src=0, shape=(4,))
    if mpc.rank() == 0:
        session.comm.send_control({"share": [1, 2, 3, 4]}, 1)  # not what party 1 waits for
    return x.decrypt()


# -- a party that fails -------------------------------------------------------------------------
@on_matrix((3, "inproc", "tfp"), (3, "inproc", "dealer"), (3, "tcp", "tfp"), (3, "tcp", "dealer"),
           (3, "mpi", "dealer"))
def test_exception_in_a_party_names_it(matrix):
    start = time.monotonic()
    with pytest.raises(mpc.PartyError, match="party 1 failed with KeyError") as info:
        matrix.run(raise_in_party_one, config=FAST)
    assert info.value.rank == 1
    assert "boom in party one" in str(info.value) and "Traceback" in info.value.traceback
    assert time.monotonic() - start < 30  # peers noticed the death, not the 10 s timeout chain


@on_matrix(n=2, backend=("tcp", "mpi"), provider="tfp")
def test_dead_process_is_reported(matrix):
    start = time.monotonic()
    with pytest.raises(mpc.PartyError, match="party 1 failed with ProcessDied"):
        matrix.run(die_hard_in_party_one, config=FAST)
    assert time.monotonic() - start < 30


@on_matrix(n=3, backend=("inproc", "tcp"), provider="tfp")
def test_wrong_shape_encrypt(matrix):
    with pytest.raises(mpc.PartyError, match=r"party 1 passed shape=\(3, 2\).*shape \(2, 3\)"):
        matrix.run(wrong_shape_encrypt, config=FAST)


@on_matrix(n=2, backend=("inproc", "tcp"), provider="tfp")
def test_wrong_frame_type_mid_protocol_fails_the_receiver(matrix):
    with pytest.raises(mpc.PartyError, match="party 1 failed with FrameError: party 1 expected "
                                             "a tensor from party 0, got a control message"):
        matrix.run(control_instead_of_share, config=FAST)


def _children() -> dict[int, str]:
    """Live or zombie child processes of this process: pid -> state + command line."""
    me, found = os.getpid(), {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = open(f"/proc/{entry}/stat").read()
            cmdline = open(f"/proc/{entry}/cmdline", "rb").read().replace(b"\0", b" ").decode()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == me and "resource_tracker" not in cmdline:
            found[int(entry)] = f"{fields[0]} {cmdline}"
    return found


def killed_mid_protocol(report_dir):
    """A long computation; party 2 SIGKILLs itself in its middle. The others record
    what they saw and when."""
    rank = mpc.rank()
    x = mpc.encrypt(torch.rand(64, 64) if rank == 0 else None, src=0, shape=(64, 64))
    try:
        for step in range(10_000):
            if rank == 2 and step == 3:
                with open(os.path.join(report_dir, "killed"), "w") as f:
                    f.write(repr(time.time()))
                os.kill(os.getpid(), signal.SIGKILL)
            x = (x * 0.5).relu() + 0.25
        return "finished"  # not reached: parties 0 and 1 wait for party 2 in step 3
    except Exception as e:
        with open(os.path.join(report_dir, f"party{rank}.json"), "w") as f:
            json.dump({"time": time.time(), "type": type(e).__name__, "message": str(e)}, f)
        raise


@on_matrix(n=3, backend="tcp")
def test_party_killed_mid_protocol(tmp_path, matrix):
    before = _children()
    died = "party 2 failed with ProcessDied: exited with code -9"
    with pytest.raises(mpc.PartyError, match=died):
        matrix.run(killed_mid_protocol, config=KILLED, args=(str(tmp_path),))
    killed_at = float((tmp_path / "killed").read_text())
    assert time.time() - killed_at < KILLED.comm_timeout_s  # mpc.run returned, all reaped
    for rank in (0, 1):
        report = json.loads((tmp_path / f"party{rank}.json").read_text())
        assert report["type"] == "PeerError" and "party 2" in report["message"], report
        assert report["time"] - killed_at < KILLED.comm_timeout_s, report
    assert multiprocessing.active_children() == []
    leftover = {pid: what for pid, what in _children().items() if pid not in before}
    assert leftover == {}, f"child processes left behind: {leftover}"


# -- bad arguments: refused before anything starts ---------------------------------------------
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


# -- frames over a real socket pair ------------------------------------------------------------
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


def test_closed_peer_is_named(socket_comms):
    zero, one = socket_comms
    zero.close()
    with pytest.raises(PeerError, match="party 0 closed the connection"):
        one.recv(0)


def test_control_message_where_a_tensor_is_expected_is_refused(socket_comms):
    zero, one = socket_comms
    zero.send_control({"rank": 0, "please": "unpickle me"}, 1)
    with pytest.raises(FrameError, match="party 1 expected a tensor from party 0, got a control "
                                         r"message \['please', 'rank'\]"):
        one.recv(0)


def test_tensor_where_a_control_message_is_expected_is_refused(socket_comms):
    zero, one = socket_comms
    zero.send(torch.arange(3), 1)
    with pytest.raises(FrameError, match="party 1 expected a control message from party 0, "
                                         "got a tensor"):
        one.recv_control(0)


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


# -- connection set-up ---------------------------------------------------------------------------
def test_port_in_use_is_a_clear_error():
    """A bare listen and a whole session on a taken port both name the address."""
    taken = tcp.listen("127.0.0.1:0")
    try:
        port = taken.getsockname()[1]
        with pytest.raises(CommError, match=f"cannot listen on 127.0.0.1:{port}"):
            tcp.listen(f"127.0.0.1:{port}")
        with pytest.raises(CommError, match=f"cannot listen on 127.0.0.1:{port}"):
            tcp_session(0, 2, [f"127.0.0.1:{port}", "127.0.0.1:1"], "tfp", SHORT)
    finally:
        taken.close()


class _FutureConfig(Config):
    """A party built from a later mpc_ml: another protocol version in its hello."""

    def agreed_fields(self) -> dict:
        return {**super().agreed_fields(), "protocol_version": PROTOCOL_VERSION + 1}


_VERSIONS = [f"protocol_version={PROTOCOL_VERSION + 1}", f"protocol_version={PROTOCOL_VERSION}"]
# what differs: (each party's config, the world size each believes in,
#                the words each party's error must contain)
HANDSHAKE_MISMATCHES = {
    "precision_bits": ([SHORT, SHORT.replace(precision_bits=20)], [2, 2],
                       {0: ["precision_bits"], 1: ["precision_bits", "refus"]}),
    "world_size": ([SHORT, SHORT], [2, 3],
                   {0: ["world_size=3", "world_size=2"], 1: ["world_size", "refus"]}),
    "protocol_version": ([SHORT, _FutureConfig(comm_timeout_s=5.0, connect_timeout_s=3.0)], [2, 2],
                         {0: _VERSIONS, 1: _VERSIONS + ["refus"]}),
}


@pytest.mark.parametrize("field", list(HANDSHAKE_MISMATCHES))
def test_mismatch_is_refused_at_handshake(field):
    configs, world_sizes, words = HANDSHAKE_MISMATCHES[field]
    results = tcp_sessions(configs, world_sizes=world_sizes)
    for rank, expected in words.items():
        error, _ = results[rank]
        assert error is not None and all(w in error for w in expected), (rank, error)


def test_unreachable_peer_times_out_with_its_name():
    addr, = free_addresses(1)  # nobody listens there now
    with pytest.raises(CommError, match="cannot reach party 0"):
        tcp.connect(addr, 1, 0, {"rank": 1}, timeout=0.5, max_frame_bytes=1 << 20)
