#!/usr/bin/env python
"""Per-operation benchmark: time and traffic of 2-party private operations.

Two parties run as OS processes over the tcp backend on loopback (mpc.run), each with
one torch thread. For every row (operation x provider x truncation method) party 0
times the operation alone, on inputs that are already secret-shared, with
time.perf_counter, after one warm-up run, and takes the median over --repeats runs;
each party counts its traffic (mpc.reset_stats / mpc.stats) around the same run. The
parent process times the plaintext torch float32 operation with one thread on the same
inputs, for the ratio column.

    python benchmarks/ops.py                       # every row, full sizes
    python benchmarks/ops.py --quick               # small sizes, 1 repeat (a smoke test)
    python benchmarks/ops.py --ops matmul1024 mul1e6 --providers dealer --repeats 9

Prints a Markdown table; writes JSON (machine, versions, git commit, rows) to --out.
A row is one Op in OPS: add an operation by adding an entry there.
"""
from __future__ import annotations

import argparse
import json
import operator
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from tqdm import tqdm

import mpc_ml as mpc

ROOT = Path(__file__).resolve().parent.parent
WORLD_SIZE = 2
PROVIDERS = ("tfp", "dealer")
TRUNCATIONS = ("exact", "local")
MB = 1e6  # decimal megabytes, as CrypTen's figures below

# CrypTen 0.4.1 on the reference machine, as measured by the issue (2 parties, one torch
# thread each, loopback): op -> (median seconds, MB between the parties).
CRYPTEN = {"matmul1024": (0.37, 33.6), "mul1e6": (0.081, 32.0)}
# The aim for mpc_ml: at most this many seconds, with no more bytes than CrypTen.
TARGET_S = {"matmul1024": 0.25, "mul1e6": 0.04}


def randn(*shapes: tuple) -> Callable[[], tuple]:
    """make-inputs: seeded standard normal float32 tensors of these shapes."""
    def make() -> tuple:
        g = torch.Generator().manual_seed(0)
        return tuple(torch.randn(s, generator=g) for s in shapes)
    return make


@dataclass(frozen=True)
class Op:
    """One benchmarked operation. Input i is private to party i % WORLD_SIZE."""

    name: str
    full: Callable[[], tuple]   # make-inputs at benchmark size
    quick: Callable[[], tuple]  # make-inputs for --quick
    private: Callable           # on MPCTensors
    plain: Callable             # on torch tensors


OPS = [
    Op("matmul256", randn((256, 256), (256, 256)), randn((32, 32), (32, 32)),
       operator.matmul, torch.matmul),
    Op("matmul1024", randn((1024, 1024), (1024, 1024)), randn((64, 64), (64, 64)),
       operator.matmul, torch.matmul),
    Op("mul1e6", randn((10**6,), (10**6,)), randn((10**4,), (10**4,)),
       operator.mul, torch.mul),
    Op("conv2d", randn((32, 64, 32, 32), (64, 64, 3, 3)), randn((2, 8, 8, 8), (8, 8, 3, 3)),
       lambda x, w: x.conv2d(w, padding=1), lambda x, w: F.conv2d(x, w, padding=1)),
    # Nonlinear rows take one input, e.g.
    # Op("relu1e6", randn((10**6,)), randn((10**4,)), lambda x: x.relu(), torch.relu),
]
OPS_BY_NAME = {op.name: op for op in OPS}


def inputs_of(op: Op, quick: bool) -> tuple:
    return (op.quick if quick else op.full)()


# -- inside a party ----------------------------------------------------------------------
def _party(names: list[str], quick: bool, repeats: int) -> list[dict]:
    """Run each op warm-up + repeats times; per op: party 0's times, this party's stats."""
    torch.set_num_threads(1)
    rank = mpc.rank()
    token = mpc.encrypt(torch.zeros(1) if rank == 0 else None, src=0, shape=(1,))
    out = []
    for name in names:
        op = OPS_BY_NAME[name]
        inputs = inputs_of(op, quick)
        xs = [mpc.encrypt(t if rank == i % WORLD_SIZE else None, src=i % WORLD_SIZE,
                          shape=t.shape) for i, t in enumerate(inputs)]
        times, stats = [], {}
        for rep in range(repeats + 1):  # rep 0 is the warm-up
            y = None  # free the previous result before the next run
            token.decrypt()  # barrier: both parties start together
            mpc.reset_stats()
            start = time.perf_counter()
            y = op.private(*xs)
            elapsed = time.perf_counter() - start
            stats = mpc.stats()
            if rep:
                times.append(elapsed)
        result = y.decrypt(dst=0)
        err = None
        if rank == 0:
            expected = op.plain(*(t.double() for t in inputs))
            err = float((result.double() - expected).abs().max())
        out.append({"op": name, "times_s": times if rank == 0 else [], "stats": stats,
                    "max_abs_err": err})
    return out


