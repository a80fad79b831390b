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
    python benchmarks/ops.py --ops matmul1024 --providers tfp --device cuda  # shares on the GPU

Prints a Markdown table (with bytes sent per element per party, the error scaled as
the bounds of mpc_ml/primitives/approximations.py (ERROR_BOUNDS), and CrypTen's figures
and the aims where the issues gave them); writes JSON (machine, load average, versions,
git commit, rows) to --out. A row is one Op in benchmarks/rows.py's OPS: add an
operation by adding an entry there.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (benchmarks/common.py)
import rows as bench_rows  # noqa: E402  (benchmarks/rows.py: inputs and operations)
from common import MB, PROVIDERS, WORLD_SIZE, fmt  # noqa: E402
from rows import OPS, TRUNCATIONS, Op  # noqa: E402

import mpc_ml as mpc  # noqa: E402
from mpc_ml.primitives.approximations import ERROR_BOUNDS  # noqa: E402

ROOT = common.ROOT
OPS_BY_NAME = {op.name: op for op in OPS}  # this script's rows (the suite adds more)
FAMILIES = list(dict.fromkeys(op.family for op in OPS))
SIZES = list(dict.fromkeys(op.size for op in OPS if op.size))
CRYPTEN = common.crypten_reference(OPS_BY_NAME)
# The issues' aims for mpc_ml: at most these seconds / rounds / MB in total / bytes sent
# per element per party (each row also within its err_bound, where it has one).
AIMS = {
    "matmul1024": {"s": 0.25, "mb": 33.6},
    "mul1e6": {"s": 0.04, "mb": 32.0},
    "relu1e6": {"s": 0.45, "rounds": 9, "bytes_per_elem": 232},
    "sigmoid1e5": {"s": 0.25},
    "reciprocal1e5": {"s": 0.39},
    "exp1e5": {"s": 0.063},
}

# Exact operations (relu, max): the error is the inputs' rounding to fixed point (2^-17)
# and the result's, at most 2^-16.
EXACT_FAMILIES = ("relu", "max")
EXACT_ERR = 2.0 ** -16


def err_bound(op: Op) -> float | None:
    """The bound on a row's max_scaled_err, max |y - f(x)| / max(1, |f(x)|): its function's
    ERROR_BOUNDS entry (mpc_ml.primitives.approximations) in that scaled form, EXACT_ERR
    for the exact operations, None for the linear ones (held to 1e-2 absolute)."""
    if op.family in EXACT_FAMILIES:
        return EXACT_ERR
    bound = ERROR_BOUNDS.get(op.family)
    if bound is None:
        return None
    # The scaled form states a relative bound exactly, and an absolute one for functions
    # whose values lie in [-1, 1] (sigmoid, softmax); it has no term in |x|.
    assert not bound.per_input, f"{op.family}: a bound in |x| has no scaled form"
    return bound.tolerance


# -- inside a party ----------------------------------------------------------------------
def _party(names: list[str], quick: bool, repeats: int, device: str = "cpu") -> list[dict]:
    """Run each op warm-up + repeats times; per op: party 0's times, this party's stats.
    Any row of rows.ALL_OPS (the suite's workers run theirs through here). The inputs are
    shared onto `device` (common.placement) and each timed run ends with its synchronize."""
    torch.set_num_threads(1)
    rank = mpc.rank()
    token = mpc.encrypt(torch.zeros(1) if rank == 0 else None, src=0, shape=(1,))
    where, sync = common.placement(device), common.synchronizer(device)
    out = []
    for name in names:
        op = bench_rows.ALL_OPS[name]
        inputs = op.inputs(quick)
        xs = [mpc.encrypt(t if rank == i % WORLD_SIZE else None, src=i % WORLD_SIZE,
                          shape=t.shape, device=where) for i, t in enumerate(inputs)]
        times, stats, y = common.timed(lambda: op.private(*xs), repeats, token.decrypt,
                                       mpc.reset_stats, mpc.stats, sync=sync)
        result = y.decrypt(dst=0)
        y = None
        abs_err = scaled_err = None
        if rank == 0:
            expected = op.plain(*(t.double() for t in inputs))
            diff = (result.cpu().double() - expected).abs()
            abs_err = float(diff.max())
            scaled_err = float((diff / expected.abs().clamp(min=1.0)).max())
        out.append({"op": name, "times_s": times if rank == 0 else [], "stats": stats,
                    "max_abs_err": abs_err, "max_scaled_err": scaled_err})
    return out


# -- in the parent ----------------------------------------------------------------------
def run_config(provider: str, truncation: str, names: list[str], quick: bool,
               repeats: int, device: str = "cpu") -> list[dict]:
    """One mpc.run (one pair of party processes) for every op under one configuration."""
    per_party = mpc.run(_party, world_size=WORLD_SIZE, backend="tcp", provider=provider,
                        args=(names, quick, repeats, device),
                        config=mpc.Config(truncation=truncation, **common.device_config(device)))
    rows = []
    for name, parts in zip(names, zip(*per_party)):
        times = parts[0]["times_s"]
        rows.append({
            "op": name, "provider": provider, "truncation": truncation, "repeats": repeats,
            "times_s": times, "median_s": statistics.median(times),
            **common.traffic([p["stats"] for p in parts]),
            "max_abs_err": parts[0]["max_abs_err"],
            "max_scaled_err": parts[0]["max_scaled_err"],
        })
    return rows


