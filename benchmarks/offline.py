#!/usr/bin/env python
"""Offline phase benchmark: online time with the dealer behind a slow link, per operation
(today) and with the correlations prefetched from a trace (protocols/offline.toml).

Two parties and the dealer are separate processes over tcp on loopback (mpc.run,
backend tcp, provider dealer; one torch thread each). In each party the dealer link
is wrapped (in this script only; mpc_ml/comm is untouched) so that every frame it sends
leaves, and every frame it receives is handed over, `--rtt-ms` / 2 after it was queued
or arrived: the dealer round trip takes --rtt-ms (default 40), the link between the
parties stays loopback. The delay is switched per configuration inside the same
processes, so every configuration runs on the same model, shares and links:

  (a) local dealer: no delay, one request per correlation (today's dealer, next door);
  (b) delayed dealer, one request per correlation (today's dealer, 40 ms away);
  (c) delayed dealer, prefetched: one traced run, then trace.prefetch(warm-up + repeats)
      and the runs, which then send the dealer one acknowledgement each and no request;
  (d) local dealer, prefetched (for reference).

Rows (benchmarks/rows.py): lenet5_b32 (LeNet-5 inference, batch 32) and mlp_step (one
SGD step of MLP 784-128-10, batch 64, from the same fresh weights every run). Timing as
in models.py (common.timed): per run a barrier, reset counters, party 0 times with
perf_counter; one warm-up, then --repeats timed runs; the table shows medians. The
trace is made once per row (an untimed run with no delay: the requests depend on shapes
only); making it behind the slow link would cost one per-request run more, offline.

    python benchmarks/offline.py                  # both rows, 3 repeats, RTT 40 ms (~1.5 min)
    python benchmarks/offline.py --quick          # the rows' --quick sizes, 1 repeat
    python benchmarks/offline.py --rows mlp_step --rtt-ms 80 --repeats 5 --window 1

Prints a Markdown table (times, (c)/(a) with the issue's goal of at most 1.10, (b)/(a),
the dealer traffic of the last party per run) and writes JSON to --out (default
benchmarks/out/offline.json).
"""
from __future__ import annotations

import argparse
import copy
import queue
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (benchmarks/common.py)
import models as bench_models  # noqa: E402  (benchmarks/models.py: the SGD step, shared)
import rows as bench_rows  # noqa: E402  (benchmarks/rows.py: the torch models and inputs)
from common import MB, fmt  # noqa: E402

import mpc_ml as mpc  # noqa: E402
from mpc_ml.comm import CommTimeout  # noqa: E402
from mpc_ml.session import current  # noqa: E402
from mpc_ml.tensor import trace_correlations  # noqa: E402

ROWS = ["lenet5_b32", "mlp_step"]
MODES = {
    "local": "(a) local dealer, per request",
    "delayed": "(b) delayed dealer, per request",
    "prefetch": "(c) delayed dealer, prefetched",
    "local_prefetch": "(d) local dealer, prefetched",
}
GOAL = 1.10  # the goal: (c) within 10% of (a)
MODEL_OWNER, DATA_OWNER = 0, 1


# -- the delayed dealer link (inside a party) ------------------------------------------------
class DelayedLink:
    """A Link around the party's dealer link: each frame goes out, and each arriving one is
    handed over, `delay_s` after it was queued or arrived (order kept, send never blocks).
    delay_s may be changed while the link is quiet."""

    def __init__(self, link, delay_s: float = 0.0):
        self.link, self.peer, self.delay_s = link, link.peer, delay_s
        self._out: queue.Queue = queue.Queue()
        self._in: queue.Queue = queue.Queue()
        self._send_error: BaseException | None = None
        self._closed = threading.Event()
        self._sender = threading.Thread(target=self._send_loop, daemon=True, name="delay-send")
        self._receiver = threading.Thread(target=self._recv_loop, daemon=True, name="delay-recv")
        self._sender.start()
        self._receiver.start()

    @staticmethod
    def _wait_until(due: float) -> None:
        wait = due - time.monotonic()
        if wait > 0:
            time.sleep(wait)

    def _send_loop(self) -> None:
        while True:
            due, msg = self._out.get()
            if msg is None:
                return
            self._wait_until(due)
            try:
                self.link.send(msg)
            except BaseException as e:  # reported by the next send
                self._send_error = e

    def _recv_loop(self) -> None:
        while not self._closed.is_set():
            try:
                msg = self.link.recv(3600)
            except CommTimeout:
                continue
            except BaseException as e:
                self._in.put((0.0, e))
                return
            self._in.put((time.monotonic() + self.delay_s, msg))

    def send(self, msg) -> None:
        """Queue msg to leave delay_s from now."""
        if self._send_error is not None:
            raise self._send_error
        if isinstance(msg, torch.Tensor):
            msg = msg.detach().clone()
        self._out.put((time.monotonic() + self.delay_s, msg))

    def recv(self, timeout: float):
        """The next frame, delay_s after it arrived."""
        try:
            due, msg = self._in.get(timeout=timeout)
        except queue.Empty:
            raise CommTimeout(f"no message from the dealer within {timeout:g} s") from None
        if isinstance(msg, BaseException):
            self._in.put((0.0, msg))
            raise msg
        self._wait_until(due)
        return msg

    def close(self) -> None:
        """Send what is queued, then close the link."""
        self._out.put((0.0, None))
        self._sender.join(30)
        self._closed.set()
        self.link.close()
        self._receiver.join(5)


