"""Private inference: a model owner's model runs on a data owner's input, and only the
data owner (or an outside client) sees the prediction.

Two settings:

- Inside the compute parties (`private_predict`, `private_predict_batch`): the model
  owner and the data owner are two of the parties (or the same one). The model's
  weights are secret-shared by the model owner, the input by the data owner, the forward
  pass runs on shares, and the output is opened to the data owner alone.
- An outside client (`InferenceClient` and `serve_client`): the client is no compute
  party. It secret-shares its input itself, sends share i to party i over its own TCP
  connection, and sums the n output shares it gets back. No party ever holds the input
  or the output in the clear; the parties learn only the request shapes.

Client protocol, on each client-party connection (typed frames, never pickle):

    client -> party i   hello {"role": "client", "rank": -2, "world_size": n,
                               "protocol_version": v, "precision_bits": f}
    party i -> client   hello {"rank": i, "world_size": n, "protocol_version": v,
                               "precision_bits": f}    (or {"error": why} and close)
    then per request:
    client -> party i   int64 tensor: share i of encode(x), x = sum of shares mod 2^64
    party i -> client   int64 tensor: share i of encode(model(x)), re-randomised
    or, to finish:
    client -> party i   {"op": "done"}

Per request the parties agree on what they received (one all_gather of a small status
and shape tensor), so a client that disconnects, sends a malformed frame or sends
different shapes to different parties makes every party fail at once with the same clear
error instead of desynchronising. The output shares are re-randomised with a fresh
sharing of zero before they leave, so the client learns model(x) and nothing of the
parties' internal randomness.

Security: semi-honest parties and client, as the rest of mpc_ml. The client links are
plain TCP unless `wrap` (the tcp backend's TLS hook) is given: an eavesdropper who sees
all n connections of an unwrapped client can add the shares up.
"""
from __future__ import annotations

import secrets
import socket
import sys
from typing import Sequence

import torch

from ..comm import CLIENT_RANK, CommError, client_index, frames, peer_name, tcp
from ..config import PROTOCOL_VERSION, Config
from ..core.encoding import decode, encode
from ..core.prg import PRG, new_seed
from ..nn import Module
from ..primitives.sharing import zero_share
from ..session import Session, current
from ..tensor import MPCTensor, encrypt, no_grad


_DONE, _REQUEST, _FAILED = 0, 1, -1


class InferenceError(RuntimeError):
    """A private inference request failed: a broken or misbehaving client, or a refusal."""


# -- inside the compute parties ---------------------------------------------------------
def _check_rank(session: Session, name: str, rank: int) -> None:
    if not 0 <= rank < session.world_size:
        raise ValueError(f"{name}={rank} is not a party rank (world size {session.world_size})")


def _model_device(model: Module) -> torch.device:
    """Where the model's parameters live (shares of inputs go there too)."""
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def _prepare(model: Module, model_owner: int) -> Module:
    """Share the model owner's weights (unless already private), inference mode."""
    if not isinstance(model, Module):
        raise TypeError(f"expected an mpc_ml Module, got {type(model).__name__}; convert a "
                        "torch model with mpc_ml.nn.from_pytorch(model, example_input)")
    if not model.encrypted:
        model.encrypt(src=model_owner)
    return model.eval()


def _forward(model: Module, x: MPCTensor) -> MPCTensor:
    with no_grad():
        out = model(x)
    if not isinstance(out, MPCTensor):
        raise TypeError(f"the model returned {type(out).__name__}; private inference needs a "
                        "model with one tensor output")
    return out


