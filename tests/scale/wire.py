"""A loopback TCP proxy in front of PostgreSQL that counts round trips: every exchange of the
PostgreSQL protocol ends with the server's ReadyForQuery ('Z') message, once per simple query,
per extended-protocol Sync, per BEGIN, COMMIT, ROLLBACK and per pool ping. (Pipeline mode would
answer several Syncs in one round trip; nothing here uses it.) Connect with sslmode=disable."""

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
            threading.Thread(target=self._pump, args=(client, server, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, True), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, from_server: bool) -> None:
        buffer = b""
        try:
            while chunk := source.recv(65536):
                sink.sendall(chunk)
                if not from_server:
                    continue
                buffer += chunk
                # Server messages: type byte, int32 length (itself included), body.
                while len(buffer) >= 5:
                    length = int.from_bytes(buffer[1:5], "big")
                    if len(buffer) < 1 + length:
                        break
                    if buffer[:1] == b"Z":
                        with self._lock:
                            self.count += 1
                    buffer = buffer[1 + length :]
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
