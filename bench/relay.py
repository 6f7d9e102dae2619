"""A byte relay on Twisted: each client connection gets its own connection to the target and
bytes are copied both ways, sent at once as the facade sends (``write_now``), nothing
decoded, on the facade's own event loop (:mod:`idm_facade.runtime.eventloop`). It is the floor
of any hop written on the facade's stack (Python, Twisted's epoll reactor): what a proxy costs
before it does any work (bench/person_bind_bench.py).

usage: python -m bench.relay TARGET_HOST TARGET_PORT LISTEN_PORT
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from idm_facade.runtime import eventloop  # noqa: E402

reactor = eventloop.install()  # before anything imports Twisted's default reactor

from twisted.internet import protocol  # noqa: E402

from idm_facade.ldap.transport import write_now  # noqa: E402


class _Upstream(protocol.Protocol):
    def __init__(self, client: _Client) -> None:
        self.client = client

    def connectionMade(self) -> None:
        self.client.upstream = self
        for data in self.client.pending:
            write_now(self.transport, data)
        self.client.pending = []

    def dataReceived(self, data: bytes) -> None:
        write_now(self.client.transport, data)

    def connectionLost(self, reason: Any = None) -> None:
        self.client.transport.loseConnection()  # type: ignore[union-attr]


class _Client(protocol.Protocol):
    target: tuple[str, int]

    def connectionMade(self) -> None:
        self.upstream: _Upstream | None = None
        self.pending: list[bytes] = []
        protocol.ClientCreator(reactor, _Upstream, self).connectTCP(*self.target)

    def dataReceived(self, data: bytes) -> None:
        if self.upstream is None:
            self.pending.append(data)
        else:
            write_now(self.upstream.transport, data)

    def connectionLost(self, reason: Any = None) -> None:
        if self.upstream is not None:
            self.upstream.transport.loseConnection()  # type: ignore[union-attr]


def main() -> None:
    host, port, listen = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    _Client.target = (host, port)
    factory = protocol.ServerFactory()
    factory.protocol = _Client
    reactor.listenTCP(listen, factory, interface="127.0.0.1")
    reactor.run()


if __name__ == "__main__":
    main()
