"""What the benchmark scripts share: CrypTen's reference figures, the timing loop, the
plaintext timing, traffic summaries, machine information, option handling and the one
Markdown table writer.

Imports torch and the standard library only (never mpc_ml): the functions that need a
party's counters take them as arguments, so that the CrypTen side could use them too.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import torch

ROOT = Path(__file__).resolve().parent.parent
MB = 1e6  # decimal megabytes, as CrypTen's figures below
WORLD_SIZE = 2  # ops.py and models.py: 2 parties (the suite: --parties)
PROVIDERS = ("tfp", "dealer")  # the providers the benchmarks run under

# CrypTen 0.4.1 on the reference machine, as measured by the issues that asked for these
# rows (2 parties, one torch thread each, loopback): median seconds, rounds, MB between
# the parties (both directions), bytes sent per element per party; None where the issue
# gave no figure. benchmarks/ops.py and models.py show them at full size (and write the
# entries of their rows as "crypten_reference" in their JSON); suite.py measures CrypTen
# itself instead (crypten_runner.py).
CRYPTEN = {
    "matmul1024": {"s": 0.37, "rounds": None, "mb": 33.6, "bytes_per_elem": None},
    "mul1e6": {"s": 0.081, "rounds": None, "mb": 32.0, "bytes_per_elem": None},
    "relu1e6": {"s": 1.43, "rounds": 9, "mb": None, "bytes_per_elem": 232},
    "sigmoid1e5": {"s": 0.25, "rounds": 23, "mb": None, "bytes_per_elem": None},
    "reciprocal1e5": {"s": 0.39, "rounds": 38, "mb": None, "bytes_per_elem": None},
    # with 4.9% relative error on [-5, 5] (ours: 1e-3 on [-8, 8])
    "exp1e5": {"s": 0.063, "rounds": 8, "mb": None, "bytes_per_elem": None},
    # the model rows' issue gave no bytes per element
    "lenet5_b32": {"s": 1.37, "rounds": 133, "mb": 397.0},
    "mlp_step": {"s": 0.46, "rounds": 144, "mb": 11.0},
}


def crypten_reference(names) -> dict:
    """The entries of CRYPTEN for these rows (those that have one), in CRYPTEN's order."""
    names = set(names)
    return {name: ref for name, ref in CRYPTEN.items() if name in names}


# -- measuring ------------------------------------------------------------------------------
def timed(run: Callable, repeats: int, barrier: Callable, reset_stats: Callable,
          read_stats: Callable, before: Callable | None = None,
          profiler=None, sync: Callable | None = None) -> tuple[list, dict, object]:
    """One warm-up and `repeats` timed runs of run(), each after before() (not timed), a
    barrier (every party starts together) and reset traffic counters; the profiler, if
    any, runs during the timed runs only; sync() (a device's synchronize, see
    synchronizer) runs before the clock is read. Returns (seconds of each timed run, the
    counters after the last run, the last run's result)."""
    times, stats, result = [], {}, None
    for rep in range(repeats + 1):  # rep 0 is the warm-up
        result = None  # free the previous result before the next run
        if before is not None:
            before()
        barrier()
        reset_stats()
        if profiler is not None and rep:
            profiler.enable()
        start = time.perf_counter()
        result = run()
        if sync is not None:
            sync()
        elapsed = time.perf_counter() - start
        if profiler is not None and rep:
            profiler.disable()
        stats = read_stats()
        if rep:
            times.append(elapsed)
    return times, stats, result


