"""benchmarks/models.py --quick runs end to end and reports every row consistently."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import load_benchmark

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "models.py"
sys.path.insert(0, str(ROOT / "benchmarks"))


@pytest.fixture(scope="module")
def models():
    return load_benchmark("models")


def test_bench_models_quick(tmp_path, models):
    out = tmp_path / "models.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(out.read_text())
    assert report["quick"] and report["benchmark"] == "models" and report["machine"]["torch"]
    assert len(report["machine"]["loadavg_start"]) == 3

    expected = {(name, p) for name in ("lenet5_b32", "lenet5_b1", "resnet18", "mlp_step")
                for p in ("tfp", "dealer")}
    rows = report["rows"]
    assert {(r["row"], r["provider"]) for r in rows} == expected and len(rows) == len(expected)
    for r in rows:
        where = f'{r["row"]} {r["provider"]}'
        assert r["median_s"] > 0 and r["plain_median_s"] > 0, where
        assert all(t > 0 for t in r["times_s"]) and len(r["times_s"]) == report["repeats"], where
        assert min(r["bytes_sent"]) > 0 and min(r["rounds"]) >= 1, where
        # what party 0 sends is what party 1 receives, and back
        assert r["bytes_sent"][0] == r["bytes_received"][1], where
        assert r["bytes_sent"][1] == r["bytes_received"][0], where
        assert r["total_bytes"] == sum(r["bytes_sent"]), where
        assert (r["dealer_bytes"] > 0) == (r["provider"] == "dealer"), where
        assert r["max_abs_err"] is not None and r["max_abs_err"] < 1e-2, where
        assert r["crypten"] is None and r["aim"] is None and r["aim_missed"] is None, where
    # the protocol's traffic does not depend on who supplies the randomness
    for name in ("lenet5_b32", "lenet5_b1", "resnet18", "mlp_step"):
        tfp, dealer = (next(r for r in rows if r["row"] == name and r["provider"] == p)
                       for p in ("tfp", "dealer"))
        assert tfp["rounds"] == dealer["rounds"] and tfp["bytes_sent"] == dealer["bytes_sent"]
    assert "| row |" in proc.stdout and "CrypTen" in proc.stdout


def test_models_and_options(models):
    import rows  # benchmarks/rows.py: the torch models

    # the architectures the issue names, at full size (parameter counts of LeNet-5 and
    # of the CIFAR-style ResNet-18 with 10 classes)
    assert sum(p.numel() for p in rows.LeNet5().parameters()) == 61706
    assert sum(p.numel() for p in rows.ResNet18().parameters()) == 11173962
    resnet = rows.resnet18(True)
    assert not resnet.training
    assert any(float((m.running_var - 1).abs().max()) > 0.05 for m in resnet.modules()
               if hasattr(m, "running_var"))
    args = models.parse_args(["--quick"])
    assert args.repeats == 1 and args.names == list(models.ROWS_BY_NAME)
    assert models.parse_args(["--rows", "mlp_step", "lenet5_b1"]).names == ["mlp_step",
                                                                            "lenet5_b1"]
    with pytest.raises(SystemExit):
        models.parse_args(["--rows", "vgg16"])
    assert set(models.CRYPTEN) == set(models.AIMS) <= set(models.ROWS_BY_NAME)
    row = {"median_s": 0.4, "total_bytes": 100e6, "max_abs_err": 1e-4}
    assert models.aim_missed(row, models.AIMS["lenet5_b32"]) == []
    assert models.aim_missed(dict(row, median_s=0.5, max_abs_err=0.1),
                             models.AIMS["lenet5_b32"]) == ["s", "err"]
    assert models.aim_missed(row, models.AIMS["mlp_step"]) == ["s", "mb"]


def test_party_loops_take_the_device_branch(models):
    """The party loops of models.py and ops.py on a device other than the CPU (faked here:
    common.is_cpu answers False for 'cpu' and torch.cuda.synchronize is counted), so the
    branch a GPU run takes (model.to, encrypt(device=), the device PRG, a synchronize
    before each clock read) runs on every machine."""
    from unittest import mock

    import torch

    import mpc_ml as mpc

    ops = load_benchmark("ops")
    common = sys.modules["common"]  # the benchmarks' common.py, as models.py imported it
    synced = []
    threads = torch.get_num_threads()  # the party loops set one thread (inproc: this process)
    try:
        with mock.patch.object(common, "is_cpu", lambda device: False), \
                mock.patch.object(torch.cuda, "synchronize", synced.append):
            config = mpc.Config(**common.device_config("cpu"))
            assert (config.device, config.prg) == ("cpu", "chacha20")
            model_rows = mpc.run(models._party, world_size=2, provider="tfp", config=config,
                                 args=(["lenet5_b1", "mlp_step"], True, 1, False, "cpu"))
            op_rows = mpc.run(ops._party, world_size=2, provider="tfp", config=config,
                              args=(["matmul1024", "relu1e5"], True, 1, "cpu"))
            plain = models.time_plain(models.ROWS_BY_NAME["lenet5_b1"], True, 1, "cpu")
    finally:
        torch.set_num_threads(threads)
    for r in model_rows[0] + op_rows[0]:
        assert r["max_abs_err"] < 1e-2 and len(r["times_s"]) == 1, r
    # warm-up and timed run, 4 rows, 2 parties; the plaintext reference: warm-up and 1 run
    assert len(synced) == 2 * 4 * 2 + 2 and set(synced) == {"cpu"} and plain > 0
