"""The servers' event loop (idm_facade/runtime/eventloop.py): Twisted's epoll reactor without
the legacy log context around each event.

Twisted's own ``EPollReactor.doPoll`` (twisted/internet/epollreactor.py, 26.10) wraps each
event in ``log.callWithLogger``; ``_PollLikeMixin._doReadOrWrite``
(twisted/internet/posixbase.py) catches what a handler raises, logs it and closes that
connection. The direct loop keeps the second and drops the first, so what must hold is: the
facade's serve path really runs on it, and a handler that raises still costs only its own
connection.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.serving import copy_store

_ROOT = Path(__file__).resolve().parent.parent


def _python(script: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script), *args],
                          capture_output=True, text=True, timeout=timeout, cwd=_ROOT)


def test_serve_builds_its_facade_without_taking_twisted_s_default_reactor(demo_db, tmp_path):
    # Everything `idm-facade serve` imports and builds before its loop starts, with person
    # binds configured (their upstream client is ldaptor's, whose module imports
    # twisted.internet.reactor): had any of it installed the default reactor first,
    # install() would keep that one and warn.
    db = copy_store(demo_db, tmp_path / "store")
    config = tmp_path / "idm.toml"
    config.write_text('[ldap.upstream]\nurls = ["ldap://127.0.0.1:9"]\n'
                      'dn_template = "uid={username},ou=people,dc=example,dc=org"\n'
                      'require_tls = false\n[ldap.persons]\nrequire_tls = false\n')
    done = _python("""
        import sys
        import idm_facade.cli
        from idm_facade.cli.serve import _check_listener_settings
        from idm_facade.runtime.serve import build_facade, listen
        facade = build_facade(sys.argv[1], sys.argv[2])
        _check_listener_settings(facade.config)
        from idm_facade.runtime import eventloop
        reactor = eventloop.install()
        listen(reactor, facade, "127.0.0.1", 0, 0, None, 2, None)
        print(type(reactor).__name__, "twisted.internet.reactor" in sys.modules)
        """, db, str(config))
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["DirectReactor", "True"]
    assert "event loop:" not in done.stderr


def test_a_handler_that_raises_closes_its_own_connection_and_the_loop_serves_on():
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import sys
        from idm_facade.runtime import eventloop
        reactor = eventloop.install()
        from twisted.internet import protocol
        from twisted.python import log

        class Echo(protocol.Protocol):
            def dataReceived(self, data):
                if data.startswith(b"boom"):
                    raise RuntimeError("handler failed")
                self.transport.write(data)

        log.startLogging(sys.stderr, setStdout=False)
        port = reactor.listenTCP(0, protocol.Factory.forProtocol(Echo), interface="127.0.0.1")
        print(type(reactor).__name__, port.getHost().port, flush=True)
        reactor.callLater(30, reactor.stop)
        reactor.run()
        """)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=_ROOT)
    try:
        assert proc.stdout is not None
        name, port = proc.stdout.readline().split()
        assert name == "DirectReactor"
        calm = socket.create_connection(("127.0.0.1", int(port)), timeout=5)
        doomed = socket.create_connection(("127.0.0.1", int(port)), timeout=5)
        calm.sendall(b"hello")
        assert calm.recv(16) == b"hello"
        doomed.sendall(b"boom")
        assert doomed.recv(16) == b""  # closed by the server
        calm.sendall(b"again")
        assert calm.recv(16) == b"again"
        late = socket.create_connection(("127.0.0.1", int(port)), timeout=5)
        late.sendall(b"new")
        assert late.recv(16) == b"new"
        for sock in (calm, doomed, late):
            sock.close()
        assert proc.poll() is None
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    assert "RuntimeError: handler failed" in err
