"""The `mpc-ml` command: launch (tfp and dealer, 2-4 parties, a failing party),
argument errors, `python -m mpc_ml`, and mpc.init() outside a launched process.

Each launch starts real party processes on loopback, so this file keeps their
number small (about 30 s in all on two idle cores).
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

import mpc_ml as mpc
from helpers import WORLD_SIZES
from mpc_ml import cli

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "launchers" / "local" / "example.py"
RUN_SH = ROOT / "launchers" / "local" / "run.sh"
BIN = Path(sys.executable).parent
MPC_ML = [str(BIN / "mpc-ml")] if (BIN / "mpc-ml").exists() else [sys.executable, "-m", "mpc_ml"]
TIMEOUT_S = 120  # a hung launch fails the test instead of hanging the suite

# What launchers/local/example.py computes, in plaintext.
X = torch.tensor([[1.0, -2.0, 3.0], [0.5, 4.0, -1.5]])
W = torch.tensor([[0.25], [-1.0], [2.0]])


def _env(**extra: str) -> dict:
    """This environment without any MPC_* settings of the caller's, plus extra."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MPC_")}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


def _run(cmd: list[str], env: dict, timeout: float = TIMEOUT_S) -> subprocess.CompletedProcess:
    """Run cmd in its own process group; on timeout kill that group (parties included)."""
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{' '.join(cmd)} did not finish within {timeout} s\n{out}\n{err}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _check_example_output(res: subprocess.CompletedProcess, n: int) -> None:
    assert res.returncode == 0, res.stdout + res.stderr
    out = res.stdout
    assert f"parties: {n}" in out
    y_line = re.search(r"x @ w \+ 0\.5 = \[(.*)\]", out)
    m_line = re.search(r"mean\(x \* x\) = (\S+)", out)
    assert y_line and m_line, out
    y = [float(v) for v in y_line.group(1).split(",")]
    m = float(m_line.group(1))
    torch.testing.assert_close(torch.tensor(y), (X @ W + 0.5).flatten(), atol=1e-3, rtol=0)
    assert abs(m - float((X * X).mean())) < 1e-3
    # only party 0 prints results: one line of each, whatever n is
    assert out.count("parties:") == 1 and out.count("party 0 traffic") == 1


@pytest.mark.parametrize("n", WORLD_SIZES)
def test_launch_example(n):
    if n == 2:  # through the recipe's wrapper, which calls `mpc-ml launch -n "${N:-2}"`
        res = _run(["bash", str(RUN_SH)], _env(N=str(n)))
    else:
        res = _run(MPC_ML + ["launch", "-n", str(n), str(EXAMPLE)], _env())
    _check_example_output(res, n)


def test_launch_with_dealer():
    res = _run(MPC_ML + ["launch", "-n", "2", "--provider", "dealer", str(EXAMPLE)], _env())
    _check_example_output(res, 2)
    served = re.search(r"dealer: served (\d+) correlations", res.stderr)
    assert served and int(served.group(1)) > 0, res.stderr
    assert "'dealer_messages'" in res.stdout  # party 0's stats carry the dealer counters


ECHO = """\
import os
import sys
env = os.environ
line = (f"rank {env['MPC_RANK']} of {env['MPC_WORLD_SIZE']} {env['MPC_PROVIDER']} "
        f"{len(env['MPC_PARTY_ADDRS'].split(','))} {sys.argv[1:]}\\n")
os.write(1, line.encode())  # one write: the parties share the launcher's stdout
"""


def test_launch_sets_the_environment_and_passes_arguments(tmp_path):
    script = tmp_path / "echo.py"
    script.write_text(ECHO)
    res = _run(MPC_ML + ["launch", "-n", "2", str(script), "--lr", "0.1", "-n", "9"], _env())
    assert res.returncode == 0, res.stderr
    for r in range(2):  # the dealer: the provider when none is named
        assert f"rank {r} of 2 dealer 2 ['--lr', '0.1', '-n', '9']" in res.stdout


FAILING = """\
import torch
import mpc_ml as mpc

mpc.init()
x = mpc.encrypt(torch.ones(3) if mpc.rank() == 0 else None, src=0, shape=(3,))
if mpc.rank() == mpc.world_size() - 1:
    raise RuntimeError("deliberate failure in the last party")
print("decrypted", x.sum().decrypt().item())
"""


def test_failing_party_fails_the_launch(tmp_path):
    script = tmp_path / "fails.py"
    script.write_text(FAILING)
    res = _run(MPC_ML + ["launch", "-n", "2", str(script)], _env(MPC_COMM_TIMEOUT_S="10"),
               timeout=60)
    assert res.returncode != 0
    assert "mpc-ml launch: party 1 exited with code" in res.stderr, res.stderr
    assert "RuntimeError: deliberate failure in the last party" in res.stderr
    assert "decrypted" not in res.stdout  # party 0 failed too: its peer went away


def test_python_m_help():
    res = _run([sys.executable, "-m", "mpc_ml", "--help"], _env(), timeout=60)
    assert res.returncode == 0, res.stderr
    for command in ("launch", "dealer", "demo", "bench"):
        assert command in res.stdout


@pytest.mark.parametrize("argv, message", [
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    ([], "the following arguments are required: command"),
    (["launch", "--frobnicate", "-n", "2", "x.py"], "unrecognized arguments: --frobnicate"),
    (["launch", "-n", "two", "x.py"], "invalid int value: 'two'"),
    (["launch", "-n", "2", "--provider", "oracle", "x.py"], "invalid choice: 'oracle'"),
    (["dealer", "-n", "2"], "the following arguments are required: --listen"),
])
def test_argument_errors_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_launch_refuses_bad_requests_before_starting(tmp_path):
    with pytest.raises(SystemExit, match=r"give -n N \(at least 2\) or --config FILE"):
        cli.main(["launch", "-n", "1", str(EXAMPLE)])
    with pytest.raises(SystemExit, match=r"give -n N \(at least 2\) or --config FILE"):
        cli.main(["launch", str(EXAMPLE)])
    with pytest.raises(SystemExit, match="no such script"):
        cli.main(["launch", "-n", "2", str(tmp_path / "missing.py")])


def test_init_outside_a_launched_process(monkeypatch):
    for var in ("MPC_RANK", "MPC_WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    errors = []

    def fresh_thread():  # sessions are per thread: this one has none for certain
        for call in (mpc.init, mpc.rank):
            try:
                call()
            except RuntimeError as e:
                errors.append(str(e))

    t = threading.Thread(target=fresh_thread)
    t.start()
    t.join()
    assert len(errors) == 2
    assert "not a launched party" in errors[0] and "mpc-ml launch" in errors[0]
    assert "not initialised" in errors[1]
