"""A dealer service: one long-running dealer serves any number of jobs, one after another
and at once (`mpc-ml dealer --listen HOST:PORT` without -n).

Each party's hello names its job (Config.job_id, MPC_JOB_ID), rank and world size. The
service accepts connections as they come (each shakes hands in its own thread, so a
stray or silent one holds up nobody), groups them by job, and as soon as every rank of a
job is in, serves that job in a thread of its own (providers.serve_dealer). Nothing of a
finished job is kept. A job whose parties do not all arrive within connect_timeout_s is
dropped, naming the ranks that never came.
"""
from __future__ import annotations

import queue
import socket
import sys
import threading
import time

from ..comm import DEALER_RANK, CommError, peer_name, tcp
from ..config import PROTOCOL_VERSION, Config
from ..providers import serve_dealer
from ..session import check_device


class _Job:
    def __init__(self, world_size: int):
        self.world_size, self.links, self.since = world_size, {}, time.monotonic()


def serve_jobs(listener: socket.socket, config: Config, tls: tcp.Wrap | None = None,
               max_jobs: int | None = None, world_size: int | None = None,
               first_job_within_s: float | None = None) -> int:
    """Serve jobs on listener until max_jobs have finished (forever if None); returns the
    number of correlations served. world_size, if given, is the only one accepted;
    first_job_within_s, if given, is how long the first job may take to gather (a job's
    own dealer gives up, naming who is missing, like its parties do). Correlations are
    made on config.device (ValueError at once for a device this torch does not have)."""
    check_device(config.device)
    arrivals: queue.Queue = queue.Queue()
    stop = threading.Event()
    served: list[int] = []

    def shake(sock: socket.socket, source: tuple) -> None:
        try:
            link = tcp.handshake(sock, source, DEALER_RANK, {"protocol_version": PROTOCOL_VERSION},
                                 None, time.monotonic() + tcp.HELLO_TIMEOUT_S,
                                 config.max_frame_bytes, tls)
        except CommError as e:
            print(f"mpc_ml: the dealer dropped a connection: {e}", file=sys.stderr)
            return
        n = link.hello["world_size"]
        if world_size is not None and n != world_size:
            link.send({"error": f"this dealer serves jobs of {world_size} parties, not {n}"})
            link.close()
            return
        link.send({"rank": DEALER_RANK, "world_size": n, "protocol_version": PROTOCOL_VERSION})
        arrivals.put(link)

    def accept_loop() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                sock, source = listener.accept()
            except (socket.timeout, BlockingIOError):
                continue
            except OSError:
                return
            threading.Thread(target=shake, args=(sock, source), daemon=True,
                             name="mpc-dealer-handshake").start()

    def run_job(job_id: str, job: _Job) -> None:
        try:
            served.append(serve_dealer(job.links, job.world_size, config.dealer_idle_timeout_s,
                                       config.dealer_attest, device=config.device))
        except CommError as e:
            print(f"mpc_ml: the dealer: job {job_id!r} failed: {e}", file=sys.stderr)

    jobs: dict[str, _Job] = {}
    workers: list[threading.Thread] = []
    acceptor = threading.Thread(target=accept_loop, daemon=True, name="mpc-dealer-accept")
    acceptor.start()
    started = time.monotonic()
    try:
        while max_jobs is None or len(workers) < max_jobs:
            if (first_job_within_s is not None and not workers
                    and time.monotonic() - started > first_job_within_s):
                waiting = {k: sorted(set(range(j.world_size)) - set(j.links)) for k, j in jobs.items()}
                raise CommError(f"the dealer: no job gathered within {first_job_within_s:g} s "
                                f"(missing ranks by job: {waiting or 'no party connected'})")
            try:
                link = arrivals.get(timeout=0.5)
            except queue.Empty:
                link = None
            if link is not None:
                key = str(link.hello.get("job", ""))
                job = jobs.setdefault(key, _Job(link.hello["world_size"]))
                if link.peer in job.links or link.hello["world_size"] != job.world_size:
                    link.send({"error": f"job {key!r} already has {peer_name(link.peer)} "
                                        f"or another world size"})
                    link.close()
                elif len(job.links) < job.world_size:
                    job.links[link.peer] = link
                if len(job.links) == job.world_size:
                    del jobs[key]
                    worker = threading.Thread(target=run_job, args=(key, job), daemon=True,
                                              name=f"mpc-dealer-job-{key}")
                    worker.start()
                    workers.append(worker)
            for key, job in list(jobs.items()):  # jobs whose parties never all came
                if time.monotonic() - job.since > config.connect_timeout_s:
                    missing = sorted(set(range(job.world_size)) - set(job.links))
                    print(f"mpc_ml: the dealer dropped job {key!r}: ranks {missing} did not "
                          f"connect within {config.connect_timeout_s:g} s", file=sys.stderr)
                    for link in job.links.values():
                        link.close()
                    del jobs[key]
        for worker in workers:
            worker.join()
    finally:
        stop.set()
        listener.close()
        for job in jobs.values():
            for link in job.links.values():
                link.close()
    return sum(served)
