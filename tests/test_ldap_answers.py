"""The LDAP answer cache: a repeated search is answered from its finished bytes, with the
right message id, the asking client's policy and its own access record each time."""

from __future__ import annotations

import ldap

from tests.serving import ldap_source
from tests.test_ldap_server import server  # noqa: F401 - the running facade fixture


def test_repeated_search_same_answer_own_record_each_time(server):  # noqa: F811
    acc = server.accounts[7]
    uid = acc.first("userName")
    conn = server.python_ldap()
    source = ldap_source(conn)
    answers = []
    for _ in range(4):  # python-ldap numbers each request anew; a wrong id would not match
        msgid = conn.search(server.base, ldap.SCOPE_SUBTREE, f"(uid={uid})", ["uid", "mail"])
        kind, data, got, _ = conn.result3(msgid)
        assert got == msgid and kind == ldap.RES_SEARCH_RESULT
        answers.append(data)
    conn.unbind_s()
    assert answers[0] and all(a == answers[0] for a in answers)
    assert answers[0][0][1]["uid"] == [uid.encode()]
    records = [r for r in server.audit.query(client="app") if r.source.startswith(source)]
    assert [r.operation for r in records] == ["bind"] + ["search"] * 4
    assert all(r.subjects == [acc.first("personId")] for r in records[1:])


def test_same_request_bytes_from_another_client_use_its_policy(server):  # noqa: F811
    acc = next(e for e in server.accounts if e.attrs.get("cpr"))
    flt = f"(uid={acc.first('userName')})"
    for client, sees_cpr in (("app", False), ("cprapp", True), ("app", False)):
        conn = server.python_ldap(client)
        found = conn.search_s(server.base, ldap.SCOPE_SUBTREE, flt, ["uid", "idmCprNumber"])
        conn.unbind_s()
        assert len(found) == 1
        assert ("idmCprNumber" in found[0][1]) is sees_cpr, client
    last = [r for r in server.audit.query(client="cprapp") if r.operation == "search"][-1]
    assert last.sensitive == ["cpr"]
