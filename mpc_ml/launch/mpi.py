"""Parties as the ranks of an MPI job: `mpiexec -n N python script.py`, and mpc.run(backend="mpi").

Ranks 0..n-1 of MPI.COMM_WORLD are the compute parties. With provider "dealer" the job
has one rank more, and the last rank is the dealer: mpi_session() serves the parties'
correlations there and then exits the process, so every rank can run the same script.

    mpiexec -n 3 python script.py                          # 3 parties, tfp
    mpiexec -n 4 -genv MPC_PROVIDER dealer python script.py   # 3 parties and a dealer

run_mpi() is mpc.run's "mpi" backend: it writes the pickled function to a temp file,
starts `mpiexec -n N(+1) python -m mpc_ml.launch DIR`, and reads each rank's
pickled result or error back from DIR. Those files pass only between this launcher and
its own child processes; nothing a peer sends is unpickled.
"""
from __future__ import annotations

import atexit
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from ..comm import DEALER_RANK, CommError, Communicator, peer_name
from ..config import Config
from ..providers import DEFAULT_PROVIDER, serve_dealer
from ..session import Session, activate, check_job
from .results import describe, pick_error, pickle_result

# Variables an MPI launcher sets in each rank's environment (MPICH/Hydra, Open MPI, PMIx,
# Intel MPI): mpc.init() may take any of them as "started by mpiexec".
MPI_RANK_VARS = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "MPI_LOCALRANKID")
# Prefixes of the variables that tie a process to a running MPI job: removed from the
# environment of a job run_mpi starts, so a launcher inside an MPI job starts a fresh one.
_JOB_VAR_PREFIXES = ("PMI_", "PMIX_", "OMPI_", "HYDRA_", "HYDI_", "MPI_LOCAL", "I_MPI_",
                     "MPIEXEC_", "MPC_RANK", "MPC_WORLD_SIZE", "MPC_PARTY_ADDRS",
                     "MPC_DEALER_ADDR", "MPC_BACKEND", "MPC_PROVIDER")
REPORT_GRACE_S = 10.0  # after every rank reported: how long mpiexec gets to exit
DEATH_GRACE_S = 1.0    # after a rank died: how long the others get to report


def under_mpiexec(env: dict[str, str] | None = None) -> bool:
    """True when this process looks like a rank started by mpiexec/mpirun."""
    env = os.environ if env is None else env
    return any(v in env for v in MPI_RANK_VARS)


def _mpi():
    from ..comm import mpi  # imports mpi4py, which initialises MPI: only when used
    return mpi


# -- sessions -------------------------------------------------------------------------
def _layout(provider: str, comm=None):
    """(private communicator, number of parties, this rank) for a job; checks the sizes."""
    check_job(2, provider)
    MPI = _mpi().MPI
    world = MPI.COMM_WORLD if comm is None else comm
    size, me = world.Get_size(), world.Get_rank()
    n = size - 1 if provider == "dealer" else size
    if n < 2:
        need = "3 ranks (2 parties and the dealer)" if provider == "dealer" else "2 ranks"
        raise ValueError(f"the MPI job has {size} rank(s); provider {provider!r} needs at least "
                         f"{need}: start it with `mpiexec -n N` (a job of one rank may mean "
                         "that mpiexec and mpi4py belong to different MPI libraries)")
    # Our own context: the user's MPI messages on COMM_WORLD never mix with ours.
    return world.Dup(), n, me


