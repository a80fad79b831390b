"""The `mpc-ml` command: launch | demo | dealer | bench."""
from __future__ import annotations

import argparse
import os
import runpy
import signal
import subprocess
import sys
import time
from pathlib import Path

from .comm import tcp
from .config import Config


def _free_addresses(count: int, host: str = "127.0.0.1") -> list[str]:
    """Addresses with ports free right now (the OS picks them; released before use)."""
    socks = [tcp.listen(f"{host}:0") for _ in range(count)]
    addrs = [f"{host}:{s.getsockname()[1]}" for s in socks]
    for s in socks:
        s.close()
    return addrs


def launch(args: argparse.Namespace) -> int:
    """Start n party processes (and a dealer) running the script; wait for all."""
    n = args.nparties
    if n < 2:
        raise SystemExit("mpc-ml launch: -n must be at least 2")
    if not Path(args.script).exists():
        raise SystemExit(f"mpc-ml launch: no such script {args.script!r}")
    addrs = _free_addresses(n + 1)
    env = dict(os.environ, MPC_WORLD_SIZE=str(n), MPC_BACKEND=args.backend,
               MPC_PROVIDER=args.provider, MPC_PARTY_ADDRS=",".join(addrs[:n]),
               MPC_TORCH_THREADS=str(max(1, (os.cpu_count() or 1) // n)))
    procs: dict[str, subprocess.Popen] = {}
    if args.provider == "dealer":
        env["MPC_DEALER_ADDR"] = addrs[n]
        procs["dealer"] = subprocess.Popen(
            [sys.executable, "-m", "mpc_ml", "dealer", "--listen", addrs[n], "-n", str(n)], env=env)
    for r in range(n):
        procs[f"party {r}"] = subprocess.Popen([sys.executable, args.script, *args.script_args],
                                               env=dict(env, MPC_RANK=str(r)))
    return _wait_all(procs, Config.from_env().comm_timeout_s)


def _wait_all(procs: dict[str, subprocess.Popen], grace_s: float) -> int:
    """Wait for every process; once one fails, the rest get grace_s to fail too."""
    failed: list[tuple[str, int]] = []
    deadline = None
    try:
        while any(p.poll() is None for p in procs.values()):
            for name, p in procs.items():
                if p.poll() not in (None, 0) and (name, p.returncode) not in failed:
                    failed.append((name, p.returncode))
                    deadline = deadline or time.monotonic() + grace_s
            if deadline and time.monotonic() > deadline:
                break
            time.sleep(0.05)  # polling child processes, not synchronising a test
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
            p.wait()
    for name, p in procs.items():
        if p.returncode != 0 and name not in [f for f, _ in failed]:
            failed.append((name, p.returncode))
    if failed:
        name, code = failed[0]
        print(f"mpc-ml launch: {name} exited with code {code}", file=sys.stderr)
        return code if code > 0 else 1
    return 0


def dealer(args: argparse.Namespace) -> int:
    """Run a dealer for one job of n parties."""
    import torch

    from .launch import run_tcp_dealer

    torch.set_num_threads(1)
    served = run_tcp_dealer(tcp.listen(args.listen), args.nparties, Config.from_env())
    print(f"dealer: served {served} correlations", file=sys.stderr)
    return 0


def demo(args: argparse.Namespace) -> int:
    from .demo import main

    main(task=args.task, epochs=args.epochs)
    return 0


def bench(bench_args: list[str]) -> int:
    """Run benchmarks/ops.py of the checkout in the current directory with bench_args."""
    script = Path("benchmarks") / "ops.py"
    if not script.exists():
        raise SystemExit("mpc-ml bench runs benchmarks/ops.py from a checkout of mpc_ml; "
                         "run it from the repository root")
    sys.argv = [str(script), *bench_args]
    runpy.run_path(str(script), run_name="__main__")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mpc-ml", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("launch", help="run a script as n parties on this machine")
    p.add_argument("-n", "--nparties", type=int, required=True)
    p.add_argument("--backend", choices=["tcp"], default="tcp")
    p.add_argument("--provider", choices=["tfp", "dealer"], default="tfp")
    p.add_argument("script")
    p.add_argument("script_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=launch)
    p = sub.add_parser("dealer", help="serve correlated randomness to n parties")
    p.add_argument("--listen", required=True, metavar="HOST:PORT")
    p.add_argument("-n", "--nparties", type=int, required=True)
    p.set_defaults(func=dealer)
    p = sub.add_parser("demo", help="private CNN training on digits (2 parties + dealer)")
    p.add_argument("--task", choices=["cnn", "linear"], default="cnn")
    p.add_argument("--epochs", type=int, default=None)
    p.set_defaults(func=demo)
    sub.add_parser("bench", help="run the benchmark suite (from a checkout); options go to "
                                 "benchmarks/ops.py, e.g. mpc-ml bench --quick")
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:  # everything after `bench` belongs to the benchmark script
        return bench(argv[1:])
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
