#!/usr/bin/env python
"""The benchmark suite behind `mpc-ml bench`: operations and models, 2 and 3 parties, tcp
backend, providers tfp and dealer, under network profiles, side by side with CrypTen.

    mpc-ml bench --quick                    # small sizes, lan only, < 3 min on 2 cores
    mpc-ml bench                            # full sizes, every profile (needs root for netns)
    mpc-ml bench --profiles lan wan100 --parties 2 --providers tfp --ops mul1e6 relu1e5
    mpc-ml bench --ops-only ...             # the older benchmarks/ops.py with its options

Every job (profile x parties x provider) starts its own processes: one per party
(`python benchmarks/suite.py --worker SPEC` with MPC_RANK, MPC_WORLD_SIZE,
MPC_PARTY_ADDRS, MPC_PROVIDER, MPC_DEALER_ADDR set; mpc.init() reads them) and, for the
dealer provider, the dealer. Profile `lan` runs them on loopback; the others in network
namespaces (benchmarks/netns.py: tbf for bandwidth, user-space delay of every sent frame
for latency, benchmarks/netdelay.py). At the start of each job parties 0 and 1 measure
the achieved RTT (TCP ping-pong of one value) and bandwidth (a bulk transfer) over the
library's own links, which the suite prints.

Rows are those of benchmarks/rows.py (ops.py's and models.py's, and the suite's own
max1e5 and lenet5_step), run by the party loops of ops.py and models.py (common.timed: a
barrier, reset counters, party 0 times with perf_counter, one warm-up then --repeats
timed runs). Per row: median and spread (min, quartiles, max) of
party 0's wall time, rounds, bytes sent per party, peak RSS per party (VmHWM, reset
before the row), plaintext torch time (one thread) and the ratio; for shaped profiles a
predicted time (rounds x latency + bytes / bandwidth + the lan row's compute); for op
rows, rounds and bytes sent per party from the formulas of protocols/ (costmodel.py;
the check prints 'equal' or both numbers; models have no whole-model spec); CrypTen's
time, rounds and bytes when benchmarks/crypten_runner.py can run (see --crypten-python).

--device cuda (default cpu) puts every party's shares on the GPU: the models are moved
with model.to(), the inputs shared with encrypt(device=), the correlations made there
(Config(device=, prg='chacha20')), each timed run ends with torch.cuda.synchronize, and
the plaintext reference runs on the same GPU; the matmul rows are also timed against a
plaintext float64 GEMM there (ratio_f64). The device and its name are in the JSON
("device") and the Markdown. A device that is unknown, or cuda where torch sees no GPU,
is refused before any party starts. benchmarks/gpu_check.sh runs CPU against GPU.

Output: DIR/suite.json (machine, versions, git commit, device, profiles with their measured RTT
and bandwidth, rows), DIR/suite.md (Markdown tables), DIR/time_per_profile.png and
DIR/vs_crypten.png; DIR is --out (default benchmarks/out/suite).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import common  # noqa: E402  (benchmarks/common.py)
import costmodel  # noqa: E402
import models as bench_models  # noqa: E402
import ops as bench_ops  # noqa: E402
import rows as bench_rows  # noqa: E402  (every row's inputs, ours and CrypTen's)
from common import MB, fmt  # noqa: E402

import mpc_ml as mpc  # noqa: E402

# -- rows ---------------------------------------------------------------------------------
# The rows of ops.py and models.py, and the suite's own (rows.SUITE_OPS: max1e5,
# rows.SUITE_MODELS: lenet5_step); all of them are in rows.ALL_OPS / rows.ALL_MODELS.
OP_ROWS = ["mul1e6", "matmul256", "matmul1024", "conv2d", "relu1e5", "max1e5", "softmax1e5",
           "sigmoid1e5", "reciprocal1e5", "exp1e5"]
MODEL_ROWS = ["lenet5_b1", "lenet5_b32", "resnet18", "mlp_step", "lenet5_step", "bert_base",
              "gpt2_small"]
PROFILE_NAMES = ["lan", "lan1g", "wan400", "wan100"]
SERVE_ROW = "serve"
"""The inference service under load (benchmarks/serve.py): `--models serve`, not a default."""
PROVIDERS = list(common.PROVIDERS)
FSS = "dealer-fss"
"""The dealer with Config(comparison='fss') (protocols/fss_comparison.toml): 2 parties only."""
SUITE_PROVIDERS = [*PROVIDERS, FSS]


def _provider_and_env(provider: str) -> tuple[str, dict]:
    """The library's provider for a suite provider label, and the variables it adds."""
    return ("dealer", {"MPC_COMPARISON": "fss"}) if provider == FSS else (provider, {})
