#!/usr/bin/env python
"""What TLS costs on the tcp backend: 2 parties on loopback, with and without TLS.

    python benchmarks/tls.py            # 5 timed repeats per row, plain and TLS alternating 3 times
    python benchmarks/tls.py --quick         # small sizes, 1 repeat (a smoke test)
    python benchmarks/tls.py --repeats 9 --runs 3 --provider dealer

Rows (each party one torch thread; party 0 times each operation alone with
time.perf_counter after both parties meet at a barrier; one warm-up run per row):

- matmul1024: 1024x1024 @ 1024x1024, both private (Beaver matmul and truncation);
- mul1e6: elementwise product of two private vectors of 10^6 values;
- exchange64MB: each party sends 8e6 int64 (64 MB) to the other at once (the raw cost
  per byte of the link, without share arithmetic);
- connect: the mesh set-up of tcp_session for 2 parties (TCP connect, TLS 1.3
  handshake with certificates both ways, hello, pairwise seeds), parties as threads of
  this process.

Plain and TLS configurations alternate (--runs times each) so that a change in the
machine's load hits both; a row's time is the median over every timed repeat of that
configuration (the table also shows the fastest, less sensitive to other load). Prints
a Markdown table with the overhead ratio (TLS / plain) and writes JSON to --out
(default benchmarks/out/tls.json, git-ignored).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

import mpc_ml as mpc
from mpc_ml.comm import tcp
from mpc_ml.comm.tls import TLSConfig, make_certificates
from mpc_ml.launch import tcp_session

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (benchmarks/common.py: the timing loop, the table writer, git)

ROOT = Path(__file__).resolve().parent.parent
CONFIG = mpc.Config(connect_timeout_s=30, comm_timeout_s=120)


def _rows(quick: bool) -> dict:
    """name -> (input shapes, function of the private inputs)."""
    n, m, ex = (64, 10_000, 100_000) if quick else (1024, 1_000_000, 8_000_000)
    return {
        f"matmul{n}": ([(n, n), (n, n)], lambda a, b: a @ b),
        "mul1e4" if quick else "mul1e6": ([(m,), (m,)], lambda a, b: a * b),
        f"exchange{ex * 8 / 1e6:g}MB": ([(ex,)], None),
    }


def _party(quick: bool, repeats: int) -> dict:
    """Inside each party: {row: {"times": [s, ...], "mb_sent": MB}} (times on party 0 only)."""
    from mpc_ml.session import current

    torch.set_num_threads(1)
    comm = current().comm
    me, other = mpc.rank(), 1 - mpc.rank()
    token = mpc.encrypt(torch.zeros(1) if me == 0 else None, src=0, shape=(1,))
    out = {}
    for name, (shapes, op) in _rows(quick).items():
        g = torch.Generator().manual_seed(len(name))
        plain = [torch.randn(*s, generator=g) for s in shapes]
        if op is not None:
            args = [mpc.encrypt(t if me == i % 2 else None, src=i % 2, shape=t.shape)
                    for i, t in enumerate(plain)]
        else:
            payload = torch.randint(-2 ** 62, 2 ** 62, shapes[0], generator=g)
        if op is not None:
            run = lambda: op(*args)  # noqa: E731
        else:
            run = lambda: comm.exchange({other: payload}, [other])  # noqa: E731
        # a warm-up, then the timed runs, each after a barrier (both parties start together)
        times, stats, _ = common.timed(run, repeats, token.decrypt, mpc.reset_stats, mpc.stats)
        out[name] = {"times": times if me == 0 else [], "mb_sent": stats["bytes_sent"] / 1e6}
    return out


def _connect_times(tls_dir: str | None, repeats: int) -> list[float]:
    """Seconds for 2 parties (threads) to set up a tcp session, per repeat."""
    times = []
    for _ in range(repeats + 1):
        listeners = [tcp.listen("127.0.0.1:0") for _ in range(2)]
        addrs = [f"127.0.0.1:{s.getsockname()[1]}" for s in listeners]
        tls = [TLSConfig(tls_dir, r) if tls_dir else None for r in range(2)]  # files read once
        sessions, errors = {}, []

        def party(r):
            try:
                sessions[r] = tcp_session(r, 2, addrs, "tfp", CONFIG, listener=listeners[r],
                                          tls=tls[r])
            except Exception as e:  # reported below
                errors.append(e)

        threads = [threading.Thread(target=party, args=(r,)) for r in range(2)]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - start
        for s in sessions.values():
            s.close()
        if errors:
            raise errors[0]
        times.append(elapsed)
    return times[1:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, 1 repeat")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per row (default 5)")
    parser.add_argument("--runs", type=int, default=3,
                        help="how many times each configuration runs, alternating (default 3)")
    parser.add_argument("--provider", choices=["tfp", "dealer"], default="tfp")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "tls.json"))
    args = parser.parse_args(argv)
    repeats = args.repeats or (1 if args.quick else 5)

    with tempfile.TemporaryDirectory(prefix="mpc-tls-bench-") as certs:
        make_certificates(certs, parties=2, dealer=True)
        samples: dict = {"tcp": {}, "tls": {}}
        mb: dict = {}
        for _ in range(args.runs):
            for label, tls_dir in (("tcp", None), ("tls", certs)):
                outs = mpc.run(_party, world_size=2, backend="tcp", provider=args.provider,
                               args=(args.quick, repeats), config=CONFIG, tls_dir=tls_dir)
                for name, row in outs[0].items():
                    samples[label].setdefault(name, []).extend(row["times"])
                    mb[name] = max(outs[0][name]["mb_sent"], outs[1][name]["mb_sent"])
                samples[label].setdefault("connect", []).extend(
                    _connect_times(tls_dir, repeats))
                mb["connect"] = None

    rows = []
    for name in samples["tcp"]:
        plain, tls = (statistics.median(samples[k][name]) for k in ("tcp", "tls"))
        best_plain, best_tls = (min(samples[k][name]) for k in ("tcp", "tls"))
        rows.append({"op": name, "mb_sent_per_party": mb[name], "tcp_ms": plain * 1e3,
                     "tls_ms": tls * 1e3, "ratio": tls / plain, "best_tcp_ms": best_plain * 1e3,
                     "best_tls_ms": best_tls * 1e3, "best_ratio": best_tls / best_plain,
                     "tcp_times_s": samples["tcp"][name], "tls_times_s": samples["tls"][name]})

    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(f"\n2 parties over tcp on loopback, provider {args.provider}, one torch thread each; "
          f"median of {repeats * args.runs} timed runs per configuration; "
          f"load average {load and round(load[0], 2)}\n")
    head = ["operation", "MB sent per party", "plain tcp ms", "TLS 1.3 ms", "TLS / plain",
            "fastest: plain / TLS ms", "fastest: TLS / plain"]
    cells = [[r["op"], "" if r["mb_sent_per_party"] is None else f"{r['mb_sent_per_party']:.1f}",
              f"{r['tcp_ms']:.1f}", f"{r['tls_ms']:.1f}", f"{r['ratio']:.2f}",
              f"{r['best_tcp_ms']:.1f} / {r['best_tls_ms']:.1f}", f"{r['best_ratio']:.2f}"]
             for r in rows]
    print(common.markdown_table(head, cells, align="lrrrrrr"))

    commit = common.git("rev-parse", "HEAD")
    import ssl

    result = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                          "load_average": load, "python": sys.version.split()[0],
                          "torch": torch.__version__, "openssl": ssl.OPENSSL_VERSION},
              "commit": commit, "provider": args.provider, "repeats": repeats,
              "runs": args.runs, "quick": args.quick, "rows": rows}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"\nwritten {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
