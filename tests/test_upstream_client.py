"""The upstream client's own bind encoding, against ldaptor's and a real slapd.

A person's bind costs one upstream bind, so the facade encodes that BindRequest and reads its
BindResponse itself (``idm_facade.ldap.upstream``), and leaves every other message to
ldaptor. These tests pin that the bytes are the ones ldaptor would send and read, and that a
real OpenLDAP slapd (tests/upstream_ldap.py) accepts them, message IDs wrapping at maxInt
(RFC 4511 §4.1.1) included.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ldaptor.protocols import pureldap

from idm_facade.ldap.upstream import MAX_MESSAGE_ID, bind_request, bind_response
from tests.upstream_ldap import BASE, UpstreamDirectory

ids = st.integers(1, MAX_MESSAGE_ID)
texts = st.text(max_size=300)


@settings(max_examples=300, deadline=None)
@given(ids, texts, st.text(min_size=1, max_size=300))
def test_bind_request_is_ldaptors_encoding(msgid: int, dn: str, password: str) -> None:
    ours = bind_request(msgid, dn, password)
    theirs = pureldap.LDAPMessage(pureldap.LDAPBindRequest(dn=dn.encode(),
                                                           auth=password.encode()),
                                  id=msgid).toWire()
    assert ours == theirs


@settings(max_examples=300, deadline=None)
@given(ids, st.integers(0, 123), texts, texts, st.booleans())
def test_bind_response_reads_what_ldaptor_reads(msgid: int, code: int, matched: str,
                                                 message: str, with_controls: bool) -> None:
    controls = [(b"1.2.840.113556.1.4.319", None, None)] if with_controls else None
    frame = pureldap.LDAPMessage(pureldap.LDAPBindResponse(
        resultCode=code, matchedDN=matched.encode(), errorMessage=message.encode()),
        id=msgid, controls=controls).toWire()
    assert bind_response(frame) == (msgid, code, message)
    # Cut anywhere or with bytes after it, it is not read as an answer.
    for cut in range(0, len(frame), max(1, len(frame) // 7)):
        assert bind_response(frame[:cut]) is None
    assert bind_response(frame + b"\x00") is None


@pytest.mark.parametrize("msgid", [1, 0x7F, 0x80, 0xFF, 0x7FFF, 0x8000, 0x7FFFFF, 0x800000,
                                   MAX_MESSAGE_ID])
def test_the_success_answer_read_whole_is_read_as_ldaptor_reads_it(msgid: int) -> None:
    """Success with empty texts, the answer of nearly every bind, is compared whole instead
    of parsed (message IDs of one to four octets); anything around it is not taken."""
    frame = pureldap.LDAPMessage(pureldap.LDAPBindResponse(resultCode=0), id=msgid).toWire()
    assert bind_response(frame) == (msgid, 0, "")
    for cut in range(len(frame)):
        assert bind_response(frame[:cut]) is None
    assert bind_response(frame + b"\x00") is None
    with_controls = pureldap.LDAPMessage(pureldap.LDAPBindResponse(resultCode=0), id=msgid,
                                         controls=[(b"1.2.3", None, None)]).toWire()
    assert bind_response(with_controls) == (msgid, 0, "")
    refused = pureldap.LDAPMessage(pureldap.LDAPBindResponse(resultCode=49), id=msgid)
    assert bind_response(refused.toWire()) == (msgid, 49, "")


def test_a_bind_response_without_its_text_fields_is_read() -> None:
    """matchedDN and diagnosticMessage are required (RFC 4511 §4.1.9), but an upstream that
    leaves them out was answered before the facade read them, and still is."""
    code_only = bytes.fromhex("3008 020107 6103 0a0100")
    assert bind_response(code_only) == (7, 0, "")
    with_dn_only = bytes.fromhex("300a 020107 6105 0a0131 0400")
    assert bind_response(with_dn_only) == (7, 49, "")


@pytest.mark.parametrize("op", [
    pureldap.LDAPSearchResultDone(resultCode=0),
    pureldap.LDAPExtendedResponse(resultCode=0, responseName=b"1.3.6.1.4.1.1466.20037"),
    pureldap.LDAPSearchResultEntry(objectName=b"uid=a", attributes=[]),
])
def test_other_answers_are_left_to_ldaptor(op: object) -> None:
    frame = pureldap.LDAPMessage(op, id=7).toWire()
    assert bind_response(frame) is None


USERS = {"anna": "Anna's upstream pw", "bo": "Bo's upstream pw"}

#: Run in a child process (the reactor runs once per process): password checks through the
#: pool against the real slapd, then the same with the connection's message IDs about to
#: pass maxInt, and the check :meth:`UpstreamPool.round_trip` makes. Prints the outcomes and
#: the message IDs used, as JSON.
_SCRIPT = """
import json, sys
from twisted.internet import defer, task
from idm_facade.ldap.bind_settings import UpstreamSettings
from idm_facade.ldap.upstream import MAX_MESSAGE_ID, UpstreamPool

url, template, users = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])

@defer.inlineCallbacks
def main(reactor):
    pool = UpstreamPool(UpstreamSettings(urls=(url,), dn_template=template, pool_size=1,
                                         timeout=5.0), reactor)
    out = {"first": [], "wrapped": [], "ids": []}
    for name, pw in users.items():
        out["first"].append((yield pool.verify(name, pw)).value)
        out["first"].append((yield pool.verify(name, pw + "x")).value)
    (client,) = pool._idle
    client._last_id = MAX_MESSAGE_ID - 1
    for name, pw in list(users.items()) * 2:
        out["wrapped"].append((yield pool.verify(name, pw)).value)
        out["ids"].append(client._last_id)
    # What a refusal decided by the facade costs: a check of a name no account has.
    out["nobody"] = (yield pool.verify(*pool._nobody)).value
    checked = defer.Deferred()
    pool.round_trip(checked.callback)
    out["round_trip"] = (yield checked).value
    out["connects"] = pool.connects
    pool.close()
    print(json.dumps(out))

task.react(main)
"""


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpstreamDirectory]:
    directory = UpstreamDirectory(tmp_path_factory.mktemp("upstream"), USERS)
    directory.start()
    try:
        yield directory
    finally:
        directory.stop()


def test_a_real_slapd_answers_our_binds_and_ids_wrap(upstream: UpstreamDirectory) -> None:
    done = subprocess.run([sys.executable, "-c", _SCRIPT, upstream.url,
                           f"uid={{username}},ou=people,{BASE}", json.dumps(USERS)],
                          capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parent.parent)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["first"] == ["ok", "refused", "ok", "refused"]
    # MAX-1 was the last ID used: the next are MAX, then 1, 2, 3 on the same connection.
    assert out["wrapped"] == ["ok"] * 4
    assert out["ids"] == [MAX_MESSAGE_ID, 1, 2, 3]
    assert out["nobody"] == "refused" and out["round_trip"] == "refused"
    assert out["connects"] == 1