PARTIES = [2, 3]
PORT = 29400


# -- inside a party -------------------------------------------------------------------------
def _reset_peak() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _peak_rss() -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _probe(bulk_bytes: int) -> dict | None:
    """Parties 0 and 1: RTT of a one-value ping-pong, bandwidth of a bulk transfer."""
    from mpc_ml.session import current

    comm = current().comm
    rank = mpc.rank()
    if rank > 1:
        return None
    peer = 1 - rank
    one = torch.zeros(1, dtype=torch.int64)

    def round_trip(message: torch.Tensor) -> float:
        """Seconds for party 0 to send message and get one value back from party 1."""
        start = time.perf_counter()
        if rank == 0:
            comm.send(message, peer)
            comm.recv(peer)
        else:
            comm.recv(peer)
            comm.send(one, peer)
        return time.perf_counter() - start

    rtts = [round_trip(one) for _ in range(12)]
    rtt = statistics.median(rtts[2:])
    rates = []
    for size in (bulk_bytes // 4, bulk_bytes, bulk_bytes):  # the first warms the window up
        elapsed = round_trip(torch.zeros(size // 8, dtype=torch.int64))
        rates.append(8 * size / max(elapsed - rtt, 1e-6))
    return {"rtt_s": rtt, "rtt_samples_s": rtts, "bandwidth_bit_s": statistics.median(rates[1:]),
            "bulk_bytes": bulk_bytes}


def worker(spec_path: str) -> None:
    import netdelay

    spec = json.loads(Path(spec_path).read_text())
    delay = netdelay.install_from_env()
    torch.set_num_threads(1)
    device = spec.get("device", "cpu")
    mpc.init(mpc.Config(**common.device_config(device)))
    rank = mpc.rank()
    probe = _probe(spec["bulk_bytes"])
    rows = []
    for name in spec["rows"]:
        _reset_peak()
        common.reset_device_peak(device)
        if bench_rows.kind(name) == "op":
            out = bench_ops._party([name], spec["quick"], spec["repeats"], device)[0]
        else:
            out = bench_models._party([name], spec["quick"], spec["repeats"], False, device)[0]
            out.pop("profile", None)
        out["name"] = name
        out["peak_rss_bytes"] = _peak_rss()
        out["peak_device_bytes"] = common.device_peak(device)
        rows.append(out)
    Path(spec["out_dir"], f"rank{rank}.json").write_text(
        json.dumps({"rank": rank, "delay_s": delay, "probe": probe, "rows": rows}))
    mpc.shutdown()


def dealer_worker(listen: str, nparties: int, device: str = "cpu") -> None:
    import netdelay

    netdelay.install_from_env()
    from mpc_ml.cli import main as cli_main
    sys.exit(cli_main(["dealer", "--listen", listen, "-n", str(nparties), "--device", device]))


# -- in the parent ----------------------------------------------------------------------------
def _wait_all(procs: dict, grace_s: float) -> int:
    """Wait for every process; once one fails the rest get grace_s, then are killed.
    Returns the first failure's exit code (1 for a signal), or 0."""
    import signal
    failed, deadline = [], None
    try:
        while any(p.poll() is None for p in procs.values()):
            for name, p in procs.items():
                if p.poll() not in (None, 0) and name not in failed:
                    failed.append(name)
                    deadline = deadline or time.monotonic() + grace_s
            if deadline and time.monotonic() > deadline:
                break
            time.sleep(0.05)  # polling our own children
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
            p.wait()
    failed += [n for n, p in procs.items() if p.returncode != 0 and n not in failed]
    if failed:
        code = procs[failed[0]].returncode
        print(f"suite: {failed[0]} exited with code {code}", file=sys.stderr)
        return code if code > 0 else 1
    return 0


def run_job(profile, parties: int, provider: str, rows: list[str], quick: bool, repeats: int,
            net=None, timeout_s: float = 1800, offline_dealer: bool = False,
            device: str = "cpu") -> dict:
    """One set of processes (parties and maybe a dealer) running every row, the parties'
    shares and correlations on device (the dealer's too: `mpc-ml dealer --device`)."""
    provider, extra_env = _provider_and_env(provider)
    nodes = parties + (provider == "dealer")
    if net is None:
        addrs = [f"127.0.0.1:{port}" for port in common.free_ports(nodes)]
        prefixes = [[] for _ in range(nodes)]
    else:
        addrs = [f"{net.addr[i]}:{PORT}" for i in range(nodes)]
        prefixes = [net.prefix(i) for i in range(nodes)]
    bulk = 64 << 20 if not profile.rate_mbit else int(profile.rate_mbit * 1e6 / 8 * 0.4)
    with tempfile.TemporaryDirectory(prefix="mpcb-job-") as tmp:
        spec_path = Path(tmp, "spec.json")
        spec_path.write_text(json.dumps({"rows": rows, "quick": quick, "repeats": repeats,
                                         "out_dir": tmp, "bulk_bytes": bulk, "device": device}))
        env = dict(os.environ, MPC_WORLD_SIZE=str(parties), MPC_BACKEND="tcp",
                   MPC_PROVIDER=provider, MPC_PARTY_ADDRS=",".join(addrs[:parties]),
                   MPC_TORCH_THREADS="1", MPC_NET_DELAY_MS=str(profile.rtt_ms / 2),
                   OMP_NUM_THREADS="1",
                   PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
                   **extra_env)
        env.setdefault("MPC_COMM_TIMEOUT_S", "600")
        env.setdefault("MPC_CONNECT_TIMEOUT_S", "60")
        env.pop("MPC_TLS_DIR", None)
        # The namespaces' veth addresses are not loopback, but the traffic never leaves this
        # machine: plain tcp is what the profiles measure, so the suite opts out explicitly.
        env["MPC_ALLOW_INSECURE"] = "1"
        procs = {}
        if provider == "dealer":
            env["MPC_DEALER_ADDR"] = addrs[parties]
            dealer_env = dict(env, MPC_NET_DELAY_MS="0") if offline_dealer else env
            procs["dealer"] = subprocess.Popen(
                [*prefixes[parties], sys.executable, __file__, "--dealer-worker",
                 addrs[parties], str(parties), device], env=dealer_env)
        for r in range(parties):
            procs[f"party {r}"] = subprocess.Popen(
                [*prefixes[r], sys.executable, __file__, "--worker", str(spec_path)],
                env=dict(env, MPC_RANK=str(r)))
        code = _wait_all(procs, 30)
        if code:
            raise RuntimeError(f"job {profile.name}/{parties} parties/{provider} failed "
                               f"(exit code {code})")
        return {r: json.loads(Path(tmp, f"rank{r}.json").read_text()) for r in range(parties)}


def _quantile(values: list[float], q: float) -> float:
    s = sorted(values)
    pos = q * (len(s) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def job_rows(profile, parties: int, provider: str, per_rank: dict, quick: bool,
             device: str = "cpu") -> list[dict]:
    out = []
    for i, name in enumerate(per_rank[0]["rows"] and [r["name"] for r in per_rank[0]["rows"]]):
        parts = [per_rank[r]["rows"][i] for r in range(parties)]
        stats = [p["stats"] for p in parts]
        times = parts[0]["times_s"]
        kind = bench_rows.kind(name)
        out.append({
            "name": name, "kind": kind, "profile": profile.name, "parties": parties,
            "provider": provider, "device": device, "times_s": times,
            "median_s": statistics.median(times),
            "min_s": min(times), "max_s": max(times), "q1_s": _quantile(times, 0.25),
            "q3_s": _quantile(times, 0.75),
            **common.traffic(stats),
            "peak_rss_bytes": [p["peak_rss_bytes"] for p in parts],
            "peak_device_bytes": [p.get("peak_device_bytes") for p in parts],
            "max_abs_err": parts[0]["max_abs_err"],
            "max_scaled_err": parts[0].get("max_scaled_err"),
            "err_bound": bench_ops.err_bound(bench_rows.ALL_OPS[name]) if kind == "op"
            else bench_models.ERR_BOUND,
            "shapes": [list(t.shape) for t in bench_rows.inputs(name, quick)],
        })
    return out


def time_plain(name: str, quick: bool, repeats: int, device: str = "cpu",
               dtype: torch.dtype | None = None) -> float:
    """The plaintext torch run of a row (float32; an op row's inputs of dtype if given), one
    thread, its model and inputs on device, synchronised before each clock read."""
    return common.time_plain(*bench_rows.plain(name, quick, device, dtype), max(3, repeats),
                             common.synchronizer(device))


GEMM_ROWS = ("matmul256", "matmul1024")
"""On a GPU these rows are also timed against a plaintext float64 GEMM on that device (the
issue's aim: private 1024^3 matmul within 4x of it)."""


# -- cost model --------------------------------------------------------------------------------
def spec_cost(name: str, parties: int, quick: bool, comparison: str = "circuit") -> dict | None:
    """Rounds and bytes sent per party that protocols/ predicts for an op row (None for
    the model rows: no whole-model spec)."""
    return costmodel.predict(name, bench_rows.inputs(name, quick), parties, comparison)


def predicted_time(row: dict, lan_row: dict | None, probe: dict | None, profile) -> dict | None:
    """rounds x latency + bytes / bandwidth + local compute (the lan row's median)."""
    if lan_row is None or not profile.rate_mbit:
        return None
    rtt = probe["rtt_s"] if probe else profile.rtt_ms / 1e3
    bw = probe["bandwidth_bit_s"] if probe else profile.rate_mbit * 1e6
    rounds = max(row["rounds"])
    transfer = 8 * max(row["bytes_sent"]) / bw
    compute = lan_row["median_s"]
    return {"one_way_s": rounds * rtt / 2 + transfer + compute,
            "issue_formula_s": rounds * rtt + transfer + compute,
            "latency_s": rounds * rtt / 2, "transfer_s": transfer, "compute_s": compute}


# -- output -------------------------------------------------------------------------------------
def markdown(report: dict) -> str:
    lines = []
    for p in report["profiles"]:
        lines.append(f"- profile `{p['name']}`: asked " + (
            "no shaping" if not p["rate_mbit"] else f"{p['rate_mbit']:g} Mbit/s, "
            f"{p['rtt_ms']:g} ms RTT") + "; measured " + ", ".join(
            f"{k}: RTT {v['rtt_s'] * 1e3:.3g} ms, {v['bandwidth_bit_s'] / 1e6:.4g} Mbit/s"
            for k, v in p["measured"].items()))
    if report.get("device"):
        lines.append(common.device_line(report["device"]))
    lines.append("")
    head = ["row", "profile", "n", "provider", "median ms", "spread ms (min/q1/q3/max)",
            "plain ms", "ratio", "rounds", "MB sent per party", "dealer MB (all parties)",
            "peak MB per party", "max abs err",
            "spec check (rounds, bytes sent)", "pred ms (r*RTT/2)", "pred ms (r*RTT)",
            "CrypTen ms", "CrypTen rounds", "CrypTen MB sent per party", "ours/CrypTen"]
    cells = []
    for r in report["rows"]:
        pred = r.get("predicted") or {}
        cr = r.get("crypten") or {}
        spread = "/".join(f"{1e3 * r[k]:.3g}" for k in ("min_s", "q1_s", "q3_s", "max_s"))
        cells.append([
            r["name"], r["profile"], str(r["parties"]), r["provider"],
            f"{1e3 * r['median_s']:.4g}", spread, fmt(1e3 * r["plain_median_s"], ".3g"),
            fmt(r["ratio"], ".3g"), common.per_party(r["rounds"]),
            "/".join(f"{b / MB:.3g}" for b in r["bytes_sent"]),
            f"{r['dealer_bytes'] / MB:.3g}" if r["provider"] in ("dealer", FSS) else "-",
            "/".join(f"{b / 2**20:.0f}" for b in r["peak_rss_bytes"]),
            fmt(r.get("max_abs_err"), ".2g"),
            r.get("spec_check", "-"),
            fmt(pred.get("one_way_s") and 1e3 * pred["one_way_s"], ".4g"),
            fmt(pred.get("issue_formula_s") and 1e3 * pred["issue_formula_s"], ".4g"),
            fmt(cr.get("median_s") and 1e3 * cr["median_s"], ".4g"),
            common.per_party(cr["rounds"]) if cr else "-",
            "/".join(f"{b / MB:.3g}" for b in cr["bytes_sent"]) if cr else "-",
            fmt(r.get("vs_crypten"), ".3g")])
    lines.append(common.markdown_table(head, cells))
    gemm = [r for r in report["rows"] if r.get("plain_f64_median_s")]
    if gemm:
        lines += ["", f"Against a plaintext float64 GEMM on `{report['device']['device']}`:", "",
                  common.markdown_table(
                      ["row", "n", "provider", "private ms", "plain float32 ms",
                       "plain float64 ms", "private / float64"],
                      [[r["name"], str(r["parties"]), r["provider"],
                        f"{1e3 * r['median_s']:.4g}", f"{1e3 * r['plain_median_s']:.3g}",
                        f"{1e3 * r['plain_f64_median_s']:.3g}", f"{r['ratio_f64']:.3g}"]
                       for r in gemm], "lllrrrr")]
    return "\n".join(lines)


def plots(report: dict, out_dir: Path) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []

    def save(fig, ax, ylabel: str, title: str, name: str) -> None:
        ax.set_yscale("log")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        fig.tight_layout()
        fig.savefig(out_dir / name, dpi=110)
        plt.close(fig)
        written.append(str(out_dir / name))

    rows = report["rows"]
    names = list(dict.fromkeys(r["name"] for r in rows))
    configs = list(dict.fromkeys((r["profile"], r["parties"], r["provider"]) for r in rows))
    fig, ax = plt.subplots(figsize=(max(8, len(names) * 0.9), 5))
    width = 0.8 / max(1, len(configs))
    for j, cfg in enumerate(configs):
        by = {r["name"]: r for r in rows if (r["profile"], r["parties"], r["provider"]) == cfg}
        xs = [i + j * width for i, n in enumerate(names) if n in by]
        ax.bar(xs, [by[n]["median_s"] for n in names if n in by], width,
               label=f"{cfg[0]} n={cfg[1]} {cfg[2]}")
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(names))], names, rotation=45,
                  ha="right")
    ax.legend(fontsize=6, ncol=2)
    save(fig, ax, "median wall time (s)", "time per row per profile", "time_per_profile.png")
    paired = [r for r in rows if r.get("vs_crypten")]
    if paired:
        fig, ax = plt.subplots(figsize=(max(8, len(paired) * 0.5), 5))
        labels = [f"{r['name']} {r['profile']} n={r['parties']} {r['provider']}" for r in paired]
        ax.bar(range(len(paired)), [r["vs_crypten"] for r in paired])
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_xticks(range(len(paired)), labels, rotation=60, ha="right", fontsize=6)
        save(fig, ax, "our time / CrypTen's time", "ours vs CrypTen 0.4.1 (below 1: ours faster)",
             "vs_crypten.png")
    return written


# -- CPU against GPU (benchmarks/gpu_check.sh) ------------------------------------------------------
AIM_SPEEDUP = {"resnet18_b64": 20.0}
"""The issue's aim: at least this many times faster on the GPU than on the CPU."""
AIM_F64 = {"matmul1024": 4.0}
"""The issue's aim: private time at most this many times a plaintext float64 GEMM there."""


def _side(run_dir: Path) -> tuple[dict | None, dict, list[tuple[str, str]]]:
    """The suite reports under run_dir (one sub-folder per group of rows, each with its
    suite.json or, where the group failed, only its log): (device info, rows by
    (name, parties, provider), the failed groups with their logs' tails)."""
    device, rows, failed = None, {}, []
    found = run_dir.iterdir() if run_dir.is_dir() else []
    names = sorted({p.stem if p.suffix == ".log" else p.name for p in found
                    if p.is_dir() or p.suffix == ".log"})
    for group in (run_dir / name for name in names):
        path = group / "suite.json"
        if not path.exists():
            log = group.with_suffix(".log")
            text = log.read_text(errors="replace").replace("\r", "\n") if log.exists() else ""
            tail = [line for line in text.splitlines() if line.strip()][-15:]  # tqdm's \r too
            failed.append((group.name, "\n".join(tail)))
            continue
        report = json.loads(path.read_text())
        device = device or dict(report.get("device") or {"device": "cpu",
                                                           "device_name": report["machine"]["cpu"]},
                                cpu=report["machine"]["cpu"], cpu_count=report["machine"]["cpu_count"])
        for r in report["rows"]:
            rows[(r["name"], r["parties"], r["provider"])] = r
    return device, rows, failed


def compare_devices(base_dir: Path, other_dir: Path) -> tuple[str, dict]:
    """Markdown and JSON of two sets of suite runs side by side, base (the CPU side) and
    other (the GPU side), row by row: both medians, the speed-up, the GPU side's plaintext
    references (float32 and, for the matmul rows, float64) and the issue's aims."""
    (bdev, brows, bfail), (odev, orows, ofail) = _side(base_dir), _side(other_dir)
    order = [*bench_rows.ALL_OPS, *bench_rows.ALL_MODELS]
    keys = sorted(dict.fromkeys([*orows, *brows]),
                  key=lambda k: (order.index(k[0]) if k[0] in order else len(order), k[1],
                                 SUITE_PROVIDERS.index(k[2]) if k[2] in SUITE_PROVIDERS else 9))
    lines = []
    for label, dev in (("CPU side", bdev), ("GPU side", odev)):
        if dev:
            lines.append(f"{common.device_line(dev)} [{label}; host CPU {dev['cpu']}, "
                         f"{dev['cpu_count']} cores]")
    head = ["row", "n", "provider", "CPU side ms", "GPU side ms", "speed-up (CPU/GPU)",
            "GPU plain ms", "GPU private/plain", "GPU float64 GEMM ms", "GPU private/float64",
            "aim"]
    cells, merged = [], []
    for key in keys:
        b, o = brows.get(key), orows.get(key)
        speedup = b["median_s"] / o["median_s"] if b and o else None
        aim = "-"
        if key[0] in AIM_SPEEDUP:
            goal = AIM_SPEEDUP[key[0]]
            aim = (f">= {goal:g}x: " + ("met" if speedup >= goal else "missed")) if speedup \
                else f">= {goal:g}x: no base figure"
        if key[0] in AIM_F64 and o and o.get("ratio_f64"):
            goal = AIM_F64[key[0]]
            aim = f"<= {goal:g}x float64: " + ("met" if o["ratio_f64"] <= goal else "missed")
        cells.append([key[0], str(key[1]), key[2],
                      fmt(b and 1e3 * b["median_s"], ".4g"), fmt(o and 1e3 * o["median_s"], ".4g"),
                      fmt(speedup, ".3g"), fmt(o and 1e3 * o["plain_median_s"], ".3g"),
                      fmt(o and o["ratio"], ".3g"),
                      fmt(o and o.get("plain_f64_median_s") and 1e3 * o["plain_f64_median_s"],
                          ".3g"), fmt(o and o.get("ratio_f64"), ".3g"), aim])
        merged.append({"name": key[0], "parties": key[1], "provider": key[2], "base": b,
                       "other": o, "speedup": speedup, "aim": aim})
    lines += ["", common.markdown_table(head, cells, "lllrrrrrrrl")]
    for label, fails in (("CPU side", bfail), ("GPU side", ofail)):
        for group, tail in fails:
            lines += ["", f"{label} group `{group}` failed or was cut off; its log ends:", "",
                      "```", tail, "```"]
    return "\n".join(lines), {"base_device": bdev, "other_device": odev, "rows": merged,
                              "failed": {"base": bfail, "other": ofail}}


# -- main ----------------------------------------------------------------------------------------
def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_quick_and_repeats(p, "small sizes, 1 repeat, profile lan only unless --profiles")
    p.add_argument("--ops", nargs="*", default=None, metavar="ROW", help=", ".join(OP_ROWS))
    p.add_argument("--models", nargs="*", default=None, metavar="ROW", help=", ".join(MODEL_ROWS))
    p.add_argument("--parties", nargs="+", type=int, default=PARTIES)
    p.add_argument("--providers", nargs="+", choices=SUITE_PROVIDERS, default=PROVIDERS,
                   help=f"{FSS}: the dealer with Config(comparison='fss'), 2 parties only")
    p.add_argument("--profiles", nargs="+", choices=PROFILE_NAMES, default=None)
    p.add_argument("--no-crypten", action="store_true", help="skip the CrypTen comparison")
    p.add_argument("--offline-dealer", action="store_true",
                   help="on shaped profiles, leave the dealer's own link unshaped and undelayed "
                        "(its correlations stand for an offline phase; the parties' links keep "
                        "the profile)")
    p.add_argument("--crypten-python", default=os.environ.get(
        "MPC_CRYPTEN_PYTHON", str(ROOT / ".venv-crypten" / "bin" / "python")),
        help="interpreter with CrypTen 0.4.1 (default .venv-crypten, see README)")
    common.add_device(p)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "suite")
    args = common.parse(p, argv)  # --device is checked there, before any party starts
    if args.profiles is None:
        args.profiles = ["lan"] if args.quick else PROFILE_NAMES
    args.ops = OP_ROWS if args.ops is None else args.ops
    args.models = MODEL_ROWS if args.models is None else args.models
    for name in args.ops + args.models:
        if name not in bench_rows.ALL_OPS and name not in bench_rows.ALL_MODELS \
                and name != SERVE_ROW:
            p.error(f"unknown row {name!r}")
    return args


