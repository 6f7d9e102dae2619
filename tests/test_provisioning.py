"""Provisioning out to a real SCIM server we don't control: scim2-server (PyPI), started here on
loopback. ``idm-facade serve`` pushes to it through its background worker; after every
scenario the target's users and group memberships must equal what our own SCIM endpoint shows
a client with the target's policy.

Scenarios: the first full sync; a new person, a rename, a leaver, a role granted and revoked,
a move to another unit; the target killed in the middle of the sync and started again (empty,
as scim2-server keeps nothing): it converges with no duplicates; the target answering 429 and
500 for a while, and 409 for a userName someone created there by hand; reconcile after the
target was edited by hand.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import httpx
from sqlalchemy import select

from store.engine import make_engine
from store.models import Account, AccountRoleAssignment, Engagement, JobRole, OrgUnit, Person
from tests.scim_target import TOKEN, Faults, Target
from tests.serving import StoreCopy, ending_engagements, served_copy


def _config(url: str, extra: str = "") -> str:
    return (f'[provisioning]\ninterval = 0.2\n'
            f'[[provisioning.target]]\nname = "saas"\nurl = "{url}"\ntoken = "{TOKEN}"\n'
            f'groups = ["role", "unit"]\nleaver = "disable"\ntimeout = 5\n{extra}')


def _ours(copy: StoreCopy, token: str) -> tuple[dict, dict]:
    """What our SCIM endpoint shows a client with the target's policy: users by id
    (userName, active, displayName) and groups by id (member ids)."""
    assert copy.serving is not None
    http = httpx.Client(base_url=f"{copy.serving.scim_base}/scim/v2", timeout=60,
                        headers={"Authorization": f"Bearer {token}"})
    users = http.get("/Users", params={"count": 5000,
                                       "attributes": "userName,active,displayName,name"}).json()
    groups = http.get("/Groups", params={
        "count": 5000, "attributes": "members,displayName",
        "filter": 'urn:idm-facade:params:scim:schemas:extension:municipal:1.0:Group:kind '
                  'eq "role" or urn:idm-facade:params:scim:schemas:extension:municipal:1.0:'
                  'Group:kind eq "unit"'}).json()
    return ({u["id"]: (u["userName"], u.get("active"), u.get("displayName"),
                       u.get("name", {}).get("givenName")) for u in users["Resources"]},
            {g["id"]: sorted(m["value"] for m in g.get("members", ())
                             if m.get("type", "User") == "User")
             for g in groups["Resources"]})


def _theirs(target: Target) -> tuple[dict, dict, int]:
    """The target's users and groups in the same terms (by externalId), and how many
    resources carry the same externalId twice (duplicates)."""
    users = target.all("User")
    by_remote = {u["id"]: u.get("externalId") for u in users}
    groups = target.all("Group")
    mine_users = {u["externalId"]: (u["userName"], u.get("active"), u.get("displayName"),
                                    u.get("name", {}).get("givenName"))
                  for u in users if u.get("externalId")}
    mine_groups = {g["externalId"]: sorted(by_remote.get(m["value"], "?")
                                           for m in g.get("members", ()))
                   for g in groups if g.get("externalId")}
    externals = [r.get("externalId") for r in users + groups if r.get("externalId")]
    return mine_users, mine_groups, len(externals) - len(set(externals))


def _shows(copy: StoreCopy, token: str, check: Callable[[tuple[dict, dict]], bool]) -> None:
    """Wait until our own SCIM endpoint shows a change written to the store."""
    deadline = time.monotonic() + 30
    while not check(_ours(copy, token)):
        assert time.monotonic() < deadline, "the change never showed in our SCIM endpoint"
        time.sleep(0.2)


def _converged(copy: StoreCopy, token: str, target: Target, seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while True:
        ours = _ours(copy, token)
        users, groups, duplicates = _theirs(target)
        if (users, groups) == ours and duplicates == 0:
            return
        if time.monotonic() > deadline:
            missing = set(ours[0]) - set(users)
            wrong = {k for k in ours[0] if k in users and users[k] != ours[0][k]}
            bad_groups = {k for k in ours[1] if groups.get(k) != ours[1][k]}
            raise AssertionError(f"not converged: {len(missing)} users missing, {len(wrong)} "
                                 f"differ, {len(bad_groups)} groups differ, {duplicates} "
                                 f"duplicates; server: {copy.serving.output()[-1500:]}")
        time.sleep(0.3)




def test_changes_reach_the_target(demo_db: str, tmp_path: Path, target: Target) -> None:
    with served_copy(demo_db, tmp_path, _config(target.url),
                     (("reader", "scim", "default"),)) as copy:
        token = copy.secrets["reader"]
        # the first full sync: about 550 deliveries, some seconds on a quiet machine, minutes
        # when the machine is shared
        _converged(copy, token, target, seconds=300)
        first_users = len(target.all("User"))
        engine = make_engine(copy.db)
        pushed_id = sorted(_ours(copy, token)[0])[0]  # an account the target holds
        with engine.connect() as conn:
            account = conn.execute(select(Account).where(Account.id == pushed_id)).first()
            role = conn.execute(select(JobRole).limit(1)).first()
            units = conn.execute(select(OrgUnit.id).limit(5)).scalars().all()
        engine.dispose()
        assert account is not None and role is not None

        def rename(session) -> None:
            person = session.get(Person, account.person_id)
            person.given_name = "Omdøbt"

        copy.write(rename)
        _shows(copy, token, lambda ours: ours[0][account.id][3] == "Omdøbt")
        _converged(copy, token, target)
        renamed = next(u for u in target.all("User") if u.get("externalId") == account.id)
        assert renamed["name"]["givenName"] == "Omdøbt"

        def grant(session) -> None:
            session.add(AccountRoleAssignment(account_id=account.id, job_role_id=role.id,
                                              valid_from=datetime(2000, 1, 1)))

        before = _ours(copy, token)[1]
        copy.write(grant)
        _shows(copy, token, lambda ours: ours[1] != before)
        _converged(copy, token, target)

        def revoke(session) -> None:
            for row in session.scalars(select(AccountRoleAssignment).where(
                    AccountRoleAssignment.account_id == account.id,
                    AccountRoleAssignment.job_role_id == role.id)):
                session.delete(row)

        copy.write(revoke)
        _shows(copy, token, lambda ours: ours[1] == before)
        _converged(copy, token, target)

        def move(session) -> None:
            engagement = session.scalars(select(Engagement).where(
                Engagement.person_id == account.person_id)).first()
            engagement.org_unit_id = next(u for u in units if u != engagement.org_unit_id)

        copy.write(move)
        _shows(copy, token, lambda ours: ours[1] != before)
        _converged(copy, token, target)

        def new_person(session) -> None:
            person = Person(given_name="Ny", surname="Medarbejder")
            session.add(person)
            session.flush()
            template = session.get(Account, account.id)
            session.add(Account(person_id=person.id, it_system_id=template.it_system_id,
                                username="nyme", username_key="nyme",
                                valid_from=datetime(2000, 1, 1)))
            engagement = session.scalars(select(Engagement)).first()
            session.add(Engagement(person_id=person.id, org_unit_id=units[0],
                                   job_function_id=engagement.job_function_id,
                                   is_primary=True, valid_from=datetime(2000, 1, 1)))

        copy.write(new_person)
        _shows(copy, token, lambda ours: len(ours[0]) == first_users + 1)
        _converged(copy, token, target)
        assert len(target.all("User")) == first_users + 1

        copy.write(ending_engagements(account.person_id))
        _shows(copy, token, lambda ours: ours[0][account.id][1] is False)
        _converged(copy, token, target)
        gone = next(u for u in target.all("User") if u["externalId"] == account.id)
        assert gone.get("active") is False
        # Every push is a disclosure: recorded under the target's name.
        from idm_facade.access.audit import AuditLog

        audit = AuditLog(make_engine(copy.db))
        pushed = audit.query(client="provisioning:saas")
        audit.close()
        assert len(pushed) >= first_users
        assert any(account.person_id in r.subjects for r in pushed)


def test_target_killed_mid_sync_and_failing_converges(demo_db: str, tmp_path: Path,
                                                      target: Target) -> None:
    faults = Faults(target)
    # Someone created one of our userNames there by hand: our create gets a real 409.
    engine = make_engine(demo_db)
    with engine.connect() as conn:
        taken = conn.execute(select(Account.username).where(Account.username.is_not(None))
                             .order_by(Account.username.desc()).limit(1)).scalar_one()
    engine.dispose()
    assert target.http.post("/Users", json={
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
        "userName": taken}).status_code == 201
    with served_copy(demo_db, tmp_path, _config(faults.url),
                     (("reader", "scim", "default"),)) as copy:
        token = copy.secrets["reader"]
        deadline = time.monotonic() + 60
        while len(target.all("User")) < 60:  # the first sync is under way
            assert time.monotonic() < deadline
            time.sleep(0.05)
        target.kill()  # mid-sync; it comes back empty
        time.sleep(1.0)
        target.start()
        faults.queue += [500, 500, 429, 500]  # then it fails for a while
        _converged(copy, token, target, seconds=120)
        assert {500, 429} <= set(faults.answered)
        adopted = [u for u in target.all("User") if u["userName"] == taken]
        assert len(adopted) == 1 and adopted[0].get("externalId")  # taken over, not doubled


def test_reconcile_after_hand_edits(demo_db: str, tmp_path: Path, target: Target) -> None:
    with served_copy(demo_db, tmp_path, _config(target.url),
                     (("reader", "scim", "default"),)) as copy:
        token = copy.secrets["reader"]
        _converged(copy, token, target)
        assert copy.serving is not None
        copy.serving.stop()  # nobody pushes while the target is edited and reconciled
        users = target.all("User")
        edited, deleted = users[0], users[1]
        edited["displayName"] = "Changed by hand"
        assert target.http.put(f"/Users/{edited['id']}", json=edited).status_code == 200
        assert target.http.delete(f"/Users/{deleted['id']}").status_code == 204
        group = target.all("Group")[0]
        group["members"] = [{"value": users[2]["id"]}, {"value": users[3]["id"]}]
        assert target.http.put(f"/Groups/{group['id']}", json=group).status_code == 200
        stray = target.http.post("/Users", json={
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
            "userName": "made-by-hand"}).json()
        exe = str(Path(sys.executable).with_name("idm-facade"))
        dry = subprocess.run([exe, "provisioning", "reconcile", "saas", "--dry-run", "--db",
                              copy.db, "--config", str(copy.config)],
                             capture_output=True, text=True, timeout=120)
        assert dry.returncode == 0, dry.stderr
        assert "1 missing" in dry.stdout and "not the facade's" in dry.stdout
        assert len(target.all("User")) == len(users)  # a dry run changes nothing
        done = subprocess.run([exe, "provisioning", "reconcile", "saas", "--db", copy.db,
                               "--config", str(copy.config)],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        from tests.serving import start_serve

        copy.serving = start_serve(copy.db, copy.config)
        _converged(copy, token, target, seconds=30)
        # What the facade did not make is left alone.
        assert any(u["id"] == stray["id"] for u in target.all("User"))