# -- inside a party ------------------------------------------------------------------------------
def _private(inputs: tuple) -> list:
    rank = mpc.rank()
    return [mpc.encrypt(t if rank == DATA_OWNER else None, src=DATA_OWNER, shape=t.shape)
            for t in inputs]


def _runner(row, torch_model, model, inputs) -> tuple[Callable, Callable | None, Callable]:
    """(run, before (untimed, or None), max error of the last run against torch)."""
    private = _private(inputs)
    if not row.train:
        model.encrypt(src=MODEL_OWNER)
        out = {}

        def infer():
            with mpc.no_grad():
                out["y"] = model(private[0])
            return out["y"]

        def infer_err():
            got = out["y"].decrypt(dst=0)
            if mpc.rank() != 0:
                return None
            with torch.no_grad():
                want = copy.deepcopy(torch_model).double()(inputs[0].double())
            return float((got.double() - want).abs().max())
        return infer, None, infer_err

    fresh, step = bench_models.sgd_step_fns(model, private[0], private[1])

    def step_err():
        got = {k: v.decrypt(dst=0) if isinstance(v, mpc.MPCTensor) else v
               for k, v in model.state_dict().items()}  # the model itself stays private
        return bench_models.sgd_step_error(got, torch_model, inputs) if mpc.rank() == 0 else None
    return step, fresh, step_err


def _party(names: list[str], quick: bool, repeats: int, rtt_s: float, window: int) -> list[dict]:
    torch.set_num_threads(1)
    provider = current().provider
    link = provider.link = DelayedLink(provider.link)
    token = mpc.encrypt(torch.zeros(1) if mpc.rank() == 0 else None, src=0, shape=(1,))
    out = []
    for name in names:
        row, torch_model, inputs, model = bench_models.build_row(name, quick)
        run, before, max_err = _runner(row, torch_model, model, inputs)
        if before is not None:
            before()
        with trace_correlations() as trace:  # the offline trace: one untimed run, no delay
            run()
        requests = len(trace.requests())
        result = {"row": name, "requests": requests, "modes": {}}
        for mode in MODES:
            link.delay_s = 0.0 if mode.startswith("local") else rtt_s / 2
            token.decrypt()  # quiet links while the delay changes
            if mode.endswith("prefetch"):
                trace.prefetch(repeats + 1, window=window)  # the warm-up and the timed runs
            times, stats, _ = common.timed(run, repeats, token.decrypt, mpc.reset_stats, mpc.stats,
                                           before=before)
            result["modes"][mode] = {"times_s": times if mpc.rank() == 0 else [], "stats": stats,
                                     "max_abs_err": max_err()}
        out.append(result)
    link.delay_s = 0.0
    return out