def time_plain(fn: Callable, inputs: tuple, repeats: int, sync: Callable | None = None) -> float:
    """Median seconds of fn(*inputs) (the plaintext torch run) with one torch thread,
    over `repeats` runs after a warm-up; sync() (a device's synchronize) runs after the
    warm-up and before the clock is read each time."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        fn(*inputs)
        if sync is not None:
            sync()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn(*inputs)
            if sync is not None:
                sync()
            times.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)
    return statistics.median(times)


def traffic(stats: list[dict]) -> dict:
    """Each party's counters (mpc.stats()) as a row's traffic: per party rounds, messages,
    bytes sent and received; bytes between the parties and with the dealer in all."""
    return {
        "rounds": [s["rounds"] for s in stats],
        "messages": [s["messages"] for s in stats],
        "bytes_sent": [s["bytes_sent"] for s in stats],
        "bytes_received": [s["bytes_received"] for s in stats],
        "total_bytes": sum(s["bytes_sent"] for s in stats),
        "dealer_bytes": sum(s.get("dealer_bytes_sent", 0) + s.get("dealer_bytes_received", 0)
                            for s in stats),
    }


def free_ports(count: int) -> list[int]:
    """Loopback ports free right now (the OS picks them, all bound at once: distinct)."""
    socks = []
    for _ in range(count):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


# -- the device the parties compute on -----------------------------------------------------
DEVICE_KINDS = ("cpu", "cuda")


def check_device(name: str) -> str:
    """A benchmark's --device: 'cpu', 'cuda' or 'cuda:N', checked here, before any party
    starts; ValueError saying what is wrong (an unknown device, or CUDA asked for where
    torch sees no GPU)."""
    kind, colon, index = name.partition(":")
    if kind not in DEVICE_KINDS or (colon and (kind == "cpu" or not index.isdigit())):
        raise ValueError(f"unknown device {name!r}: choose cpu or cuda (cuda:N for GPU N)")
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"--device {name}: torch.cuda.is_available() is False on this machine "
                f"(torch {torch.__version__}, built for CUDA {torch.version.cuda or 'none'}): "
                "no GPU to run the parties on; use --device cpu")
        count = torch.cuda.device_count()
        if colon and int(index) >= count:
            raise ValueError(f"--device {name}: this machine has {count} CUDA device(s)")
    return name


def add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cpu", metavar="cpu|cuda",
                   help="where the parties keep their shares and compute (default cpu); with "
                        "cuda the models and inputs are moved there, the correlations are made "
                        "there (Config(device=, prg='chacha20')) and the plaintext reference "
                        "runs there too")


def is_cpu(device: str) -> bool:
    return device.partition(":")[0] == "cpu"


def device_config(device: str) -> dict:
    """The mpc.Config fields of a run on this device: none on the CPU (the default
    configuration, so CPU figures are unchanged); on a GPU its correlations made there,
    with the ChaCha20 device PRG (no host round trip)."""
    return {} if is_cpu(device) else {"device": device, "prg": "chacha20"}


def placement(device: str) -> str | None:
    """encrypt()'s device= for this device: None on the CPU (the default placement)."""
    return None if is_cpu(device) else device


def synchronizer(device: str) -> Callable | None:
    """What to call before reading a timer for work on this device: None on the CPU, the
    device's synchronize on a GPU (its kernels run asynchronously)."""
    if is_cpu(device):
        return None
    return lambda: torch.cuda.synchronize(device)


def reset_device_peak(device: str) -> None:
    """Start counting the device's peak memory afresh (nothing on the CPU). A figure on
    the side: where the allocator cannot say, device_peak answers None."""
    if not is_cpu(device):
        try:
            torch.cuda.init()  # the allocator's statistics need CUDA set up
            torch.cuda.reset_peak_memory_stats(device)
        except RuntimeError:
            pass


def device_peak(device: str) -> int | None:
    """Peak bytes allocated by torch on the device since reset_device_peak (None on CPU)."""
    if is_cpu(device):
        return None
    try:
        return int(torch.cuda.max_memory_allocated(device))
    except RuntimeError:
        return None


def cpu_name() -> str:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f
                        if line.startswith("model name")), cpu)
    except OSError:
        pass
    return cpu or platform.machine()


