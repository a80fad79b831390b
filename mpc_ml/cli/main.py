"""The `mpc-ml` command: launch | slurm | demo | dealer | certs | bench | infer | serve."""
from __future__ import annotations

import argparse
import importlib
import os
import runpy
import secrets
import sys
import threading
import time
from pathlib import Path

from ..comm import CommError, tcp
from ..config import DEALER_ATTEST_MODES, Config
from ..launch import BACKENDS
from ..launch.run import check_transport
from ..providers import DEFAULT_PROVIDER, PROVIDERS


def _free_addresses(count: int, host: str = "127.0.0.1") -> list[str]:
    """Addresses with ports free right now (the OS picks them; released before use)."""
    socks = [tcp.listen(f"{host}:0") for _ in range(count)]
    addrs = [f"{host}:{s.getsockname()[1]}" for s in socks]
    for s in socks:
        s.close()
    return addrs


def _local_deployment(args: argparse.Namespace):
    """A deployment of n processes on this machine (loopback, ports free right now)."""
    from ..launch.deploy import Deployment, Endpoint

    n = args.nparties
    if n is None or n < 2:
        raise SystemExit("mpc-ml launch: give -n N (at least 2) or --config FILE")
    tls = None
    if args.tls:
        from ..comm.tls import check_directory

        try:
            check_directory(args.tls, n, dealer=args.provider == "dealer")
        except ValueError as e:
            raise SystemExit(f"mpc-ml launch: {e}") from None
        tls = os.path.abspath(args.tls)
    addrs = _free_addresses(n + 1)
    dealer = Endpoint(addrs[n]) if args.provider == "dealer" else None
    return Deployment([Endpoint(a) for a in addrs[:n]], args.provider, dealer, tls)


