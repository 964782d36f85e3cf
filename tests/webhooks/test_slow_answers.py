"""A receiver's answer is its status line (issue 8, item 6): a 2xx within the timeout is a
success however slow, short or broken the body that follows it."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from mega_crm.webhooks.delivery import AttemptResult, ClientPool, attempt_delivery, ssl_context


class RawReceiver:
    """A TCP server answering every connection with `head` at once and `tail` after `delay`
    seconds (or closing the connection instead, when `tail` is None)."""

    def __init__(self, head: bytes, tail: bytes | None, delay: float) -> None:
        self.head, self.tail, self.delay = head, tail, delay
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.requests = 0
        self._stop = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(65536)
            self.requests += 1
            conn.sendall(self.head)
            self._stop.wait(self.delay)
            if self.tail is not None:
                try:
                    conn.sendall(self.tail)
                    self._stop.wait(1)
                except OSError:
                    pass

    def close(self) -> None:
        self._stop.set()
        self.sock.close()


def deliver(port: int, timeout_seconds: float) -> AttemptResult:
    async def attempt() -> AttemptResult:
        pool = ClientPool(tls=ssl_context(None), per_client_connections=1)
        try:
            return await attempt_delivery(
                pool,
                url=f"http://127.0.0.1:{port}/hook",
                secret="mega_whsec_" + "0" * 64,
                delivery_id="d",
                event_type="lead.created",
                lead={},
                timeout_seconds=timeout_seconds,
                allow_private=True,
            )
        finally:
            await pool.aclose()

    return asyncio.run(attempt())


@pytest.fixture
def receivers() -> Iterator[list[RawReceiver]]:
    made: list[RawReceiver] = []
    yield made
    for receiver in made:
        receiver.close()


@pytest.mark.parametrize(
    ("head", "tail"),
    [
        # the example: 200 and its headers at once, the body 6 s later, a 2 s timeout
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n", b"ok"),
        (b"HTTP/1.1 204 No Content\r\nConnection: keep-alive\r\n\r\n", b""),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", b"2\r\nok\r\n0\r\n\r\n"),
        (b"HTTP/1.1 202 Accepted\r\nContent-Length: 100\r\n\r\npartial", None),  # cut short
    ],
)
def test_a_2xx_in_time_is_a_success_whatever_its_body_does(
    receivers: list[RawReceiver], head: bytes, tail: bytes | None
) -> None:
    receiver = RawReceiver(head, tail, delay=6)
    receivers.append(receiver)
    started = time.monotonic()
    result = deliver(receiver.port, timeout_seconds=2)
    assert result.succeeded, result
    assert result.error is None
    assert result.status_code == int(head.split()[1])
    assert time.monotonic() - started < 5, "the body is read only for the time left"


def test_headers_later_than_the_timeout_are_a_timeout(receivers: list[RawReceiver]) -> None:
    receiver = RawReceiver(b"", b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", delay=4)
    receivers.append(receiver)
    result = deliver(receiver.port, timeout_seconds=1)
    assert not result.succeeded
    assert "timed out" in (result.error or "")


def test_a_slow_non_2xx_is_still_a_failure(receivers: list[RawReceiver]) -> None:
    receiver = RawReceiver(b"HTTP/1.1 500 Oops\r\nContent-Length: 2\r\n\r\n", b"no", delay=6)
    receivers.append(receiver)
    result = deliver(receiver.port, timeout_seconds=2)
    assert (result.succeeded, result.status_code, result.error) == (False, 500, "HTTP 500")
