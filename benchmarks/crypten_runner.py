"""CrypTen 0.4.1 side of the suite: the same rows, by CrypTen's own API, in its own processes.

The suite (our venv) calls run_from_suite(), which runs this file with the CrypTen
interpreter (default .venv-crypten/bin/python; recipe in benchmarks/README.md):

    .venv-crypten/bin/python benchmarks/crypten_runner.py --rows mul1e6 relu1e5 \
        --parties 2 3 --repeats 5 [--quick] --out FILE.json

For each world size it starts one process per party (this file with --party, env RANK,
WORLD_SIZE, MASTER_ADDR/PORT, RENDEZVOUS=env://, one torch thread, OMP_NUM_THREADS=1),
each of which applies benchmarks/crypten_compat.py, crypten.init() with the
communicator's counters on, and runs every row as ours does: inputs, operations and
torch models from benchmarks/rows.py (the same seeded tensors), input i private to
party i % 2, the model to party 0 and the data to party 1, then common.timed: a
barrier, counters reset, one warm-up and --repeats runs timed with perf_counter.
Training steps: forward, CrossEntropyLoss, backward, update_parameters(rows.LR).
Loopback only (profile lan).

Inside CrypTen's virtualenv there is no mpc_ml: this file and what it imports
(crypten_compat.py, rows.py, common.py) import torch and the standard library only
(tests/test_bench_imports.py holds this).
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import common  # noqa: E402  (benchmarks/common.py: torch and the standard library only)
import rows  # noqa: E402  (benchmarks/rows.py: the rows' inputs and models, torch only)


def run_from_suite(python: str, names, parties, quick: bool, repeats: int,
                   timeout_s: float = 3600):
    """(results keyed 'row/parties', None) or (None, why it did not run)."""
    if not Path(python).exists():
        return None, (f"no CrypTen interpreter at {python} (recipe in benchmarks/README.md, "
                      "or --crypten-python / MPC_CRYPTEN_PYTHON)")
    import tempfile
    with tempfile.TemporaryDirectory(prefix="mpcb-crypten-") as tmp:
        out = Path(tmp, "crypten.json")
        cmd = [python, str(Path(__file__)), "--rows", *names, "--parties", *map(str, parties),
               "--repeats", str(repeats), "--out", str(out)] + (["--quick"] if quick else [])
        print("running CrypTen 0.4.1: " + " ".join(cmd[1:]), file=sys.stderr)
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s,
                                  env=dict(os.environ, OMP_NUM_THREADS="1"))
        except subprocess.TimeoutExpired:
            return None, f"CrypTen runner exceeded {timeout_s:.0f} s"
        if proc.returncode or not out.exists():
            tail = (proc.stderr or proc.stdout)[-1500:]
            return None, f"CrypTen runner failed (exit {proc.returncode}): {tail}"
        data = json.loads(out.read_text())
    return data["rows"], (("; ".join(data["failed"])) if data["failed"] else None)


# -- inside the CrypTen interpreter ---------------------------------------------------------
def party(spec_path: str) -> None:
    import crypten_compat
    crypten_compat.apply()
    import torch
    torch.set_num_threads(1)
    import crypten
    import crypten.communicator as comm
    from crypten.config import cfg

    spec = json.loads(Path(spec_path).read_text())
    cfg.communicator.verbose = True
    crypten.init()
    rank = comm.get().get_rank()
    token = crypten.cryptensor(torch.zeros(1), src=0)
    results, failed = {}, []
    for name in spec["rows"]:
        try:
            results[name] = _row(name, spec, token, crypten, comm)
        except Exception as e:  # one unsupported row must not lose the others
            failed.append(f"{name}: {type(e).__name__}: {e}"[:300])
            token.get_plain_text()
    Path(spec["out_dir"], f"rank{rank}.json").write_text(
        json.dumps({"rows": results, "failed": failed}))


def _row(name, spec, token, crypten, comm):
    """One row as ours runs it (rows.py: the same inputs, operation and torch model)."""
    quick, repeats = spec["quick"], spec["repeats"]
    inputs = rows.inputs(name, quick)
    if rows.kind(name) == "op":
        xs = [crypten.cryptensor(t, src=i % 2) for i, t in enumerate(inputs)]
        private = rows.ALL_OPS[name].private  # torch-like methods: CrypTen's tensors have them
        run = lambda: private(*xs)  # noqa: E731
    else:
        row = rows.ALL_MODELS[name]
        torch_model = row.build(quick)
        model = crypten.nn.from_pytorch(torch_model, inputs[0])
        model.encrypt(src=0)
        x = crypten.cryptensor(inputs[0], src=1)
        if row.train:
            y = crypten.cryptensor(inputs[1], src=1)
            loss_fn = crypten.nn.CrossEntropyLoss()
            model.train()

            def run():
                model.zero_grad()
                loss = loss_fn(model(x), y)
                loss.backward()
                model.update_parameters(rows.LR)
                return loss
        else:
            model.eval()

            def run():
                with crypten.no_grad():
                    return model(x)
    times, stats, _ = common.timed(run, repeats, token.get_plain_text,
                                   comm.get().reset_communication_stats,
                                   lambda: dict(comm.get().get_communication_stats()))
    return {"times_s": times, "rounds": int(stats.get("rounds", 0)),
            "bytes": int(stats.get("bytes", 0))}


def main(argv) -> None:
    import argparse
    p = argparse.ArgumentParser()
    p.add_argument("--rows", nargs="+", required=True)
    p.add_argument("--parties", nargs="+", type=int, default=[2])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    import tempfile
    results, failed = {}, []
    for n in args.parties:
        with tempfile.TemporaryDirectory(prefix="mpcb-crypten-job-") as tmp:
            spec = Path(tmp, "spec.json")
            spec.write_text(json.dumps({"rows": args.rows, "quick": args.quick,
                                        "repeats": args.repeats, "out_dir": tmp}))
            (port,) = common.free_ports(1)
            env = dict(os.environ, WORLD_SIZE=str(n), MASTER_ADDR="127.0.0.1",
                       MASTER_PORT=str(port), RENDEZVOUS="env://", OMP_NUM_THREADS="1")
            procs = [subprocess.Popen([sys.executable, __file__, "--party", str(spec)],
                                      env=dict(env, RANK=str(r))) for r in range(n)]
            codes = [proc.wait(timeout=3000) for proc in procs]
            written = all(Path(tmp, f"rank{r}.json").exists() for r in range(n))
            if any(codes) and not written:
                failed.append(f"CrypTen with {n} parties: exit codes {codes}")
                continue
            if any(codes):  # every party wrote its figures, then CrypTen aborted on exit
                failed.append(f"CrypTen with {n} parties: exit codes {codes} after every party "
                              "had written its results (used; CrypTen's teardown aborts at times: "
                              "'terminate called without an active exception')")
            per = [json.loads(Path(tmp, f"rank{r}.json").read_text()) for r in range(n)]
            failed += [f"n={n} {f}" for f in per[0]["failed"]]
            for name, r0 in per[0]["rows"].items():
                parts = [pr["rows"][name] for pr in per]
                results[f"{name}/{n}"] = {
                    "median_s": statistics.median(r0["times_s"]), "times_s": r0["times_s"],
                    "rounds": [pt["rounds"] for pt in parts],
                    "bytes_sent": [pt["bytes"] for pt in parts]}
    Path(args.out).write_text(json.dumps({"rows": results, "failed": failed}))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--party"]:
        party(sys.argv[2])
    else:
        main(sys.argv[1:])
