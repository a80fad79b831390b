"""Private inference: in-party API (2 and 3 parties, batching), an outside client over tcp
on loopback (requests, batching, a client that misbehaves), and `mpc-ml infer`.

Servers run as mpc.run(backend="inproc") in a background thread while the client runs
in the test thread; threads are joined with a deadline, so a hang fails the test.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

import mpc_ml as mpc
from helpers import float_share, garbage, listeners, mid_frame
from mpc_ml import cli
from mpc_ml.serving import (InferenceClient, InferenceError, private_predict,
                              private_predict_batch, serve_client)

TOL = 1e-2
FAST = mpc.Config(comm_timeout_s=5.0, connect_timeout_s=10.0)
JOIN_S = 60  # a server thread still alive after this is a hang


def torch_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))


MODEL = torch_model()
X = torch.randn(5, 8, generator=torch.Generator().manual_seed(1))
with torch.no_grad():
    EXPECTED = MODEL(X)


# torch.fx tracing patches torch.nn.Module.__call__ process-wide, so from_pytorch must
# not run in two party threads at once (inproc parties are threads).
_CONVERT_LOCK = threading.Lock()


def party_model(owner: int) -> mpc.nn.Module:
    """The owner holds the real weights; every other party the same architecture with
    other weights, which must not matter."""
    with _CONVERT_LOCK:
        source = MODEL if mpc.rank() == owner else torch_model(seed=100 + mpc.rank())
        return mpc.nn.from_pytorch(source, X)


# -- inside the compute parties ---------------------------------------------------------
@pytest.mark.parametrize("n,model_owner,data_owner", [(2, 0, 1), (3, 1, 2), (3, 2, 2)])
def test_private_predict(n, model_owner, data_owner):
    def party():
        model = party_model(model_owner)
        x = X if mpc.rank() == data_owner else None
        return private_predict(model, x, model_owner=model_owner, data_owner=data_owner,
                               input_shape=X.shape)

    outs = mpc.run(party, world_size=n)
    for r, out in enumerate(outs):
        if r == data_owner:
            torch.testing.assert_close(out, EXPECTED, atol=TOL, rtol=0)
        else:
            assert out is None


def test_private_predict_reuses_the_encrypted_model():
    def party():
        model = party_model(0)
        first = private_predict(model, X if mpc.rank() == 1 else None)
        assert model.encrypted
        second = private_predict(model, -X if mpc.rank() == 1 else None)
        return first, second

    first, second = mpc.run(party, world_size=2)[1]
    torch.testing.assert_close(first, EXPECTED, atol=TOL, rtol=0)
    with torch.no_grad():
        torch.testing.assert_close(second, MODEL(-X), atol=TOL, rtol=0)


@pytest.mark.parametrize("n,output_to", [(2, None), (3, 0)])
def test_private_predict_batch(n, output_to):
    requests = [X[:1], X[1:3], X[3:]]

    def party():
        mpc.reset_stats()
        out = private_predict_batch(party_model(0), requests if mpc.rank() == 1 else None,
                                    model_owner=0, data_owner=1, output_to=output_to)
        return out

    outs = mpc.run(party, world_size=n)
    receiver = 1 if output_to is None else output_to
    assert all(o is None for r, o in enumerate(outs) if r != receiver)
    got = outs[receiver]
    assert [tuple(o.shape) for o in got] == [(1, 3), (2, 3), (2, 3)]
    for o, want in zip(got, EXPECTED.split([1, 2, 2])):
        torch.testing.assert_close(o, want, atol=TOL, rtol=0)


def test_private_predict_argument_errors():
    def party():
        model = party_model(0)
        with pytest.raises(ValueError, match=f"party {mpc.rank()} passed an input"):
            private_predict(model, X, data_owner=1 - mpc.rank())  # each names the other
        with pytest.raises(ValueError, match="data_owner=5 is not a party rank"):
            private_predict(model, None, data_owner=5)
        with pytest.raises(TypeError, match="from_pytorch"):
            private_predict(MODEL, None, data_owner=1)
        return True

    assert mpc.run(party, world_size=2) == [True, True]


# -- an outside client ------------------------------------------------------------------
def serve_in_background(socks, n: int = 2, config=FAST, **kwargs):
    """mpc.run of serve_client in a thread; returns (thread, result dict)."""
    result: dict = {}

    def body():
        return serve_client(party_model(0), socks[mpc.rank()], model_owner=0,
                            sample_shape=(8,), **kwargs)

    def target():
        try:
            result["out"] = mpc.run(body, world_size=n, config=config)
        except BaseException as e:  # checked by the test
            result["error"] = e
        finally:
            for sock in socks:  # serve_client closes its listener; a failed party may not
                sock.close()

    thread = threading.Thread(target=target, name="inference-servers", daemon=True)
    thread.start()
    return thread, result


def finish(thread, result) -> dict:
    thread.join(JOIN_S)
    assert not thread.is_alive(), "the compute parties hung"
    return result


@pytest.mark.parametrize("n", [2, 3])
def test_client_end_to_end(n):
    socks, addrs = listeners(n)
    thread, result = serve_in_background(socks, n)
    with InferenceClient(addrs) as client:
        y = client.predict(X)
        singles = [client.predict(X[i:i + 1]) for i in range(3)]  # 3 requests, one link
        batch = client.predict_batch([X[:1], X[1:3], X[3:]])      # 3 requests, one pass
    assert "error" not in finish(thread, result), result.get("error")
    assert result["out"] == [5] * n  # requests served; the parties return nothing else
    torch.testing.assert_close(y, EXPECTED, atol=TOL, rtol=0)
    torch.testing.assert_close(torch.cat(singles), EXPECTED[:3], atol=TOL, rtol=0)
    for o, want in zip(batch, EXPECTED.split([1, 2, 2])):
        torch.testing.assert_close(o, want, atol=TOL, rtol=0)


def test_client_shares_are_fresh_and_sum_to_the_input():
    socks, addrs = listeners(2)
    thread, result = serve_in_background(socks, max_requests=0)
    with InferenceClient(addrs) as client:
        first, second = client.share(X), client.share(X)
    assert finish(thread, result)["out"] == [0, 0]
    encoded = torch.round(X.double() * 2 ** 16).long()
    for shares in (first, second):
        assert all(s.dtype == torch.int64 and s.shape == X.shape for s in shares)
        assert torch.equal(shares[0] + shares[1], encoded)
    assert not torch.equal(first[1], second[1])  # a fresh mask per request


def test_client_rejects_a_scalar_without_breaking_the_session():
    socks, addrs = listeners(2)
    thread, result = serve_in_background(socks)
    with InferenceClient(addrs) as client:
        with pytest.raises(ValueError, match="non-empty batch"):
            client.predict(torch.tensor(1.0))
        torch.testing.assert_close(client.predict(X), EXPECTED, atol=TOL, rtol=0)
    assert finish(thread, result)["out"] == [1, 1]


def test_max_requests_ends_the_session():
    socks, addrs = listeners(2)
    thread, result = serve_in_background(socks, max_requests=1)
    client = InferenceClient(addrs)
    torch.testing.assert_close(client.predict(X), EXPECTED, atol=TOL, rtol=0)
    assert finish(thread, result)["out"] == [1, 1]
    with pytest.raises(InferenceError, match="lost party 0"):
        client.predict(X)
    client.close()


def _different_shapes(client, shares):
    client.links[0].send(shares[0])
    client.links[1].send(shares[1][:2])


def _silent(client, shares):
    client.links[0].send(shares[0])  # and nothing to party 1, connection left open


@pytest.mark.parametrize("misbehave,message", [
    (mid_frame, r"party 1: the inference client closed the connection mid-frame"),
    (garbage, r"party 1: bad frame from the inference client: bad frame magic"),
    (float_share, r"party 1: the inference client sent a torch.float64 tensor"),
    (_different_shapes, r"different requests \(party 0: a share of shape \(5, 8\), "
                        r"party 1: a share of shape \(2, 8\)\)"),
    (_silent, r"party 1: no message from the inference client within 1 s"),
], ids=["disconnect-mid-frame", "garbage-frame", "float-share", "different-shapes", "silent"])
def test_misbehaving_client_fails_the_servers_clearly(misbehave, message):
    socks, addrs = listeners(2)
    thread, result = serve_in_background(socks, timeout_s=1.0)
    client = InferenceClient(addrs, timeout_s=10)
    start = time.monotonic()
    misbehave(client, client.share(X))
    if client.links:  # a client still listening is told why
        reply = client.links[0].recv(10)
        assert isinstance(reply, dict) and re.search(message, reply["error"]), reply
        client._close_links()
    finish(thread, result)
    assert time.monotonic() - start < 15
    error = result.get("error")
    assert isinstance(error, mpc.PartyError) and error.kind == "InferenceError", error
    assert re.search(message, str(error)), str(error)


def test_client_with_other_settings_is_refused():
    socks, addrs = listeners(2)
    thread, result = serve_in_background(socks)
    with pytest.raises(InferenceError, match="refused by party 0: the client runs with "
                                             "precision_bits=12, party 0 with precision_bits=16"):
        InferenceClient(addrs, precision_bits=12)
    error = finish(thread, result).get("error")
    assert isinstance(error, mpc.PartyError) and "precision_bits=12" in str(error)


def test_no_client_is_a_clear_error():
    socks, _ = listeners(2)
    thread, result = serve_in_background(socks, config=mpc.Config(comm_timeout_s=5.0,
                                                                  connect_timeout_s=0.5))
    error = finish(thread, result).get("error")
    assert isinstance(error, mpc.PartyError)
    assert re.search(r"no inference client connected to .* within 0.5 s", str(error))


# -- mpc-ml infer -----------------------------------------------------------------------
def test_cli_infer(capsys):
    code = cli.main(["infer", "--backend", "inproc", "-n", "3", "--random", "3,64",
                     "--requests", "3"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "3 parties (inproc, dealer)" in out and "in 3 request(s)" in out  # the default
    assert float(re.search(r"max \|difference\|: (\S+)", out).group(1)) < TOL


@pytest.mark.parametrize("argv, message", [
    (["--model", "no_colon"], "is not MODULE:FACTORY"),
    (["--model", "mpc_ml.inference:no_such_model"], "cannot load --model"),
    (["--random", "4,x"], "is not a shape like 4,64"),
    (["--random", "2,64", "--requests", "3"], "no batch of 3 to split into requests"),
    (["--random", "2,63"], "does not take an input of shape (2, 63)"),
    (["-n", "1"], "-n must be at least 2"),
])
def test_cli_infer_refuses_bad_arguments_before_starting(argv, message):
    with pytest.raises(SystemExit, match=re.escape(message)):
        cli.main(["infer", "--backend", "inproc", *argv])


def test_cli_infer_from_file(tmp_path, capsys):
    path = tmp_path / "x.pt"
    torch.save(torch.randn(2, 64), path)
    assert cli.main(["infer", "--backend", "inproc", "--input", str(path)]) == 0
    out = capsys.readouterr().out
    assert "input (2, 64)" in out
    assert float(re.search(r"max \|difference\|: (\S+)", out).group(1)) < TOL


def test_cli_infer_over_tcp():
    """The console path: party processes over tcp (spawned), a client in the command."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MPC_")}
    env["MPC_COMM_TIMEOUT_S"] = "10"
    cmd = [sys.executable, "-m", "mpc_ml", "infer", "-n", "2", "--requests", "2"]
    proc = subprocess.Popen(cmd, env=env, cwd=Path(__file__).resolve().parents[1],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the party processes too
        out, err = proc.communicate()
        pytest.fail(f"mpc-ml infer hung\n{out}\n{err}")
    assert proc.returncode == 0, out + err
    assert "2 parties (tcp, dealer)" in out and "input (4, 64)" in out  # the default provider
    assert float(re.search(r"max \|difference\|: (\S+)", out).group(1)) < TOL