def private_predict(model: Module, input: torch.Tensor | None = None, *, model_owner: int = 0,
                    data_owner: int = 1, input_shape: Sequence[int] | None = None,
                    output_to: int | None = None) -> torch.Tensor | None:
    """model(input) in plaintext on the data owner (or output_to), None on every other party.

    Every party calls this with the same architecture. Unless the model is already
    private, its floating-point parameters are secret-shared from model_owner (in place:
    later calls reuse them; the other parties' weights are never used). Only data_owner
    passes `input`; the others may pass input_shape to check the announced shape. The
    input's shape is public, its values and the output are not.
    """
    session = current()
    output_to = data_owner if output_to is None else output_to
    for name, rank in (("model_owner", model_owner), ("data_owner", data_owner),
                       ("output_to", output_to)):
        _check_rank(session, name, rank)
    if session.rank != data_owner and input is not None:
        raise ValueError(f"party {session.rank} passed an input, but the data owner is party "
                         f"{data_owner}; the other parties pass None (and input_shape=)")
    model = _prepare(model, model_owner)
    x = encrypt(input, src=data_owner, shape=input_shape, device=_model_device(model))
    return _forward(model, x).decrypt(dst=output_to)


def private_predict_batch(model: Module, inputs: Sequence[torch.Tensor] | None = None, *,
                          model_owner: int = 0, data_owner: int = 1,
                          output_to: int | None = None) -> list[torch.Tensor] | None:
    """Several requests of the data owner in one forward pass: the outputs, one per request.

    Each request is a batch (a single sample is x.unsqueeze(0)) with the same sample
    shape; they are concatenated along dim 0, run once, and the output is split back.
    The request sizes go to output_to only (when it is not the data owner); the other
    parties see just the total batch size. Returns the list on output_to, None elsewhere.
    """
    session = current()
    output_to = data_owner if output_to is None else output_to
    _check_rank(session, "data_owner", data_owner)
    _check_rank(session, "output_to", output_to)
    joined, sizes = None, None
    if session.rank == data_owner:
        inputs = [torch.as_tensor(t) for t in (inputs or [])]
        if not inputs:
            raise ValueError("private_predict_batch needs at least one request")
        if any(t.dim() == 0 or t.shape[1:] != inputs[0].shape[1:] for t in inputs):
            raise ValueError("requests must be batches with the same sample shape, got shapes "
                             f"{[tuple(t.shape) for t in inputs]}")
        joined, sizes = torch.cat(inputs), [len(t) for t in inputs]
    elif inputs is not None:
        raise ValueError(f"party {session.rank} passed inputs, but the data owner is party "
                         f"{data_owner}; the other parties pass None")
    out = private_predict(model, joined, model_owner=model_owner, data_owner=data_owner,
                          output_to=output_to)
    if output_to != data_owner:  # the request boundaries go to the output's receiver only
        if session.rank == data_owner:
            session.comm.send(torch.tensor(sizes, dtype=torch.int64), output_to)
        elif session.rank == output_to:
            sizes = [int(s) for s in session.comm.recv(data_owner)]
    if out is None:
        return None
    if out.dim() == 0 or out.shape[0] != sum(sizes):
        raise ValueError(f"the model's output of shape {tuple(out.shape)} has no batch "
                         f"dimension of {sum(sizes)} to split into the requests")
    return list(out.split(sizes))


# -- an outside client: the server side (every compute party) ---------------------------
def _client_error(me: int, e: CommError) -> InferenceError:
    """A comm error on a client link, worded for it (the comm layer calls every rank < 0
    'the dealer', which the client is not)."""
    text = str(e).replace(f"{peer_name(me)}: ", "").replace(peer_name(CLIENT_RANK),
                                                            "the inference client")
    return InferenceError(f"party {me}: {text}")


def _check_client_hello(hello, session: Session) -> str | None:
    """Why a first message is not an acceptable client hello (None if it is)."""
    if not isinstance(hello, dict) or hello.get("role") != "client":
        return "the first message is not an inference client's hello"
    expected = {"protocol_version": PROTOCOL_VERSION, "world_size": session.world_size,
                "precision_bits": session.config.precision_bits}
    for key, mine in expected.items():
        if hello.get(key) != mine:
            return f"the client runs with {key}={hello.get(key)!r}, party {session.rank} " \
                   f"with {key}={mine!r}"
    return None