def launch(args: argparse.Namespace) -> int:
    """Start the parties (and a dealer) running the script; wait for all of them."""
    from ..launch.deploy import load, run_processes

    if not Path(args.script).exists():
        raise SystemExit(f"mpc-ml launch: no such script {args.script!r}")
    if args.backend == "mpi":
        from ..launch.mpi import launch_script

        if args.nparties is None or args.config:
            raise SystemExit("mpc-ml launch --backend mpi takes -n N (and --hostfile), not --config")
        return launch_script(args.nparties, args.provider, args.script, args.script_args,
                             args.hostfile)
    if args.config:
        try:
            deployment = load(args.config)
        except (OSError, ValueError) as e:
            raise SystemExit(f"mpc-ml launch: {e}") from None
    else:
        deployment = _local_deployment(args)
    os.environ.setdefault("MPC_JOB_ID", secrets.token_hex(8))  # names this job at a shared dealer
    env = dict(os.environ)
    if args.allow_insecure:
        env["MPC_ALLOW_INSECURE"] = "1"
    insecure = deployment.settings.get("allow_insecure") or Config.from_env().allow_insecure
    try:
        check_transport("mpc-ml launch", [e.address for e in deployment.endpoints()],
                        deployment.tls, Config(allow_insecure=bool(insecure or args.allow_insecure)))
    except ValueError as e:
        raise SystemExit(str(e)) from None
    env.pop("MPC_TLS_DIR", None)  # the deployment says whether TLS is on
    env.setdefault("MPC_TORCH_THREADS", str(max(1, (os.cpu_count() or 1) // deployment.world_size)))
    commands = deployment.commands(os.path.abspath(args.script), args.script_args)
    return run_processes(commands, Config.from_env().comm_timeout_s + 5, env)


def slurm(args: argparse.Namespace) -> int:
    """Print the sbatch script of a deployment file."""
    from ..launch.deploy import load, slurm_script

    try:
        deployment = load(args.config)
    except (OSError, ValueError) as e:
        raise SystemExit(f"mpc-ml slurm: {e}") from None
    print(slurm_script(deployment, os.path.abspath(args.script), args.script_args), end="")
    return 0


def dealer(args: argparse.Namespace) -> int:
    """Run a dealer for one job of n parties."""
    import torch

    from ..launch.dealer_service import serve_jobs

    torch.set_num_threads(1)
    tls = None
    tls_dir = args.tls or os.environ.get("MPC_TLS_DIR")
    if tls_dir:
        from ..comm import DEALER_RANK
        from ..comm.tls import TLSConfig

        tls = TLSConfig(tls_dir, DEALER_RANK)
    config = Config.from_env().replace(dealer_attest=args.attest, device=args.device)
    if args.allow_insecure:
        config = config.replace(allow_insecure=True)
    if args.attest != "none":
        from ..providers.attestation import SIM_WARNING, dealer_measurement, sim_measurement

        try:
            measured = sim_measurement() if args.attest == "sim" else dealer_measurement("sgx")
        except RuntimeError as e:
            raise SystemExit(f"mpc-ml dealer: {e}") from None
        print(f"dealer measurement: {measured}", flush=True)
        if args.attest == "sim":
            print(f"mpc-ml dealer: {SIM_WARNING}", file=sys.stderr)
    if config.dealer_attest == "none":
        try:
            check_transport("mpc-ml dealer", [args.listen], tls, config)
        except ValueError as e:
            raise SystemExit(str(e)) from None
    # -n N: one job of N parties, as a job's own dealer; without it, a service for any jobs
    max_jobs = args.jobs if args.jobs is not None else (1 if args.nparties else None)
    try:
        served = serve_jobs(tcp.listen(args.listen), config, tls, max_jobs=max_jobs,
                            world_size=args.nparties,
                            first_job_within_s=config.connect_timeout_s if args.nparties else None)
    except (CommError, ValueError) as e:
        raise SystemExit(f"mpc-ml dealer: {e}") from None
    print(f"dealer: served {served} correlations", file=sys.stderr)
    return 0


def certs(args: argparse.Namespace) -> int:
    """Make a job's CA and one key pair and certificate per party (and the dealer)."""
    from ..comm.tls import make_certificates

    try:
        written = make_certificates(args.directory, args.parties, dealer=args.dealer,
                                    days=args.days, force=args.force, clients=args.clients)
    except (ValueError, FileExistsError) as e:
        raise SystemExit(f"mpc-ml certs: {e}") from None
    who = (f"{args.parties} parties" + (", the dealer" if args.dealer else "")
           + (f" and {args.clients} inference clients" if args.clients else ""))
    print(f"certificates for {who} in {args.directory} (valid {args.days} days): "
          f"{', '.join(p.name for p in written)}")
    print("keys are mode 0600; on several hosts give each host ca.pem and its own "
          "party-<r>.pem/.key only")
    return 0


def demo(args: argparse.Namespace) -> int:
    from .demo import main

    main(task=args.task, epochs=args.epochs)
    return 0


def bench(bench_args: list[str]) -> int:
    """Run the benchmark suite (benchmarks/suite.py of the checkout in the current
    directory) with bench_args; `--ops-only` runs the older benchmarks/ops.py instead,
    `--models-only` benchmarks/models.py, `--offline-only` benchmarks/offline.py (the
    dealer's offline phase behind a 40 ms link)."""
    bench_args = bench_args[1:] if bench_args[:1] == ["--"] else list(bench_args)
    name = "suite.py"
    for flag, script_name in (("--ops-only", "ops.py"), ("--models-only", "models.py"),
                              ("--offline-only", "offline.py")):
        if flag in bench_args:
            bench_args.remove(flag)
            name = script_name
    script = Path("benchmarks") / name
    if not script.exists():
        raise SystemExit(f"mpc-ml bench runs benchmarks/{name} from a checkout of mpc_ml; "
                         "run it from the repository root")
    sys.argv = [str(script), *bench_args]
    runpy.run_path(str(script), run_name="__main__")
    return 0


def _load_factory(spec: str, command: str = "infer"):
    """'package.module:name' -> the callable it names."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise SystemExit(f"mpc-ml {command}: --model {spec!r} is not MODULE:FACTORY")
    try:
        obj = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as e:
        raise SystemExit(f"mpc-ml {command}: cannot load --model {spec!r}: {e}") from None
    return obj


# torch.fx tracing (from_pytorch) patches torch.nn.Module.__call__ process-wide: inproc
# parties (threads) must convert one at a time.
_CONVERT_LOCK = threading.Lock()


def _infer_party(model_spec: str, sample_shape: tuple, addrs: list[str], seed: int) -> int:
    """One compute party of `mpc-ml infer`: build the model, serve the client."""
    import torch

    import mpc_ml as mpc
    from ..serving import serve_client

    with _CONVERT_LOCK:
        torch.manual_seed(seed)  # the factory's random init, reproducible (party 0's is used)
        source = _load_factory(model_spec)()
        model = mpc.nn.from_pytorch(source, torch.zeros(1, *sample_shape))
    return serve_client(model, addrs[mpc.rank()], model_owner=0, sample_shape=sample_shape)


def infer(args: argparse.Namespace) -> int:
    """Private inference on loopback: n compute parties serve one outside client, whose
    result is printed next to the plaintext model's."""
    import torch

    from ..serving import InferenceClient, InferenceError
    from ..launch import run

    if args.nparties < 2:
        raise SystemExit("mpc-ml infer: -n must be at least 2")
    if args.input:
        x = torch.load(args.input, weights_only=True)  # the user's own local file
        if not isinstance(x, torch.Tensor):
            raise SystemExit(f"mpc-ml infer: {args.input} holds a {type(x).__name__}, not a tensor")
    else:
        try:
            shape = [int(d) for d in (args.random or "4,64").split(",")]
        except ValueError:
            raise SystemExit(f"mpc-ml infer: --random {args.random!r} is not a shape like 4,64")
        x = torch.randn(*shape, generator=torch.Generator().manual_seed(args.seed))
    if args.requests < 1 or x.dim() < 1 or len(x) < args.requests:
        raise SystemExit(f"mpc-ml infer: an input of shape {tuple(x.shape)} has no batch of "
                         f"{args.requests} to split into requests")
    torch.manual_seed(args.seed)
    plain_model = _load_factory(args.model)().eval()
    try:
        with torch.no_grad():
            expected = plain_model(x)  # also checks the input fits the model, before starting
    except RuntimeError as e:
        raise SystemExit(f"mpc-ml infer: the model does not take an input of shape "
                         f"{tuple(x.shape)}: {e}") from None
    config = Config.from_env()
    addrs = _free_addresses(args.nparties)
    parties: dict = {}

    def serve() -> None:
        try:
            parties["served"] = run(_infer_party, world_size=args.nparties, backend=args.backend,
                                    provider=args.provider, config=config,
                                    args=(args.model, tuple(x.shape[1:]), addrs, args.seed))
        except BaseException as e:  # reported below
            parties["error"] = e

    thread = threading.Thread(target=serve, name="mpc-infer-parties", daemon=True)
    thread.start()
    start = time.monotonic()
    try:
        with InferenceClient(addrs, config.precision_bits, config.comm_timeout_s,
                             config.connect_timeout_s) as client:
            y = torch.cat([client.predict(chunk) for chunk in x.chunk(args.requests)])
    except InferenceError as e:
        thread.join()
        print(f"mpc-ml infer: {parties.get('error', e)}", file=sys.stderr)
        return 1
    elapsed = time.monotonic() - start
    thread.join()
    if "error" in parties:
        print(f"mpc-ml infer: {parties['error']}", file=sys.stderr)
        return 1
    print(f"private inference: {args.nparties} parties ({args.backend}, {args.provider}), "
          f"model {args.model} (owner: party 0), input {tuple(x.shape)} from an outside "
          f"client in {args.requests} request(s), {elapsed:.2f} s")
    print(f"client's result:\n{y}")
    print(f"plaintext model:\n{expected}")
    print(f"max |difference|: {float((y - expected).abs().max()):.3g}")
    return 0


# -- mpc-ml serve --------------------------------------------------------------------------
def _sample_shape(args: argparse.Namespace, source) -> tuple[int, ...]:
    """--sample-shape, or the input features of the model's first Linear layer."""
    if args.sample_shape:
        try:
            return tuple(int(d) for d in args.sample_shape.split(","))
        except ValueError:
            raise SystemExit(f"mpc-ml serve: --sample-shape {args.sample_shape!r} is not a shape "
                             "like 1,28,28") from None
    for module in source.modules():
        if hasattr(module, "in_features"):
            return (int(module.in_features),)
        if hasattr(module, "in_channels"):
            break
    raise SystemExit("mpc-ml serve: give --sample-shape (one sample's shape, e.g. 1,28,28): the "
                     "model does not start with a Linear layer")


_STOP_SIGNALS = ("SIGINT", "SIGTERM")


class _StopServing(BaseException):
    """SIGINT/SIGTERM before a party serves: it stops where it is, and exits 0."""


def _stop_signals() -> set:
    import signal

    return {getattr(signal, name) for name in _STOP_SIGNALS}


def _mask_stop_signals(how: str, signals: set | None = None) -> set:
    """signal.pthread_sigmask(signal.<how>, signals or the stop signals) where there is one
    (POSIX); returns the mask before."""
    import signal

    if not hasattr(signal, "pthread_sigmask"):
        return set()
    return signal.pthread_sigmask(getattr(signal, how),
                                  _stop_signals() if signals is None else signals)


def _serve_party(args: argparse.Namespace) -> int:
    """One compute party of a service: join the mesh (the environment, or --config's
    deployment file for --rank), share the model, serve clients at --listen until
    SIGINT/SIGTERM. A stop signal before it serves (while it starts) ends it at once, exit
    0; one that `mpc-ml serve` sent while this party's Python was still loading waited,
    blocked, for the handlers (the command starts its parties with both signals blocked)."""
    import signal

    stop, serving = threading.Event(), threading.Event()

    def on_signal(signum, frame) -> None:
        first = not stop.is_set()
        stop.set()
        if first and not serving.is_set():  # nothing served yet: nothing to finish
            raise _StopServing()

    def install() -> None:
        for signum in _stop_signals():
            if signal.getsignal(signum) is not signal.SIG_IGN:  # ignored at start: stays so
                signal.signal(signum, on_signal)

    install()
    try:
        _mask_stop_signals("SIG_UNBLOCK")  # one pending runs now
        return _serve_one_party(args, stop, serving, install)
    except _StopServing:
        print(f"mpc-ml serve: party {args.rank} stopped before serving", file=sys.stderr)
        return 0


def _check_client_limits(args: argparse.Namespace) -> None:
    if args.max_clients < 1 or args.max_clients_per_identity < 1 \
            or not args.client_idle_timeout_s >= 0:
        raise SystemExit("mpc-ml serve: --max-clients and --max-clients-per-identity must be at "
                         "least 1, --client-idle-timeout-s at least 0 (0: never)")


def _serve_one_party(args: argparse.Namespace, stop: threading.Event, serving: threading.Event,
                     install) -> int:
    import logging

    import torch

    import mpc_ml as mpc
    from ..launch import init
    from ..serving import InferenceError, serve_clients

    if args.config:
        from ..launch.deploy import load

        try:
            deployment = load(args.config)
        except (OSError, ValueError) as e:
            raise SystemExit(f"mpc-ml serve: {e}") from None
        if not 0 <= args.rank < deployment.world_size:
            raise SystemExit(f"mpc-ml serve: --rank {args.rank} is not a party of {args.config} "
                             f"({deployment.world_size} parties)")
        os.environ.update(deployment.party_env(args.rank))
    elif os.environ.get("MPC_RANK") != str(args.rank):
        raise SystemExit("mpc-ml serve --rank R starts one party of a service: give --config FILE "
                         "(a deployment file) too")
    if not args.listen or "," in args.listen:
        raise SystemExit("mpc-ml serve --rank R: give --listen HOST:PORT, this party's address "
                         "for clients")
    _check_client_limits(args)
    if args.allow_insecure:
        os.environ["MPC_ALLOW_INSECURE"] = "1"
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("mpc-ml serve: %(message)s"))
    logger = logging.getLogger("mpc_ml.serving")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    torch.manual_seed(args.seed)  # the factory's random init, reproducible (party 0's is used)
    source = _load_factory(args.model, "serve")()
    sample = _sample_shape(args, source)

    def ready(addr: str) -> None:
        serving.set()  # from here on a stop signal finishes the requests in flight
        print(f"party {session.rank} serving clients at {addr}", flush=True)

    try:
        session = init()
        model = mpc.nn.from_pytorch(source, torch.zeros(2, *sample))  # 2 rows: a dynamic batch
        install()  # again: torch.export may install handlers of its own
        wrap = None
        if os.environ.get("MPC_TLS_DIR"):
            from ..comm.tls import TLSConfig

            wrap = TLSConfig(os.environ["MPC_TLS_DIR"], session.rank)
        idle = args.client_idle_timeout_s
        serve_clients(model, args.listen, sample_shape=sample, max_batch=args.max_batch,
                      max_wait_ms=args.max_wait_ms, max_clients=args.max_clients,
                      max_clients_per_identity=args.max_clients_per_identity,
                      client_idle_timeout_s=idle if idle > 0 else None, stop=stop,
                      wrap=wrap, ready=ready)
    except (InferenceError, CommError, ValueError) as e:
        if stop.is_set() and not serving.is_set():  # its peers stopped while it started
            print(f"mpc-ml serve: party {args.rank} stopped before serving ({e})",
                  file=sys.stderr)
            return 0
        print(f"mpc-ml serve: {e}", file=sys.stderr)
        return 1
    return 0


def serve(args: argparse.Namespace) -> int:
    """A private inference service: n compute parties (processes) and a dealer on this
    machine, clients served at --listen until SIGINT/SIGTERM; or, with --rank, one party.
    The stop signals are caught first thing: one that arrives while the service starts
    stops it there, exit 0."""
    import signal

    if args.rank is not None:
        return _serve_party(args)
    stop = threading.Event()
    procs: list = []  # the party processes started so far

    def on_signal(signum, frame) -> None:
        stop.set()
        _stop_parties(procs)

    previous = {s: signal.signal(s, on_signal) for s in _stop_signals()}
    try:
        return _serve_local(args, stop, procs)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        for s, h in previous.items():
            signal.signal(s, h)


def _stop_parties(procs: list) -> None:
    """SIGTERM to each party process still running (again is harmless: a party acts on
    the first)."""
    import signal

    for proc in list(procs):
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)


def _serve_local(args: argparse.Namespace, stop: threading.Event, procs: list) -> int:
    import queue
    import subprocess

    if args.config:
        raise SystemExit("mpc-ml serve --config FILE starts one party: give --rank R (and "
                         "--listen); start the dealer with `mpc-ml dealer`")
    if args.nparties is None or args.nparties < 2:
        raise SystemExit("mpc-ml serve: -n must be at least 2")
    _check_client_limits(args)
    _load_factory(args.model, "serve")  # a bad --model fails here, before anything starts
    deployment = _local_deployment(args)
    n = deployment.world_size
    front = args.listen.split(",") if args.listen else _free_addresses(n)
    if len(front) != n:
        raise SystemExit(f"mpc-ml serve: --listen names {len(front)} addresses for {n} parties")
    for addr in front:
        try:
            tcp.parse_address(addr)
        except ValueError as e:
            raise SystemExit(f"mpc-ml serve: {e}") from None
    config = Config.from_env()
    if args.allow_insecure:
        config = config.replace(allow_insecure=True)
    try:
        check_transport("mpc-ml serve", front, deployment.tls, config)
    except ValueError as e:
        raise SystemExit(str(e)) from None
    if stop.is_set():
        return 0  # stopped before anything started
    dealer_errors: list = []
    dealer_thread = None
    if deployment.dealer is not None:  # the dealer: a thread of this command
        from ..launch.dealer_service import serve_jobs

        dealer_tls = None
        if deployment.tls:
            from ..comm import DEALER_RANK
            from ..comm.tls import TLSConfig

            dealer_tls = TLSConfig(deployment.tls, DEALER_RANK)
        dealer_listener = tcp.listen(deployment.dealer.address)

        def run_dealer() -> None:
            try:  # a service may idle: the dealer waits as long as the parties do
                serve_jobs(dealer_listener, config.replace(dealer_idle_timeout_s=1e7), dealer_tls,
                           max_jobs=1, world_size=n, first_job_within_s=config.connect_timeout_s)
            except CommError as e:
                dealer_errors.append(e)

        dealer_thread = threading.Thread(target=run_dealer, name="mpc-serve-dealer", daemon=True)
        dealer_thread.start()
    env = dict(os.environ)
    env.setdefault("MPC_TORCH_THREADS", str(max(1, (os.cpu_count() or 1) // n)))
    if args.allow_insecure:
        env["MPC_ALLOW_INSECURE"] = "1"
    env.pop("MPC_TLS_DIR", None)
    options = ["--model", args.model, "--max-batch", str(args.max_batch),
               "--max-wait-ms", str(args.max_wait_ms), "--max-clients", str(args.max_clients),
               "--max-clients-per-identity", str(args.max_clients_per_identity),
               "--client-idle-timeout-s", str(args.client_idle_timeout_s),
               "--seed", str(args.seed)]
    if args.sample_shape:
        options += ["--sample-shape", args.sample_shape]
    events: queue.Queue = queue.Queue()

    def watch(rank: int, proc: subprocess.Popen) -> None:
        for line in proc.stdout:
            prefix = f"party {rank} serving clients at "
            if line.startswith(prefix):  # the address it listens at (a port 0 is resolved)
                events.put(("ready", rank, line[len(prefix):].strip()))
            else:
                print(line, end="", file=sys.stderr)
        events.put(("exit", rank, proc.wait()))

    for r in range(n):
        if stop.is_set():
            break
        # Each party starts with SIGINT and SIGTERM blocked (the mask survives exec) until
        # it has its handlers, so a stop sent while its Python loads waits for them instead
        # of killing it (SIGTERM) or printing a KeyboardInterrupt (SIGINT, a terminal's
        # Ctrl-C reaching the whole process group). on_signal may still run meanwhile (a
        # signal taken by another thread of this command), before the party is in procs:
        # hence the second look at stop once it is.
        mask = _mask_stop_signals("SIG_BLOCK")
        try:
            proc = subprocess.Popen([sys.executable, "-m", "mpc_ml", "serve", "--rank", str(r),
                                     "--listen", front[r], *options],
                                    env={**env, **deployment.party_env(r)},
                                    stdout=subprocess.PIPE, text=True)
            procs.append(proc)
        finally:
            _mask_stop_signals("SIG_SETMASK", mask)
        if stop.is_set():
            _stop_parties(procs)
        threading.Thread(target=watch, args=(r, proc), daemon=True).start()
    started = len(procs)
    ready, exits, failed_at, stopped_at = set(), {}, None, None
    while len(exits) < started:
        if stop.is_set() and stopped_at is None:
            stopped_at = time.monotonic()
        try:
            kind, rank, code = events.get(timeout=0.5)
        except queue.Empty:
            if failed_at is not None and time.monotonic() > failed_at + config.comm_timeout_s + 5:
                break  # the others had their time to notice
            if stopped_at is not None and len(ready) < n \
                    and time.monotonic() > stopped_at + config.comm_timeout_s + 5:
                print("mpc-ml serve: a party did not stop while starting", file=sys.stderr)
                return 1
            continue
        if kind == "ready":
            front[rank] = code  # the address the party reported
            ready.add(rank)
            if len(ready) == n:
                print(f"serving clients at {','.join(front)}", flush=True)
        else:
            exits[rank] = code
            if code != 0 and failed_at is None and not (stop.is_set() and len(ready) < n):
                failed_at = time.monotonic()
                print(f"mpc-ml serve: party {rank} exited with code {code}", file=sys.stderr)
                if len(ready) < n:  # it never started: stop the others
                    _stop_parties(procs)
    if stop.is_set() and len(ready) < n and failed_at is None:
        return 0  # stopped while starting: each party stopped where it was
    if dealer_thread is not None:
        dealer_thread.join(10)
    if failed_at is not None or any(code != 0 for code in exits.values()) or len(exits) < n:
        return 1
    if dealer_errors:
        print(f"mpc-ml serve: the dealer: {dealer_errors[0]}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mpc-ml", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("launch", help="run a script as n parties (on this machine, or where "
                                      "a deployment file says)")
    p.add_argument("-n", "--nparties", type=int)
    p.add_argument("--config", metavar="FILE", help="a deployment file (TOML: parties, "
                   "addresses, ssh, namespaces, TLS, dealer; see launchers/)")
    p.add_argument("--backend", choices=[b for b in BACKENDS if b != "inproc"], default="tcp",
                   help="inproc is not offered: a launched script runs as processes")
    p.add_argument("--hostfile", metavar="FILE", help="backend mpi: mpiexec's hostfile "
                   "(default: every rank on this machine)")
    p.add_argument("--provider", choices=list(PROVIDERS), default=DEFAULT_PROVIDER)
    p.add_argument("--tls", metavar="DIR", help="mutually authenticated TLS 1.3 with the "
                   "certificates in DIR (from `mpc-ml certs`)")
    p.add_argument("--allow-insecure", action="store_true", help="let parties on non-loopback "
                   "addresses run without TLS (shares cross the network in the clear)")
    p.add_argument("script")
    p.add_argument("script_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=launch)
    p = sub.add_parser("slurm", help="print the sbatch script of a deployment file")
    p.add_argument("--config", metavar="FILE", required=True)
    p.add_argument("script")
    p.add_argument("script_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=slurm)
    p = sub.add_parser("dealer", help="serve correlated randomness to n parties")
    p.add_argument("--listen", required=True, metavar="HOST:PORT")
    p.add_argument("-n", "--nparties", type=int, help="serve one job of N parties, then exit "
                   "(without -n: serve any number of jobs, each found by its MPC_JOB_ID)")
    p.add_argument("--jobs", type=int, metavar="K", help="exit after K jobs (default: one with "
                   "-n, else run until stopped)")
    p.add_argument("--tls", metavar="DIR", help="TLS with DIR/dealer.pem and .key "
                   "(default: $MPC_TLS_DIR if set)")
    p.add_argument("--allow-insecure", action="store_true", help="listen on a non-loopback "
                   "address without TLS")
    p.add_argument("--attest", choices=list(DEALER_ATTEST_MODES), default="none",
                   help="prove what this dealer runs: sim (a software signer: protects nothing) "
                        "or sgx (Gramine's /dev/attestation); prints 'dealer measurement: HEX' first")
    p.add_argument("--device", default="cpu", help="where the correlations are made: cpu "
                   "(default) or cuda[:K] (a GPU makes large matmul and conv triples fast)")
    p.set_defaults(func=dealer)
    p = sub.add_parser("certs", help="make a CA and one TLS key pair per party (for --tls)")
    p.add_argument("directory", metavar="DIR")
    p.add_argument("--parties", type=int, required=True, metavar="N")
    p.add_argument("--dealer", action="store_true", help="also a certificate for the dealer")
    p.add_argument("--clients", type=int, default=0, metavar="K", help="also K inference "
                   "client certificates (client-<k>.pem), the only ones a server accepts")
    p.add_argument("--days", type=int, default=365, help="validity (default 365)")
    p.add_argument("--force", action="store_true", help="replace certificates already in DIR")
    p.set_defaults(func=certs)
    p = sub.add_parser("demo", help="private training on digits (2 parties + dealer): a CNN, "
                                    "a transformer encoder, or linear regression")
    p.add_argument("--task", choices=["cnn", "transformer", "linear"], default="cnn")
    p.add_argument("--epochs", type=int, default=None)
    p.set_defaults(func=demo)
    p = sub.add_parser("infer", help="private inference on loopback: n parties serve an "
                                     "outside client; prints its result and the plaintext one")
    p.add_argument("--model", default="mpc_ml.serving:demo_model", metavar="MODULE:FACTORY",
                   help="a function returning a torch.nn.Module (default: a 64-32-10 MLP)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--input", metavar="FILE.pt", help="a tensor saved with torch.save")
    src.add_argument("--random", metavar="SHAPE", help="a random input, e.g. 4,64 (the default)")
    p.add_argument("-n", "--nparties", type=int, default=2)
    p.add_argument("--requests", type=int, default=1,
                   help="split the input's batch into this many requests")
    p.add_argument("--backend", choices=[b for b in BACKENDS if b != "mpi"], default="tcp")
    p.add_argument("--provider", choices=list(PROVIDERS), default=DEFAULT_PROVIDER)
    p.add_argument("--seed", type=int, default=0, help="seeds the model's init and --random")
    p.set_defaults(func=infer)
    p = sub.add_parser("serve", help="a private inference service: n parties (and a dealer) "
                                     "answer outside clients, batched, until SIGINT/SIGTERM")
    p.add_argument("--model", default="mpc_ml.serving:demo_model", metavar="MODULE:FACTORY",
                   help="a function returning a torch.nn.Module (default: a 64-32-10 MLP); "
                        "called after torch.manual_seed(--seed); party 0's weights are served")
    p.add_argument("--sample-shape", metavar="SHAPE", help="one sample's shape, e.g. 1,28,28 "
                   "(default: the first Linear layer's input features)")
    p.add_argument("-n", "--nparties", type=int, default=2)
    p.add_argument("--provider", choices=list(PROVIDERS), default=DEFAULT_PROVIDER)
    p.add_argument("--tls", metavar="DIR", help="TLS with the certificates in DIR (`mpc-ml certs "
                   "DIR --parties N --dealer --clients K`): clients must present a client one")
    p.add_argument("--listen", metavar="HOST:PORT,...", help="the parties' addresses for clients "
                   "(default: free loopback ports); with --rank, this party's one")
    p.add_argument("--max-batch", type=int, default=64, metavar="B",
                   help="at most B rows per forward pass (default 64)")
    p.add_argument("--max-wait-ms", type=float, default=5.0, metavar="T", help="run the requests "
                   "that arrive within T ms of the first one together (default 5)")
    p.add_argument("--max-clients", type=int, default=256, metavar="K", help="at most K clients "
                   "connected to a party at once (default 256); one more is refused by name")
    p.add_argument("--max-clients-per-identity", type=int, default=16, metavar="K",
                   help="at most K of them with one identity: a client certificate with --tls, "
                        "else the client's address host (default 16)")
    p.add_argument("--client-idle-timeout-s", type=float, default=300.0, metavar="T",
                   help="drop a client from which nothing came, and to which no answer went, "
                        "for T s, freeing its place (default 300; 0: never)")
    p.add_argument("--seed", type=int, default=0, help="seeds the model's init")
    p.add_argument("--config", metavar="FILE", help="with --rank: the deployment file whose "
                   "party R this is (start the dealer with `mpc-ml dealer`)")
    p.add_argument("--rank", type=int, metavar="R", help="start only party R (on its host)")
    p.add_argument("--allow-insecure", action="store_true", help="serve on non-loopback "
                   "addresses without TLS")
    p.set_defaults(func=serve)
    sub.add_parser("bench", help="run the benchmark suite (from a checkout); options go to "
                                 "benchmarks/suite.py, e.g. mpc-ml bench --quick; "
                                 "--ops-only / --models-only / --offline-only: "
                                 "benchmarks/ops.py / models.py / offline.py")
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:  # everything after `bench` belongs to the benchmark script
        return bench(argv[1:])
    args = parser.parse_args(argv)
    return args.func(args)

