"""Peers that misbehave on the network, for the tests of what the facade does then: one that
accepts TCP connections and never answers (a hung upstream directory or database), a proxy
that delays every answer (an upstream far away), and an Active Directory that refuses right
passwords that must be changed first."""

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


class FakeAD(_Listener):
    """An LDAP server on loopback that answers simple binds as Active Directory does, with
    the sub-code of a refusal in the diagnostic message ("... AcceptSecurityContext error,
    data 532, v4563"), which AD gives only to whoever typed the right password (52e is the
    answer to a wrong one). ``users`` is {DN: (password, sub-code for the right password or
    None for success)}; with ``accept_all`` every bind with a password succeeds (a
    misconfigured directory); with ``signing_required`` every simple bind with a password
    gets strongerAuthRequired, as from a domain controller that requires LDAP signing and
    is reached without TLS. Requests are decoded, and answers encoded, by ldaptor, not by
    the code under test. Anything but a bind is answered with protocolError."""

    #: What such a domain controller says (its DSID and version part vary by build).
    SIGNING_REQUIRED = ("00002028: LdapErr: DSID-0C090259, comment: The server requires "
                        "binds to turn on integrity checking if SSL\\TLS are not already "
                        "active on the connection, data 0, v4563")

    def __init__(self, users: dict[str, tuple[str, str | None]],
                 accept_all: bool = False, signing_required: bool = False) -> None:
        self.users = users
        self.accept_all = accept_all
        self.signing_required = signing_required
        super().__init__()

    @staticmethod
    def refusal(subcode: str) -> str:
        """AD's diagnostic message for a refused simple bind with ``subcode``."""
        return (f"80090308: LdapErr: DSID-0C09044E, comment: AcceptSecurityContext error, "
                f"data {subcode}, v4563")

    def _accepted(self, conn: socket.socket) -> None:
        threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _answer(self, request: object) -> tuple[int, str]:
        from ldaptor.protocols import pureldap

        if not isinstance(request, pureldap.LDAPBindRequest):
            return 2, "only binds here"
        dn, password = request.dn.decode(), request.auth.decode()
        if self.signing_required and password:
            return 8, self.SIGNING_REQUIRED
        if not dn and not password or self.accept_all and password:
            return 0, ""
        known = self.users.get(dn)
        if known is None or known[0] != password:
            return 49, self.refusal("52e")
        return (0, "") if known[1] is None else (49, self.refusal(known[1]))

    def _serve(self, conn: socket.socket) -> None:
        from ldaptor.protocols import pureldap

        buffer = b""
        while True:
            try:
                data = conn.recv(65536)
            except OSError:
                return
            if not data:
                return
            messages, buffer = ldap_messages(buffer + data)
            for message in messages:
                if isinstance(message.value, pureldap.LDAPUnbindRequest):
                    conn.close()
                    return
                code, text = self._answer(message.value)
                answer = pureldap.LDAPMessage(pureldap.LDAPBindResponse(
                    resultCode=code, errorMessage=text.encode()), id=message.id)
                conn.sendall(answer.toWire())


def ldap_messages(buffer: bytes) -> tuple[list, bytes]:
    """The whole LDAPMessages at the start of ``buffer``, decoded by ldaptor (as its server
    and client decode them), and the bytes after them."""
    from ldaptor.protocols import pureber, pureldap

    decoder = pureldap.LDAPBERDecoderContext_TopLevel(
        inherit=pureldap.LDAPBERDecoderContext_LDAPMessage(
            fallback=pureldap.LDAPBERDecoderContext(fallback=pureber.BERDecoderContext()),
            inherit=pureldap.LDAPBERDecoderContext(fallback=pureber.BERDecoderContext())))
    messages = []
    while buffer:
        try:
            message, used = pureber.berDecodeObject(decoder, buffer)
        except pureber.BERExceptionInsufficientData:
            break
        if message is None:
            break
        messages.append(message)
        buffer = buffer[used:]
    return messages, buffer