def device_info(device: str) -> dict:
    """The device a run computed on: its name (torch.cuda.get_device_name, or the CPU's
    model name), and for a GPU its memory and torch's CUDA version. On a GPU this
    initialises CUDA in the calling process."""
    if is_cpu(device):
        return {"device": device, "device_name": cpu_name(), "device_count": os.cpu_count()}
    props = torch.cuda.get_device_properties(device)
    return {"device": device, "device_name": torch.cuda.get_device_name(device),
            "device_memory_bytes": int(props.total_memory), "cuda": torch.version.cuda,
            "device_count": torch.cuda.device_count()}


def device_line(info: dict) -> str:
    """One Markdown line naming the device of a run."""
    extra = ""
    if info.get("cuda"):
        extra = (f", {info['device_memory_bytes'] / 2**30:.0f} GiB, CUDA {info['cuda']}")
    return f"- device: `{info['device']}` ({info['device_name']}{extra})"


# -- the machine ------------------------------------------------------------------------------
def git(*args: str) -> str | None:
    """Output of a git command in the checkout, None where git fails."""
    try:
        return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True,
                              check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def loadavg() -> list | None:
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


def machine_info(mpc_ml_version: str) -> dict:
    cpu = cpu_name()
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"platform": platform.platform(), "cpu": cpu, "cpu_count": os.cpu_count(),
            "python": platform.python_version(), "torch": torch.__version__,
            # MPC_ML_GIT_COMMIT: a copy of the tree without .git (a lent GPU) names its commit
            "mpc_ml": mpc_ml_version,
            "git_commit": git("rev-parse", "HEAD") or os.environ.get("MPC_ML_GIT_COMMIT"),
            "git_dirty": bool(status) if status is not None else None,
            "loadavg_start": loadavg()}


# -- options ---------------------------------------------------------------------------------
def add_quick_and_repeats(p: argparse.ArgumentParser, quick_help: str) -> None:
    p.add_argument("--quick", action="store_true", help=quick_help)
    p.add_argument("--repeats", type=int, default=None,
                   help="timed runs per row after the warm-up (default 5; 1 with --quick)")


def parse(p: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse argv (sys.argv[1:] if None; a leading `--`, as `mpc-ml bench -- ...` passes it,
    is dropped) and fill in --repeats: 5, or 1 with --quick."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = p.parse_args(argv[1:] if argv[:1] == ["--"] else argv)
    if args.repeats is None:
        args.repeats = 1 if args.quick else 5
    if args.repeats < 1:
        p.error("--repeats must be at least 1")
    if getattr(args, "device", None) is not None:  # add_device: checked before any party starts
        try:
            check_device(args.device)
        except ValueError as e:
            p.error(str(e))
    return args


# -- output ---------------------------------------------------------------------------------
def fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def fmt_load(load: list | None) -> str:
    return "-" if load is None else " ".join(f"{v:.2f}" for v in load)


def per_party(values: list) -> str:
    """'a' when every party has the same value, else 'a/b'."""
    return "/".join(map(str, sorted(set(values), key=values.index)))


def aim_cell(missed: list[str] | None) -> str:
    """The aim column: '-' without an aim, 'met', or 'missed s, mb'."""
    if missed is None:
        return "-"
    return "met" if not missed else "missed " + ", ".join(missed)


def markdown_table(head: list[str], rows: list[list], align: str = "") -> str:
    """A Markdown table; a | inside a cell is escaped. align: one letter a column, l or r
    (missing letters: l)."""
    def line(cells) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    rule = "|" + "".join("---:|" if align[i:i + 1] == "r" else "---|" for i in range(len(head)))
    return "\n".join([line(head), rule, *map(line, rows)])


def finish(report: dict, table: str, out: Path, tail: str = "") -> None:
    """Print the table and the load average (start and end, with `tail` after it), and
    write the report as JSON to out."""
    info = report["machine"]
    print(table)
    print(f"\nload average (1, 5, 15 min): start {fmt_load(info['loadavg_start'])}, "
          f"end {fmt_load(info['loadavg_end'])} on {info['cpu_count']} cores{tail}",
          file=sys.stderr)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}", file=sys.stderr)
