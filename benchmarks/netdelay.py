"""User-space latency for the benchmark's network profiles (netem is not available).

install(delay_s) wraps mpc_ml.comm.tcp.TcpLink.send in this process: each frame is
copied and queued to one sender thread per link, which sends it `delay_s` after it was
queued. Frames keep their order, the caller never blocks (bandwidth is not halved by
waiting: a frame's delay overlaps the next frames' transmission), and what reaches the
kernel is then shaped by `tc ... tbf` (benchmarks/netns.py). Every party and the dealer
install it with the one-way delay (RTT / 2), so a ping-pong takes one RTT.

This is a shim kept in benchmarks/ (the library's tcp.py is untouched); the suite's
worker processes call install() when MPC_NET_DELAY_MS is set in their environment.
"""
from __future__ import annotations

import os
import queue
import threading
import time

import torch

from mpc_ml.comm import tcp

_ORIGINAL_SEND = tcp.TcpLink.send
_ORIGINAL_CLOSE = tcp.TcpLink.close
_STOP = object()


class _DelayedSender:
    def __init__(self, link, delay_s: float):
        self.link, self.delay_s = link, delay_s
        self.queue: queue.Queue = queue.Queue()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._loop, daemon=True,
                                       name=f"mpc-delay-{link.me}-to-{link.peer}")
        self.thread.start()

    def _loop(self) -> None:
        while True:
            due, msg = self.queue.get()
            if msg is _STOP:
                return
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            try:
                _ORIGINAL_SEND(self.link, msg)
            except BaseException as e:  # reported by the next send
                self.error = e

    def put(self, msg) -> None:
        if self.error is not None:
            raise self.error
        if isinstance(msg, torch.Tensor):
            msg = msg.detach().clone()  # the caller may reuse its buffer
        self.queue.put((time.monotonic() + self.delay_s, msg))

    def flush_and_stop(self, timeout: float = 30.0) -> None:
        self.queue.put((0.0, _STOP))
        self.thread.join(timeout)


def install(delay_s: float) -> None:
    """Delay every frame this process sends over tcp links by delay_s seconds."""
    if delay_s <= 0:
        return

    def send(self, msg) -> None:
        sender = self.__dict__.get("_delayed_sender")
        if sender is None:
            sender = self.__dict__["_delayed_sender"] = _DelayedSender(self, delay_s)
        sender.put(msg)

    def close(self) -> None:
        sender = self.__dict__.pop("_delayed_sender", None)
        if sender is not None:
            sender.flush_and_stop()
        _ORIGINAL_CLOSE(self)

    tcp.TcpLink.send = send
    tcp.TcpLink.close = close


def install_from_env() -> float:
    """install(MPC_NET_DELAY_MS / 1000) when it is set; returns the one-way delay in s."""
    delay_s = float(os.environ.get("MPC_NET_DELAY_MS", "0") or 0) / 1000
    install(delay_s)
    return delay_s
