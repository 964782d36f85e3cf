"""A loopback TCP proxy in front of PostgreSQL that counts round trips: an exchange in which the
client sends and then waits for the server's answer, counted on each connection when the server
starts answering after the client has sent (one per simple query, per extended-protocol Sync,
per BEGIN, COMMIT, ROLLBACK and per pool ping without a pipeline; in psycopg's pipeline mode
several statements, a Flush or a Sync, answered together are one). Connect with sslmode=disable."""

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
        self._lock = threading.Lock()
        self._closing = False
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def reset(self) -> int:
        with self._lock:
            count, self.count = self.count, 0
            return count

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
        try:
            while chunk := source.recv(65536):
                # Marked before forwarding: the answer cannot arrive before the question is noted.
                with self._lock:
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
