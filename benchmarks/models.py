#!/usr/bin/env python
"""Model benchmark: private inference of LeNet-5 and a ResNet-18-shaped CNN, one training
step of an MLP, 2 parties over TCP on loopback.

Two parties run as OS processes over the tcp backend (mpc.run), each with one torch
thread (three processes with the dealer provider). Each row's torch model (seeded) is
converted with mpc.nn.from_pytorch and its parameters and buffers are secret-shared by
party 0, the model owner; the input (and, for the training step, the one-hot targets)
by party 1, the data owner. Party 0 times the private run with time.perf_counter after
one warm-up run and takes the median over --repeats; each party counts its traffic
(mpc.reset_stats / mpc.stats) around the same run. Inference runs under mpc.no_grad().
The parent process times the plaintext torch float32 run with one thread, for the
ratio column.

    python benchmarks/models.py                    # every row, full size, both providers
    python benchmarks/models.py --quick            # tiny widths and batches, 1 repeat (< 60 s)
    python benchmarks/models.py --rows lenet5_b32 mlp_step --providers tfp --repeats 9
    python benchmarks/models.py --rows lenet5_b32 --providers tfp --profile   # cProfile party 0
    python benchmarks/models.py --rows resnet18 --providers tfp --device cuda  # shares on the GPU

Prints a Markdown table (with CrypTen's figures and the aims where the issue gave them)
and writes JSON (machine, load average, versions, git commit, rows) to --out. The torch
models and the rows' inputs are in benchmarks/rows.py, the helpers shared with the
other benchmarks in benchmarks/common.py. A row is one ModelRow in rows.py's MODELS:
add a model by adding an entry there.
"""
from __future__ import annotations

import argparse
import copy
import cProfile
import io
import pstats
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (benchmarks/common.py)
import rows as bench_rows  # noqa: E402  (benchmarks/rows.py: the torch models and inputs)
from common import MB, PROVIDERS, WORLD_SIZE, fmt  # noqa: E402
from rows import LR, MODELS, ModelRow  # noqa: E402

import mpc_ml as mpc  # noqa: E402

ROOT = common.ROOT
MODEL_OWNER, DATA_OWNER = 0, 1
ERR_BOUND = 1e-2  # max |private - torch float64| of every row's output (or updated weights)

ROWS = MODELS
ROWS_BY_NAME = {row.name: row for row in ROWS}  # this script's rows (the suite adds more)
CRYPTEN = common.crypten_reference(ROWS_BY_NAME)
# The aim: 3x faster than CrypTen, with no more bytes between the parties
# (and, as for every row, within ERR_BOUND of torch).
AIMS = {name: {"s": ref["s"] / 3, "mb": ref["mb"]} for name, ref in CRYPTEN.items()}


# -- inside a party ------------------------------------------------------------------------
def _private_inputs(inputs: tuple, device: str = "cpu") -> list:
    rank = mpc.rank()
    where = common.placement(device)
    return [mpc.encrypt(t if rank == DATA_OWNER else None, src=DATA_OWNER, shape=t.shape,
                        device=where) for t in inputs]


def _place(model, device: str):
    """The model's shares (and public buffers) on device; the CPU default left as it is."""
    return model if common.is_cpu(device) else model.to(device)


def _timed(token, repeats: int, run: Callable, before: Callable | None = None,
           profiler: cProfile.Profile | None = None,
           device: str = "cpu") -> tuple[list, dict, object]:
    """warm-up + repeats runs of run(); party 0's times, this party's last stats, result;
    each run ends with device's synchronize."""
    return common.timed(run, repeats, token.decrypt, mpc.reset_stats, mpc.stats,
                        before=before, profiler=profiler, sync=common.synchronizer(device))


def _inference(row: ModelRow, torch_model, model, inputs, token, repeats, profiler,
               device: str = "cpu"):
    rank = mpc.rank()
    _place(model.encrypt(src=MODEL_OWNER), device)
    (x,) = _private_inputs(inputs, device)

    def run():
        with mpc.no_grad():
            return model(x)

    times, stats, y = _timed(token, repeats, run, profiler=profiler, device=device)
    result = y.decrypt(dst=0)
    err = None
    if rank == 0:
        with torch.no_grad():
            expected = copy.deepcopy(torch_model).double()(inputs[0].double())
        err = float((result.cpu().double() - expected).abs().max())
    return times, stats, err