def _party_session(comm, n: int, me: int, provider: str, config: Config):
    """Links to every party (and the dealer), hello check, seeds: this party's Session."""
    if me == 0:
        print("mpc_ml: the MPI backend's links are not encrypted: run it only on a network "
              "you trust (the tcp backend with --tls encrypts and authenticates)", file=sys.stderr)
    mpi = _mpi()
    links = {j: mpi.MPILink(comm, me, j, j, mpi.PARTY_TAGS, config.max_frame_bytes,
                            config.comm_timeout_s) for j in range(n) if j != me}
    # Made before anything can fail: closing it tells the dealer this party is gone.
    dealer_link = (mpi.MPILink(comm, me, DEALER_RANK, n, mpi.DEALER_TAGS, config.max_frame_bytes,
                               config.comm_timeout_s) if provider == "dealer" else None)
    try:
        hello = {"rank": me, "world_size": n, "provider": provider, **config.agreed_fields()}
        for link in links.values():
            link.send(hello)
        for j, link in links.items():
            theirs = link.recv(config.connect_timeout_s)
            if not isinstance(theirs, dict):
                raise CommError(f"party {me}: {peer_name(j)} answered the hello with a tensor")
            for key, mine in {**hello, "rank": j}.items():
                if theirs.get(key) != mine:
                    raise CommError(f"party {me}: {peer_name(j)} runs with {key}="
                                    f"{theirs.get(key)!r}, this party with {key}={mine!r}")
        return Session(Communicator(me, n, links, config.comm_timeout_s), config, provider,
                       dealer_link)
    except BaseException:
        for link in links.values():
            link.close()
        if dealer_link is not None:
            dealer_link.close()
        raise


def run_mpi_dealer(comm: Any, n: int, config: Config) -> int:
    """The dealer's main on the last rank: serve the n parties until they finish."""
    mpi = _mpi()
    links = {r: mpi.MPILink(comm, DEALER_RANK, r, r, mpi.DEALER_TAGS, config.max_frame_bytes,
                            config.comm_timeout_s) for r in range(n)}
    return serve_dealer(links, n, config.dealer_idle_timeout_s, config.dealer_attest)


def _close_at_exit(session) -> None:
    try:
        session.close()
    finally:
        _mpi().drain()


def mpi_session(provider: str = DEFAULT_PROVIDER, config: Config | None = None,
                comm: Any = None) -> Session:
    """This rank's Session in an MPI job (collective: every rank of the job calls it).

    Ranks 0..n-1 are the parties. With provider "dealer" the last rank is the dealer: it
    serves the parties, then exits the process (status 0) without returning. The
    session is closed, and its links drained, when the process exits; an uncaught
    exception in any rank aborts the whole job (MPI_Abort) after printing it.
    """
    config = config or Config()
    _abort_on_uncaught_exception()
    comm, n, me = _layout(provider, comm)
    if me == n:
        try:
            run_mpi_dealer(comm, n, config)
        finally:
            _mpi().drain()
        sys.exit(0)
    session = _party_session(comm, n, me, provider, config)
    atexit.register(_close_at_exit, session)  # before MPI_Finalize, which runs after atexit
    return session


def _abort_on_uncaught_exception() -> None:
    """An uncaught exception in a party prints its traceback, then aborts the whole job
    (as `python -m mpi4py` does): MPI_Finalize would otherwise wait for peers that may
    be blocked in a collective of the script's own, and mpiexec would never return."""
    previous = sys.excepthook
    if getattr(previous, "_mpc_mpi_abort", False):
        return

    def hook(kind, value, tb):
        previous(kind, value, tb)
        sys.stderr.flush()
        _mpi().MPI.COMM_WORLD.Abort(1)

    hook._mpc_mpi_abort = True
    sys.excepthook = hook


# -- mpc.run(backend="mpi") --------------------------------------------------------------
def find_mpiexec() -> str:
    """The mpiexec to use: $MPC_MPIEXEC, else the one beside this Python (the mpich wheel
    installs it into the virtual environment), else mpiexec on PATH."""
    if os.environ.get("MPC_MPIEXEC"):
        return os.environ["MPC_MPIEXEC"]
    for name in ("mpiexec", "mpirun"):
        beside = Path(sys.executable).parent / name
        if beside.exists() and os.access(beside, os.X_OK):
            return str(beside)
    for name in ("mpiexec", "mpirun"):
        found = shutil.which(name)
        if found:
            return found
    raise RuntimeError("backend 'mpi' needs mpiexec: pip install mpi4py mpich "
                       "(or set MPC_MPIEXEC to an mpiexec of the MPI library mpi4py uses)")


