"""Peers that misbehave on the network, for the tests of what the facade does then: one that
accepts TCP connections and never answers (a hung upstream directory or database), and a
proxy that delays every answer (an upstream far away)."""

from __future__ import annotations

import socket
import threading
import time


class _Listener:
    """A TCP listener on loopback handing each connection it accepts to :meth:`_accepted`,
    in a thread of its own."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)
            self._accepted(conn)

    def _accepted(self, conn: socket.socket) -> None:
        """What to do with a new connection (nothing: it is held open)."""

    def close(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()


class Silent(_Listener):
    """A TCP listener on loopback that accepts connections and never answers."""


class SlowProxy(_Listener):
    """A TCP proxy on loopback to ``(host, port)`` that holds every chunk the server sends for
    ``delay`` seconds before passing it on (requests pass at once)."""

    def __init__(self, host: str, port: int, delay: float) -> None:
        self.target = (host, port)
        self.delay = delay
        super().__init__()

    def _accepted(self, client: socket.socket) -> None:
        server = socket.create_connection(self.target)
        self.held.append(server)
        threading.Thread(target=self._pump, args=(client, server, 0.0), daemon=True).start()
        threading.Thread(target=self._pump, args=(server, client, self.delay),
                         daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket, delay: float) -> None:
        while True:
            try:
                data = source.recv(65536)
                if not data:
                    break
                if delay:
                    time.sleep(delay)
                sink.sendall(data)
            except OSError:
                break
        for end in (source, sink):
            try:
                end.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