def time_plain(op: Op, quick: bool, repeats: int, device: str = "cpu",
               dtype: torch.dtype | None = None) -> float:
    """Median seconds of the plaintext float32 op (or of dtype) with one torch thread, after
    a warm-up, on the inputs moved to device."""
    inputs = tuple(t.to(device=device, dtype=dtype) for t in op.inputs(quick))
    return common.time_plain(op.plain, inputs, repeats, common.synchronizer(device))


def aim_missed(row: dict, aim: dict, err_bound: float | None) -> list[str]:
    """What of its aim (AIMS) a full-size row misses: [] when it meets every part."""
    measured = {"s": row["median_s"], "rounds": max(row["rounds"]),
                "mb": row["total_bytes"] / MB, "bytes_per_elem": row["bytes_per_elem"]}
    missed = [key for key, limit in aim.items() if measured[key] > limit]
    if err_bound is not None and row["max_scaled_err"] > err_bound:
        missed.append("err")
    return missed


def markdown(rows: list[dict]) -> str:
    head = ["op", "shapes", "provider", "trunc", "time ms", "plain ms", "ratio", "rounds",
            "MB sent p0", "MB sent p1", "MB total", "B/elem", "dealer MB", "max err",
            "scaled err", "CrypTen s", "CrypTen rounds", "CrypTen MB", "CrypTen B/elem", "aim"]
    cells = []
    for r in rows:
        ref = r["crypten"] or {}
        cells.append([
            r["op"], ", ".join("x".join(map(str, s)) for s in r["shapes"]), r["provider"],
            r["truncation"], fmt(1e3 * r["median_s"], ".4g"),
            fmt(1e3 * r["plain_median_s"], ".4g"), fmt(r["ratio"], ".1f"),
            common.per_party(r["rounds"]),
            fmt(r["bytes_sent"][0] / MB, ".3g"), fmt(r["bytes_sent"][1] / MB, ".3g"),
            fmt(r["total_bytes"] / MB, ".3g"), fmt(r["bytes_per_elem"], ".4g"),
            fmt(r["dealer_bytes"] / MB, ".3g"), fmt(r["max_abs_err"], ".2g"),
            fmt(r["max_scaled_err"], ".2g"),
            fmt(ref.get("s"), ".3g"), fmt(ref.get("rounds"), "d"),
            fmt(ref.get("mb"), ".1f"), fmt(ref.get("bytes_per_elem"), "d"),
            common.aim_cell(r["aim_missed"])])
    return common.markdown_table(head, cells)


def select_ops(ops: list[str] | None, sizes: list[str] | None) -> list[str]:
    """Row names, in OPS order, named by --ops (names or families) and of --sizes."""
    wanted = set(ops) if ops else None
    return [op.name for op in OPS
            if (wanted is None or op.name in wanted or op.family in wanted)
            and (sizes is None or op.size in sizes)]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_quick_and_repeats(p, "small sizes and 1 repeat (smoke test)")
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
    common.add_device(p)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "ops.json")
    args = common.parse(p, argv)  # `mpc-ml bench -- ...` passes a leading --
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
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    info = common.machine_info(mpc.__version__)
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
            rows += run_config(provider, truncation, names, args.quick, args.repeats,
                               args.device)
            bar.update(len(names))
    names = sorted({r["op"] for r in rows}, key=args.names.index)
    plain = {name: time_plain(OPS_BY_NAME[name], args.quick, args.repeats, args.device)
             for name in names}
    for r in rows:
        op = OPS_BY_NAME[r["op"]]
        inputs = op.inputs(args.quick)
        r.update(shapes=[list(t.shape) for t in inputs], elements=inputs[0].numel(),
                 bytes_per_elem=max(r["bytes_sent"]) / inputs[0].numel(),
                 plain_median_s=plain[r["op"]], ratio=r["median_s"] / plain[r["op"]],
                 err_bound=err_bound(op),
                 crypten=None if args.quick else CRYPTEN.get(r["op"]),
                 aim=None if args.quick else AIMS.get(r["op"]))
        r["aim_missed"] = None if r["aim"] is None else aim_missed(r, r["aim"], r["err_bound"])
    rows.sort(key=lambda r: (args.names.index(r["op"]),
                             configs.index((r["provider"], r["truncation"]))))
    info["loadavg_end"] = common.loadavg()
    report = {"benchmark": "ops", "world_size": WORLD_SIZE, "backend": "tcp",
              "threads_per_party": 1, "quick": args.quick, "repeats": args.repeats,
              "machine": info, "device": common.device_info(args.device),
              "crypten_reference": CRYPTEN, "aims": AIMS, "rows": rows}
    common.finish(report, common.device_line(report["device"]) + "\n\n" + markdown(rows),
                  args.out)
    return report


if __name__ == "__main__":
    main()
