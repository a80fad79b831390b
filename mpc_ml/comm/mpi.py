"""MPI backend: one Link per pair of ranks over mpi4py's point-to-point messages.

Nothing is pickled: mpi4py's lowercase (pickling) calls are never used. A message is an
int64 header array, then (for tensors and control messages) its raw payload bytes:

    header = [MAGIC, FRAME_VERSION, kind, dtype code, ndim, payload bytes, dims...]

kind 1 is a tensor (payload: the raw bytes of a C-contiguous tensor of that dtype and
shape, dtype codes as in frames.py), kind 2 a control message (payload: UTF-8 JSON
object), kind 3 a goodbye (no payload) that a closing link sends, so the peer's pending
and later receives fail with PeerError. Headers and payloads travel under different
tags, and party-party links use other tags than links to the dealer. Every field is
checked before the payload buffer is allocated; a bad header is a FrameError. Payloads
above 1 GiB go as several messages (MPI counts are C ints).

Sends are non-blocking (MPI_Isend on a private copy of the data, so two parties that
send large tensors to each other at once never deadlock, and the caller may change its
tensor right after send). Receives poll (MPI_Test) against a deadline: a silent peer is
a CommTimeout naming it. MPI itself cannot tell that a peer died; under
`mpc.run(backend="mpi")` the launcher watches the processes and names the dead one.

Closing a link is two steps: close() sends the goodbye and returns at once; drain(),
called once before the process exits (mpi_launch does it, and registers it at exit),
waits until every closed link has delivered its messages and received the peer's
goodbye, receiving and dropping whatever the peer still sent. MPI_Finalize then never
waits on an unmatched message.
"""
from __future__ import annotations

import time

import numpy as np
import torch

try:
    from mpi4py import MPI
except ImportError as _e:  # pragma: no cover - depends on the installation
    raise ImportError("the mpi backend needs mpi4py and an MPI library: "
                      "pip install mpi4py mpich") from _e

from . import frames
from .base import Link, Message
from .errors import CommError, CommTimeout, FrameError, PeerError, peer_name

MAGIC = int.from_bytes(b"MPCM", "little")
KIND_TENSOR, KIND_CONTROL, KIND_CLOSE = frames.KIND_TENSOR, frames.KIND_CONTROL, 3
HEADER_FIXED = 6
HEADER_WORDS = HEADER_FIXED + frames.MAX_NDIM
CHUNK_BYTES = 1 << 30

# (header tag, payload tag) of each kind of link
PARTY_TAGS = (0x4D50, 0x4D51)
DEALER_TAGS = (0x4D44, 0x4D45)

# Busy-poll this long before sleeping between tests of a pending receive; the sleeps
# then grow to MAX_SLEEP_S (a few processes on a shared machine must not spin).
SPIN_S = 2e-4
MAX_SLEEP_S = 1e-3

_closing: list["MPILink"] = []


def _wait(test, deadline: float) -> bool:
    """Poll test() until it is true (True) or the deadline passes (False)."""
    start = time.monotonic()
    sleep = 2e-5
    while True:
        if test():
            return True
        now = time.monotonic()
        if now >= deadline:
            return False
        if now - start > SPIN_S:
            time.sleep(min(sleep, deadline - now))
            sleep = min(sleep * 2, MAX_SLEEP_S)


def _bytes_view(t: torch.Tensor) -> np.ndarray:
    """A uint8 numpy view of a contiguous CPU tensor's memory."""
    if t.dtype == torch.bool:
        t = t.view(torch.uint8)
    return t.numpy().reshape(-1).view(np.uint8) if t.numel() else np.empty(0, np.uint8)


def _describe(e: "MPI.Exception", what: str) -> str:
    """An MPI error while receiving a header or payload, in one line."""
    if e.Get_error_class() == MPI.ERR_TRUNCATE:
        return (f"a header message longer than {8 * HEADER_WORDS} bytes" if what == "header"
                else "a payload message longer than its header announced")
    return f"MPI error receiving a {what}: {e.Get_error_string().splitlines()[0]}"


def _chunks(buf: np.ndarray):
    for start in range(0, len(buf), CHUNK_BYTES):
        yield buf[start:start + CHUNK_BYTES]


