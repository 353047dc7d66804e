"""The tests' loopback proxy (tests/e2e/tcpproxy.py) must end the daemon's side of a
connection when the server ends its side, as a direct connection would: otherwise the
daemon waits for ever on a connection with nothing behind it, and a test blames the
driver (it did: the "hang after a PostgreSQL restart" of test_the_database_restarts)."""

from __future__ import annotations

import socket
import threading

from tests.e2e.tcpproxy import TcpProxy


def test_the_client_sees_the_end_when_the_server_ends_the_connection() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        accepted: list[socket.socket] = []
        ready = threading.Event()

        def serve() -> None:
            conn, _ = server.accept()
            accepted.append(conn)
            ready.set()

        threading.Thread(target=serve, daemon=True).start()
        with TcpProxy(server.getsockname()) as proxy:
            client = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
            assert ready.wait(5)
            accepted[0].close()  # the server ends the session (a restart, say)
            try:
                got = client.recv(1)  # an idle client: nothing was sent either way
            except ConnectionResetError:
                got = b""
            except TimeoutError:
                raise AssertionError(
                    "the client's side stayed open after the server's closed"
                ) from None
            finally:
                client.close()
    assert got == b""
