"""Typed, length-prefixed frames: what crosses a socket. Nothing is unpickled.

Header (little endian, 16 bytes), then ndim int64 dims, then the payload:

    magic b"MPCF" | version u8 | kind u8 | dtype u8 | ndim u8 | payload_len u64

kind 1 is a tensor (payload = raw bytes of a C-contiguous tensor of that dtype and
shape); kind 2 is a control message (ndim 0, dtype 0, payload = UTF-8 JSON object).
Every field is checked before anything is allocated; a bad frame is a FrameError.
"""
from __future__ import annotations

import json
import struct

import numpy as np
import torch

from .errors import FrameError

MAGIC = b"MPCF"
FRAME_VERSION = 1
HEADER = struct.Struct("<4sBBBBQ")
HEADER_SIZE = HEADER.size  # 16
MAX_NDIM = 16
MAX_CONTROL_BYTES = 64 << 10
"""Control messages (hellos, requests, verdicts) are small: a larger one is refused."""
DEFAULT_MAX_FRAME_BYTES = 1 << 30
"""The default cap on one tensor frame (Config.max_frame_bytes)."""
MAX_DIM = 1 << 48
"""No dimension of a real tensor comes near this; a larger one is refused."""
KIND_TENSOR, KIND_CONTROL = 1, 2

DTYPES = {1: torch.int64, 2: torch.uint8, 3: torch.float32, 4: torch.float64,
          5: torch.int32, 6: torch.bool, 7: torch.int8, 8: torch.int16}
DTYPE_CODES = {v: k for k, v in DTYPES.items()}


def encode_control(msg: dict) -> bytes:
    """A control message's payload: compact JSON."""
    return json.dumps(msg, separators=(",", ":"), sort_keys=True).encode()


def tensor_header(t: torch.Tensor) -> bytes:
    """Header and dims for a tensor frame."""
    if t.dtype not in DTYPE_CODES:
        raise TypeError(f"cannot send tensors of dtype {t.dtype}")
    if t.dim() > MAX_NDIM:
        raise ValueError(f"cannot send a tensor with {t.dim()} dims (max {MAX_NDIM})")
    nbytes = t.numel() * t.element_size()
    return (HEADER.pack(MAGIC, FRAME_VERSION, KIND_TENSOR, DTYPE_CODES[t.dtype], t.dim(), nbytes)
            + struct.pack(f"<{t.dim()}q", *t.shape))


def staged_on_host(t: torch.Tensor) -> torch.Tensor:
    """t in host memory: itself on the CPU; a device tensor copied by DMA into page-locked
    (pinned) memory, from torch's caching host allocator, waiting for that copy only."""
    t = t.detach()
    if t.device.type == "cpu":
        return t
    if t.device.type != "cuda":
        return t.to("cpu")
    staged = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
    staged.copy_(t, non_blocking=True)
    torch.cuda.current_stream(t.device).synchronize()
    return staged


def pinned_tensor(shape: tuple[int, ...], dtype: torch.dtype,
                  device: torch.device) -> torch.Tensor | None:
    """An uninitialised page-locked host tensor from torch's caching host allocator, made
    under device (so that a receiving thread creates no context on another GPU); None
    where pinning fails (out of page-locked memory), for the caller to take pageable."""
    try:
        with torch.cuda.device(device):
            return torch.empty(shape, dtype=dtype, pin_memory=True)
    except RuntimeError:
        return None


def tensor_payload(t: torch.Tensor) -> memoryview:
    """The raw bytes of a tensor, staged on the host; without copying a contiguous CPU one."""
    t = staged_on_host(t).contiguous()
    if t.numel() == 0:
        return memoryview(b"")
    if t.dtype == torch.bool:
        t = t.view(torch.uint8)
    return memoryview(t.numpy()).cast("B")


def control_frame(msg: dict) -> bytes:
    """A whole control frame."""
    payload = encode_control(msg)
    return HEADER.pack(MAGIC, FRAME_VERSION, KIND_CONTROL, 0, 0, len(payload)) + payload


