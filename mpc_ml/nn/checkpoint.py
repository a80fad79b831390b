"""Checkpoints of a party's shares: Module.save_shares / Module.load_shares.

Every party writes its own file: its additive shares of the private parameters and
buffers, its copy of the public ones, and (optionally) an optimizer's private state
such as SGD momentum buffers or Adam's moments. Nothing in a file is pickled; a file
is

    magic b"MPCSHARE" | header length u64 (little endian) | header | payload

where the header is a UTF-8 JSON object (the format version, the party's rank, the
world size, the precision bits, the protocol version, the byte order and, for every
tensor, its name, kind ("share" or "public"), dtype, shape, offset and size in the
payload) and the payload is the raw bytes of the tensors, one after the other.

Checksums agreed across parties. Each party hashes its file's canonical content (the
header without the digests, then the payload) with SHA-256; the parties exchange these
digests and every file stores all of them plus the *checkpoint digest*, the SHA-256
of the party digests in rank order. load_shares

- recomputes its own digest: a file that was corrupted or edited is refused;
- checks rank, world size and precision bits against the running session;
- exchanges the checkpoint digests: parties that load files of different checkpoints
  (another run, another epoch, a save that one party did not finish) are refused, with
  an error naming the party whose checkpoint differs.

Every check ends in one exchange of verdicts, so that all parties raise together with
the same explanation instead of some waiting for a peer that gave up.

The checksum detects accidents (truncated copies, a stale file, mixed-up paths), not a
party that forges a file: that is outside the semi-honest threat model.

A path may contain "{rank}", replaced by the party's rank, so that parties running on
one machine write separate files ("ckpt/model-{rank}.mpc").
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
import sys
import tempfile
from collections import OrderedDict
from typing import Any

import torch

from ..config import PROTOCOL_VERSION
from ..session import Session, current
from ..tensor import MPCTensor

MAGIC = b"MPCSHARE"
FORMAT_VERSION = 1
_LENGTH = struct.Struct("<Q")
MAX_HEADER_BYTES = 64 << 20
_DIGEST_FIELDS = ("content_sha256", "party_sha256", "checkpoint_sha256")

_DTYPES = {name: getattr(torch, name) for name in (
    "float16", "bfloat16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8",
    "bool", "complex64", "complex128")}
_DTYPE_NAMES = {v: k for k, v in _DTYPES.items()}


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be written or loaded: says which party and why."""


# -- paths and raw bytes --------------------------------------------------------------------
def party_path(path: str | os.PathLike[str], rank: int) -> str:
    """The file of party `rank`: path with "{rank}" replaced."""
    return os.fspath(path).replace("{rank}", str(rank))


def _dtype_name(dtype: torch.dtype) -> str:
    if dtype not in _DTYPE_NAMES:
        raise CheckpointError(f"cannot save tensors of dtype {dtype}")
    return _DTYPE_NAMES[dtype]


def _raw_bytes(t: torch.Tensor) -> bytes:
    t = t.detach().to("cpu").contiguous().reshape(-1)
    if t.numel() == 0:
        return b""
    return t.view(torch.uint8).numpy().tobytes()


def _from_bytes(data: bytes, dtype: torch.dtype, shape: list[int]) -> torch.Tensor:
    if not data:
        return torch.empty(shape, dtype=dtype)
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).view(dtype).reshape(shape)


def _canonical(header: dict) -> bytes:
    content = {k: v for k, v in header.items() if k not in _DIGEST_FIELDS}
    return json.dumps(content, sort_keys=True, separators=(",", ":")).encode()


def _content_digest(header: dict, payload: bytes) -> bytes:
    h = hashlib.sha256(b"mpc_ml shares\0")
    h.update(_canonical(header))
    h.update(b"\0")
    h.update(payload)
    return h.digest()


def _checkpoint_digest(party_digests: list[bytes]) -> bytes:
    return hashlib.sha256(b"mpc_ml checkpoint\0" + b"".join(party_digests)).digest()