# -- in the parent ----------------------------------------------------------------------
def run_config(provider: str, truncation: str, names: list[str], quick: bool,
               repeats: int) -> list[dict]:
    """One mpc.run (one pair of party processes) for every op under one configuration."""
    per_party = mpc.run(_party, world_size=WORLD_SIZE, backend="tcp", provider=provider,
                        args=(names, quick, repeats),
                        config=mpc.Config(truncation=truncation))
    rows = []
    for name, parts in zip(names, zip(*per_party)):
        stats = [p["stats"] for p in parts]
        times = parts[0]["times_s"]
        rows.append({
            "op": name, "provider": provider, "truncation": truncation, "repeats": repeats,
            "times_s": times, "median_s": statistics.median(times),
            "rounds": [s["rounds"] for s in stats],
            "messages": [s["messages"] for s in stats],
            "bytes_sent": [s["bytes_sent"] for s in stats],
            "bytes_received": [s["bytes_received"] for s in stats],
            "total_bytes": sum(s["bytes_sent"] for s in stats),
            "dealer_bytes": sum(s.get("dealer_bytes_sent", 0) + s.get("dealer_bytes_received", 0)
                                for s in stats),
            "max_abs_err": parts[0]["max_abs_err"],
        })
    return rows


def time_plain(op: Op, quick: bool, repeats: int) -> float:
    """Median seconds of the plaintext float32 op with one torch thread, after a warm-up."""
    inputs = inputs_of(op, quick)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        op.plain(*inputs)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            op.plain(*inputs)
            times.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)
    return statistics.median(times)


def _git(*args: str) -> str | None:
    try:
        return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True,
                              check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def machine_info() -> dict:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f
                        if line.startswith("model name")), cpu)
    except OSError:
        pass
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {"platform": platform.platform(), "cpu": cpu, "cpu_count": os.cpu_count(),
            "python": platform.python_version(), "torch": torch.__version__,
            "mpc_ml": mpc.__version__, "git_commit": _git("rev-parse", "HEAD"),
            "git_dirty": bool(status) if status is not None else None,
            "loadavg_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def markdown(rows: list[dict]) -> str:
    head = ["op", "shapes", "provider", "trunc", "time ms", "plain ms", "ratio", "rounds",
            "MB sent p0", "MB sent p1", "MB total", "dealer MB", "max err",
            "CrypTen s", "CrypTen MB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["op"], ", ".join("x".join(map(str, s)) for s in r["shapes"]), r["provider"],
                 r["truncation"], _fmt(1e3 * r["median_s"], ".4g"),
                 _fmt(1e3 * r["plain_median_s"], ".4g"), _fmt(r["ratio"], ".1f"),
                 "/".join(map(str, sorted(set(r["rounds"]), key=r["rounds"].index))),
                 _fmt(r["bytes_sent"][0] / MB, ".3g"), _fmt(r["bytes_sent"][1] / MB, ".3g"),
                 _fmt(r["total_bytes"] / MB, ".3g"), _fmt(r["dealer_bytes"] / MB, ".3g"),
                 _fmt(r["max_abs_err"], ".2g"),
                 _fmt(r["crypten_s"], ".3f"), _fmt(r["crypten_mb"], ".1f")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small sizes and 1 repeat (smoke test)")
    p.add_argument("--repeats", type=int, default=None,
                   help="timed runs per row after the warm-up (default 5; 1 with --quick)")
    p.add_argument("--ops", nargs="+", choices=list(OPS_BY_NAME), default=list(OPS_BY_NAME))
    p.add_argument("--providers", nargs="+", choices=PROVIDERS, default=list(PROVIDERS))
    p.add_argument("--truncations", nargs="+", choices=TRUNCATIONS, default=list(TRUNCATIONS))
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "ops.json")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = p.parse_args(argv[1:] if argv[:1] == ["--"] else argv)  # `mpc-ml bench -- ...`
    if args.repeats is None:
        args.repeats = 1 if args.quick else 5
    if args.repeats < 1:
        p.error("--repeats must be at least 1")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    info = machine_info()
    configs = [(p, t) for p in args.providers for t in args.truncations]
    rows: list[dict] = []
    with tqdm(total=len(configs) * len(args.ops), desc="rows", unit="row") as bar:
        for provider, truncation in configs:
            bar.set_postfix_str(f"{provider}/{truncation}")
            rows += run_config(provider, truncation, args.ops, args.quick, args.repeats)
            bar.update(len(args.ops))
    plain = {name: time_plain(OPS_BY_NAME[name], args.quick, args.repeats) for name in args.ops}
    for r in rows:
        op = OPS_BY_NAME[r["op"]]
        crypten_s, crypten_mb = (None, None) if args.quick else CRYPTEN.get(r["op"], (None, None))
        r.update(shapes=[list(t.shape) for t in inputs_of(op, args.quick)],
                 plain_median_s=plain[r["op"]], ratio=r["median_s"] / plain[r["op"]],
                 crypten_s=crypten_s, crypten_mb=crypten_mb,
                 target_s=None if args.quick else TARGET_S.get(r["op"]))
    rows.sort(key=lambda r: (args.ops.index(r["op"]), configs.index((r["provider"],
                                                                     r["truncation"]))))
    info["loadavg_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    report = {"benchmark": "ops", "world_size": WORLD_SIZE, "backend": "tcp",
              "threads_per_party": 1, "quick": args.quick, "repeats": args.repeats,
              "machine": info, "crypten_reference": CRYPTEN, "target_s": TARGET_S,
              "rows": rows}
    print(markdown(rows))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.out}", file=sys.stderr)
    return report


if __name__ == "__main__":
    main()
