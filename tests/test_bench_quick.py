"""benchmarks/ops.py --quick runs end to end and reports every row consistently."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "ops.py"


def test_bench_quick(tmp_path):
    out = tmp_path / "ops.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(out.read_text())
    assert report["quick"] and report["machine"]["torch"]

    spec = importlib.util.spec_from_file_location("benchmarks_ops", SCRIPT)
    ops = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ops)
    expected = {(op.name, p, t) for op in ops.OPS for p in ops.PROVIDERS for t in ops.TRUNCATIONS}
    rows = report["rows"]
    assert {(r["op"], r["provider"], r["truncation"]) for r in rows} == expected
    assert len(rows) == len(expected)
    for r in rows:
        where = f'{r["op"]} {r["provider"]} {r["truncation"]}'
        assert r["median_s"] > 0 and r["plain_median_s"] > 0, where
        assert all(t > 0 for t in r["times_s"]) and len(r["times_s"]) == report["repeats"], where
        assert r["bytes_sent"][0] > 0 and r["bytes_sent"][0] == r["bytes_received"][1], where
        assert r["bytes_sent"][1] == r["bytes_received"][0], where
        assert r["total_bytes"] == sum(r["bytes_sent"]), where
        assert min(r["rounds"]) >= 1, where
        assert r["max_abs_err"] < 1e-2, where
        assert (r["dealer_bytes"] > 0) == (r["provider"] == "dealer"), where
    assert "| op |" in proc.stdout
