"""Every request is bounded: filter size and depth, planning time, request bodies.

A bound client once froze the whole server with one LDAP search (a filter of 20,005 substring
terms planned for 37 s in the event loop while every LDAP and SCIM client waited), and made
SCIM answer 500 with deeply nested filters and malformed ``.search`` bodies. These tests
send those requests over loopback with real clients (python-ldap, httpx) to a served demo.
"""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import ldap
import pytest

from tests.serving import Serving, ldap_bind, served_copy

pytestmark = pytest.mark.skipif(shutil.which("ldapsearch") is None,
                                reason="ldap-utils (ldapsearch) is not installed")

TERMS, DEPTH = 300, 20
SCIM = "/scim/v2"


@dataclass
class Ctx:
    serving: Serving
    base: str
    bind_dn: str
    secret: str
    token: str

    def conn(self):
        return ldap_bind(self.serving.ldap_url, self.bind_dn, self.secret)

    def scim(self, method: str, path: str, **kw) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.token}", **kw.pop("headers", {})}
        return httpx.request(method, f"{self.serving.scim_base}{SCIM}{path}", headers=headers,
                             timeout=60, **kw)


@pytest.fixture(scope="module")
def ctx(demo_db, tmp_path_factory) -> Iterator[Ctx]:
    config = (f"[limits]\nfilter_terms = {TERMS}\nfilter_depth = {DEPTH}\n"
              "search_seconds = 0.1\n")
    clients = (("limits-ldap", "ldap", "default"), ("limits-scim", "scim", "default"))
    with served_copy(demo_db, tmp_path_factory.mktemp("limits"), config, clients) as copy:
        assert copy.serving is not None
        yield Ctx(copy.serving, copy.base, copy.bind_dn("limits-ldap"),
                  copy.secrets["limits-ldap"], copy.secrets["limits-scim"])


def _point_search_works(ctx: Ctx) -> None:
    conn = ctx.conn()
    people = f"ou=people,{ctx.base}"
    assert conn.search_s(people, ldap.SCOPE_BASE, "(objectClass=*)", ["ou"])[0][0] == people
    conn.unbind_s()


def test_ldap_filter_over_the_term_limit_is_refused(ctx: Ctx) -> None:
    conn = ctx.conn()
    flt = "(&" + "(cn=*e*)" * (TERMS + 1) + ")"
    with pytest.raises(ldap.ADMINLIMIT_EXCEEDED) as raised:
        conn.search_s(ctx.base, ldap.SCOPE_SUBTREE, flt, ["cn"])
    assert f"the limit is {TERMS}" in raised.value.args[0]["info"]
    # the same connection goes on working
    assert conn.search_s(f"ou=people,{ctx.base}", ldap.SCOPE_BASE, "(objectClass=*)")
    conn.unbind_s()


def test_ldap_filter_nested_too_deep_is_refused(ctx: Ctx) -> None:
    conn = ctx.conn()
    flt = "(!" * (DEPTH + 1) + "(cn=x)" + ")" * (DEPTH + 1)
    with pytest.raises(ldap.ADMINLIMIT_EXCEEDED) as raised:
        conn.search_s(ctx.base, ldap.SCOPE_SUBTREE, flt, ["cn"])
    assert f"the limit is {DEPTH}" in raised.value.args[0]["info"]
    conn.unbind_s()


def test_ldap_absolute_true_and_false(ctx: Ctx) -> None:
    """RFC 4526: ``(&)`` is true and ``(|)`` false (``(&)`` once failed with 80)."""
    conn = ctx.conn()
    people = f"ou=people,{ctx.base}"
    assert conn.search_s(people, ldap.SCOPE_BASE, "(&)", ["ou"])[0][0] == people
    assert conn.search_s(people, ldap.SCOPE_BASE, "(|)", ["ou"]) == []
    conn.unbind_s()


def test_a_slow_search_stops_at_the_limit(ctx: Ctx) -> None:
    """A search within the term limit that takes long is planned outside the event loop
    and stopped at ``search_seconds`` with timeLimitExceeded; other connections and the
    same one go on being answered."""
    heavy = ctx.conn()
    # every term keeps nearly every entry, so each is checked against all of them
    flt = "(&(cn=*e*)" + "".join(f"(!(cn=*q{i}q*))" for i in range(TERMS - 1)) + ")"
    msgid = heavy.search_ext(ctx.base, ldap.SCOPE_SUBTREE, flt, ["cn"])
    outcome: dict[str, object] = {}

    def wait() -> None:
        try:
            heavy.result3(msgid, timeout=60)
            outcome["result"] = "answered"
        except ldap.TIMELIMIT_EXCEEDED as exc:
            outcome["result"] = exc
        except ldap.LDAPError as exc:  # pragma: no cover - reported below
            outcome["result"] = exc

    waiter = threading.Thread(target=wait)
    waiter.start()
    _point_search_works(ctx)
    waiter.join(timeout=90)
    assert isinstance(outcome.get("result"), ldap.TIMELIMIT_EXCEEDED), outcome
    heavy.unbind_s()
    _point_search_works(ctx)


def test_scim_filter_over_the_limits_is_400_too_many(ctx: Ctx) -> None:
    many = " or ".join(f'userName eq "u{i}"' for i in range(TERMS + 1))
    response = ctx.scim("GET", "/Users", params={"filter": many})
    assert response.status_code == 400 and response.json()["scimType"] == "tooMany"
    assert f"the limit is {TERMS}" in response.json()["detail"]
    deep = "(" * 1000 + 'userName eq "x"' + ")" * 1000
    response = ctx.scim("GET", "/Users", params={"filter": deep})
    assert response.status_code == 400 and response.json()["scimType"] == "tooMany"
    nots = "not (" * 500 + 'userName eq "x"' + ")" * 500
    response = ctx.scim("GET", "/Users", params={"filter": nots})
    assert response.status_code == 400 and response.json()["scimType"] == "tooMany"
    assert ctx.scim("GET", "/Users", params={"count": 1}).status_code == 200


@pytest.mark.parametrize("body, status, scim_type", [
    ({"attributes": [1, 2]}, 400, "invalidValue"),
    ({"filter": 7}, 400, "invalidValue"),
    ({"count": "ten"}, 400, "invalidValue"),
    ({"startIndex": True}, 400, "invalidValue"),
    ({"schemas": 1}, 400, "invalidSyntax"),  # found by tests/test_fuzz.py (once a 500)
])
def test_scim_search_bodies_with_wrong_types_are_400(ctx: Ctx, body, status, scim_type) -> None:
    response = ctx.scim("POST", "/Users/.search", content=json.dumps(body),
                        headers={"Content-Type": "application/scim+json"})
    assert response.status_code == status, response.text
    assert response.json()["scimType"] == scim_type


def test_scim_search_body_nested_too_deep_or_too_large(ctx: Ctx) -> None:
    nested = '{"filter": ' + "[" * 100_000 + "]" * 100_000 + "}"
    response = ctx.scim("POST", "/Users/.search", content=nested,
                        headers={"Content-Type": "application/scim+json"})
    assert response.status_code in (400, 413), response.text
    assert response.json()["status"] == str(response.status_code)
    huge = json.dumps({"filter": 'userName eq "' + "x" * (20 << 20) + '"'})
    response = ctx.scim("POST", "/Users/.search", content=huge,
                        headers={"Content-Type": "application/scim+json"})
    assert response.status_code == 413 and "limited to" in response.json()["detail"]
    assert ctx.scim("GET", "/Users", params={"count": 1}).status_code == 200