def _accept_client(listener: socket.socket, session: Session, timeout: float, wrap):
    """Accept one client on listener and check its hello; the link to it."""
    me = session.rank
    listener.settimeout(timeout)
    try:
        sock, _ = listener.accept()
    except socket.timeout:
        raise InferenceError(f"party {me}: no inference client connected to "
                             f"{listener.getsockname()} within {timeout:g} s") from None
    tcp.tune(sock)  # TCP_NODELAY, as on the parties' own links
    if wrap is not None:
        try:
            sock = wrap(sock, server_side=True, peer=None)
        except CommError as e:
            raise _client_error(me, e) from None
        certified = getattr(sock, "certified_rank", None)
        if client_index(certified) is None:
            problem = (f"{peer_name(certified)}'s certificate was presented in the client role; "
                       "only a client certificate (`mpc-ml certs DIR --clients K`) is accepted")
            try:
                sock.sendall(frames.control_frame({"error": problem}))
            except OSError:
                pass
            sock.close()
            raise InferenceError(f"party {me}: refused the inference client: {problem}")
    else:
        where = "{}:{}".format(*listener.getsockname()[:2])
        if not tcp.is_loopback(where) and not session.config.allow_insecure:
            raise InferenceError(f"party {me}: serving clients at {where} without TLS would let "
                                 "anyone who can connect act as the client; give wrap=TLSConfig("
                                 "...) or opt out with Config(allow_insecure=True), "
                                 "MPC_ALLOW_INSECURE=1 or --allow-insecure")
        print(f"mpc_ml: party {me} serves inference clients at {where} without TLS: anyone who "
              "can connect is taken as the client", file=sys.stderr)
    link = tcp.TcpLink(sock, me, CLIENT_RANK, session.config.max_frame_bytes)
    try:
        problem = _check_client_hello(link.recv(timeout), session)
        if problem:
            link.send({"error": problem})
            raise InferenceError(f"party {me}: refused the inference client: {problem}")
        link.send({"rank": me, "world_size": session.world_size,
                   "protocol_version": PROTOCOL_VERSION,
                   "precision_bits": session.config.precision_bits})
    except CommError as e:
        link.close()
        raise _client_error(me, e) from None
    except BaseException:
        link.close()
        raise
    return link


def _receive_request(link, me: int, timeout: float,
                     sample_shape: tuple[int, ...] | None) -> tuple[int, object]:
    """(status, share or reason) of the client's next message on this party."""
    try:
        msg = link.recv(timeout)
    except CommError as e:
        return _FAILED, str(_client_error(me, e))
    if isinstance(msg, dict):
        if msg.get("op") == "done":
            return _DONE, None
        return _FAILED, f"party {me}: the inference client sent an unknown message {msg!r:.200}"
    if msg.dtype != torch.int64:
        return _FAILED, f"party {me}: the inference client sent a {msg.dtype} tensor, " \
                        "not an int64 share"
    if msg.dim() == 0 or msg.numel() == 0:
        return _FAILED, f"party {me}: the inference client sent a share of shape " \
                        f"{tuple(msg.shape)}; a request is a non-empty batch"
    if sample_shape is not None and tuple(msg.shape[1:]) != sample_shape:
        return _FAILED, f"party {me}: the inference client sent a share of shape " \
                        f"{tuple(msg.shape)}; this model takes batches of {sample_shape}"
    return _REQUEST, msg


def _agree(session: Session, status: int, payload) -> None:
    """All parties check they received the same kind of request, of the same shape.

    One gather of every party's verdict (status, shape, and the reason where its client
    link failed), so that every party raises the same error.
    """
    verdict = {"status": status, "shape": list(payload.shape) if status == _REQUEST else [],
               "error": payload if status == _FAILED else None}
    try:
        verdicts = session.gather_verdicts(verdict)
    except ValueError as e:
        raise InferenceError(str(e)) from None
    reasons = [str(v.get("error")) for v in verdicts if v.get("status") == _FAILED]
    if reasons:
        raise InferenceError("; ".join(reasons))
    if any(v != verdicts[0] for v in verdicts):
        seen = ", ".join(f"party {r}: " + ("done" if v.get("status") == _DONE else
                                           f"a share of shape {tuple(v.get('shape', []))}")
                         for r, v in enumerate(verdicts))
        raise InferenceError(f"the inference client sent the parties different requests ({seen})")


