"""Making a target equal to what it should hold, whatever happened to it meanwhile (edited by
hand, restored from a backup, reset): ``idm-facade provisioning reconcile TARGET``.

The target's users and groups are read whole (paged) and matched to the facade's entries by
``externalId``. A resource the target lacks is created; one whose values differ from what the
facade would send is replaced; one the facade made and no longer pushes gets the leaver
action (disable or delete; groups are deleted); resources the facade did not make (no
``externalId`` of its own) are reported and left alone. Afterwards the outbox's record of the
target is what the target holds, so the next changes are planned from there.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import delete

from idm_facade.directory.policy import ALL
from idm_facade.directory.view import ClientView
from idm_facade.provisioning import desired
from idm_facade.provisioning.desired import GROUP, USER
from idm_facade.provisioning.outbox import INCOMPLETE, Provisioner, _upsert
from store.outbox import outbox_item, outbox_state
from store.validity import utcnow


@dataclass
class Differences:
    """What reconcile found (and, unless a dry run, fixed)."""

    missing: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    unmanaged: list[str] = field(default_factory=list)

    @property
    def none(self) -> bool:
        return not (self.missing or self.changed or self.extra)


def covers(have: Any, want: Any) -> bool:
    """Does the target's value ``have`` hold everything of ``want`` (a target may add
    attributes of its own, and order multi-valued ones its way)?"""
    if isinstance(want, dict):
        return isinstance(have, dict) and all(covers(have.get(k), v) for k, v in want.items())
    if isinstance(want, list):
        if not want:
            return not have  # a target may leave an empty list out
        if not isinstance(have, list) or len(have) != len(want):
            return False
        key = lambda v: json.dumps(v, sort_keys=True)  # noqa: E731
        pool = list(have)
        for item in sorted(want, key=key):
            match = next((h for h in pool if covers(h, item)), None)
            if match is None:
                return False
            pool.remove(match)
        return True
    return have == want


def reconcile(provisioner: Provisioner, dry_run: bool = False) -> Differences:
    """Compare the target with what it should hold and, unless ``dry_run``, make it so."""
    target, client = provisioner.target, provisioner.client
    want = provisioner.wanted()
    found = Differences()
    remote: dict[str, str] = {}  # facade id -> target id
    held: dict[str, dict] = {}
    for kind in (USER, GROUP):
        if kind == GROUP and not target.groups:
            continue
        for resource in client.all(kind):
            external = resource.get("externalId")
            if external and external in want and want[external].kind == kind:
                remote[external] = str(resource["id"])
                held[external] = resource
            elif external and _ours(provisioner, external):
                found.extra.append(f"{kind} {external}")
                if not dry_run:
                    if kind == GROUP or target.leaver == "delete":
                        client.delete(kind, str(resource["id"]))
                    elif resource.get("active", True):
                        client.patch_active(kind, str(resource["id"]), False)
            else:
                found.unmanaged.append(f"{kind} {resource.get('id')} "
                                       f"{resource.get('userName') or resource.get('displayName')}")
    now = utcnow()
    for entry_id, item in want.items():  # users first: groups name them
        body, complete = provisioner.references(_Row(item), remote)
        if entry_id not in held:
            found.missing.append(f"{item.kind} {entry_id}")
            if dry_run:
                continue
            remote[entry_id] = provisioner.put(item.kind, entry_id, None, body)
        elif not covers(held[entry_id], {k: v for k, v in body.items() if k != "schemas"}):
            found.changed.append(f"{item.kind} {entry_id}")
            if dry_run:
                continue
            client.replace(item.kind, remote[entry_id], body)
        if dry_run:
            continue
        with provisioner.engine.begin() as conn:
            _upsert(conn, outbox_state, {"target": target.name, "entry_id": entry_id},
                    {"kind": item.kind, "remote_id": remote[entry_id],
                     "digest": item.digest if complete else INCOMPLETE,
                     "state": "present", "sent": now})
    if not dry_run:
        with provisioner.engine.begin() as conn:
            kept = set(want)
            for row in conn.execute(outbox_state.select().where(
                    outbox_state.c.target == target.name)).all():
                if row.entry_id not in kept:
                    conn.execute(delete(outbox_state).where(
                        outbox_state.c.target == target.name,
                        outbox_state.c.entry_id == row.entry_id))
            conn.execute(delete(outbox_item).where(outbox_item.c.target == target.name))
        provisioner.forget()  # the records were rewritten here: compare them all
        provisioner.plan()  # whatever is still incomplete goes out with the next send
    return found


class _Row:
    """A Wanted in the shape of an outbox row (for :meth:`Provisioner.references`)."""

    def __init__(self, item: desired.Wanted) -> None:
        self.kind, self.body = item.kind, item.body


def _ours(provisioner: Provisioner, external: str) -> bool:
    """Was a resource with this externalId made by the facade (an entry of its store, or one
    it recorded sending)?"""
    if ClientView.of(provisioner.facade.directory.snapshot, ALL).get(external) is not None:
        return True
    with provisioner.engine.connect() as conn:
        return conn.execute(outbox_state.select().where(
            outbox_state.c.target == provisioner.target.name,
            outbox_state.c.entry_id == external)).first() is not None