# -- in the parent -------------------------------------------------------------------------------------
def run(names: list[str], quick: bool, repeats: int, rtt_ms: float, window: int) -> list[dict]:
    """One mpc.run (two party processes and the dealer's) for every row and configuration."""
    per_party = mpc.run(_party, world_size=2, backend="tcp", provider="dealer",
                        args=(names, quick, repeats, rtt_ms / 1e3, window))
    rows = []
    for parts in zip(*per_party):
        row = {"row": parts[0]["row"], "requests": parts[0]["requests"], "modes": {}}
        for mode in MODES:
            p0, last = parts[0]["modes"][mode], parts[-1]["modes"][mode]
            row["modes"][mode] = {
                "times_s": p0["times_s"], "median_s": statistics.median(p0["times_s"]),
                **common.traffic([p["modes"][mode]["stats"] for p in parts]),
                "dealer_messages": last["stats"]["dealer_messages"],
                "dealer_bytes_sent": last["stats"]["dealer_bytes_sent"],
                "dealer_bytes_received": last["stats"]["dealer_bytes_received"],
                "max_abs_err": p0["max_abs_err"]}
        m = row["modes"]
        row["c_over_a"] = m["prefetch"]["median_s"] / m["local"]["median_s"]
        row["b_over_a"] = m["delayed"]["median_s"] / m["local"]["median_s"]
        row["b_over_c"] = m["delayed"]["median_s"] / m["prefetch"]["median_s"]
        row["d_over_a"] = m["local_prefetch"]["median_s"] / m["local"]["median_s"]
        rows.append(row)
    return rows


def markdown(rows: list[dict], rtt_ms: float) -> str:
    head = ["row", "requests per run", "(a) local ms", f"(b) {rtt_ms:g} ms RTT, per request ms",
            f"(c) {rtt_ms:g} ms RTT, prefetched ms", "(d) local, prefetched ms", "(c)/(a)",
            f"goal (c)/(a) <= {GOAL:.2f}", "(b)/(a)", "(b)/(c)",
            "dealer messages sent per run (b)/(c)", "dealer B sent per run (b)/(c)",
            "dealer MB received per run (b)/(c)", "max err (a)/(c)"]
    cells = []
    for r in rows:
        m = r["modes"]
        cells.append([
            r["row"], r["requests"], *(f"{1e3 * m[k]['median_s']:.4g}" for k in MODES),
            f"{r['c_over_a']:.3f}", "met" if r["c_over_a"] <= GOAL else "missed",
            f"{r['b_over_a']:.2f}", f"{r['b_over_c']:.2f}",
            f"{m['delayed']['dealer_messages']}/{m['prefetch']['dealer_messages']}",
            f"{m['delayed']['dealer_bytes_sent']}/{m['prefetch']['dealer_bytes_sent']}",
            f"{m['delayed']['dealer_bytes_received'] / MB:.3f}/"
            f"{m['prefetch']['dealer_bytes_received'] / MB:.3f}",
            f"{fmt(m['local']['max_abs_err'], '.2g')}/{fmt(m['prefetch']['max_abs_err'], '.2g')}"])
    return common.markdown_table(head, cells, "lr" + "r" * 12)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_quick_and_repeats(p, "the rows' --quick sizes, 1 repeat")
    p.add_argument("--rows", nargs="+", default=ROWS, choices=sorted(bench_rows.ALL_MODELS))
    p.add_argument("--rtt-ms", type=float, default=40.0, help="dealer link round trip (default 40)")
    p.add_argument("--window", type=int, default=2, help="prefetched repeats in flight (default 2)")
    p.add_argument("--out", type=Path, default=common.ROOT / "benchmarks" / "out" / "offline.json")
    argv = sys.argv[1:] if argv is None else list(argv)
    if not any(a == "--repeats" or a.startswith("--repeats=") for a in argv) and "--quick" not in argv:
        argv += ["--repeats", "3"]  # 3, not the other scripts' 5: (b) is slow by design
    return common.parse(p, argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    info = common.machine_info(mpc.__version__)
    start = time.monotonic()
    rows = run(args.rows, args.quick, args.repeats, args.rtt_ms, args.window)
    info["loadavg_end"] = common.loadavg()
    report = {"benchmark": "offline", "quick": args.quick, "repeats": args.repeats,
              "rtt_ms": args.rtt_ms, "window": args.window, "backend": "tcp", "world_size": 2,
              "threads_per_party": 1, "modes": MODES, "goal_c_over_a": GOAL,
              "wall_s": time.monotonic() - start, "machine": info, "rows": rows}
    common.finish(report, markdown(rows, args.rtt_ms), args.out,
                  f"; {report['wall_s']:.0f} s in all")
    return report


if __name__ == "__main__":
    main()
