"""A loopback TCP proxy that models a long fat network (for benchmarks/bench_split.py).

Each direction of each connection is delayed by ``delay`` seconds and holds at
most ``window`` bytes in flight: while the delay line is full the proxy stops
reading, so the sender feels back-pressure, and one connection moves at most
about window / delay bytes per second - as one TCP stream is limited by its
window and the round trip.  An optional ``cap`` (bytes per second) is the
link's total rate, shared by every connection.

    with WanProxy(target_port, delay=0.010, window=128 * 1024) as proxy:
        ...  # connect to 127.0.0.1:proxy.port
"""

from __future__ import annotations

import collections
import contextlib
import socket
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from tcpproxy import Proxy

CHUNK = 64 * 1024


class _Bucket:
    """The link's total rate: a token bucket shared by all directions of all connections."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.tokens = rate / 10
        self.stamp = time.monotonic()
        self.lock = threading.Lock()

    def take(self, n: int) -> None:
        while True:
            with self.lock:
                now = time.monotonic()
                self.tokens = min(self.rate / 10, self.tokens + (now - self.stamp) * self.rate)
                self.stamp = now
                if self.tokens >= n:
                    self.tokens -= n
                    return
                wait = (n - self.tokens) / self.rate
            time.sleep(wait)


class _Direction:
    """src -> dst through a delay line that holds at most ``window`` bytes."""

    def __init__(
        self,
        src: socket.socket,
        dst: socket.socket,
        delay: float,
        window: int,
        bucket: _Bucket | None,
    ) -> None:
        self.src, self.dst, self.delay, self.window, self.bucket = src, dst, delay, window, bucket
        self.line: collections.deque[tuple[float, bytes]] = collections.deque()
        self.in_flight = 0
        self.cond = threading.Condition()
        self.closed = False
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._write, daemon=True).start()

    def _read(self) -> None:
        try:
            while True:
                with self.cond:
                    while self.in_flight >= self.window and not self.closed:
                        self.cond.wait()  # back-pressure: the window is full
                    room = self.window - self.in_flight
                data = self.src.recv(min(CHUNK, max(1, room)))
                if not data:
                    break
                if self.bucket is not None:
                    self.bucket.take(len(data))
                with self.cond:
                    self.line.append((time.monotonic() + self.delay, data))
                    self.in_flight += len(data)
                    self.cond.notify_all()
        except OSError:
            pass
        with self.cond:
            self.closed = True
            self.cond.notify_all()

    def _write(self) -> None:
        try:
            while True:
                with self.cond:
                    while not self.line and not self.closed:
                        self.cond.wait()
                    if not self.line:
                        break
                    due, data = self.line[0]
                wait = due - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                self.dst.sendall(data)
                with self.cond:
                    self.line.popleft()
                    self.in_flight -= len(data)
                    self.cond.notify_all()
        except OSError:
            pass
        with contextlib.suppress(OSError):
            self.dst.shutdown(socket.SHUT_WR)


class WanProxy(Proxy):
    def __init__(
        self,
        target_port: int,
        *,
        delay: float = 0.010,
        window: int = 128 * 1024,
        cap: float | None = None,
        target_host: str = "127.0.0.1",
    ) -> None:
        self.window = window
        self.bucket = _Bucket(cap) if cap else None
        super().__init__(target_port, delay=delay, target_host=target_host)

    def _forward(self, client: socket.socket, server: socket.socket, first: bool) -> None:
        _Direction(client, server, self.delay, self.window, self.bucket)
        _Direction(server, client, self.delay, self.window, self.bucket)
