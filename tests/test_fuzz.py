"""Fuzzing a served facade: nothing a client sends crashes, hangs or leaks.

Inputs, all sent over loopback to one ``idm-facade serve``:
- LDAP PDUs mutated from what real clients sent (python-ldap and ldap3, captured through a
  forwarding socket at the start): flipped and inserted bytes, cut messages, changed lengths;
- LDAP filters from a grammar (RFC 4515 forms, odd attribute names and values), sent with
  python-ldap;
- SCIM filters from a grammar over the schema's attribute paths, and ``.search`` bodies of
  any JSON;
- HTTP request lines and headers (methods, paths and header bytes of any kind).

Each input must get an answer (or, for a broken LDAP PDU, a notice of disconnection and a
closed connection) within the socket timeout; SCIM never answers 500; the server process
stays up, answers a valid request after every few inputs, grows its memory by no more than a
bound, and its access log verifies at the end.

``make test`` runs a few dozen inputs per harness; ``make fuzz`` runs many more
(``FUZZ_EXAMPLES``) and prints the counts, recorded in RELIABILITY.md.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import ldap
import ldap3
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from idm_facade.scim import schema as scim_schema
from tests.serving import Serving, ldap_bind, rss_mb, served_copy
from tests.test_ldap_more import _one_message

pytestmark = pytest.mark.skipif(shutil.which("ldapsearch") is None,
                                reason="ldap-utils (ldapsearch) is not installed")

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "40"))
#: Most a fuzz run may grow the server's resident memory (caches fill on the way).
MAX_GROWTH_MB = 150
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=EXAMPLES <= 40,
                suppress_health_check=list(HealthCheck))
IDM = str(Path(sys.executable).with_name("idm-facade"))


@dataclass
class Target:
    serving: Serving
    db: str
    config: Path
    base: str
    bind_dn: str
    secret: str
    token: str
    captures: list[bytes] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)
    rss_start: float = 0.0

    @property
    def ldap_port(self) -> int:
        return self.serving.ldap_ports[0]

    @property
    def http(self) -> tuple[str, int]:
        host, port = self.serving.scim_base.removeprefix("http://").split(":")  # type: ignore[union-attr]
        return host, int(port)


@pytest.fixture(scope="module")
def target(demo_db, tmp_path_factory) -> Iterator[Target]:
    clients = (("fuzz-ldap", "ldap", "default"), ("fuzz-scim", "scim", "default"))
    with served_copy(demo_db, tmp_path_factory.mktemp("fuzz"), "[limits]\nsearch_seconds = 5\n",
                     clients) as copy:
        serving = copy.serving
        assert serving is not None
        found = Target(serving, copy.db, copy.config, copy.base, copy.bind_dn("fuzz-ldap"),
                       copy.secrets["fuzz-ldap"], copy.secrets["fuzz-scim"])
        found.captures = _capture(found)
        found.rss_start = rss_mb(serving.proc.pid)
        yield found
        _alive(found)
        grown = rss_mb(serving.proc.pid) - found.rss_start
        verified = subprocess.run([IDM, "audit", "verify", "--db", copy.db, "--config",
                                   str(copy.config)], capture_output=True, text=True,
                                  timeout=300)
        total = sum(found.counts.values())
        print(f"\nfuzz: {total} inputs ({dict(found.counts)}); server alive; memory grew "
              f"{grown:.0f} MB; {verified.stdout.strip() or verified.stderr.strip()}")
        assert serving.proc.poll() is None, serving.output()
        assert grown < MAX_GROWTH_MB, f"memory grew {grown:.0f} MB"
        assert verified.returncode == 0, verified.stderr


# ------------------------------------------------------------------ captures


def _capture(t: Target) -> list[bytes]:
    """The LDAP messages python-ldap and ldap3 send for a typical session, as sent."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    seen: list[bytes] = []

    def forward() -> None:
        for _ in range(2):
            client, _ = listener.accept()
            server = socket.create_connection(("127.0.0.1", t.ldap_port))

            def pump(src: socket.socket, dst: socket.socket, keep: bool) -> None:
                while True:
                    try:
                        data = src.recv(65536)
                    except OSError:
                        data = b""
                    if not data:
                        try:
                            dst.shutdown(socket.SHUT_WR)
                        except OSError:
                            pass
                        return
                    if keep:
                        seen.append(data)
                    dst.sendall(data)

            back = threading.Thread(target=pump, args=(server, client, False), daemon=True)
            back.start()
            pump(client, server, True)
            back.join(timeout=10)
            client.close()
            server.close()

    thread = threading.Thread(target=forward, daemon=True)
    thread.start()
    conn = ldap_bind(f"ldap://127.0.0.1:{port}", t.bind_dn, t.secret)
    conn.search_ext_s(f"ou=people,{t.base}", ldap.SCOPE_SUBTREE,
                      "(&(objectClass=inetOrgPerson)(|(uid=a*)(cn=*sen)))", ["uid", "mail"],
                      serverctrls=[ldap.controls.SimplePagedResultsControl(True, 5, b"")])
    conn.search_s(t.base, ldap.SCOPE_BASE, "(objectClass=*)", ["+"])
    conn.unbind_s()
    server = ldap3.Server("127.0.0.1", port=port)
    c3 = ldap3.Connection(server, user=t.bind_dn, password=t.secret, auto_bind=True)
    c3.search(f"ou=groups,{t.base}", "(member=*)", attributes=["cn", "member"],
              size_limit=3)
    c3.extend.standard.who_am_i()
    c3.unbind()
    thread.join(timeout=30)
    listener.close()
    messages = []
    stream = b"".join(seen)
    while stream:
        parsed = _one_message(stream)
        if parsed is None:
            break
        messages.append(parsed[2])
        stream = parsed[3]
    assert len(messages) >= 6, messages
    return messages