_KINDS: dict[str, str] = {}


def mpiexec_kind(mpiexec: str) -> str:
    """'hydra' (MPICH, Intel MPI), 'openmpi' or 'other', from `mpiexec --version`."""
    if mpiexec not in _KINDS:
        try:
            out = subprocess.run([mpiexec, "--version"], capture_output=True, text=True,
                                 timeout=30, stdin=subprocess.DEVNULL)
            version = out.stdout + out.stderr
        except (OSError, subprocess.TimeoutExpired):
            version = ""
        _KINDS[mpiexec] = ("hydra" if "HYDRA" in version.upper() else
                           "openmpi" if "Open MPI" in version or "OpenRTE" in version else
                           "other")
    return _KINDS[mpiexec]


def _mpiexec_flags(mpiexec: str) -> list[str]:
    """Flags for run_mpi's local job: Hydra keeps the other ranks alive when one dies (so
    the launcher can tell which one it was, then stops the job); Open MPI must be allowed
    to oversubscribe (and to run as root)."""
    kind = mpiexec_kind(mpiexec)
    if kind == "hydra":
        return ["-launcher", "fork", "-disable-auto-cleanup"]
    if kind == "openmpi":
        return ["--oversubscribe"] + (["--allow-run-as-root"] if os.geteuid() == 0 else [])
    return []


def mpiexec_command(nparties: int, provider: str, argv: list[str], hostfile: str | None = None,
                    env: dict[str, str] | None = None, mpiexec: str | None = None) -> list[str]:
    """The mpiexec command line of a job of nparties (and a dealer rank with provider
    "dealer") running argv, with env set on every rank (also on other hosts)."""
    mpiexec = mpiexec or find_mpiexec()
    kind = mpiexec_kind(mpiexec)
    cmd = [mpiexec]
    if hostfile:
        cmd += ["--hostfile" if kind == "openmpi" else "-f", hostfile]
    if kind == "openmpi":
        cmd += ["--oversubscribe"] + (["--allow-run-as-root"] if os.geteuid() == 0 else [])
    for name, value in (env or {}).items():
        cmd += ["-x", f"{name}={value}"] if kind == "openmpi" else ["-genv", name, value]
    return cmd + ["-n", str(nparties + (provider == "dealer")), *argv]


