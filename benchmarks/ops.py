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
    python benchmarks/ops.py --ops relu sigmoid --sizes 1e6   # families, one size

Prints a Markdown table (with bytes sent per element per party, the error scaled as
the bounds of mpc_ml/functions.py, and CrypTen's figures and the aims where the
issues gave them); writes JSON (machine, load average, versions, git commit, rows)
to --out. A row is one Op in OPS: add an operation by adding an entry there.
"""
from __future__ import annotations

import argparse
import json
import math
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

# CrypTen 0.4.1 on the reference machine, as measured by the issues that asked for these
# rows (2 parties, one torch thread each, loopback): median seconds, rounds, MB between
# the parties, bytes sent per element per party; None where the issue gave no figure.
CRYPTEN = {
    "matmul1024": {"s": 0.37, "rounds": None, "mb": 33.6, "bytes_per_elem": None},
    "mul1e6": {"s": 0.081, "rounds": None, "mb": 32.0, "bytes_per_elem": None},
    "relu1e6": {"s": 1.43, "rounds": 9, "mb": None, "bytes_per_elem": 232},
    "sigmoid1e5": {"s": 0.25, "rounds": 23, "mb": None, "bytes_per_elem": None},
    "reciprocal1e5": {"s": 0.39, "rounds": 38, "mb": None, "bytes_per_elem": None},
    # with 4.9% relative error on [-5, 5]
    "exp1e5": {"s": 0.063, "rounds": 8, "mb": None, "bytes_per_elem": None},
}
# The issues' aims for mpc_ml: at most these seconds / rounds / MB in total / bytes sent
# per element per party (each row also within its Op.err_bound, where it has one).
AIMS = {
    "matmul1024": {"s": 0.25, "mb": 33.6},
    "mul1e6": {"s": 0.04, "mb": 32.0},
    "relu1e6": {"s": 0.45, "rounds": 9, "bytes_per_elem": 232},
    "sigmoid1e5": {"s": 0.25},
    "reciprocal1e5": {"s": 0.39},
    "exp1e5": {"s": 0.063},
}


def _generated(make_one: Callable, shapes: tuple) -> Callable[[], tuple]:
    def make() -> tuple:
        g = torch.Generator().manual_seed(0)
        return tuple(make_one(s, g) for s in shapes)
    return make


def randn(*shapes: tuple) -> Callable[[], tuple]:
    """make-inputs: seeded standard normal float32 tensors of these shapes."""
    return _generated(lambda s, g: torch.randn(s, generator=g), shapes)


def uniform(lo: float, hi: float, *shapes: tuple) -> Callable[[], tuple]:
    """make-inputs: seeded float32 tensors uniform on [lo, hi)."""
    return _generated(lambda s, g: lo + (hi - lo) * torch.rand(s, generator=g), shapes)


def log_uniform(lo: float, hi: float, *shapes: tuple) -> Callable[[], tuple]:
    """make-inputs: seeded float32 tensors whose log is uniform on [log lo, log hi)."""
    a, b = math.log(lo), math.log(hi)
    return _generated(lambda s, g: torch.exp(a + (b - a) * torch.rand(s, generator=g)), shapes)


@dataclass(frozen=True)
class Op:
    """One benchmarked operation. Input i is private to party i % WORLD_SIZE."""

    name: str
    full: Callable[[], tuple]   # make-inputs at benchmark size
    quick: Callable[[], tuple]  # make-inputs for --quick
    private: Callable           # on MPCTensors
    plain: Callable             # on torch tensors
    size: str | None = None     # the size in the name ("1e6"), for --sizes
    truncations: tuple = TRUNCATIONS  # the truncation methods this row runs under
    err_bound: float | None = None  # bound on max |y - f(x)| / max(1, |f(x)|) (functions.py)

    @property
    def family(self) -> str:
        """The name without its size: what `--ops relu` selects."""
        if self.size and self.name.endswith(self.size):
            return self.name[:-len(self.size)]
        return self.name


def _nonlinear(family: str, private: Callable, plain: Callable, inputs: Callable,
               err_bound: float) -> list[Op]:
    """Rows FAMILY1e5 and FAMILY1e6 (--quick: 10^3 and 10^4 values), exact truncation.

    inputs(n) makes the make-inputs for n values.
    """
    return [Op(f"{family}{size}", inputs(full), inputs(quick), private, plain, size=size,
               truncations=("exact",), err_bound=err_bound)
            for size, full, quick in (("1e5", 10**5, 10**3), ("1e6", 10**6, 10**4))]


SOFTMAX_WIDTH = 10  # softmax rows take rows of 10 logits: 10^5 values = 10^4 rows


def _softmax_rows(n: int) -> Callable[[], tuple]:
    return uniform(-10, 10, (n // SOFTMAX_WIDTH, SOFTMAX_WIDTH))

OPS = [
    Op("matmul256", randn((256, 256), (256, 256)), randn((32, 32), (32, 32)),
       operator.matmul, torch.matmul, size="256"),
    Op("matmul1024", randn((1024, 1024), (1024, 1024)), randn((64, 64), (64, 64)),
       operator.matmul, torch.matmul, size="1024"),
    Op("mul1e6", randn((10**6,), (10**6,)), randn((10**4,), (10**4,)),
       operator.mul, torch.mul, size="1e6"),
    Op("conv2d", randn((32, 64, 32, 32), (64, 64, 3, 3)), randn((2, 8, 8, 8), (8, 8, 3, 3)),
       lambda x, w: x.conv2d(w, padding=1), lambda x, w: F.conv2d(x, w, padding=1)),
    # Nonlinear functions; err_bound is each function's bound in mpc_ml/functions.py
    # (relu: the fixed-point input rounding, 2^-17).
    *_nonlinear("relu", lambda x: x.relu(), torch.relu,
                lambda n: uniform(-1e4, 1e4, (n,)), 2.0 ** -16),
    *_nonlinear("sigmoid", lambda x: x.sigmoid(), torch.sigmoid,
                lambda n: uniform(-10, 10, (n,)), 1e-4),
    *_nonlinear("exp", lambda x: x.exp(), torch.exp, lambda n: uniform(-8, 8, (n,)), 1e-3),
    *_nonlinear("reciprocal", lambda x: x.reciprocal(), torch.reciprocal,
                lambda n: log_uniform(0.1, 100, (n,)), 1e-3),
    *_nonlinear("softmax", lambda x: x.softmax(-1), lambda x: torch.softmax(x, -1),
                _softmax_rows, 1e-3),
]
OPS_BY_NAME = {op.name: op for op in OPS}
FAMILIES = list(dict.fromkeys(op.family for op in OPS))
SIZES = list(dict.fromkeys(op.size for op in OPS if op.size))


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
        y = None
        abs_err = scaled_err = None
        if rank == 0:
            expected = op.plain(*(t.double() for t in inputs))
            diff = (result.double() - expected).abs()
            abs_err = float(diff.max())
            scaled_err = float((diff / expected.abs().clamp(min=1.0)).max())
        out.append({"op": name, "times_s": times if rank == 0 else [], "stats": stats,
                    "max_abs_err": abs_err, "max_scaled_err": scaled_err})
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
            "max_scaled_err": parts[0]["max_scaled_err"],
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


def aim_missed(row: dict, aim: dict, err_bound: float | None) -> list[str]:
    """What of its aim (AIMS) a full-size row misses: [] when it meets every part."""
    measured = {"s": row["median_s"], "rounds": max(row["rounds"]),
                "mb": row["total_bytes"] / MB, "bytes_per_elem": row["bytes_per_elem"]}
    missed = [key for key, limit in aim.items() if measured[key] > limit]
    if err_bound is not None and row["max_scaled_err"] > err_bound:
        missed.append("err")
    return missed


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


def _per_party(values: list) -> str:
    """'a' when every party has the same value, else 'a/b'."""
    return "/".join(map(str, sorted(set(values), key=values.index)))


def markdown(rows: list[dict]) -> str:
    head = ["op", "shapes", "provider", "trunc", "time ms", "plain ms", "ratio", "rounds",
            "MB sent p0", "MB sent p1", "MB total", "B/elem", "dealer MB", "max err",
            "scaled err", "CrypTen s", "CrypTen rounds", "CrypTen MB", "CrypTen B/elem", "aim"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        ref = r["crypten"] or {}
        aim = "-" if r["aim_missed"] is None else (
            "met" if not r["aim_missed"] else "missed " + ", ".join(r["aim_missed"]))
        cells = [r["op"], ", ".join("x".join(map(str, s)) for s in r["shapes"]), r["provider"],
                 r["truncation"], _fmt(1e3 * r["median_s"], ".4g"),
                 _fmt(1e3 * r["plain_median_s"], ".4g"), _fmt(r["ratio"], ".1f"),
                 _per_party(r["rounds"]),
                 _fmt(r["bytes_sent"][0] / MB, ".3g"), _fmt(r["bytes_sent"][1] / MB, ".3g"),
                 _fmt(r["total_bytes"] / MB, ".3g"), _fmt(r["bytes_per_elem"], ".4g"),
                 _fmt(r["dealer_bytes"] / MB, ".3g"), _fmt(r["max_abs_err"], ".2g"),
                 _fmt(r["max_scaled_err"], ".2g"),
                 _fmt(ref.get("s"), ".3g"), _fmt(ref.get("rounds"), "d"),
                 _fmt(ref.get("mb"), ".1f"), _fmt(ref.get("bytes_per_elem"), "d"), aim]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def select_ops(ops: list[str] | None, sizes: list[str] | None) -> list[str]:
    """Row names, in OPS order, named by --ops (names or families) and of --sizes."""
    wanted = set(ops) if ops else None
    return [op.name for op in OPS
            if (wanted is None or op.name in wanted or op.family in wanted)
            and (sizes is None or op.size in sizes)]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small sizes and 1 repeat (smoke test)")
    p.add_argument("--repeats", type=int, default=None,
                   help="timed runs per row after the warm-up (default 5; 1 with --quick)")
    p.add_argument("--ops", nargs="+", metavar="OP",
                   help="rows by name or by family (the name without its size): "
                        + ", ".join(OPS_BY_NAME) + "; families " + ", ".join(
                            f for f in FAMILIES if f not in OPS_BY_NAME) + " (default: all)")
    p.add_argument("--sizes", nargs="+", choices=SIZES,
                   help="only rows of these sizes (the suffix of their names; --quick "
                        "still shrinks them)")
    p.add_argument("--providers", nargs="+", choices=PROVIDERS, default=list(PROVIDERS))
    p.add_argument("--truncations", nargs="+", choices=TRUNCATIONS, default=list(TRUNCATIONS),
                   help="rows run under those of these that they support "
                        "(nonlinear rows: exact only)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "ops.json")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = p.parse_args(argv[1:] if argv[:1] == ["--"] else argv)  # `mpc-ml bench -- ...`
    for item in args.ops or []:
        if item not in OPS_BY_NAME and item not in FAMILIES:
            p.error(f"--ops: unknown row or family {item!r}; choose from "
                    + ", ".join(list(OPS_BY_NAME) + [f for f in FAMILIES if f not in OPS_BY_NAME]))
    args.names = select_ops(args.ops, args.sizes)
    if args.ops:  # keep the order the rows were asked for, as before
        order = {name: i for i, name in enumerate(args.ops)}
        args.names.sort(key=lambda n: order.get(n, order.get(OPS_BY_NAME[n].family, 0)))
    if not args.names:
        p.error("no row matches --ops and --sizes")
    if args.repeats is None:
        args.repeats = 1 if args.quick else 5
    if args.repeats < 1:
        p.error("--repeats must be at least 1")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    info = machine_info()
    configs = [(p, t) for p in args.providers for t in args.truncations]
    plan = [(p, t, [n for n in args.names if t in OPS_BY_NAME[n].truncations])
            for p, t in configs]
    plan = [(p, t, names) for p, t, names in plan if names]
    if not plan:
        raise SystemExit("no selected row runs under the selected truncations")
    rows: list[dict] = []
    with tqdm(total=sum(len(names) for *_, names in plan), desc="rows", unit="row") as bar:
        for provider, truncation, names in plan:
            bar.set_postfix_str(f"{provider}/{truncation}")
            rows += run_config(provider, truncation, names, args.quick, args.repeats)
            bar.update(len(names))
    names = sorted({r["op"] for r in rows}, key=args.names.index)
    plain = {name: time_plain(OPS_BY_NAME[name], args.quick, args.repeats) for name in names}
    for r in rows:
        op = OPS_BY_NAME[r["op"]]
        inputs = inputs_of(op, args.quick)
        r.update(shapes=[list(t.shape) for t in inputs], elements=inputs[0].numel(),
                 bytes_per_elem=max(r["bytes_sent"]) / inputs[0].numel(),
                 plain_median_s=plain[r["op"]], ratio=r["median_s"] / plain[r["op"]],
                 err_bound=op.err_bound,
                 crypten=None if args.quick else CRYPTEN.get(r["op"]),
                 aim=None if args.quick else AIMS.get(r["op"]))
        r["aim_missed"] = None if r["aim"] is None else aim_missed(r, r["aim"], op.err_bound)
    rows.sort(key=lambda r: (args.names.index(r["op"]),
                             configs.index((r["provider"], r["truncation"]))))
    info["loadavg_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    report = {"benchmark": "ops", "world_size": WORLD_SIZE, "backend": "tcp",
              "threads_per_party": 1, "quick": args.quick, "repeats": args.repeats,
              "machine": info, "crypten_reference": CRYPTEN, "aims": AIMS, "rows": rows}
    print(markdown(rows))
    print(f"\nload average (1, 5, 15 min): start {_fmt_load(info['loadavg_start'])}, "
          f"end {_fmt_load(info['loadavg_end'])} on {info['cpu_count']} cores", file=sys.stderr)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)
    return report


def _fmt_load(load: list | None) -> str:
    return "-" if load is None else " ".join(f"{v:.2f}" for v in load)


if __name__ == "__main__":
    main()
