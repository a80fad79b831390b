#!/usr/bin/env python
"""The `serve` row: the private inference service (mpc_ml.serving.serve_clients) under
load, 2 parties and a dealer on this machine, 1, 4 and 16 concurrent clients, LeNet-5
and the MLP of benchmarks/rows.py, with and without batching, under network profiles.

    .venv/bin/python benchmarks/serve.py --quick                 # lan, few requests
    .venv/bin/python benchmarks/serve.py --profiles lan wan100   # wan100 needs root (netns)
    mpc-ml bench --models serve --profiles lan wan100            # the same row in the suite

Per (profile, model, batching) one service: two party processes and a dealer process
(`python benchmarks/serve.py --party SPEC` / `--dealer ...`; profile lan on loopback, the
others in network namespaces as the suite's, benchmarks/netns.py, with the clients in a
namespace of their own so that the client links carry the profile too), and one client
process (`--clients SPEC`) that, for each client count C, starts C client threads
together; each sends its requests one after another (one sample each, a closed loop)
and times each from its send to its answer. Before the first count one warm-up request
(the weights' first opening against their fixed masks) is not counted.

Batching on: max_batch 64 rows, max_wait_ms 5 (requests that arrive while a batch runs
wait for the next, which takes them all). Batching off: max_batch 1 (one request per
forward pass, in arrival order).

Per row: requests/s (requests answered / wall time of the count), p50 and p99 latency,
online bytes per request (what the parties sent each other during the count's batches:
plans, verdicts and the forward passes, summed over both parties, over the requests),
dealer bytes per request, the mean batch size, and the largest error against the
plaintext model. Output: DIR/serve.json and serve.md (DIR: --out, default
benchmarks/out/serve).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import common  # noqa: E402
import rows as bench_rows  # noqa: E402

MODELS = {"lenet5": (bench_rows.lenet5, (1, 28, 28)), "mlp": (bench_rows.mlp, (784,))}
CLIENTS = [1, 4, 16]
BATCHING = {True: {"max_batch": 64, "max_wait_ms": 5.0}, False: {"max_batch": 1, "max_wait_ms": 0.0}}
PORT = 29700
PARTIES = 2


def requests_per_client(profile: str, quick: bool, clients: int) -> int:
    """Enough requests for a median, few enough for a slow link."""
    if profile != "lan":
        return 2 if quick else 4
    return max(2, (24 if quick else 96) // clients)


# -- the processes ----------------------------------------------------------------------------
def party_worker(spec_path: str) -> None:
    """One compute party: serve until SIGTERM, then write its service stats."""
    import netdelay

    import mpc_ml as mpc
    from mpc_ml.serving import serve_clients

    spec = json.loads(Path(spec_path).read_text())
    netdelay.install_from_env()
    torch.set_num_threads(1)
    make, sample = MODELS[spec["model"]]
    mpc.init()
    model = mpc.nn.from_pytorch(make(spec["quick"]), torch.zeros(2, *sample))  # batch: dynamic
    stop = threading.Event()  # after from_pytorch: torch.export installs its own handlers
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stats = serve_clients(model, spec["listen"][mpc.rank()], sample_shape=sample, stop=stop,
                          request_timeout_s=30.0, max_clients_per_identity=256,
                          **BATCHING[spec["batching"]])  # every client is on loopback
    Path(spec["out_dir"], f"rank{mpc.rank()}.json").write_text(json.dumps(stats))
    mpc.shutdown()


def dealer_worker(listen: str, nparties: int) -> None:
    import netdelay

    netdelay.install_from_env()
    from mpc_ml.cli import main as cli_main
    sys.exit(cli_main(["dealer", "--listen", listen, "-n", str(nparties)]))


def clients_worker(spec_path: str) -> None:
    """Every client count in turn: C threads, each a client sending its requests."""
    import netdelay

    from mpc_ml.serving import InferenceClient

    spec = json.loads(Path(spec_path).read_text())
    netdelay.install_from_env()
    torch.set_num_threads(1)
    make, sample = MODELS[spec["model"]]
    plain = make(spec["quick"]).eval()
    addrs = spec["listen"]
    with InferenceClient(addrs, timeout_s=600, connect_timeout_s=120) as warm:
        warm.predict(torch.zeros(1, *sample))
    phases = []
    for count in spec["clients"]:
        per_client = requests_per_client(spec["profile"], spec["quick"], count)
        latencies, errors, failures = [], [], []
        barrier = threading.Barrier(count + 1)
        lock = threading.Lock()

        def client(index: int) -> None:
            try:
                with InferenceClient(addrs, timeout_s=600, connect_timeout_s=120) as c:
                    barrier.wait()
                    g = torch.Generator().manual_seed(index)
                    for _ in range(per_client):
                        x = torch.randn(1, *sample, generator=g)
                        start = time.perf_counter()
                        y = c.predict(x)
                        took = time.perf_counter() - start
                        with torch.no_grad():
                            err = float((y - plain(x)).abs().max())
                        with lock:
                            latencies.append(took)
                            errors.append(err)
            except BaseException as e:  # reported in the row
                failures.append(f"{type(e).__name__}: {e}")
                barrier.abort()

        threads = [threading.Thread(target=client, args=(i,)) for i in range(count)]
        for t in threads:
            t.start()
        try:
            barrier.wait()
        except threading.BrokenBarrierError:
            pass
        start_wall, start = time.time(), time.perf_counter()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - start
        phases.append({"clients": count, "requests_per_client": per_client,
                       "latencies_s": latencies, "errors": errors, "failures": failures,
                       "wall_s": elapsed, "start": start_wall, "end": time.time()})
    Path(spec["out_dir"], "clients.json").write_text(json.dumps(phases))


# -- in the parent --------------------------------------------------------------------------------
def run_service(profile, model: str, batching: bool, clients: list[int], quick: bool,
                net=None) -> list[dict]:
    """One service (2 parties, a dealer) and one client process; the rows of each count."""
    nodes = PARTIES + 2  # the parties, the dealer, the clients
    if net is None:
        ports = common.free_ports(2 * PARTIES + 1)
        mesh = [f"127.0.0.1:{p}" for p in ports[:PARTIES + 1]]
        listen = [f"127.0.0.1:{p}" for p in ports[PARTIES + 1:]]
        prefixes = [[] for _ in range(nodes)]
    else:
        mesh = [f"{net.addr[i]}:{PORT}" for i in range(PARTIES + 1)]
        listen = [f"{net.addr[i]}:{PORT + 1}" for i in range(PARTIES)]
        prefixes = [net.prefix(i) for i in range(nodes)]
    with tempfile.TemporaryDirectory(prefix="mpcb-serve-") as tmp:
        spec_path = Path(tmp, "spec.json")
        spec_path.write_text(json.dumps({
            "model": model, "batching": batching, "quick": quick, "listen": listen,
            "clients": clients, "profile": profile.name, "out_dir": tmp}))
        env = dict(os.environ, MPC_WORLD_SIZE=str(PARTIES), MPC_BACKEND="tcp",
                   MPC_PROVIDER="dealer", MPC_PARTY_ADDRS=",".join(mesh[:PARTIES]),
                   MPC_DEALER_ADDR=mesh[PARTIES], MPC_TORCH_THREADS="1", OMP_NUM_THREADS="1",
                   MPC_NET_DELAY_MS=str(profile.rtt_ms / 2), MPC_ALLOW_INSECURE="1",
                   PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
        env.setdefault("MPC_COMM_TIMEOUT_S", "600")
        env.setdefault("MPC_CONNECT_TIMEOUT_S", "120")
        env.pop("MPC_TLS_DIR", None)
        me = [sys.executable, __file__]
        procs = {"dealer": subprocess.Popen([*prefixes[PARTIES], *me, "--dealer", mesh[PARTIES],
                                             str(PARTIES)], env=env, stderr=subprocess.DEVNULL)}
        for r in range(PARTIES):
            procs[f"party {r}"] = subprocess.Popen([*prefixes[r], *me, "--party", str(spec_path)],
                                                   env=dict(env, MPC_RANK=str(r)),
                                                   stderr=open(Path(tmp, f"party{r}.err"), "w"))
        try:
            code = subprocess.run([*prefixes[PARTIES + 1], *me, "--clients", str(spec_path)],
                                  env=env, timeout=3600).returncode
            for r in range(PARTIES):
                procs[f"party {r}"].send_signal(signal.SIGTERM)
            codes = {name: p.wait(120) for name, p in procs.items()}
        finally:
            for p in procs.values():
                if p.poll() is None:
                    p.kill()
                    p.wait()
        if code or any(codes.values()):
            tails = "".join(f"\n--- party {r} ---\n" + Path(tmp, f"party{r}.err").read_text()[-2000:]
                            for r in range(PARTIES))
            raise RuntimeError(f"serve {profile.name}/{model}/batching={batching} failed: "
                               f"clients exited {code}, {codes}{tails}")
        phases = json.loads(Path(tmp, "clients.json").read_text())
        stats = [json.loads(Path(tmp, f"rank{r}.json").read_text()) for r in range(PARTIES)]
    return [_row(profile.name, model, batching, phase, stats) for phase in phases]


def _row(profile: str, model: str, batching: bool, phase: dict, stats: list[dict]) -> dict:
    """A count's figures from the client timings and the batches that ended in its window."""
    lat = sorted(phase["latencies_s"])
    batches = [[b for b in s["batch_log"] if phase["start"] <= b[6] <= phase["end"]]
               for s in stats]
    served = sum(b[0] for b in batches[0]) or 1
    online = sum(b[2] for party in batches for b in party)
    dealer = sum(b[5] for party in batches for b in party)
    return {
        "name": "serve", "profile": profile, "model": model, "batching": batching,
        "clients": phase["clients"], "requests": len(lat), "failures": phase["failures"],
        "requests_per_s": len(lat) / phase["wall_s"] if phase["wall_s"] else None,
        "p50_s": _quantile(lat, 0.5) if lat else None,
        "p99_s": _quantile(lat, 0.99) if lat else None,
        "online_bytes_per_request": online / served, "dealer_bytes_per_request": dealer / served,
        "mean_batch": served / max(1, len(batches[0])),
        "rounds_per_batch": statistics.mean(b[4] for b in batches[0]) if batches[0] else None,
        "max_abs_err": max(phase["errors"]) if phase["errors"] else None,
    }


