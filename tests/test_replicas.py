"""Two independent ``idm-facade serve`` processes (replicas, not forked workers) on one store.

Behind a load balancer each request of a paged pull may reach another replica. Replicas are
started separately, so nothing in memory is shared: string hashing is salted differently in
each, and only what is derived from the data and the configuration may go into a cursor or
a response body. Forked ``--workers`` share one hash seed, which once hid that a cursor's
query digest held ``hash(policy)``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from idm_facade.access.clients import ClientRegistry
from idm_facade.config import load_config
from idm_facade.directory import Directory
from schemas.attributes import ACCOUNT
from store.engine import make_engine
from tests.serving import Serving, copy_store, start_serve

CONFIG = """
[directory]
state_dir = "{state}"

[scim]
cursor_secret = "replicas-share-this-secret"

[policies.narrow]
kinds = ["account"]
"""


@dataclass
class Replicas:
    servers: list[Serving]
    token: str
    narrow_token: str
    accounts: int

    def get(self, replica: int, path: str, token: str | None = None,
            **params: str) -> httpx.Response:
        """GET from one replica with a new connection, as a balancer would forward it (with
        the public host name the clients used, so ``$ref`` and ``location`` agree)."""
        base = self.servers[replica].scim_base
        return httpx.get(f"{base}/scim/v2{path}", params=params, timeout=60,
                         headers={"Authorization": f"Bearer {token or self.token}",
                                  "Host": "idm.example.test"})


@pytest.fixture(scope="module")
def replicas(demo_db, tmp_path_factory) -> Iterator[Replicas]:
    tmp = tmp_path_factory.mktemp("replicas")
    db = copy_store(demo_db, tmp / "idm.db")
    servers = []
    for n in range(2):
        state = tmp / f"state{n}"
        state.mkdir()
        config_path = tmp / f"idm{n}.toml"
        config_path.write_text(CONFIG.format(state=state))
    config = load_config(tmp / "idm0.toml")
    engine = make_engine(db)
    clients = ClientRegistry(engine, config)
    token = clients.add("replica-scim", "scim", "default")
    narrow = clients.add("replica-narrow", "scim", "narrow")
    accounts = sum(1 for e in Directory(engine).snapshot.entries if e.kind == ACCOUNT)
    engine.dispose()
    try:
        for n in range(2):
            servers.append(start_serve(db, tmp / f"idm{n}.toml", ldap=False))
        yield Replicas(servers, token, narrow, accounts)
    finally:
        for server in servers:
            server.stop()


def test_a_paged_pull_alternating_between_replicas_gets_every_account_once(replicas):
    seen: list[str] = []
    cursor, turn = "", 0
    while cursor is not None:
        response = replicas.get(turn % 2, "/Users", cursor=cursor, count="20",
                                attributes="userName")
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["totalResults"] == replicas.accounts
        seen += [r["id"] for r in body["Resources"]]
        cursor, turn = body.get("nextCursor"), turn + 1
    assert turn >= 4  # several hand-overs in each direction
    assert len(seen) == len(set(seen)) == replicas.accounts


def test_a_cursor_from_another_policy_is_refused_by_either_replica(replicas):
    first = replicas.get(0, "/Users", cursor="", count="5").json()["nextCursor"]
    for replica in (0, 1):
        refused = replicas.get(replica, "/Users", token=replicas.narrow_token, cursor=first,
                               count="5")
        assert refused.status_code == 400
        assert refused.json()["scimType"] == "invalidCursor"
    # The narrow client's own cursor crosses replicas like any other.
    own = replicas.get(1, "/Users", token=replicas.narrow_token, cursor="", count="5")
    follow = replicas.get(0, "/Users", token=replicas.narrow_token,
                          cursor=own.json()["nextCursor"], count="5")
    assert follow.status_code == 200, follow.text


def test_replicas_answer_byte_identical_bodies_and_etags(replicas):
    """Multi-valued attributes come in one canonical order, so the same resource renders to
    the same bytes (and ETag) in every replica."""
    listing = replicas.get(0, "/Users", count="40", sortBy="userName").json()
    ids = [r["id"] for r in listing["Resources"]]
    assert ids
    for resource_id in ids:
        left = replicas.get(0, f"/Users/{resource_id}")
        right = replicas.get(1, f"/Users/{resource_id}")
        assert left.status_code == right.status_code == 200
        assert left.content == right.content, resource_id
        assert left.headers["ETag"] == right.headers["ETag"]
    groups = [replicas.get(n, "/Groups", count="200", sortBy="displayName").content
              for n in (0, 1)]
    assert groups[0] == groups[1]
