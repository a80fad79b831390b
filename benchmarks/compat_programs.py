#!/usr/bin/env python
"""CrypTen's examples and tutorials (tests/crypten_programs/) under mpc_ml.compat.crypten
and under CrypTen 0.4.1 itself, timed side by side, their results checked against torch.

    python benchmarks/compat_programs.py [--crypten-python PATH] [--provider TTP|TFP]

Each program runs in a fresh interpreter, once per framework: ours here, CrypTen's with
its interpreter (the suite's .venv-crypten, benchmarks/README.md), where the programs'
`import mpc_ml.compat.crypten as crypten` is pointed at CrypTen's own modules (and
crypten_compat.py's shims applied). Both run the parties by run_multiprocess(world_size=2),
which forks them, with cfg.mpc.provider set alike. The time is the program's wall time,
party start-up included. Prints a Markdown table; exits 1 if a result is off.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

# name -> (module, what it runs, tolerance against torch of its returned losses/weights)
PROGRAMS = {
    "linear_svm": ("linear_svm", "examples/mpc_linear_svm: 50 epochs, 100 features x 50", 2e-2),
    "tutorial_7": ("encrypted_training", "tutorial 7: a 64-32-10 MLP, 10 epochs on 500 digits",
                   1e-2),
    "autograd_cnn": ("autograd_cnn", "examples/mpc_autograd_cnn: 1 epoch, 100 samples, batch 5",
                     1e-2),
    "tutorial_1": ("tutorial_1", "tutorial 1: its cells, in a 1-party world", 2e-3),
    "tutorial_3": ("tutorial_3", "tutorial 3: 4 access-control settings, SVM of 100 x 1000, "
                   "10 epochs", 2e-2),
    "tutorial_4": ("tutorial_4", "tutorial 4: a 64-128-128-10 MLP on 397 digits, inference", 2e-2),
}
TIMEOUT_S = 300
T1_KEYS = ["decrypted", "from_list", "add_public", "sub_public", "mul_public", "div_public", "add",
           "sub", "mul", "div", "comparisons", "select", "stack", "reshape"]


def _point_at_crypten() -> None:
    """Make `mpc_ml.compat.crypten` (and its submodules) CrypTen's own modules."""
    import types

    import crypten_compat
    crypten_compat.apply()
    import crypten
    import crypten.communicator
    import crypten.mpc
    for name in ("mpc_ml", "mpc_ml.compat"):
        sys.modules[name] = types.ModuleType(name)
    sys.modules["mpc_ml.compat.crypten"] = crypten
    sys.modules["mpc_ml.compat.crypten.mpc"] = crypten.mpc
    sys.modules["mpc_ml.compat.crypten.communicator"] = crypten.communicator
    sys.modules["mpc_ml"].compat = sys.modules["mpc_ml.compat"]
    sys.modules["mpc_ml.compat"].crypten = crypten


