"""A TCP proxy on loopback for network faults and latency (a tiny Toxiproxy).

* ``delay``: every chunk is forwarded ``delay`` seconds after it arrived, in
  order, in both directions (``delay=0.005`` gives a 10 ms round trip);
* ``cut_after``: the first connection is dropped once that many bytes have
  gone from the server to the client (a link that dies mid-walk);
* ``freeze()``: stop forwarding but keep the sockets open (a dead link that
  never says so).
"""

from __future__ import annotations

import contextlib
import queue
import socket
import threading
import time


class Proxy:
    def __init__(
        self,
        target_port: int,
        *,
        delay: float = 0.0,
        cut_after: int | None = None,
        target_host: str = "127.0.0.1",
    ) -> None:
        self.target = (target_host, target_port)
        self.delay = delay
        self.cut_after = cut_after
        self.frozen = threading.Event()
        self.connections = 0
        self.cuts = 0
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def freeze(self) -> None:
        self.frozen.set()

    def thaw(self) -> None:
        self.frozen.clear()

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self._listener.close()
        self.cut_all()

    def cut_all(self) -> None:
        with self._lock:
            socks, self._socks = self._socks, []
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                s.close()

    def __enter__(self) -> Proxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            for s in (client, server):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self.connections += 1
                first = self.connections == 1
                self._socks += [client, server]
            self._forward(client, server, first)

    def _forward(self, client: socket.socket, server: socket.socket, first: bool) -> None:
        """Start moving bytes both ways (a subclass models another link here)."""
        self._pump(client, server, None)
        self._pump(server, client, self.cut_after if first else None)

    def _pump(self, src: socket.socket, dst: socket.socket, limit: int | None) -> None:
        q: queue.Queue[tuple[float, bytes] | None] = queue.Queue()

        def reader() -> None:
            total = 0
            try:
                while True:
                    data = src.recv(65536)
                    if not data:
                        break
                    total += len(data)
                    if limit is not None and total >= limit:
                        self.cuts += 1
                        self.cut_all()
                        break
                    q.put((time.monotonic() + self.delay, data))
            except OSError:
                pass
            q.put(None)

        def writer() -> None:
            try:
                while True:
                    item = q.get()
                    if item is None:
                        break
                    due, data = item
                    while self.frozen.is_set():
                        time.sleep(0.05)
                    wait = due - time.monotonic()
                    if wait > 0:
                        time.sleep(wait)
                    dst.sendall(data)
            except OSError:
                pass
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)

        threading.Thread(target=reader, daemon=True).start()
        threading.Thread(target=writer, daemon=True).start()