class MPILink(Link):
    """A typed message pipe to one rank of an MPI communicator.

    me and peer are mpc_ml ranks (for names in errors; the dealer is -1); mpi_peer is
    the peer's rank in comm.
    """

    def __init__(self, comm: "MPI.Comm", me: int, peer: int, mpi_peer: int,
                 tags: tuple[int, int] = PARTY_TAGS, max_frame_bytes: int = frames.DEFAULT_MAX_FRAME_BYTES,
                 close_timeout: float = 30.0):
        self.comm, self.me, self.peer, self.mpi_peer = comm, me, peer, mpi_peer
        self.header_tag, self.payload_tag = tags
        self.max_frame_bytes, self.close_timeout = max_frame_bytes, close_timeout
        self._sends: list[tuple[MPI.Request, object]] = []  # requests and the buffers they read
        self._header = np.zeros(HEADER_WORDS, dtype="<i8")
        self._header_req = None
        self._failure: Exception | None = None  # what every later receive raises
        self._closed = False
        self._peer_closed = False

    # -- sending -----------------------------------------------------------------
    def _isend(self, buf: np.ndarray, tag: int) -> None:
        req = self.comm.Isend([buf, MPI.BYTE], dest=self.mpi_peer, tag=tag)
        self._sends.append((req, buf))

    def _reap(self) -> bool:
        """Forget completed sends; True when none is pending."""
        if self._sends:
            try:
                if MPI.Request.Testall([r for r, _ in self._sends]):
                    self._sends.clear()
                else:  # keep only the pending ones (and the buffers they still read)
                    self._sends = [(r, b) for r, b in self._sends if not r.Test()]
            except MPI.Exception as e:
                raise PeerError(peer_name(self.peer), f"cannot be reached: "
                                f"{e.Get_error_string().splitlines()[0]}") from None
        return not self._sends

    def _send_header(self, kind: int, code: int, shape: tuple[int, ...], nbytes: int) -> None:
        header = np.array([MAGIC, frames.FRAME_VERSION, kind, code, len(shape), nbytes, *shape],
                          dtype="<i8")
        self._isend(header.view(np.uint8), self.header_tag)

    def send(self, msg: Message) -> None:
        if self._closed:
            raise PeerError(peer_name(self.me), "already closed its link")
        if self._peer_closed:
            raise PeerError(peer_name(self.peer))
        self._reap()
        try:
            if isinstance(msg, torch.Tensor):
                if msg.dtype not in frames.DTYPE_CODES:
                    raise TypeError(f"cannot send tensors of dtype {msg.dtype}")
                if msg.dim() > frames.MAX_NDIM:
                    raise ValueError(f"cannot send a tensor with {msg.dim()} dims "
                                     f"(max {frames.MAX_NDIM})")
                t = msg.detach()
                # A private copy: MPI reads it after send returns, the caller may change msg.
                t = (frames.staged_on_host(t) if t.device.type != "cpu" else t.clone()).contiguous()
                data = _bytes_view(t)
                self._send_header(KIND_TENSOR, frames.DTYPE_CODES[msg.dtype], tuple(t.shape),
                                  data.nbytes)
                for chunk in _chunks(data):
                    self._isend(chunk, self.payload_tag)
            else:
                payload = np.frombuffer(frames.encode_control(msg), dtype=np.uint8)
                self._send_header(KIND_CONTROL, 0, (), payload.nbytes)
                for chunk in _chunks(payload):
                    self._isend(chunk, self.payload_tag)
        except MPI.Exception as e:
            raise PeerError(peer_name(self.peer), f"cannot be reached: {e}") from None

    # -- receiving -----------------------------------------------------------------
    def _fail(self, exc: Exception) -> Exception:
        self._failure = exc
        return exc

    def _recv_header(self, deadline: float):
        """The next header's words, or None at the deadline (the receive stays posted)."""
        if self._header_req is None:
            self._header_req = self.comm.Irecv([self._header.view(np.uint8), MPI.BYTE],
                                               source=self.mpi_peer, tag=self.header_tag)
        status = MPI.Status()
        try:
            if not _wait(lambda: self._header_req.Test(status), deadline):
                return None
        except MPI.Exception as e:
            self._header_req = None
            error = FrameError(f"{peer_name(self.me)}: bad frame from "
                               f"{peer_name(self.peer)}: {_describe(e, 'header')}")
            raise self._fail(error) from None
        self._header_req = None
        count = status.Get_count(MPI.BYTE)
        if count % 8 or count < 8 * HEADER_FIXED:
            raise self._fail(FrameError(f"{peer_name(self.me)}: truncated frame header "
                                        f"({count} bytes) from {peer_name(self.peer)}"))
        return self._header[:count // 8].copy()

    def _check_header(self, words: np.ndarray) -> tuple[int, int, tuple[int, ...], int]:
        """(kind, dtype code, shape, payload bytes) of a header, checked."""
        magic, version, kind, code, ndim, length = (int(w) for w in words[:HEADER_FIXED])
        if magic != MAGIC:
            raise FrameError(f"bad frame magic {magic:#x} (not an mpc_ml peer?)")
        if version != frames.FRAME_VERSION:
            raise FrameError(f"frame version {version}, expected {frames.FRAME_VERSION}")
        if not 0 <= ndim <= frames.MAX_NDIM or len(words) != HEADER_FIXED + ndim:
            raise FrameError(f"frame header with {len(words)} words announces {ndim} dims "
                             f"(max {frames.MAX_NDIM})")
        if length < 0:
            raise FrameError(f"negative payload length {length}")
        if length > self.max_frame_bytes:
            raise FrameError(f"frame of {length} bytes exceeds the cap of "
                             f"{self.max_frame_bytes} bytes")
        if kind == KIND_TENSOR:
            if code not in frames.DTYPES:
                raise FrameError(f"unknown dtype code {code}")
            shape = frames.parse_shape(words[HEADER_FIXED:].astype("<i8").tobytes(), ndim,
                                       code, length)
            return kind, code, shape, length
        if kind in (KIND_CONTROL, KIND_CLOSE):
            if code or ndim or (kind == KIND_CLOSE and length):
                raise FrameError(f"frame of kind {kind} with dtype, dims or payload")
            return kind, 0, (), length
        raise FrameError(f"unknown frame kind {kind}")

    def _recv_payload(self, buf: np.ndarray, deadline: float) -> bool:
        reqs = [self.comm.Irecv([chunk, MPI.BYTE], source=self.mpi_peer, tag=self.payload_tag)
                for chunk in _chunks(buf)]
        try:
            for i, req in enumerate(reqs):  # chunks arrive in order
                if not _wait(req.Test, deadline):
                    for r in reqs[i:]:
                        r.Cancel()
                    MPI.Request.Waitall(reqs[i:])
                    return False
        except MPI.Exception as e:
            raise FrameError(_describe(e, "payload")) from None
        return True

    def _read(self, deadline: float):
        """The next message, the string 'close' for a goodbye, None at the deadline."""
        words = self._recv_header(deadline)
        if words is None:
            return None
        try:
            kind, code, shape, length = self._check_header(words)
            if kind == KIND_CLOSE:
                return "close"
            if kind == KIND_CONTROL:
                payload = np.empty(length, dtype=np.uint8)
                target = payload
            else:
                tensor, _ = frames.empty_tensor(code, shape, self.pinned_for)
                target = _bytes_view(tensor)
            # The payload follows its header at once: a peer that stalls here is broken.
            if not self._recv_payload(target, time.monotonic() + max(self.close_timeout, 1.0)):
                raise self._fail(CommTimeout(f"{peer_name(self.me)}: {peer_name(self.peer)} "
                                             "sent a header but not its payload"))
            if kind == KIND_CONTROL:
                return frames.parse_control(payload.tobytes())
            return tensor
        except FrameError as e:
            raise self._fail(FrameError(f"{peer_name(self.me)}: bad frame from "
                                        f"{peer_name(self.peer)}: {e}")) from None

    def recv(self, timeout: float) -> Message:
        if self._failure is not None:
            raise self._failure
        if self._closed:
            raise PeerError(peer_name(self.me), "already closed its link")
        item = self._read(time.monotonic() + timeout)
        if item is None:
            raise CommTimeout(f"{peer_name(self.me)}: no message from {peer_name(self.peer)} "
                              f"within {timeout:g} s")
        if isinstance(item, str):
            self._peer_closed = True
            raise self._fail(PeerError(peer_name(self.peer)))
        return item

    # -- closing ---------------------------------------------------------------------
    def close(self) -> None:
        """Say goodbye (the peer's receives fail with PeerError) and return; drain() finishes."""
        if self._closed:
            return
        self._closed = True
        try:
            self._send_header(KIND_CLOSE, 0, (), 0)
        except MPI.Exception:
            pass
        _closing.append(self)
        self._finish_step()

    def _finish_step(self) -> bool:
        """One non-blocking step of closing; True once nothing is left to do."""
        try:
            while not self._peer_closed and self._failure is None:
                # Drop what the peer still sends until its goodbye arrives.
                if self._header_req is None:
                    if not self.comm.Iprobe(source=self.mpi_peer, tag=self.header_tag):
                        break
                item = self._read(time.monotonic())
                if item is None:
                    break
                if isinstance(item, str):
                    self._peer_closed = True
            return self._reap() and (self._peer_closed or self._failure is not None)
        except (CommError, MPI.Exception):
            return True

    def _abandon(self) -> None:
        """Give up on the goodbye: cancel the posted receive."""
        if self._header_req is not None:
            try:
                self._header_req.Cancel()
                self._header_req.Wait()
            except MPI.Exception:
                pass
            self._header_req = None


def drain(timeout: float | None = None) -> bool:
    """Finish closing every closed link (see the module doc); True if all finished.

    Waits at most `timeout` s (default: the largest close_timeout of those links); a
    peer that never says goodbye is then left alone.
    """
    if not _closing:
        return True
    if timeout is None:
        timeout = max(link.close_timeout for link in _closing)
    deadline = time.monotonic() + timeout

    def step() -> bool:
        _closing[:] = [link for link in _closing if not link._finish_step()]
        return not _closing

    done = _wait(step, deadline)
    for link in _closing:
        link._abandon()
    _closing.clear()
    return done

