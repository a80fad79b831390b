"""The MPI backend's own parts: run_mpi's argument checks, and a plain
`mpiexec -n 3 python script.py` whose script builds its session with mpi_session and
also checks the link itself (typed messages, timeouts, bad frames, goodbyes).

mpc.run(backend="mpi") (which calls mpc_ml.launch.mpi.run_mpi) runs in the shared
configuration matrix with everything else: every arithmetic op (test_ops.py), function
grids and relu (test_functions.py), a party that raises or dies (test_faults.py).
"""
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import mpi4py  # noqa: F401  (make test installs it: the mpi extra)

from mpc_ml.launch.mpi import find_mpiexec, run_mpi


def module_level_party():
    return None


def test_bad_arguments_fail_before_starting():
    with pytest.raises(TypeError, match="module-level function"):
        run_mpi(lambda: 1)
    with pytest.raises(ValueError, match="unknown provider"):
        run_mpi(module_level_party, provider="oracle")
    with pytest.raises(ValueError, match="world_size"):
        run_mpi(module_level_party, world_size=1)


# -- a plain `mpiexec -n 3 python script.py` ---------------------------------------------------
SCRIPT = textwrap.dedent('''
    import sys, time
    import numpy as np
    import torch
    from mpi4py import MPI

    import mpc_ml as mpc
    from mpc_ml.comm import CommTimeout, FrameError, PeerError
    from mpc_ml.comm import mpi
    from mpc_ml.launch.mpi import mpi_session
    from mpc_ml.session import activate

    world = MPI.COMM_WORLD
    me = world.Get_rank()

    def abort(*exc):  # a failed check stops the whole job (MPI_Finalize would wait)
        sys.__excepthook__(*exc)
        world.Abort(1)
    sys.excepthook = abort
    assert world.Get_size() == 3

    # -- the link itself, between ranks 0 and 1 (rank 2 only joins the Dup) -------------
    comm = world.Dup()
    mpi.CHUNK_BYTES = 1 << 16  # big payloads go as several messages: exercise that here
    def link(tags, cap=1 << 24):
        return mpi.MPILink(comm, me, 1 - me, 1 - me, tags, max_frame_bytes=cap, close_timeout=5)
    sent = [torch.arange(12.0).reshape(3, 4).t(),              # not contiguous
            torch.tensor([True, False, True]), torch.zeros(0, 3, dtype=torch.int64),
            torch.tensor(7, dtype=torch.int8), torch.full((300_000,), -3, dtype=torch.int64)]
    if me == 0:
        a = link((10, 11))
        for t in sent:
            a.send(t)
        sent[0].add_(100)  # after send: the peer must still get the old values
        a.send({"hello": [1, 2.5, "x"]})
        comm.Recv([np.empty(1, dtype=np.int64), MPI.INT64_T], source=1, tag=99)  # peer timed out
        a.send(torch.ones(2))
        bad = np.array([0x12345678, 1, 1, 1, 0, 8], dtype="<i8")  # wrong magic
        comm.Send([bad.view(np.uint8), MPI.BYTE], dest=1, tag=20)
        big = np.array([mpi.MAGIC, 1, 1, 1, 1, 1 << 30, 1 << 27], dtype="<i8")  # over the cap
        comm.Send([big.view(np.uint8), MPI.BYTE], dest=1, tag=30)
        comm.Send([np.zeros(30, dtype="<i8").view(np.uint8), MPI.BYTE], dest=1, tag=40)
        comm.Send([np.zeros(3, dtype="<i8").view(np.uint8), MPI.BYTE], dest=1, tag=50)
        one = np.array([mpi.MAGIC, 1, 1, 1, 1, 8, 1], dtype="<i8")  # one int64, then 16 bytes
        comm.Send([one.view(np.uint8), MPI.BYTE], dest=1, tag=60)
        comm.Send([np.zeros(16, dtype=np.uint8), MPI.BYTE], dest=1, tag=61)
        a.close()
    elif me == 1:
        a = link((10, 11))
        for t in sent:
            got = a.recv(5)
            assert got.dtype == t.dtype and torch.equal(got, t), (got, t)
        assert a.recv(5) == {"hello": [1, 2.5, "x"]}
        start = time.monotonic()
        try:
            a.recv(0.1)
            raise AssertionError("no timeout")
        except CommTimeout as e:
            assert "party 1: no message from party 0" in str(e), e
        assert time.monotonic() - start < 3
        comm.Send([np.ones(1, dtype=np.int64), MPI.INT64_T], dest=0, tag=99)  # rank 0 may go on
        assert torch.equal(a.recv(5), torch.ones(2))
        for tags, match in (((20, 21), "bad frame magic"), ((30, 31), "exceeds the cap"),
                            ((40, 41), "header message longer than"),
                            ((50, 51), "truncated frame header"),
                            ((60, 61), "payload message longer than its header")):
            try:
                link(tags, cap=1 << 20).recv(5)
                raise AssertionError("no FrameError")
            except FrameError as e:
                assert match in str(e) and "from party 0" in str(e), e
        try:
            a.recv(5)
            raise AssertionError("no PeerError")
        except PeerError as e:
            assert str(e) == "party 0 closed the connection", e
        a.close()
    assert mpi.drain(10)
    mpi.CHUNK_BYTES = 1 << 30

    # -- a session as mpc.init() will build it: 2 parties and the dealer (rank 2) ------------
    session = mpi_session("dealer", mpc.Config(comm_timeout_s=10.0))
    assert me in (0, 1), "the dealer rank must not return from mpi_session"
    activate(session)
    g = torch.Generator().manual_seed(5)
    x, w = torch.randn(4, 6, generator=g), torch.randn(6, 3, generator=g)
    px = mpc.encrypt(x if me == 0 else None, src=0, shape=x.shape)
    pw = mpc.encrypt(w if me == 1 else None, src=1, shape=w.shape)
    y = (px @ pw).relu().decrypt()
    assert (y - (x @ w).relu()).abs().max() < 1e-3, (y, (x @ w).relu())
    s = (px * px).sigmoid().decrypt()
    assert (s - (x * x).sigmoid()).abs().max() < 1e-3
    print(f"mpi script ok party {mpc.rank()} of {mpc.world_size()}", flush=True)
''')


def test_plain_mpiexec_script(tmp_path):
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    root = str(Path(__file__).resolve().parent.parent)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "HYDRA_", "MPC_"))}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    env["MPC_TORCH_THREADS"] = "1"
    proc = subprocess.run([find_mpiexec(), "-n", "3", sys.executable, str(script)], env=env,
                          capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # (mpiexec merges the ranks' output: two lines may come out as one)
    oks = sorted(re.findall(r"mpi script ok party \d of \d", proc.stdout))
    assert oks == ["mpi script ok party 0 of 2", "mpi script ok party 1 of 2"], proc.stdout