def launch_script(nparties: int, provider: str, script: str, script_args: list[str] = (),
                  hostfile: str | None = None) -> int:
    """`mpc-ml launch --backend mpi`: run script as the ranks of one mpiexec job (each
    rank's mpc.init() finds MPI); returns mpiexec's exit status."""
    check_job(nparties, provider)
    job_env = {"MPC_BACKEND": "mpi", "MPC_PROVIDER": provider,
               "MPC_TORCH_THREADS": os.environ.get(
                   "MPC_TORCH_THREADS", str(max(1, (os.cpu_count() or 1) // nparties)))}
    env = {k: v for k, v in os.environ.items() if not k.startswith(_JOB_VAR_PREFIXES)}
    cmd = mpiexec_command(nparties, provider, [sys.executable, script, *script_args], hostfile,
                          job_env)
    return subprocess.call(cmd, env={**env, **job_env})


def _report_name(key: int) -> str:
    return "dealer" if key == DEALER_RANK else f"party{key}"


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie has exited, its parent just has not reaped it yet
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def run_mpi(fn: Callable, world_size: int = 2, provider: str = DEFAULT_PROVIDER, args: tuple = (),
            kwargs: dict | None = None, config: Config | None = None) -> list[Any]:
    """Run fn(*args, **kwargs) in world_size parties, each a rank of one mpiexec job on
    this machine (plus a dealer rank with provider "dealer"); each party's result in rank
    order. An exception in any party is raised as PartyError naming the party."""
    config = config or Config()
    check_job(world_size, provider, config)
    try:
        payload = pickle.dumps((fn, tuple(args), kwargs or {}))
    except Exception as e:
        raise TypeError("mpc.run(backend='mpi') pickles fn, args and kwargs to start each "
                        f"party process; use a module-level function ({e})") from None
    mpiexec = find_mpiexec()
    nprocs = world_size + (provider == "dealer")
    keys = list(range(world_size)) + ([DEALER_RANK] if provider == "dealer" else [])
    with tempfile.TemporaryDirectory(prefix="mpc-mpi-") as tmp:
        job = Path(tmp)
        _write_atomic(job / "job.pkl", pickle.dumps({
            "prep": _preparation_data(), "payload": payload, "provider": provider,
            "world_size": world_size, "config": config}))
        env = {k: v for k, v in os.environ.items() if not k.startswith(_JOB_VAR_PREFIXES)}
        env["MPC_TORCH_THREADS"] = str(max(1, (os.cpu_count() or 1) // world_size))
        here = str(Path(__file__).resolve().parents[2])  # so `-m mpc_ml.launch` imports
        env["PYTHONPATH"] = os.pathsep.join([here, *filter(None, [env.get("PYTHONPATH")])])
        cmd = [mpiexec, *_mpiexec_flags(mpiexec), "-n", str(nprocs), sys.executable, "-m",
               "mpc_ml.launch", str(job)]
        with open(job / "mpiexec.err", "w+b") as err:
            proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stderr=err,
                                    start_new_session=True)
            try:
                reports = _watch(proc, job, keys, config)
            finally:
                _stop(proc, job, keys)
                err.seek(0)
                err_text = err.read().decode(errors="replace")
        if err_text:
            sys.stderr.write(err_text)  # what the parties wrote to stderr
    outs: dict[int, Any] = {}
    errors: dict[int, tuple[str, str, str]] = {}
    if not any(k in reports for k in keys) and proc.returncode not in (0, None):
        raise CommError(f"mpiexec exited with code {proc.returncode} before any party "
                        f"reported: {err_text.strip()[-2000:]}")
    for key in keys:
        status, value = reports.get(key, ("error", None))
        if status == "ok":
            outs[key] = pickle.loads(value) if key != DEALER_RANK else None
        else:
            errors[key] = value or ("ProcessDied", f"exited (mpiexec status {proc.returncode}) "
                                    f"without reporting; mpiexec's stderr ends: "
                                    f"{err_text.strip()[-1000:]}", "")
    if errors:
        raise pick_error(errors)
    return [outs[r] for r in range(world_size)]


def _preparation_data() -> dict:
    """What a child needs to unpickle fn: sys.path, the working directory and the main
    module (multiprocessing's spawn start method does the same)."""
    try:
        import multiprocessing.spawn as spawn
        data = spawn.get_preparation_data("mpc-mpi-party")
        data.pop("authkey", None)  # multiprocessing's own secret: not needed, not passed on
        return data
    except Exception:  # pragma: no cover - a Python without the spawn helpers
        return {"sys_path": list(sys.path), "dir": os.getcwd()}


def _read_reports(job: Path, keys: list[int], reports: dict) -> None:
    for key in keys:
        path = job / f"{_report_name(key)}.out"
        if key not in reports and path.exists():
            reports[key] = pickle.loads(path.read_bytes())  # written by our own child


def _watch(proc: subprocess.Popen, job: Path, keys: list[int], config: Config) -> dict:
    """Wait for the job; return {key: ("ok", pickled result) | ("error", (kind, msg, tb))}.

    A rank that died without reporting is an error of its own; once a rank failed or
    died the others get a grace period to report, then the job is stopped.
    """
    reports: dict[int, tuple] = {}
    grace_deadline = None
    while True:
        exited = proc.poll() is not None
        _read_reports(job, keys, reports)
        if exited or len(reports) == len(keys):
            break
        for key in keys:
            if key in reports:
                continue
            pid_file = job / f"{_report_name(key)}.pid"
            if pid_file.exists() and not _alive(int(pid_file.read_text())):
                _read_reports(job, [key], reports)  # it may have reported just before exiting
                if key not in reports:
                    reports[key] = ("error", ("ProcessDied", "exited without reporting "
                                              "(killed, crashed or os._exit)", ""))
                    deadline = time.monotonic() + DEATH_GRACE_S
                    grace_deadline = min(grace_deadline or deadline, deadline)
        if grace_deadline is None and any(s == "error" for s, _ in reports.values()):
            grace_deadline = time.monotonic() + config.comm_timeout_s + 5
        if grace_deadline is not None and time.monotonic() > grace_deadline:
            for key in keys:
                reports.setdefault(key, ("error", (
                    "CommTimeout", "still running after another party failed", "")))
            return reports
        time.sleep(0.05)  # polling the job's report files and processes
    if len(reports) == len(keys):
        try:  # everyone reported: MPI_Finalize should follow at once
            proc.wait(timeout=REPORT_GRACE_S)
        except subprocess.TimeoutExpired:
            pass
    return reports


def _stop(proc: subprocess.Popen, job: Path, keys: list[int]) -> None:
    """Kill the job if it still runs: mpiexec's process group and every rank we know of."""
    if proc.poll() is None:
        pids = []
        for key in keys:
            try:
                pids.append(int((job / f"{_report_name(key)}.pid").read_text()))
            except (OSError, ValueError):
                pass
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass
    proc.wait()


# -- a rank of run_mpi's job -----------------------------------------------------------------
def rank_main(job_dir: str) -> int:
    """One rank of run_mpi's job (`python -m mpc_ml.launch JOB_DIR`): run, write the report."""
    job = Path(job_dir)
    spec = pickle.loads((job / "job.pkl").read_bytes())  # written by our own launcher
    provider, world_size, config = spec["provider"], spec["world_size"], spec["config"]
    mpi = _mpi()  # initialises MPI
    me = mpi.MPI.COMM_WORLD.Get_rank()
    key = DEALER_RANK if provider == "dealer" and me == world_size else me
    report = job / f"{_report_name(key)}.out"
    _write_atomic(job / f"{_report_name(key)}.pid", str(os.getpid()).encode())
    session = None
    try:
        import torch

        torch.set_num_threads(1 if key == DEALER_RANK
                              else int(os.environ.get("MPC_TORCH_THREADS", "1")))
        size = mpi.MPI.COMM_WORLD.Get_size()
        if size != world_size + (provider == "dealer"):
            raise CommError(f"mpiexec started {size} rank(s), expected "
                            f"{world_size + (provider == 'dealer')}")
        comm, n, me = _layout(provider)
        if key == DEALER_RANK:
            run_mpi_dealer(comm, n, config)
            _write_atomic(report, pickle.dumps(("ok", b"")))
            return 0
        # The session first: if fn cannot be loaded, closing it tells the others at once.
        session = _party_session(comm, n, me, provider, config)
        try:
            import multiprocessing.spawn as spawn
            spawn.prepare(spec["prep"])
        except Exception:
            sys.path[:0] = [p for p in spec["prep"].get("sys_path", []) if p not in sys.path]
        fn, args, kwargs = pickle.loads(spec["payload"])
        activate(session)
        result = pickle_result(fn(*args, **kwargs), me)
        _write_atomic(report, pickle.dumps(("ok", result)))
    except BaseException as e:
        _write_atomic(report, pickle.dumps(("error", describe(e))))
    finally:
        if session is not None:
            activate(None)
            session.close()
        mpi.drain()
    return 0