def serve_client(model: Module, listen: str | socket.socket, *, model_owner: int = 0,
                 sample_shape: Sequence[int] | None = None, max_requests: int | None = None,
                 timeout_s: float | None = None, wrap: tcp.Wrap | None = None) -> int:
    """Serve one inference client; every compute party calls this in its session.

    listen is this party's client-facing HOST:PORT, or a listening socket (closed once
    the client is in). Unless the model is already private, model_owner's weights are
    shared first. Requests are served in order until the client says done or
    max_requests have been answered; sample_shape, if given, is checked against every
    request's shape after the batch dimension. The parties never open the output: each
    sends its (re-randomised) share to the client only. Returns the number of requests
    served. A client that disconnects, times out (timeout_s, default the session's
    comm_timeout_s) or sends a malformed frame raises InferenceError on every party.
    """
    session = current()
    _check_rank(session, "model_owner", model_owner)
    model = _prepare(model, model_owner)
    device = _model_device(model)
    timeout = session.config.comm_timeout_s if timeout_s is None else timeout_s
    sample = tuple(sample_shape) if sample_shape is not None else None
    listener = tcp.listen(listen) if isinstance(listen, str) else listen
    try:
        link = _accept_client(listener, session, session.config.connect_timeout_s, wrap)
    finally:
        listener.close()
    served = 0
    try:
        while max_requests is None or served < max_requests:
            status, payload = _receive_request(link, session.rank, timeout, sample)
            _agree(session, status, payload)
            if status == _DONE:
                break
            x = MPCTensor(payload.to(device), session)
            out = _forward(model, x).share
            out = out + zero_share(session, out.shape, out.device)  # fresh sharing
            try:
                link.send(out)
            except CommError as e:
                raise _client_error(session.rank, e) from None
            served += 1
    except BaseException as e:
        try:  # tell the client why, if it still listens
            link.send({"error": str(e) if isinstance(e, InferenceError) else
                       f"party {session.rank} failed: {type(e).__name__}: {e}"})
        except CommError:
            pass
        raise
    finally:
        link.close()
    return served