def _quantile(values: list[float], q: float) -> float:
    s = sorted(values)
    pos = q * (len(s) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def run(profile_names: list[str], quick: bool, models=tuple(MODELS), clients=tuple(CLIENTS),
        notes: list[str] | None = None) -> list[dict]:
    """Every (profile, model, batching) service; the rows. Shaped profiles that cannot run
    here are skipped with a note."""
    import netns

    notes = notes if notes is not None else []
    profiles = [netns.PROFILES[n] for n in profile_names]
    if any(p.name != "lan" for p in profiles):
        why = netns.available()
        if why:
            notes.append(f"serve: shaped profiles skipped: {why}")
            profiles = [p for p in profiles if p.name == "lan"]
    out = []
    for profile in profiles:
        for model in models:
            for batching in (True, False):
                print(f"serve: {profile.name} {model} batching={'on' if batching else 'off'} "
                      f"clients {list(clients)}", file=sys.stderr, flush=True)
                if profile.name == "lan":
                    out += run_service(profile, model, batching, list(clients), quick)
                else:
                    with netns.Network(PARTIES + 2, profile) as net:
                        out += run_service(profile, model, batching, list(clients), quick, net)
    return out


def markdown(rows: list[dict]) -> str:
    """The serve rows as one table."""
    head = ["profile", "model", "batching", "clients", "requests", "req/s", "p50 ms", "p99 ms",
            "online KB/req", "dealer KB/req", "mean batch", "rounds/batch", "max err"]
    body = [[r["profile"], r["model"], "on" if r["batching"] else "off", str(r["clients"]),
             str(r["requests"]), common.fmt(r["requests_per_s"], ".3g"),
             common.fmt(r["p50_s"] and r["p50_s"] * 1e3, ".4g"),
             common.fmt(r["p99_s"] and r["p99_s"] * 1e3, ".4g"),
             common.fmt(r["online_bytes_per_request"] / 1e3, ".4g"),
             common.fmt(r["dealer_bytes_per_request"] / 1e3, ".4g"),
             common.fmt(r["mean_batch"], ".3g"), common.fmt(r["rounds_per_batch"], ".4g"),
             common.fmt(r["max_abs_err"], ".2g")]
            + ([f"failed: {r['failures'][0]}"] if r["failures"] else []) for r in rows]
    return ("### serve: the inference service, 2 parties + dealer, 1-sample requests\n\n"
            + common.markdown_table(head, body))


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer requests per client (and the "
                   "rows' quick model sizes); profile lan only unless --profiles")
    p.add_argument("--profiles", nargs="+", default=None, choices=["lan", "lan1g", "wan400", "wan100"])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--clients", nargs="+", type=int, default=CLIENTS)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "serve")
    args = p.parse_args(argv)
    profiles = args.profiles or (["lan"] if args.quick else ["lan", "wan100"])
    notes: list[str] = []
    rows = run(profiles, args.quick, args.models, args.clients, notes)
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"benchmark": "serve", "quick": args.quick, "machine": common.machine_info(
        __import__("mpc_ml").__version__), "notes": notes, "rows": rows}
    (args.out / "serve.json").write_text(json.dumps(report, indent=2) + "\n")
    md = markdown(rows)
    (args.out / "serve.md").write_text(md + "\n")
    print(md)
    for note in notes:
        print(f"note: {note}")
    return rows


if __name__ == "__main__":
    if sys.argv[1:2] == ["--party"]:
        party_worker(sys.argv[2])
    elif sys.argv[1:2] == ["--dealer"]:
        dealer_worker(sys.argv[2], int(sys.argv[3]))
    elif sys.argv[1:2] == ["--clients"]:
        clients_worker(sys.argv[2])
    else:
        main()
