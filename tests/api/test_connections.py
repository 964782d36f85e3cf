"""Silent and slow-header connections against a real `mega-crm serve` (issue 8, item 9).

The server runs as a subprocess with a small file-descriptor limit (1024), so that the flood
that exhausted it in production (21,000 silent connections at the default limit) fits in a few
thousand connections and a few seconds here.
"""

from __future__ import annotations

import http.client
import os
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import TEST_SECRET
from tests.fixtures.processes import free_port

HEADER_TIMEOUT = 2.0
FD_LIMIT = 1024


class Server:
    def __init__(self, tmp: Path, **env: str) -> None:
        self.port = free_port()
        environment = {
            **os.environ,
            "MEGA_DATABASE_URL": f"sqlite:///{tmp / 'conn.db'}",
            "MEGA_SECRET_KEY": TEST_SECRET,
            "MEGA_HEADER_TIMEOUT_SECONDS": str(HEADER_TIMEOUT),
            "MEGA_LOG_LEVEL": "warning",
            **env,
        }

        def small_fd_limit() -> None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (FD_LIMIT, FD_LIMIT))

        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mega_crm.cli", "serve", "--port", str(self.port), "--no-worker"],
            env=environment,
            preexec_fn=small_fd_limit,  # noqa: PLW1509 - single-threaded enough: before any server thread
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 30
        while not self.healthy(timeout=1):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"server did not start: {self.proc.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
            time.sleep(0.1)

    def healthy(self, timeout: float = 5.0) -> bool:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
            conn.request("GET", "/healthz")
            ok = conn.getresponse().status == 200
            conn.close()
            return ok
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = Server(tmp_path_factory.mktemp("connections"))
    yield running
    running.stop()


def closed_by_peer(sock: socket.socket, wait: float) -> float | None:
    """Seconds until the server closed `sock` (None if it had not within `wait`)."""
    started = time.monotonic()
    sock.settimeout(wait)
    try:
        while sock.recv(4096):
            pass
    except TimeoutError:
        return None
    except OSError:
        pass
    return time.monotonic() - started


def test_a_connection_that_never_sends_a_byte_is_closed(server: Server) -> None:
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        assert closed_by_peer(sock, HEADER_TIMEOUT + 5) is not None


def test_headers_sent_a_byte_at_a_time_are_cut_off(server: Server) -> None:
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"X-Slow: " + b"a" * 200 + b"\r\n\r\n"
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        started = time.monotonic()
        try:
            for i in range(len(head)):
                sock.sendall(head[i : i + 1])
                time.sleep(0.1)
                if time.monotonic() - started > HEADER_TIMEOUT + 5:
                    break
        except OSError:
            pass  # closed by the server
        assert closed_by_peer(sock, 1) is not None
        assert time.monotonic() - started < HEADER_TIMEOUT + 5


def test_a_kept_alive_connection_still_serves_requests(server: Server) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    for _ in range(3):
        conn.request("GET", "/healthz")
        assert conn.getresponse().read()
        time.sleep(HEADER_TIMEOUT / 2)  # idle between requests, under the keep-alive timeout
    conn.close()


def test_a_flood_of_silent_connections_does_not_lock_real_clients_out(server: Server) -> None:
    """Three times the server's file-descriptor limit in silent connections, opened as fast as
    possible; real clients are served throughout."""
    flood: list[socket.socket] = []
    served = 0
    try:
        for i in range(3 * FD_LIMIT):
            sock = socket.socket()
            sock.setblocking(False)
            sock.connect_ex(("127.0.0.1", server.port))
            flood.append(sock)
            if i % 500 == 499:
                served += server.healthy()
        time.sleep(0.5)
        for _ in range(10):
            served += server.healthy()
    finally:
        for sock in flood:
            sock.close()
    assert served == 6 + 10
    assert server.proc.poll() is None
