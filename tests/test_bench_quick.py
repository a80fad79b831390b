"""benchmarks/ops.py --quick runs end to end and reports every row consistently."""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import load_benchmark

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "ops.py"


@pytest.fixture(scope="module")
def ops():
    return load_benchmark("ops")


def test_bench_quick(tmp_path, ops):
    out = tmp_path / "ops.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(out.read_text())
    assert report["quick"] and report["machine"]["torch"]
    assert len(report["machine"]["loadavg_start"]) == 3

    # every row under every provider and each truncation it supports (nonlinear: exact)
    expected = {(op.name, p, t) for op in ops.OPS for p in ops.PROVIDERS for t in op.truncations}
    assert {op.family for op in ops.OPS} >= {"relu", "sigmoid", "exp", "reciprocal", "softmax"}
    rows = report["rows"]
    assert {(r["op"], r["provider"], r["truncation"]) for r in rows} == expected
    assert len(rows) == len(expected)
    for r in rows:
        op = ops.OPS_BY_NAME[r["op"]]
        where = f'{r["op"]} {r["provider"]} {r["truncation"]}'
        assert r["median_s"] > 0 and r["plain_median_s"] > 0, where
        assert all(t > 0 for t in r["times_s"]) and len(r["times_s"]) == report["repeats"], where
        assert r["bytes_sent"][0] > 0 and r["bytes_sent"][0] == r["bytes_received"][1], where
        assert r["bytes_sent"][1] == r["bytes_received"][0], where
        assert r["total_bytes"] == sum(r["bytes_sent"]), where
        assert r["elements"] == math.prod(r["shapes"][0]), where
        assert r["bytes_per_elem"] == max(r["bytes_sent"]) / r["elements"], where
        assert min(r["rounds"]) >= 1, where
        bound = ops.err_bound(op)
        assert r["err_bound"] == bound, where
        if bound is None:
            assert r["max_abs_err"] < 1e-2, where
        else:  # within the function's bound (ERROR_BOUNDS, mpc_ml/primitives/approximations.py)
            assert r["max_scaled_err"] <= bound, where
        assert r["max_scaled_err"] <= r["max_abs_err"], where
        assert (r["dealer_bytes"] > 0) == (r["provider"] == "dealer"), where
        assert r["crypten"] is None and r["aim"] is None and r["aim_missed"] is None, where
    # relu: one comparison (4 carry-tree rounds for 2 parties), then the bit's conversion
    # with the product by it in one round (comparison.toml [relu])
    relu = [r for r in rows if r["op"].startswith("relu")]
    assert relu and all(r["rounds"] == [5, 5] for r in relu)
    assert all(r["bytes_per_elem"] <= ops.AIMS["relu1e6"]["bytes_per_elem"] for r in relu)
    assert "| op |" in proc.stdout and "B/elem" in proc.stdout


def test_row_selection(ops):
    assert ops.select_ops(None, None) == [op.name for op in ops.OPS]
    assert ops.select_ops(["relu"], None) == ["relu1e5", "relu1e6"]
    assert ops.select_ops(["relu", "mul1e6", "conv2d"], ["1e6"]) == ["mul1e6", "relu1e6"]
    assert ops.select_ops(None, ["1e5"]) == [f"{f}1e5" for f in
                                             ("relu", "sigmoid", "exp", "reciprocal", "softmax")]
    args = ops.parse_args(["--ops", "softmax", "matmul256", "--sizes", "1e5", "256"])
    assert args.names == ["softmax1e5", "matmul256"]  # in the order asked for
    assert ops.parse_args(["--quick"]).repeats == 1
    for bad in (["--ops", "nosuchop"], ["--ops", "matmul256", "--sizes", "1e5"]):
        with pytest.raises(SystemExit):
            ops.parse_args(bad)
    assert all(name in ops.OPS_BY_NAME for name in list(ops.CRYPTEN) + list(ops.AIMS))


def test_err_bounds_come_from_error_bounds(ops):
    from mpc_ml.primitives.approximations import ERROR_BOUNDS

    bounds = {op.family: ops.err_bound(op) for op in ops.OPS}
    for family in ("sigmoid", "exp", "reciprocal", "softmax"):
        assert bounds[family] == ERROR_BOUNDS[family].tolerance, family
    assert bounds["relu"] == 2.0 ** -16  # exact but for the rounding to fixed point
    assert bounds["matmul"] is bounds["mul"] is bounds["conv2d"] is None


def test_aim_missed(ops):
    row = {"median_s": 0.4, "rounds": [9, 9], "total_bytes": 416e6, "bytes_per_elem": 208.0,
           "max_scaled_err": 0.0}
    aim = ops.AIMS["relu1e6"]
    assert ops.aim_missed(row, aim, 2.0 ** -16) == []
    slow = dict(row, median_s=0.5, rounds=[9, 10], max_scaled_err=1.0)
    assert ops.aim_missed(slow, aim, 2.0 ** -16) == ["s", "rounds", "err"]
    assert ops.aim_missed(dict(row, total_bytes=40e6), ops.AIMS["mul1e6"], None) == ["s", "mb"]
