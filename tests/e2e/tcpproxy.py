"""A loopback TCP proxy a test owns, between one daemon and PostgreSQL, to take the
database away from that daemon alone (the other tests and replicas are unaffected).

``cut()`` resets every connection through it and refuses new ones, as a database
restart or a lost route that the kernel reports does; ``restore()`` lets connections
through again. ``blackhole()`` is the silent kind: connections stay open but nothing
passes either way (a partition, a firewall dropping packets) until ``restore()``,
which then resets them (the server ended those sessions meanwhile)."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from types import TracebackType

from sqlalchemy import make_url


class TcpProxy:
    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._conns: list[socket.socket] = []
        self._open = threading.Event()  # data passes only while set
        self._open.set()
        self._refusing = False
        self._closed = False
        self.accepted = 0
        threading.Thread(target=self._accept, name="tcpproxy", daemon=True).start()

    @classmethod
    def for_url(cls, url: str) -> tuple[TcpProxy, str]:
        """A proxy in front of the server of ``url``, and the same URL through it."""
        u = make_url(url)
        proxy = cls((u.host or "127.0.0.1", u.port or 5432))
        through = u.set(host="127.0.0.1", port=proxy.port)
        return proxy, through.render_as_string(hide_password=False)

    # ----- what the test does
    def cut(self) -> None:
        with self._lock:
            self._refusing = True
        self._open.set()
        self._reset_all()

    def blackhole(self) -> None:
        self._open.clear()

    def restore(self) -> None:
        with self._lock:
            self._refusing = False
        if not self._open.is_set():
            self._reset_all()  # what was held open the server has ended meanwhile
            self._open.set()

    def close(self) -> None:
        self._closed = True
        self._open.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        self._reset_all()

    def __enter__(self) -> TcpProxy:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # ----- the machinery
    def _reset_all(self) -> None:
        with self._lock:
            conns, self._conns = self._conns, []
        for s in conns:
            _reset(s)

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                refusing = self._refusing
            if refusing:
                _reset(client)
                continue
            try:
                server = socket.create_connection(self.upstream, timeout=5)
                server.settimeout(None)
            except OSError:
                _reset(client)
                continue
            with self._lock:
                self._conns += [client, server]
                self.accepted += 1
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                self._open.wait()  # a blackhole holds the bytes (and the connection)
                if self._closed:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            _reset(dst)
            _reset(src)


def _reset(s: socket.socket) -> None:
    """Close with an RST (SO_LINGER 0), as a dead peer's kernel answers.

    ``shutdown`` first: on Linux a ``close`` from this thread neither wakes the pump
    blocked in ``recv`` on the same socket nor ends the connection while that call holds
    it, so the daemon's side stayed open with nobody behind it, and its next query
    waited for ever (the "psycopg hangs after a restart" that only the proxied tests saw).
    """
    with contextlib.suppress(OSError):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        s.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        s.close()