def sgd_step_fns(model, x, target, device: str = "cpu") -> tuple:
    """(fresh, step): re-encrypt the initial weights (onto device) with a new SGD (each run
    starts from the same weights), and one private SGD step on (x, target) returning the
    loss."""
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    loss_fn = mpc.nn.CrossEntropyLoss()
    holder = {}

    def fresh():
        holder.clear()
        model.load_state_dict(initial)
        _place(model.encrypt(src=MODEL_OWNER), device)
        holder["opt"] = mpc.optim.SGD(model.parameters(), lr=LR)

    def step():
        opt = holder["opt"]
        opt.zero_grad()
        loss = loss_fn(model(x), target)
        loss.backward()
        opt.step()
        return loss

    return fresh, step


def sgd_step_error(got: dict, torch_model, inputs) -> float:
    """max |weight - plaintext weight| after one SGD step from torch_model's weights."""
    reference = copy.deepcopy(torch_model).double()
    opt = torch.optim.SGD(reference.parameters(), lr=LR)
    F.cross_entropy(reference(inputs[0].double()), inputs[1].double()).backward()
    opt.step()
    return max(float((got[k].cpu().double() - v).abs().max())
               for k, v in reference.state_dict().items())


def _train_step(row: ModelRow, torch_model, model, inputs, token, repeats, profiler,
                device: str = "cpu"):
    """Each run starts from the same weights: one SGD step from a fresh encryption."""
    rank = mpc.rank()
    x, target = _private_inputs(inputs, device)
    fresh, run = sgd_step_fns(model, x, target, device)
    times, stats, _ = _timed(token, repeats, run, before=fresh, profiler=profiler,
                             device=device)
    got = model.decrypt(dst=0).state_dict()
    return times, stats, sgd_step_error(got, torch_model, inputs) if rank == 0 else None


def build_row(name: str, quick: bool) -> tuple:
    """(row, torch model, inputs, plaintext mpc_ml model) of a model row. Every party
    builds the same architecture; only the model owner's values are shared later."""
    row = bench_rows.ALL_MODELS[name]
    torch_model = row.build(quick)
    inputs = row.inputs(quick)
    return row, torch_model, inputs, mpc.nn.from_pytorch(torch_model, inputs[0])


def _party(names: list[str], quick: bool, repeats: int, profile: bool,
           device: str = "cpu") -> list[dict]:
    """Run each row warm-up + repeats times; per row: party 0's times, this party's stats.
    Any row of rows.ALL_MODELS (the suite's workers run theirs through here). The model's
    shares and the inputs are put on `device`; each timed run ends with its synchronize."""
    torch.set_num_threads(1)
    rank = mpc.rank()
    token = mpc.encrypt(torch.zeros(1) if rank == 0 else None, src=0, shape=(1,))
    out = []
    for name in names:
        row, torch_model, inputs, model = build_row(name, quick)
        profiler = cProfile.Profile() if profile and rank == 0 else None
        bench = _train_step if row.train else _inference
        times, stats, err = bench(row, torch_model, model, inputs, token, repeats, profiler,
                                  device)
        text = None
        if profiler is not None:
            buf = io.StringIO()
            ps = pstats.Stats(profiler, stream=buf)
            buf.write(f"# {name}: cProfile of party 0 over {repeats} timed run(s)\n")
            ps.sort_stats("tottime").print_stats(40)
            ps.sort_stats("cumulative").print_stats(60)
            text = buf.getvalue()
        out.append({"row": name, "times_s": times if rank == 0 else [], "stats": stats,
                    "max_abs_err": err, "profile": text})
    return out


# -- in the parent ---------------------------------------------------------------------------
def run_provider(provider: str, names: list[str], quick: bool, repeats: int,
                 profile: bool = False, device: str = "cpu") -> list[dict]:
    """One mpc.run (one pair of party processes, plus the dealer) for every row."""
    config = mpc.Config(**common.device_config(device))
    per_party = mpc.run(_party, world_size=WORLD_SIZE, backend="tcp", provider=provider,
                        args=(names, quick, repeats, profile, device), config=config)
    rows = []
    for name, parts in zip(names, zip(*per_party)):
        times = parts[0]["times_s"]
        rows.append({
            "row": name, "provider": provider, "truncation": mpc.Config().truncation,
            "repeats": repeats, "times_s": times, "median_s": statistics.median(times),
            **common.traffic([p["stats"] for p in parts]),
            "max_abs_err": parts[0]["max_abs_err"], "profile": parts[0]["profile"],
        })
    return rows


def time_plain(row: ModelRow, quick: bool, repeats: int, device: str = "cpu") -> float:
    """Median seconds of the plaintext float32 run with one torch thread, after a warm-up,
    with the model and its inputs on device."""
    return common.time_plain(*bench_rows.plain(row.name, quick, device), repeats,
                             common.synchronizer(device))


