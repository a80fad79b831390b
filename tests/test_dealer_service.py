"""One dealer service serves several jobs, one after another and at once, each found by its
job id; a job that never completes is dropped without touching the others."""
from __future__ import annotations

import threading

import torch

import mpc_ml as mpc
from helpers import free_addresses
from mpc_ml.comm import tcp
from mpc_ml.launch import tcp_session
from mpc_ml.launch.dealer_service import serve_jobs
from mpc_ml.session import activate

FAST = mpc.Config(connect_timeout_s=10, comm_timeout_s=10)




def _job(job_id: str, n: int, dealer_addr: str, scale: float, out: dict) -> list[threading.Thread]:
    addrs = free_addresses(n)
    config = FAST.replace(job_id=job_id)

    def party(rank: int) -> None:
        try:
            session = tcp_session(rank, n, addrs, "dealer", config, dealer_addr=dealer_addr)
            activate(session)
            x = mpc.encrypt(torch.arange(4.0) * scale, src=0)
            y = mpc.encrypt(torch.full((4,), 2.0), src=n - 1)
            out[(job_id, rank)] = (x * y).relu().decrypt()
            activate(None)
            session.close()
        except BaseException as e:  # checked below
            out[(job_id, rank)] = e

    threads = [threading.Thread(target=party, args=(r,)) for r in range(n)]
    for t in threads:
        t.start()
    return threads


def test_one_dealer_serves_jobs_at_once_and_one_after_another(capfd):
    listener = tcp.listen("127.0.0.1:0")
    dealer_addr = f"127.0.0.1:{listener.getsockname()[1]}"
    served: dict = {}
    service = threading.Thread(target=lambda: served.setdefault(
        "n", serve_jobs(listener, FAST, max_jobs=3)), daemon=True)
    service.start()
    out: dict = {}
    together = _job("a", 2, dealer_addr, 1.0, out) + _job("b", 3, dealer_addr, -1.0, out)
    for t in together:
        t.join(60)
    later = _job("c", 2, dealer_addr, 0.5, out)
    for t in later:
        t.join(60)
    service.join(60)
    assert not service.is_alive() and served["n"] > 0
    for (job, rank), value in out.items():
        scale = {"a": 1.0, "b": -1.0, "c": 0.5}[job]
        assert torch.allclose(value, (torch.arange(4.0) * scale * 2).relu()), (job, rank, value)
    assert len(out) == 7


def test_an_incomplete_job_is_dropped_and_the_others_are_served(capfd):
    listener = tcp.listen("127.0.0.1:0")
    dealer_addr = f"127.0.0.1:{listener.getsockname()[1]}"
    config = FAST.replace(connect_timeout_s=2, comm_timeout_s=4)
    service = threading.Thread(target=serve_jobs, args=(listener, config), kwargs={"max_jobs": 1},
                               daemon=True)
    service.start()
    lonely: dict = {}

    def half_a_job() -> None:  # rank 0 of a 2-party job whose rank 1 never reaches the dealer
        from mpc_ml.comm import DEALER_RANK, PeerError
        from mpc_ml.config import PROTOCOL_VERSION
        hello = {"rank": 0, "world_size": 2, "job": "lonely", "protocol_version": PROTOCOL_VERSION}
        link = tcp.connect(dealer_addr, 0, DEALER_RANK, hello, 5, 1 << 20)
        try:
            link.recv(20)
        except PeerError as e:
            lonely["error"] = e
        finally:
            link.close()

    waiting = threading.Thread(target=half_a_job)
    waiting.start()
    waiting.join(60)  # the dealer gives up on it after connect_timeout_s
    out: dict = {}
    for t in _job("whole", 2, dealer_addr, 1.0, out):  # and still serves the next job
        t.join(60)
    service.join(60)
    assert all(isinstance(v, torch.Tensor) for v in out.values()) and len(out) == 2
    assert "the dealer" in str(lonely["error"])  # dropped: its link closed, not left hanging
    assert "dropped job 'lonely': ranks [1] did not connect" in capfd.readouterr().err


def test_the_dealer_makes_correlations_on_its_device_and_refuses_one_it_lacks(monkeypatch):
    """Config.device for the dealer (`mpc-ml dealer --device`): its correlation generator
    makes the draws and products there; a device its torch does not have is refused
    before it listens for jobs."""
    import subprocess
    import sys

    import pytest

    from mpc_ml.providers import base

    made_on = []
    real_init = base.CorrelationGenerator.__init__

    def recording(self, streams, correction_party, device=None):
        made_on.append(device)
        real_init(self, streams, correction_party, device)

    monkeypatch.setattr(base.CorrelationGenerator, "__init__", recording)
    listener = tcp.listen("127.0.0.1:0")
    dealer_addr = f"127.0.0.1:{listener.getsockname()[1]}"
    service = threading.Thread(target=serve_jobs, args=(listener, FAST.replace(device="cpu:0")),
                               kwargs={"max_jobs": 1}, daemon=True)
    service.start()
    out: dict = {}
    for t in _job("on-device", 2, dealer_addr, 1.0, out):
        t.join(60)
    service.join(60)
    assert made_on == ["cpu:0"]
    for value in out.values():
        assert torch.allclose(value, (torch.arange(4.0) * 2).relu()), value

    with pytest.raises(ValueError, match=r"'cuda:99': this process's torch sees"):
        serve_jobs(tcp.listen("127.0.0.1:0"), FAST.replace(device="cuda:99"), max_jobs=1)
    proc = subprocess.run([sys.executable, "-m", "mpc_ml", "dealer", "--listen", "127.0.0.1:0",
                           "-n", "2", "--device", "cuda:99"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode != 0 and "cuda:99" in proc.stderr and "Traceback" not in proc.stderr