def parse_header(header: bytes, max_bytes: int) -> tuple[int, int, int, int]:
    """(kind, dtype code, ndim, payload_len) of a frame header, checked."""
    if len(header) != HEADER_SIZE:
        raise FrameError(f"truncated frame header ({len(header)} of {HEADER_SIZE} bytes)")
    magic, version, kind, code, ndim, length = HEADER.unpack(header)
    if magic != MAGIC:
        raise FrameError(f"bad frame magic {magic!r} (not an mpc_ml peer?)")
    if version != FRAME_VERSION:
        raise FrameError(f"frame version {version}, expected {FRAME_VERSION}")
    if kind == KIND_TENSOR:
        if code not in DTYPES:
            raise FrameError(f"unknown dtype code {code}")
        if ndim > MAX_NDIM:
            raise FrameError(f"frame has {ndim} dims (max {MAX_NDIM})")
    elif kind == KIND_CONTROL:
        if code or ndim:
            raise FrameError("control frame with dtype or dims")
        if length > MAX_CONTROL_BYTES:
            raise FrameError(f"control frame of {length} bytes exceeds the cap of "
                             f"{MAX_CONTROL_BYTES} bytes")
    else:
        raise FrameError(f"unknown frame kind {kind}")
    if length > max_bytes:
        raise FrameError(f"frame of {length} bytes exceeds the cap of {max_bytes} bytes")
    return kind, code, ndim, length


def parse_shape(dims: bytes, ndim: int, code: int, length: int) -> tuple[int, ...]:
    """The shape of a tensor frame, checked against its payload length."""
    shape = struct.unpack(f"<{ndim}q", dims)
    if any(d < 0 for d in shape):
        raise FrameError(f"negative dimension in shape {shape}")
    if any(d > MAX_DIM for d in shape):
        raise FrameError(f"dimension larger than 2^48 in shape {shape}")
    itemsize = torch.empty(0, dtype=DTYPES[code]).element_size()
    if int(np.prod(shape, dtype=object)) * itemsize != length:
        raise FrameError(f"shape {shape} of {DTYPES[code]} does not match payload of {length} bytes")
    return shape


def empty_tensor(code: int, shape: tuple[int, ...],
                 pinned_for: torch.device | None = None) -> tuple[torch.Tensor, memoryview]:
    """A tensor to receive a payload into, and a writable byte view of it; pinned_for (a
    CUDA device): in page-locked host memory, for that device (pageable where pinning
    fails: a local failure, not the peer's)."""
    dtype = DTYPES[code]
    dtype = torch.uint8 if dtype == torch.bool else dtype
    t = None
    if pinned_for is not None and all(shape):  # a non-empty shape of a checked length
        t = pinned_tensor(shape, dtype, pinned_for)
    try:
        t = torch.empty(shape, dtype=dtype) if t is None else t
    except (RuntimeError, ValueError, OverflowError) as e:  # e.g. strides that overflow
        raise FrameError(f"shape {shape} cannot be allocated: {e}") from None
    view = memoryview(t.numpy()).cast("B") if t.numel() else memoryview(bytearray(0))
    return (t.view(torch.bool) if DTYPES[code] == torch.bool else t), view


def parse_control(payload: bytes) -> dict:
    """A control payload back to a dict."""
    try:
        msg = json.loads(payload.decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FrameError(f"malformed control frame: {e}") from None
    if not isinstance(msg, dict):
        raise FrameError("control frame is not a JSON object")
    return msg


def decode_frame(data: bytes, max_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> "dict | torch.Tensor":
    """Decode one whole frame from bytes (the socket reader's logic, for tests and fuzzing)."""
    kind, code, ndim, length = parse_header(bytes(data[:HEADER_SIZE]), max_bytes)
    rest = data[HEADER_SIZE:]
    if kind == KIND_CONTROL:
        if len(rest) != length:
            raise FrameError(f"control frame announces {length} bytes, carries {len(rest)}")
        return parse_control(bytes(rest))
    if len(rest) < 8 * ndim:
        raise FrameError("truncated frame dims")
    shape = parse_shape(bytes(rest[:8 * ndim]), ndim, code, length)
    payload = rest[8 * ndim:]
    if len(payload) != length:
        raise FrameError(f"tensor frame announces {length} bytes, carries {len(payload)}")
    t, view = empty_tensor(code, shape)
    view[:] = payload
    return t