def aim_missed(row: dict, aim: dict) -> list[str]:
    """What of its aim a full-size row misses ([] when it meets every part)."""
    measured = {"s": row["median_s"], "mb": row["total_bytes"] / MB}
    missed = [key for key, limit in aim.items() if measured[key] > limit]
    if row["max_abs_err"] > ERR_BOUND:
        missed.append("err")
    return missed


def markdown(rows: list[dict]) -> str:
    head = ["row", "model", "input", "provider", "time ms", "plain ms", "ratio", "rounds",
            "MB sent p0", "MB sent p1", "MB total", "dealer MB", "max err", "CrypTen s",
            "CrypTen rounds", "CrypTen MB", "x CrypTen", "aim"]
    cells = []
    for r in rows:
        ref = r["crypten"] or {}
        cells.append([
            r["row"], r["model"], ", ".join("x".join(map(str, s)) for s in r["shapes"]),
            r["provider"], fmt(1e3 * r["median_s"], ".4g"),
            fmt(1e3 * r["plain_median_s"], ".3g"), fmt(r["ratio"], ".0f"),
            common.per_party(r["rounds"]),
            fmt(r["bytes_sent"][0] / MB, ".3g"), fmt(r["bytes_sent"][1] / MB, ".3g"),
            fmt(r["total_bytes"] / MB, ".3g"), fmt(r["dealer_bytes"] / MB, ".3g"),
            fmt(r["max_abs_err"], ".2g"), fmt(ref.get("s"), ".3g"),
            fmt(ref.get("rounds"), "d"), fmt(ref.get("mb"), ".0f"),
            fmt(r["speedup_vs_crypten"], ".2f"), common.aim_cell(r["aim_missed"])])
    return common.markdown_table(head, cells)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_quick_and_repeats(p, "tiny widths and batches, 1 repeat (smoke test)")
    p.add_argument("--rows", nargs="+", choices=list(ROWS_BY_NAME), metavar="ROW",
                   help="rows to run, in this order: " + ", ".join(ROWS_BY_NAME)
                        + " (default: all)")
    p.add_argument("--providers", nargs="+", choices=PROVIDERS, default=list(PROVIDERS))
    p.add_argument("--profile", action="store_true",
                   help="cProfile party 0's timed runs; writes models_profile_ROW_PROVIDER.txt "
                        "next to --out (the times then include the profiler's overhead)")
    common.add_device(p)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "models.json")
    args = common.parse(p, argv)
    args.names = args.rows or list(ROWS_BY_NAME)
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    info = common.machine_info(mpc.__version__)
    started = time.perf_counter()
    rows: list[dict] = []
    with tqdm(total=len(args.providers), desc="providers", unit="run") as bar:
        for provider in args.providers:
            bar.set_postfix_str(f"{provider}: {len(args.names)} rows")
            rows += run_provider(provider, args.names, args.quick, args.repeats, args.profile,
                                 args.device)
            bar.update(1)
    plain = {name: time_plain(ROWS_BY_NAME[name], args.quick, args.repeats, args.device)
             for name in args.names}
    for r in rows:
        row = ROWS_BY_NAME[r["row"]]
        ref = None if args.quick else CRYPTEN.get(r["row"])
        r.update(model=row.label(args.quick),
                 shapes=[list(t.shape) for t in row.inputs(args.quick)],
                 train=row.train, plain_median_s=plain[r["row"]],
                 ratio=r["median_s"] / plain[r["row"]], err_bound=ERR_BOUND, crypten=ref,
                 speedup_vs_crypten=None if ref is None else ref["s"] / r["median_s"],
                 aim=None if args.quick else AIMS.get(r["row"]))
        r["aim_missed"] = None if r["aim"] is None else aim_missed(r, r["aim"])
    rows.sort(key=lambda r: (args.names.index(r["row"]), args.providers.index(r["provider"])))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for r in rows:
        text = r.pop("profile")
        if text:
            path = args.out.with_name(f"models_profile_{r['row']}_{r['provider']}.txt")
            path.write_text(text)
            r["profile_file"] = str(path)
    info["loadavg_end"] = common.loadavg()
    report = {"benchmark": "models", "world_size": WORLD_SIZE, "backend": "tcp",
              "threads_per_party": 1, "quick": args.quick, "repeats": args.repeats,
              "profiled": args.profile, "wall_s": time.perf_counter() - started,
              "model_owner": MODEL_OWNER, "data_owner": DATA_OWNER, "machine": info,
              "device": common.device_info(args.device),
              "crypten_reference": CRYPTEN, "aims": AIMS, "rows": rows}
    common.finish(report, common.device_line(report["device"]) + "\n\n" + markdown(rows),
                  args.out, f"; {report['wall_s']:.0f} s in all")
    return report


if __name__ == "__main__":
    main()
