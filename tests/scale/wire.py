"""A loopback TCP proxy in front of PostgreSQL that counts round trips: an exchange in which the
client sends and then waits for the server's answer, counted on each connection when the server
starts answering after the client has sent (one per simple query, per extended-protocol Sync,
per BEGIN, COMMIT, ROLLBACK and per pool ping without a pipeline; in psycopg's pipeline mode
several statements, a Flush or a Sync, answered together are one). Connect with sslmode=disable.
It counts the statements run too: the client's Execute messages of the extended protocol (psycopg
runs every statement so, BEGIN and COMMIT included) and its simple Query messages."""

from __future__ import annotations

import socket
import threading
from typing import Self


class RoundTripCounter:
    def __init__(self, host: str, port: int) -> None:
        self.upstream = (host, port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.count = 0
        self.statements = 0
        self._lock = threading.Lock()
        self._closing = False
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def reset(self) -> int:
        """-> the round trips since the last reset (statements are reset too)."""
        with self._lock:
            count, self.count, self.statements = self.count, 0, 0
            return count

    def reset_statements(self) -> int:
        """-> the statements run since the last reset (round trips are reset too)."""
        with self._lock:
            statements, self.count, self.statements = self.statements, 0, 0
            return statements

    def _accept(self) -> None:
        while not self._closing:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            for s in (client, server):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._sockets += [client, server]
            asked = [False]  # the client has sent since the server last answered
            threading.Thread(target=self._pump, args=(client, server, False, asked), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, True, asked), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, from_server: bool, asked: list[bool]) -> None:
        # The client's messages: type byte, then a length that counts itself; its first message
        # (startup) has no type byte.
        pending, started = b"", from_server
        try:
            while chunk := source.recv(65536):
                executed = 0
                if not from_server:
                    pending += chunk
                    if not started and len(pending) >= 4:
                        pending, started = pending[int.from_bytes(pending[:4], "big") :], True
                    while started and len(pending) >= 5:
                        size = 1 + int.from_bytes(pending[1:5], "big")
                        if len(pending) < size:
                            break
                        executed += pending[:1] in (b"E", b"Q")
                        pending = pending[size:]
                # Marked before forwarding: the answer cannot arrive before the question is noted.
                with self._lock:
                    self.statements += executed
                    if not from_server:
                        asked[0] = True
                    elif asked[0]:
                        asked[0] = False
                        self.count += 1
                sink.sendall(chunk)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self._closing = True
        self.listener.close()
        for s in self._sockets:
            try:
                s.close()
            except OSError:
                pass