def _as_lists(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [_as_lists(v) for v in value]
    return value


def run_one(name: str, framework: str, provider: str) -> dict:
    """Inside a fresh interpreter: run program `name`, return its time and results."""
    sys.path.insert(0, str(ROOT))
    if framework == "crypten":
        _point_at_crypten()
    import importlib

    import mpc_ml.compat.crypten as crypten  # CrypTen's, after _point_at_crypten
    # a 1-party world has no dealer (CrypTen's would wait for a TTP process forever)
    crypten.cfg.mpc.provider = "TFP" if name == "tutorial_1" else provider
    module = importlib.import_module(f"tests.crypten_programs.{PROGRAMS[name][0]}")
    run = crypten.mpc.run_multiprocess(world_size=2)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        if name == "linear_svm":
            # as lists: CrypTen's run_multiprocess cannot return tensors (its queue passes
            # them as file descriptors of parties that have already exited)
            out = run(lambda **kw: _as_lists(module.run_mpc_linear_svm(**kw)[:2]))(epochs=50)
            result = out[0]
        elif name == "tutorial_7":
            module.write_data(tmp, 500)
            result = module.train_encrypted(tmp, 10, 0.5)[0]
        elif name == "tutorial_1":
            seen = module.main()
            result = [_as_lists(seen[k]) for k in T1_KEYS]
        elif name == "tutorial_4":
            result = module.classify(tmp)[0][0][1]
        elif name == "tutorial_3":
            got = module.run_tutorial(tmp, epochs=10)
            result = [got[k][0] for k in ("data_labeling", "feature_aggregation",
                                           "dataset_augmentation", "model_hiding")]
        else:
            result = run(module.run_mpc_autograd_cnn)(num_epochs=1, num_samples=100)[0]
    return {"seconds": time.perf_counter() - start, "result": _as_lists(result)}


def expected(name: str):
    """The same program in plain torch."""
    sys.path.insert(0, str(ROOT))
    import torch
    from tests.crypten_programs import (autograd_cnn, encrypted_training, linear_svm, tutorial_1,
                                        tutorial_3, tutorial_4)
    if name == "tutorial_1":
        return [tutorial_1.EXPECTED[k] for k in T1_KEYS]
    if name == "tutorial_3":
        trained, true_model = tutorial_3.plaintext(epochs=10)
        return [trained, trained, trained, true_model]
    if name == "tutorial_4":
        x_train, y_train, x_test, _ = tutorial_4.split_digits()
        model = tutorial_4.train_alice(x_train, y_train)
        with torch.no_grad():
            return model(x_test).tolist()
    if name == "linear_svm":
        w, b = linear_svm.plaintext(epochs=50)
        return [w.tolist(), b.tolist()]
    if name == "tutorial_7":
        return encrypted_training.train_plaintext(500, 10, 0.5)
    return autograd_cnn.train_plaintext(num_epochs=1, num_samples=100)


def _flat(value) -> list[float]:
    if isinstance(value, (list, tuple)):
        return [x for v in value for x in _flat(v)]
    return [float(value)]


def _subprocess(python: str, name: str, framework: str, provider: str) -> dict:
    cmd = [python, str(Path(__file__)), "--one", name, "--framework", framework,
           "--provider", provider]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=TIMEOUT_S,
                              env=dict(os.environ, OMP_NUM_THREADS="1"))
    except subprocess.TimeoutExpired:
        return {"error": f"RuntimeError: no result within {TIMEOUT_S} s (a party hung)"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode or not lines:
        return {"error": proc.stderr or proc.stdout}
    return json.loads(lines[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--crypten-python", default=os.environ.get(
        "MPC_CRYPTEN_PYTHON", str(ROOT / ".venv-crypten" / "bin" / "python")))
    p.add_argument("--provider", choices=["TTP", "TFP"], default="TTP")
    p.add_argument("--programs", nargs="*", default=list(PROGRAMS), choices=list(PROGRAMS))
    p.add_argument("--one", help=argparse.SUPPRESS)
    p.add_argument("--framework", default="mpc_ml", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(run_one(args.one, args.framework, args.provider)))
        return 0
    have_crypten = Path(args.crypten_python).exists()
    rows, ok = [], True
    for name in args.programs:
        want = _flat(expected(name))
        cells = [name, PROGRAMS[name][1]]
        ours_s = None
        for framework, python in (("mpc_ml", sys.executable), ("crypten", args.crypten_python)):
            if framework == "crypten" and not have_crypten:
                cells += ["no CrypTen venv", "-"]
                continue
            got = _subprocess(python, name, framework, args.provider)
            if "error" in got:
                last = [line for line in got["error"].splitlines() if "Error" in line]
                cells += ["failed: " + (last[0].strip() if last else "no result")[:140], "-"]
                ok &= framework != "mpc_ml"
                continue
            err = max(abs(a - b) for a, b in zip(_flat(got["result"]), want))
            if framework == "mpc_ml":
                ok &= err <= PROGRAMS[name][2]
                ours_s = got["seconds"]
            cells += [f"{got['seconds']:.2f}", f"{err:.2g}"]
        ratio = "-"
        if ours_s and cells[4] not in ("no CrypTen venv",) and not cells[4].startswith("failed"):
            ratio = f"{float(cells[4]) / ours_s:.2f}"
        rows.append(cells + [ratio])
        print(" | ".join(map(str, rows[-1])), file=sys.stderr)
    import common
    print(common.markdown_table(["program", "what", "mpc_ml s", "mpc_ml max err vs torch",
                                 "CrypTen s", "CrypTen max err vs torch", "CrypTen s / ours"],
                                rows))
    print(f"\n2 parties (tutorial 1: 1, with TFP), cfg.mpc.provider = {args.provider}, one torch "
          "thread per party, this machine; each program in a fresh interpreter, party start-up "
          "included.")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