# ------------------------------------------------------------------ checks


def _alive(t: Target) -> None:
    """A valid LDAP search and a valid SCIM list are answered."""
    assert t.serving.proc.poll() is None, t.serving.output()
    conn = ldap_bind(t.serving.ldap_url, t.bind_dn, t.secret, timeout=30, network_timeout=10)
    assert conn.search_s(f"ou=people,{t.base}", ldap.SCOPE_BASE, "(objectClass=*)")
    conn.unbind_s()
    response = httpx.get(f"{t.serving.scim_base}/scim/v2/Users", params={"count": 1},
                         headers={"Authorization": f"Bearer {t.token}"}, timeout=30)
    assert response.status_code == 200


def _exchange(t: Target, address: tuple[str, int], payload: bytes) -> bytes:
    """Send ``payload``, read until the server closes or has nothing more for a moment;
    a server that neither answers nor closes within the timeout hangs (a failure)."""
    with socket.create_connection(address, timeout=20) as sock:
        try:
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            return b""  # the server closed while we were still sending: an answer too
        data = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                return data
            except TimeoutError:
                raise AssertionError(
                    f"no answer and no close within 20 s for {payload[:80]!r}") from None
            if not chunk:
                return data
            data += chunk


# ------------------------------------------------------------------ LDAP PDUs