# -- an outside client: the client side --------------------------------------------------
class InferenceClient:
    """A data owner outside the compute parties: shares its inputs, alone sees the outputs.

    party_addrs are the parties' client-facing HOST:PORT in rank order (what each passes
    to serve_client). Connecting retries until every party listens (connect_timeout_s).
    Use as a context manager, or call close() to end the session cleanly.
    """

    def __init__(self, party_addrs: Sequence[str], precision_bits: int = 16,
                 timeout_s: float = 60.0, connect_timeout_s: float = 30.0,
                 max_frame_bytes: int = Config.max_frame_bytes, wrap: tcp.Wrap | None = None):
        self.party_addrs = list(party_addrs)
        n = len(self.party_addrs)
        if n < 2:
            raise ValueError(f"need the addresses of at least 2 compute parties, got {n}")
        Config(precision_bits=precision_bits)  # validates
        self.precision_bits, self.timeout_s = precision_bits, timeout_s
        self._prg = PRG(new_seed())
        self.token = secrets.token_hex(16)
        """Names this client to every party of a service (serve_clients), which matches its
        links by it; a one-client server (serve_client) ignores it."""
        hello = {"role": "client", "rank": CLIENT_RANK, "world_size": n, "token": self.token,
                 "protocol_version": PROTOCOL_VERSION, "precision_bits": precision_bits}
        self.links: list[tcp.TcpLink] = []
        problems = []
        try:
            for i, addr in enumerate(self.party_addrs):
                # On a failure, go on with the others: a party left waiting for this client
                # would only notice at its connect timeout; one that saw it go fails at once.
                try:
                    self.links.append(tcp.connect(addr, CLIENT_RANK, i, hello, connect_timeout_s,
                                                  max_frame_bytes, wrap))
                except CommError as e:
                    text = str(e).replace(f"{peer_name(CLIENT_RANK)}: ", "")
                    problems.append(f"party {i} at {addr}: {text}")
            if problems:
                raise InferenceError("inference client: cannot connect to " + "; ".join(problems))
        except BaseException:
            self._close_links()
            raise

    def share(self, x: torch.Tensor) -> list[torch.Tensor]:
        """n additive int64 shares of encode(x): share i > 0 uniform, share 0 the rest."""
        value = encode(x, self.precision_bits)
        shares = [self._prg.random_ring(value.shape) for _ in self.links[1:]]
        first = value.clone()
        for s in shares:
            first -= s
        return [first, *shares]

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """model(x), computed by the parties on shares; only this client sees it.

        x is a batch (leading dim); the result has the input's float dtype (or the
        default dtype).
        """
        if not self.links:
            raise InferenceError("inference client: closed (or broken by an earlier error)")
        x = torch.as_tensor(x)
        if x.dim() == 0 or x.numel() == 0:
            raise ValueError(f"a request is a non-empty batch, got shape {tuple(x.shape)}")
        dtype = x.dtype if x.is_floating_point() else torch.get_default_dtype()
        try:
            for i, (link, s) in enumerate(zip(self.links, self.share(x))):
                try:
                    self._call(i, link.send, s)
                except InferenceError:  # a party that hung up may have said why
                    self._raise_refusal(i, link)
                    raise
            total = None
            for i, link in enumerate(self.links):
                msg = self._call(i, link.recv, self.timeout_s)
                if isinstance(msg, dict):
                    raise InferenceError(f"inference client: party {i} refused the request: "
                                         f"{msg.get('error', msg)}")
                if msg.dtype != torch.int64 or (total is not None and msg.shape != total.shape):
                    raise InferenceError(f"inference client: party {i} sent a malformed output "
                                         f"share ({msg.dtype}, shape {tuple(msg.shape)})")
                total = msg if total is None else total + msg
        except InferenceError:
            self._close_links()  # the parties stop too: this session is over
            raise
        return decode(total, self.precision_bits, dtype)

    def predict_batch(self, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Several requests in one forward pass: concatenated along dim 0, split back."""
        inputs = [torch.as_tensor(t) for t in inputs]
        if not inputs:
            raise ValueError("predict_batch needs at least one request")
        out = self.predict(torch.cat(inputs))
        return list(out.split([len(t) for t in inputs]))

    def _raise_refusal(self, party: int, link: tcp.TcpLink) -> None:
        """Raise the error a party sent before it closed the link, if it sent one."""
        try:
            msg = link.recv(1.0)
        except CommError:
            return
        if isinstance(msg, dict) and "error" in msg:
            self._close_links()
            raise InferenceError(f"inference client: party {party} refused the request: "
                                 f"{msg['error']}")

    def _call(self, party: int, fn, *args):
        try:
            return fn(*args)
        except CommError as e:
            text = str(e).replace(f"{peer_name(CLIENT_RANK)}: ", "")
            raise InferenceError(f"inference client: lost party {party}: {text}") from None

    def _close_links(self) -> None:
        for link in self.links:
            link.close()
        self.links = []

    def close(self) -> None:
        """Tell every party this client is done, and disconnect."""
        for link in self.links:
            try:
                link.send({"op": "done"})
            except CommError:
                pass
        self._close_links()

    def __enter__(self) -> "InferenceClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def demo_model() -> torch.nn.Module:
    """A small plaintext MLP for 8x8 digit images (64 -> 32 -> 10), for `mpc-ml infer`."""
    return torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
