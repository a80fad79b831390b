"""`mpc-ml bench --quick` (benchmarks/suite.py) runs end to end, under 3 minutes, and
reports every row of every job with real values. Network namespaces and CrypTen are
not needed (the quick mode runs profile lan only and skips CrypTen when it is absent)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))


def test_bench_suite_quick(tmp_path):
    import suite  # benchmarks/suite.py

    out = tmp_path / "suite"  # 2 parties (3 parties' costs: tests/test_protocol_costs*.py)
    proc = subprocess.run([sys.executable, "-m", "mpc_ml", "bench", "--quick", "--parties", "2",
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-4000:] + proc.stdout[-2000:]
    report = json.loads((out / "suite.json").read_text())
    assert (out / "suite.md").read_text().startswith("- profile `lan`")
    assert (out / "time_per_profile.png").stat().st_size > 1000
    assert report["quick"] and report["machine"]["torch"]
    # the commit, in a git checkout (a copy of the tree without .git, as on a lent GPU, has none)
    assert report["machine"]["git_commit"] or not (ROOT / ".git").exists()
    assert [p["name"] for p in report["profiles"]] == ["lan"]
    measured = report["profiles"][0]["measured"]
    assert set(measured) == {f"n=2 {p}" for p in ("tfp", "dealer")}
    for probe in measured.values():
        assert 0 < probe["rtt_s"] < 0.5 and probe["bandwidth_bit_s"] > 1e7
    rows = report["rows"]
    names = suite.OP_ROWS + suite.MODEL_ROWS
    assert {(r["name"], r["parties"], r["provider"]) for r in rows} == {
        (name, 2, p) for name in names for p in ("tfp", "dealer")}
    by = {(r["name"], r["parties"], r["provider"]): r for r in rows}
    for r in rows:
        where = f'{r["name"]} n={r["parties"]} {r["provider"]}'
        n = r["parties"]
        assert r["min_s"] <= r["q1_s"] <= r["median_s"] <= r["q3_s"] <= r["max_s"], where
        assert r["median_s"] > 0 and r["plain_median_s"] > 0 and r["ratio"] > 1, where
        assert len(r["rounds"]) == len(r["bytes_sent"]) == len(r["peak_rss_bytes"]) == n, where
        assert min(r["rounds"]) >= 1 and min(r["bytes_sent"]) > 0, where
        assert sum(r["bytes_sent"]) == sum(r["bytes_received"]), where
        assert all(50 << 20 < m < 8 << 30 for m in r["peak_rss_bytes"]), where
        if r["max_scaled_err"] is not None:  # ops: |err| / max(1, |value|), ERROR_BOUNDS' form
            assert r["max_scaled_err"] <= (r["err_bound"] or 1e-2), where
        else:
            assert r["max_abs_err"] is not None and r["max_abs_err"] < 1e-2, where
        assert (r["dealer_bytes"] > 0) == (r["provider"] == "dealer"), where
        # the same protocol under either provider: same rounds and bytes between parties
        twin = by[(r["name"], n, "tfp")]
        assert r["rounds"] == twin["rounds"] and r["bytes_sent"] == twin["bytes_sent"], where
        if r["spec"] is not None:  # the cost model of protocols/ holds exactly
            assert r["spec_match"], (where, r["spec"], r["rounds"], r["bytes_sent"])
    # every op row is checked against protocols/ and equal; models have no whole-model spec
    assert {r["name"] for r in rows if r["spec_match"]} == set(suite.OP_ROWS)
    assert all(r["spec_check"] == "equal" for r in rows if r["kind"] == "op")
    assert all(r["spec_check"] == "n/a (no model spec)" for r in rows if r["kind"] == "model")
    relu = by[("relu1e5", 2, "tfp")]
    assert relu["rounds"] == [5, 5]  # comparison.toml [relu]: csa_rounds + 5
    if report["crypten"] is None:
        assert any("CrypTen" in note for note in report["notes"])


def test_bench_suite_device(tmp_path):
    """--device cpu, asked for explicitly, runs and records the device and its name; cuda
    runs too where torch sees a GPU (then the matmul row is also timed against a float64
    GEMM there), and elsewhere is refused with a clear error before any party starts, as
    is a device that does not exist."""
    import torch

    import suite  # benchmarks/suite.py

    rows = ["--ops", "matmul1024", "--models", "lenet5_b1", "--parties", "2",
            "--providers", "tfp", "--no-crypten"]

    def bench(device: str, out: Path):
        return subprocess.run([sys.executable, "-m", "mpc_ml", "bench", "--quick", "--device",
                               device, *rows, "--out", str(out)],
                              cwd=ROOT, capture_output=True, text=True, timeout=120)

    def check(device: str, out: Path, name: str) -> dict:
        proc = bench(device, out)
        assert proc.returncode == 0, proc.stderr[-4000:] + proc.stdout[-2000:]
        report = json.loads((out / "suite.json").read_text())
        assert report["device"]["device"] == device and report["device"]["device_name"] == name
        assert {r["name"] for r in report["rows"]} == {"matmul1024", "lenet5_b1"}
        for r in report["rows"]:
            assert r["device"] == device and r["median_s"] > 0 and r["plain_median_s"] > 0
            assert r["max_abs_err"] < 1e-2, r
        md = (out / "suite.md").read_text()
        assert md.startswith("- profile `lan`") and f"- device: `{device}` ({name}" in md
        return report

    cpu = check("cpu", tmp_path / "cpu", suite.common.cpu_name())
    assert cpu["device"]["device_name"] == cpu["machine"]["cpu"]
    assert not any("plain_f64_median_s" in r for r in cpu["rows"])  # CPU figures as before
    if torch.cuda.is_available():
        gpu = check("cuda", tmp_path / "cuda", torch.cuda.get_device_name())
        (matmul,) = [r for r in gpu["rows"] if r["name"] == "matmul1024"]
        assert matmul["plain_f64_median_s"] > 0
        assert matmul["ratio_f64"] == matmul["median_s"] / matmul["plain_f64_median_s"]
        assert all(b and b > 0 for r in gpu["rows"] for b in r["peak_device_bytes"]), gpu["rows"]
        assert "float64 GEMM" in (tmp_path / "cuda" / "suite.md").read_text()
    else:
        proc = bench("cuda", tmp_path / "refused")
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert "--device cuda: torch.cuda.is_available() is False" in proc.stderr
        assert "party" not in proc.stderr and not (tmp_path / "refused").exists()
    for wrong in ("tpu", "cuda:x", "cpu:1"):
        with pytest.raises(SystemExit):
            suite.parse_args(["--device", wrong])


def test_compare_devices(tmp_path):
    """suite.py --compare (benchmarks/gpu_check.sh's summary): the two sides row by row,
    the speed-up and float64 aims, and the log tail of a group that wrote no report."""
    import suite  # benchmarks/suite.py

    def report(device, name, rows):
        return {"machine": {"cpu": "Some CPU", "cpu_count": 16},
                "device": {"device": device, "device_name": name}, "rows": rows}

    def row(name, median, provider="tfp", **extra):
        return {"name": name, "parties": 2, "provider": provider, "median_s": median,
                "plain_median_s": median / 100, "ratio": 100.0, **extra}

    for side, device, name, rows in [
            ("cpu", "cpu", "Some CPU", [row("resnet18_b64", 500.0), row("matmul1024", 0.3),
                                        row("lenet5_b1", 0.1)]),
            ("gpu", "cuda", "NVIDIA H200", [row("resnet18_b64", 20.0),
                                            row("matmul1024", 0.01, plain_f64_median_s=0.002,
                                                ratio_f64=5.0)])]:
        (tmp_path / side / "group").mkdir(parents=True)
        (tmp_path / side / "group" / "suite.json").write_text(
            json.dumps(report(device, name, rows)))
    (tmp_path / "gpu" / "bert.log").write_text("start\nRuntimeError: tensors on two devices\n")
    (tmp_path / "gpu" / "group.log").write_text("a group that wrote its report\n")
    md, merged = suite.compare_devices(tmp_path / "cpu", tmp_path / "gpu")
    assert "- device: `cuda` (NVIDIA H200) [GPU side" in md and "`cpu` (Some CPU)" in md
    by = {r["name"]: r for r in merged["rows"]}
    assert [r["name"] for r in merged["rows"]] == ["matmul1024", "lenet5_b1", "resnet18_b64"]
    assert by["resnet18_b64"]["speedup"] == 25.0 and by["resnet18_b64"]["aim"] == ">= 20x: met"
    assert by["matmul1024"]["aim"] == "<= 4x float64: missed"
    assert by["lenet5_b1"]["other"] is None and by["lenet5_b1"]["speedup"] is None
    assert "GPU side group `bert` failed" in md and "tensors on two devices" in md
    assert merged["failed"]["other"][0][0] == "bert"