def main(argv=None) -> dict:
    import netns
    from tqdm import tqdm

    args = parse_args(sys.argv[1:] if argv is None else argv)
    rows_wanted = [r for r in args.ops + args.models if r != SERVE_ROW]
    info = common.machine_info(mpc.__version__)
    notes = []
    profiles = [netns.PROFILES[n] for n in args.profiles]
    shaped = [p for p in profiles if p.name != "lan"]
    if shaped:
        why = netns.available()
        if why:
            notes.append(f"network profiles {', '.join(p.name for p in shaped)} skipped: {why}")
            profiles = [p for p in profiles if p.name == "lan"]
    jobs = [(p, n, prov) for p in profiles for n in args.parties for prov in args.providers
            if prov != FSS or n == 2] if rows_wanted else []
    if args.offline_dealer:
        notes.append("--offline-dealer: on shaped profiles the dealer's link is neither shaped nor "
                     "delayed (its correlations stand for an offline phase); the parties' links are")
    if FSS in args.providers and set(args.parties) - {2}:
        notes.append(f"{FSS} runs with 2 parties only (the protocol is 2-party)")
    rows: list[dict] = []
    profile_info = {p.name: {"name": p.name, "rate_mbit": p.rate_mbit, "rtt_ms": p.rtt_ms,
                             "latency": "user-space delay of each sent frame (netdelay.py)"
                             if p.rtt_ms else None,
                             "bandwidth": "tc tbf on each namespace's veth" if p.rate_mbit
                             else None, "measured": {}} for p in profiles}
    probes = {}
    # CrypTen first: its launcher forks, and this process has run no torch work yet.
    crypten = None
    if not common.is_cpu(args.device) and not args.no_crypten:
        notes.append(f"CrypTen comparison skipped: --device {args.device} (CrypTen runs on "
                     "the CPU; compare with a --device cpu run)")
    elif not args.no_crypten:
        import crypten_runner
        crypten, why = crypten_runner.run_from_suite(
            args.crypten_python, rows_wanted, args.parties, args.quick, args.repeats)
        if why:
            notes.append(f"CrypTen: {why}" if crypten else f"CrypTen comparison skipped: {why}")
    device = common.device_info(args.device)  # after CrypTen's fork: this may start CUDA
    with tqdm(total=len(jobs) * len(rows_wanted), desc="suite", unit="row") as bar:
        for profile, parties, provider in jobs:
            bar.set_postfix_str(f"{profile.name} n={parties} {provider}")
            if profile.name == "lan":
                per_rank = run_job(profile, parties, provider, rows_wanted, args.quick,
                                   args.repeats, device=args.device)
            else:
                dealer = _provider_and_env(provider)[0] == "dealer"
                unshaped = (parties,) if dealer and args.offline_dealer else ()
                with netns.Network(parties + dealer, profile, unshaped) as net:
                    per_rank = run_job(profile, parties, provider, rows_wanted, args.quick,
                                       args.repeats, net=net, offline_dealer=bool(unshaped),
                                       device=args.device)
            probe = per_rank[0]["probe"]
            probes[(profile.name, parties, provider)] = probe
            key = f"n={parties} {provider}"
            profile_info[profile.name]["measured"][key] = probe
            tqdm.write(f"{profile.name} {key}: measured RTT {probe['rtt_s'] * 1e3:.3g} ms, "
                       f"bandwidth {probe['bandwidth_bit_s'] / 1e6:.4g} Mbit/s "
                       f"(asked: {profile.rtt_ms:g} ms, "
                       f"{'unshaped' if not profile.rate_mbit else f'{profile.rate_mbit:g} Mbit/s'})")
            rows += job_rows(profile, parties, provider, per_rank, args.quick, args.device)
            bar.update(len(rows_wanted))
    plain = {name: time_plain(name, args.quick, args.repeats, args.device)
             for name in rows_wanted}
    plain_f64 = {} if common.is_cpu(args.device) else {
        name: time_plain(name, args.quick, args.repeats, args.device, torch.float64)
        for name in rows_wanted if name in GEMM_ROWS}
    lan = {(r["name"], r["parties"], r["provider"]): r for r in rows if r["profile"] == "lan"}
    spec_cache = {}
    for r in rows:
        r["plain_median_s"] = plain[r["name"]]
        r["ratio"] = r["median_s"] / plain[r["name"]]
        if r["name"] in plain_f64:
            r["plain_f64_median_s"] = plain_f64[r["name"]]
            r["ratio_f64"] = r["median_s"] / plain_f64[r["name"]]
        comparison = "fss" if r["provider"] == FSS else "circuit"
        key = (r["name"], r["parties"], comparison)
        if key not in spec_cache:
            spec_cache[key] = spec_cost(r["name"], r["parties"], args.quick, comparison)
        r["spec"] = spec_cache[key]
        r["spec_match"], r["spec_check"] = costmodel.check(
            r["spec"], r["rounds"], r["bytes_sent"],
            costmodel.NO_FSS_SPEC if comparison == "fss" and bench_rows.kind(r["name"]) == "op"
            else costmodel.NO_MODEL_SPEC)
        prof = netns.PROFILES[r["profile"]]
        r["predicted"] = predicted_time(r, lan.get((r["name"], r["parties"], r["provider"])),
                                        probes.get((r["profile"], r["parties"], r["provider"])),
                                        prof)
        ref = (crypten or {}).get(f"{r['name']}/{r['parties']}") if r["profile"] == "lan" else None
        r["crypten"] = ref
        r["vs_crypten"] = r["median_s"] / ref["median_s"] if ref else None
    info["loadavg_end"] = common.loadavg()
    report = {"benchmark": "suite", "command": "mpc-ml bench " + " ".join(
        sys.argv[1:] if argv is None else argv), "quick": args.quick, "repeats": args.repeats,
        "backend": "tcp", "threads_per_party": 1, "machine": info, "device": device,
        "profiles": list(profile_info.values()), "notes": notes,
        "crypten": crypten, "rows": rows}
    if SERVE_ROW in args.models:  # its own processes and table (benchmarks/serve.py)
        import serve as bench_serve
        report["serve"] = bench_serve.run([p.name for p in profiles], args.quick, notes=notes)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "suite.json").write_text(json.dumps(report, indent=2) + "\n")
    md = markdown(report)
    if report.get("serve"):
        md += "\n\n" + bench_serve.markdown(report["serve"])
    (args.out / "suite.md").write_text(md + "\n")
    print(md)
    for note in notes:
        print(f"note: {note}")
    try:
        for path in plots(report, args.out):
            print(f"wrote {path}", file=sys.stderr)
    except ImportError as e:
        print(f"note: no plots ({e}); pip install .[bench]")
    print(f"wrote {args.out / 'suite.json'} and suite.md", file=sys.stderr)
    return report


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        worker(sys.argv[2])
    elif sys.argv[1:2] == ["--dealer-worker"]:
        dealer_worker(sys.argv[2], int(sys.argv[3]), *sys.argv[4:5])
    elif sys.argv[1:2] == ["--compare"]:  # --compare OUT_PREFIX BASE_DIR OTHER_DIR
        md, merged = compare_devices(Path(sys.argv[3]), Path(sys.argv[4]))
        Path(sys.argv[2] + ".md").write_text(md + "\n")
        Path(sys.argv[2] + ".json").write_text(json.dumps(merged, indent=2) + "\n")
        print(md)
    else:
        main()