@st.composite
def _mutated(draw, captures: list[bytes]) -> bytes:
    messages = list(draw(st.lists(st.sampled_from(captures), min_size=1, max_size=4)))
    which = draw(st.integers(0, len(messages) - 1))
    pdu = bytearray(messages[which])
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "insert", "delete", "cut", "length", "tag"]))
        if not pdu:
            break
        at = draw(st.integers(0, len(pdu) - 1))
        if kind == "flip":
            pdu[at] ^= draw(st.integers(1, 255))
        elif kind == "insert":
            pdu[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete":
            del pdu[at:at + draw(st.integers(1, 8))]
        elif kind == "cut":
            del pdu[at:]
        elif kind == "length" and len(pdu) > 1:
            pdu[1] = draw(st.sampled_from([0x00, 0x7F, 0x80, 0x84, 0xFF]))
        elif kind == "tag":
            pdu[at] = draw(st.sampled_from([0x30, 0x60, 0x63, 0xA0, 0x87, 0x04, 0x02, 0x0A]))
    messages[which] = bytes(pdu)
    return b"".join(messages)


def test_mutated_ldap_pdus(target: Target) -> None:
    @FUZZ
    @given(payload=_mutated(target.captures))
    def run(payload: bytes) -> None:
        target.counts["ldap-pdu"] += 1
        _exchange(target, ("127.0.0.1", target.ldap_port), payload)
        if target.counts["ldap-pdu"] % 25 == 0:
            _alive(target)

    run()
    _alive(target)


# ------------------------------------------------------------------ LDAP filters

_LDAP_ATTRS = st.sampled_from(["cn", "uid", "mail", "objectClass", "ou", "member",
                               "memberOf", "title", "entryUUID", "idmKle", "uidNumber",
                               "createTimestamp", "nosuchattr", "CN;lang-da", "2.5.4.3",
                               "employeeNumber", "manager", "idmCprNumber"])
_LDAP_VALUES = st.text(alphabet=st.characters(codec="utf-8",
                                              exclude_characters="()*\\\x00"), max_size=12)


def _escape(value: str) -> str:
    return "".join(f"\\{ord(c):02x}" if c in "()*\\\x00" else c for c in value)


_ldap_leaf = st.builds(
    lambda attr, op, value: f"({attr}{op}{_escape(value)})" if op != "=*" else f"({attr}=*)",
    _LDAP_ATTRS, st.sampled_from(["=", ">=", "<=", "~=", "=*"]), _LDAP_VALUES) | st.builds(
    lambda attr, parts: f"({attr}=" + "*".join(_escape(p) for p in parts) + ")",
    _LDAP_ATTRS, st.lists(_LDAP_VALUES, min_size=2, max_size=4))
_ldap_filter = st.recursive(
    _ldap_leaf,
    lambda inner: st.builds(lambda op, parts: f"({op}{''.join(parts)})",
                            st.sampled_from(["&", "|"]), st.lists(inner, max_size=4))
    | st.builds(lambda part: f"(!{part})", inner),
    max_leaves=12)


def test_grammar_ldap_filters(target: Target) -> None:
    conn = ldap_bind(target.serving.ldap_url, target.bind_dn, target.secret, timeout=30)

    @FUZZ
    @given(flt=_ldap_filter, scope=st.sampled_from([0, 1, 2]),
           base=st.sampled_from(["", "ou=people", "ou=groups", "ou=units", "cn=nix"]))
    def run(flt: str, scope: int, base: str) -> None:
        target.counts["ldap-filter"] += 1
        where = f"{base},{target.base}" if base else target.base
        try:
            conn.search_ext_s(where, scope, flt, ["cn"], sizelimit=50)
        except (ldap.SIZELIMIT_EXCEEDED, ldap.NO_SUCH_OBJECT, ldap.FILTER_ERROR,
                ldap.ADMINLIMIT_EXCEEDED, ldap.TIMELIMIT_EXCEEDED, ldap.PROTOCOL_ERROR):
            pass

    run()
    conn.unbind_s()
    _alive(target)


# ------------------------------------------------------------------ SCIM filters and bodies

_PATHS = sorted({f"{a.name}.{sub.name}" if sub else a.name
                 for tables in scim_schema.SCHEMAS.values() for table in tables.values()
                 for a in table.values() for sub in [None, *a.subs.values()]})
_SCIM_VALUES = (st.text(max_size=10).map(json.dumps) | st.integers().map(str)
                | st.sampled_from(["true", "false", "null", '"2024-01-01T00:00:00Z"']))
_scim_leaf = st.builds(lambda path, op, value: f"{path} {op} {value}",
                       st.sampled_from([*_PATHS, "meta.lastModified", "nosuch", "emails[type"]),
                       st.sampled_from(["eq", "ne", "co", "sw", "ew", "gt", "ge", "lt", "le"]),
                       _SCIM_VALUES) | st.builds(lambda path: f"{path} pr",
                                                 st.sampled_from(_PATHS))
_scim_filter = st.recursive(
    _scim_leaf,
    lambda inner: st.builds(lambda a, op, b: f"{a} {op} {b}", inner,
                            st.sampled_from(["and", "or"]), inner)
    | st.builds(lambda a: f"not ({a})", inner) | st.builds(lambda a: f"({a})", inner)
    | st.builds(lambda path, a: f"{path}[{a}]", st.sampled_from(["emails", "members",
                                                                  "groups", "roles"]), inner),
    max_leaves=10)


def test_grammar_scim_filters(target: Target) -> None:
    http = httpx.Client(base_url=f"{target.serving.scim_base}/scim/v2", timeout=30,
                        headers={"Authorization": f"Bearer {target.token}"})

    @FUZZ
    @given(flt=_scim_filter | st.text(max_size=40),
           endpoint=st.sampled_from(["/Users", "/Groups", "/"]),
           sort=st.none() | st.sampled_from(_PATHS))
    def run(flt: str, endpoint: str, sort: str | None) -> None:
        target.counts["scim-filter"] += 1
        params = {"filter": flt, "count": "5"}
        if sort:
            params["sortBy"] = sort
        response = http.get(endpoint, params=params)
        assert response.status_code in (200, 400, 404), (flt, response.text)
        assert response.json()

    run()
    http.close()


_json = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
                     | st.text(max_size=20),
                     lambda inner: st.lists(inner, max_size=4)
                     | st.dictionaries(st.text(max_size=10), inner, max_size=4),
                     max_leaves=20)