def _session_of(module) -> Session:
    session = current()
    for _, value in module.named_state():
        if isinstance(value, MPCTensor) and value.session is not session:
            raise CheckpointError("the model's shares belong to another MPC session")
    return session


# -- agreement across parties ------------------------------------------------------------
def _raise_for_failures(session: Session, verdicts: list[dict], action: str) -> None:
    failed = [(r, v) for r, v in enumerate(verdicts) if not v.get("ok")]
    if not failed:
        return
    reasons = "; ".join(f"party {r}: {v.get('error', 'failed')}" for r, v in failed)
    who = ", ".join(f"party {r}" for r, _ in failed)
    raise CheckpointError(f"party {session.rank}: cannot {action}: {who} refused ({reasons})")


def _agree(session: Session, action: str, verdict: dict) -> list[dict]:
    try:
        verdicts = session.gather_verdicts(verdict)
    except ValueError as e:
        raise CheckpointError(f"{e} (about a checkpoint)") from None
    _raise_for_failures(session, verdicts, action)
    return verdicts


# -- saving ---------------------------------------------------------------------------------
def _optimizer_state(module, optimizer) -> tuple[dict, list[tuple[str, MPCTensor | torch.Tensor]]]:
    """The optimizer's header entry and its tensors, keyed by parameter name."""
    names = {id(p): n for n, p in module.named_parameters()}
    info: dict = {"type": type(optimizer).__name__, "defaults": _jsonable(optimizer.defaults),
                  "scalars": {}}
    if isinstance(getattr(optimizer, "steps", None), int):
        info["steps"] = optimizer.steps
    tensors = []
    for p in optimizer.params:
        if id(p) not in names:
            raise CheckpointError("the optimizer holds a parameter that is not in the model")
        state = optimizer.state.get(id(p), {})
        for key, value in state.items():
            if isinstance(value, (MPCTensor, torch.Tensor)):
                tensors.append((f"{names[id(p)]}\0{key}", value))
            else:
                info["scalars"][f"{names[id(p)]}\0{key}"] = _jsonable(value)
    return info, tensors


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise CheckpointError(f"cannot save optimizer state of type {type(value).__name__}")


def _entry(name: str, value, offset: int) -> tuple[dict, bytes]:
    if isinstance(value, MPCTensor):
        data = _raw_bytes(value.share)
        entry = {"name": name, "kind": "share", "dtype": _dtype_name(value.dtype),
                 "requires_grad": bool(value.requires_grad)}
    else:
        data = _raw_bytes(value)
        entry = {"name": name, "kind": "public", "dtype": _dtype_name(value.dtype)}
    entry.update(shape=list(value.shape), offset=offset, nbytes=len(data))
    return entry, data


def _snapshot(module, session: Session, optimizer) -> tuple[dict, bytes]:
    """This party's header (without digests) and payload."""
    chunks, entries, offset = [], [], 0
    for name, value in module.named_state():
        entry, data = _entry(name, value, offset)
        entries.append(entry)
        chunks.append(data)
        offset += len(data)
    opt_info = None
    if optimizer is not None:
        opt_info, opt_tensors = _optimizer_state(module, optimizer)
        opt_info["entries"] = []
        for name, value in opt_tensors:
            entry, data = _entry(name, value, offset)
            opt_info["entries"].append(entry)
            chunks.append(data)
            offset += len(data)
    payload = b"".join(chunks)
    header = {"format": FORMAT_VERSION, "rank": session.rank, "world_size": session.world_size,
              "precision_bits": session.config.precision_bits,
              "protocol_version": PROTOCOL_VERSION, "byteorder": sys.byteorder,
              "entries": entries, "optimizer": opt_info, "payload_bytes": len(payload)}
    return header, payload