_search_body = st.fixed_dictionaries({}, optional={
    "schemas": st.just(["urn:ietf:params:scim:api:messages:2.0:SearchRequest"]) | _json,
    "filter": _scim_filter | _json, "attributes": st.lists(st.sampled_from(_PATHS)) | _json,
    "excludedAttributes": _json, "sortBy": st.sampled_from(_PATHS) | _json,
    "sortOrder": st.sampled_from(["ascending", "descending"]) | _json,
    "startIndex": st.integers() | _json, "count": st.integers() | _json, "cursor": _json})


def test_scim_search_bodies(target: Target) -> None:
    http = httpx.Client(base_url=f"{target.serving.scim_base}/scim/v2", timeout=30,
                        headers={"Authorization": f"Bearer {target.token}",
                                 "Content-Type": "application/scim+json"})

    @FUZZ
    @given(body=_search_body | _json, endpoint=st.sampled_from(["/Users/.search",
                                                                 "/.search"]))
    def run(body: object, endpoint: str) -> None:
        target.counts["scim-search"] += 1
        response = http.post(endpoint, content=json.dumps(body))
        assert response.status_code in (200, 400, 404, 413), (body, response.text)
        assert response.json()

    run()
    http.close()


# ------------------------------------------------------------------ HTTP request lines

_token_chars = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E),
                       min_size=1, max_size=12)


@st.composite
def _http_request(draw) -> bytes:
    method = draw(st.sampled_from([b"GET", b"POST", b"HEAD", b"TRACE", b"OPTIONS", b"PUT"])
                  | _token_chars.map(str.encode))
    path = draw(st.sampled_from([b"/scim/v2/Users", b"/api/roles/x", b"/", b"*",
                                 b"/scim/v2/Users?filter=userName%20eq%20%22a%22"])
                | st.binary(max_size=40))
    version = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2", b"", b"HTTP/9"]))
    headers = draw(st.lists(st.tuples(st.binary(max_size=20), st.binary(max_size=60)),
                            max_size=6))
    lines = [b" ".join(p for p in (method, path, version) if p)]
    lines.append(b"Host: localhost")
    lines += [name + b": " + value for name, value in headers]
    body = draw(st.binary(max_size=60))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def test_http_request_lines_and_headers(target: Target) -> None:
    @FUZZ
    @given(request=_http_request())
    def run(request: bytes) -> None:
        target.counts["http"] += 1
        answer = _exchange(target, target.http, request)
        if answer:
            assert answer.startswith(b"HTTP/1."), answer[:80]
            status = int(answer.split(b" ", 2)[1])
            assert status != 500 or b"access log" in answer, answer[:300]
        if target.counts["http"] % 25 == 0:
            _alive(target)

    run()
    _alive(target)