def save_shares(module: Any, path: str | os.PathLike[str], optimizer: Any = None) -> str:
    """Write this party's shares of `module` (and `optimizer`'s state) to its file.

    Collective: every party calls it at the same point. Returns this party's file path.
    """
    session = _session_of(module)
    try:
        header, payload = _snapshot(module, session, optimizer)
        digest = _content_digest(header, payload)
        verdict = {"ok": True, "digest": digest.hex()}
    except CheckpointError as e:
        verdict = {"ok": False, "error": str(e)}

    # 1. agree on the checkpoint digest (every party's content digest, in rank order)
    digests = _agree(session, "save a checkpoint", verdict)
    party_digests = [bytes.fromhex(v["digest"]) for v in digests]
    header.update(content_sha256=digest.hex(), party_sha256=[d.hex() for d in party_digests],
                  checkpoint_sha256=_checkpoint_digest(party_digests).hex())

    # 2. write atomically (a crash leaves the previous file or the new one, never half)
    target = party_path(path, session.rank)
    verdict = {"ok": True}
    try:
        _write_atomic(target, header, payload)
    except OSError as e:
        verdict = {"ok": False, "error": f"cannot write {target}: {e.strerror or e}"}
    _agree(session, "save a checkpoint", verdict)

    # 3. read back after everyone wrote: catches parties that share one path
    verdict = {"ok": True}
    try:
        back = _read_header(target)
        if back.get("rank") != session.rank or back.get("content_sha256") != digest.hex():
            verdict = {"ok": False, "error": (
                f"its file {target} was overwritten by party {back.get('rank')}'s; give each "
                "party its own path (put '{rank}' in the path)")}
    except (OSError, CheckpointError) as e:
        verdict = {"ok": False, "error": f"cannot read back {target}: {e}"}
    _agree(session, "save a checkpoint", verdict)
    return target


def _write_atomic(target: str, header: dict, payload: bytes) -> None:
    raw = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    folder = os.path.dirname(os.path.abspath(target))
    fd, tmp = tempfile.mkstemp(prefix=".mpc-shares-", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(MAGIC + _LENGTH.pack(len(raw)) + raw)
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# -- loading --------------------------------------------------------------------------------
def _read_header_from(f, size: int) -> dict:
    start = f.read(len(MAGIC) + _LENGTH.size)
    if len(start) < len(MAGIC) + _LENGTH.size or start[:len(MAGIC)] != MAGIC:
        raise CheckpointError("not an mpc_ml share checkpoint (bad magic)")
    (length,) = _LENGTH.unpack(start[len(MAGIC):])
    if length > min(MAX_HEADER_BYTES, size - len(start)):
        raise CheckpointError(f"header of {length} bytes does not fit the file (truncated?)")
    try:
        header = json.loads(f.read(length).decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"malformed header: {e}") from None
    except RecursionError:
        raise CheckpointError("malformed header: JSON nested too deeply") from None
    if not isinstance(header, dict):
        raise CheckpointError("malformed header: not a JSON object")
    return header


def _read_header(target: str) -> dict:
    with open(target, "rb") as f:
        return _read_header_from(f, os.fstat(f.fileno()).st_size)


def _read(target: str) -> tuple[dict, bytes]:
    with open(target, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        header = _read_header_from(f, size)
        payload = f.read()
    if header.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"format version {header.get('format')!r}, this mpc_ml reads "
                              f"{FORMAT_VERSION}")
    if len(payload) != header.get("payload_bytes"):
        raise CheckpointError(f"payload of {len(payload)} bytes, the header announces "
                              f"{header.get('payload_bytes')} (truncated?)")
    stored = header.get("content_sha256")
    if stored != _content_digest(header, payload).hex():
        raise CheckpointError("checksum mismatch: the file is corrupted or was modified")
    parties = header.get("party_sha256")
    rank = header.get("rank")
    try:
        combined = _checkpoint_digest([bytes.fromhex(d) for d in parties]).hex()
    except (TypeError, ValueError):
        combined = None
    if (not isinstance(rank, int) or not 0 <= rank < len(parties) or parties[rank] != stored
            or combined is None or combined != header.get("checkpoint_sha256")):
        raise CheckpointError("checksum mismatch: the agreed digests in the header are "
                              "inconsistent")
    return header, payload


def _tensor(entry: dict, payload: bytes) -> torch.Tensor:
    try:
        dtype = _DTYPES[entry["dtype"]]
        shape = [int(d) for d in entry["shape"]]
        storage = torch.int64 if entry["kind"] == "share" else dtype
        offset, nbytes = int(entry["offset"]), int(entry["nbytes"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"malformed entry {entry.get('name')!r}: {e}") from None
    numel = 1
    for d in shape:
        if d < 0:
            raise CheckpointError(f"entry {entry['name']!r} has a negative dimension")
        numel *= d
    itemsize = torch.empty(0, dtype=storage).element_size()
    if nbytes != numel * itemsize or offset < 0 or offset + nbytes > len(payload):
        raise CheckpointError(f"entry {entry['name']!r} does not fit the payload")
    return _from_bytes(memoryview(payload)[offset:offset + nbytes], storage, shape)


def _check_matches(header: dict, session: Session) -> None:
    for key, mine in (("rank", session.rank), ("world_size", session.world_size),
                      ("precision_bits", session.config.precision_bits)):
        if header.get(key) != mine:
            raise CheckpointError(f"the checkpoint was saved with {key}={header.get(key)!r}, "
                                  f"this session runs with {key}={mine!r}")
    if header.get("byteorder") != sys.byteorder:
        raise CheckpointError(f"the checkpoint was written on a {header.get('byteorder')}-endian "
                              f"machine, this one is {sys.byteorder}-endian")


def _plan(module, header: dict, payload: bytes, optimizer):
    """What load_shares will assign, checked against the module, before touching it."""
    own = OrderedDict(module.named_state())
    entries = header.get("entries")
    if not isinstance(entries, list):
        raise CheckpointError("malformed header: no entry list")
    saved = OrderedDict((e.get("name"), e) for e in entries if isinstance(e, dict))
    missing = [k for k in own if k not in saved]
    unexpected = [k for k in saved if k not in own]
    if missing or unexpected:
        raise CheckpointError(f"the checkpoint does not fit the model: missing keys {missing}, "
                              f"unexpected keys {unexpected}")
    plan = []
    for key, entry in saved.items():
        t = _tensor(entry, payload)
        if tuple(t.shape) != tuple(own[key].shape):
            raise CheckpointError(f"{key} has shape {tuple(t.shape)} in the checkpoint, the "
                                  f"model expects {tuple(own[key].shape)}")
        if isinstance(own[key], MPCTensor) and entry["kind"] != "share":
            raise CheckpointError(f"{key} is public in the checkpoint, private in the model")
        plan.append((key, entry, t))
    opt_plan = None
    if optimizer is not None:
        info = header.get("optimizer")
        if not isinstance(info, dict):
            raise CheckpointError("the checkpoint holds no optimizer state")
        if info.get("type") != type(optimizer).__name__:
            raise CheckpointError(f"the checkpoint holds {info.get('type')} state, the optimizer "
                                  f"is {type(optimizer).__name__}")
        names = {id(p): n for n, p in module.named_parameters()}
        if any(id(p) not in names for p in optimizer.params):
            raise CheckpointError("the optimizer holds a parameter that is not in the model")
        tensors = []
        for entry in info.get("entries", []):
            param, _, key = str(entry.get("name")).partition("\0")
            if param not in own:
                raise CheckpointError(f"optimizer state for unknown parameter {param!r}")
            tensors.append((param, key, entry, _tensor(entry, payload)))
        opt_plan = (info, tensors)
    return plan, opt_plan


def _place(value: torch.Tensor, like) -> torch.Tensor:
    if isinstance(like, MPCTensor):
        return value.to(like.share.device)
    if isinstance(like, torch.Tensor):
        return value.to(like.device)
    return value


def load_shares(module: Any, path: str | os.PathLike[str], optimizer: Any = None) -> Any:
    """Replace `module`'s parameters and buffers (and `optimizer`'s state) by this party's
    shares from its checkpoint file, after every party checked its file and all agree
    that they hold the same checkpoint. Collective. Returns the module.

    Private parameters that are MPCTensors already keep their identity (an optimizer
    built on them stays valid); a plaintext module becomes private.
    """
    session = _session_of(module)
    target = party_path(path, session.rank)
    verdict, plan = {"ok": True}, None
    try:
        header, payload = _read(target)
        _check_matches(header, session)
        plan = _plan(module, header, payload, optimizer)
        verdict["checkpoint"] = header["checkpoint_sha256"]
    except FileNotFoundError:
        verdict = {"ok": False, "error": f"no checkpoint file {target}"}
    except (OSError, CheckpointError) as e:
        verdict = {"ok": False, "error": f"{target}: {e.strerror if isinstance(e, OSError) else e}"}
    except Exception as e:  # fields of the wrong type, nesting too deep, sizes that overflow:
        # whatever a crafted file does, this party says so and every party refuses together
        verdict = {"ok": False, "error": f"{target}: malformed checkpoint header "
                                         f"({type(e).__name__}: {str(e)[:200]})"}
    verdicts = _agree(session, "load the checkpoint", verdict)

    # every file is sound on its own; do they belong to one checkpoint?
    groups: dict[str, list[int]] = {}
    for r, v in enumerate(verdicts):
        groups.setdefault(str(v.get("checkpoint")), []).append(r)
    if len(groups) > 1:
        raise CheckpointError(_mismatch_message(session.rank, groups, len(verdicts)))

    _apply(module, plan, session, optimizer)
    return module


def _mismatch_message(me: int, groups: dict[str, list[int]], n: int) -> str:
    """Name the party (or parties) whose checkpoint differs from the others'."""
    ranked = sorted(groups.items(), key=lambda kv: -len(kv[1]))
    reference, majority = ranked[0]
    if len(majority) > n // 2:
        odd = ", ".join(f"party {r}'s checkpoint {digest[:12]}"
                        for digest, ranks in ranked[1:] for r in ranks)
        what = (f"{odd} differs from the one of parties {majority} ({reference[:12]})")
    else:
        what = ", ".join(f"parties {ranks} hold checkpoint {digest[:12]}"
                         for digest, ranks in ranked)
    return (f"party {me}: the parties load files of different checkpoints: {what}; every "
            "party must load its own file of the same save (another run, another epoch, or a "
            "save that did not finish on every party?)")


def _apply(module, plan, session: Session, optimizer) -> None:
    entries_plan, opt_plan = plan
    for key, entry, t in entries_plan:
        module_name, _, name = key.rpartition(".")
        owner = module.get_submodule(module_name)
        table = owner._parameters if name in owner._parameters else owner._buffers
        current_value = table[name]
        t = _place(t, current_value)
        if entry["kind"] == "share":
            dtype = _DTYPES[entry["dtype"]]
            if isinstance(current_value, MPCTensor):
                current_value.share, current_value.dtype = t, dtype
                current_value.grad, current_value.grad_fn = None, None
            else:
                value = MPCTensor(t, session, dtype)
                table[name] = value.requires_grad_() if entry.get("requires_grad") else value
        else:
            table[name] = t
    if opt_plan is None:
        return
    info, tensors = opt_plan
    by_name = {n: p for n, p in module.named_parameters()}
    state = {id(p): {} for p in optimizer.params}
    for joined, value in info.get("scalars", {}).items():
        param, _, key = joined.partition("\0")
        p = by_name.get(param)
        if p is not None and id(p) in state:
            state[id(p)][key] = value
    for param, key, entry, t in tensors:
        p = by_name[param]
        if id(p) not in state:
            continue
        if entry["kind"] == "share":
            state[id(p)][key] = MPCTensor(_place(t, p), session, _DTYPES[entry["dtype"]])
        else:
            state[id(p)][key] = _place(t, p)
    optimizer.state = state
    if "steps" in info and hasattr(optimizer, "steps"):
        optimizer.steps = int(info["steps"])
