"""Planning deliveries into the store's outbox and sending them to a target.

**Plan** (after every new snapshot): what the target should hold (:mod:`desired`) is compared
with what it was last confirmed to hold (``outbox_state``); every difference becomes one
pending delivery in ``outbox_item`` (replacing an older one for the same entry): ``upsert``
for a new or changed resource, ``disable`` (``active=false``) or ``delete`` for an account no
longer pushed, ``delete`` for a group no longer pushed. The snapshot is as of now, and the
directory refreshes itself at validity boundaries, so a role dated next Monday is planned and
sent on Monday, with no write.

**Send**: due deliveries, users before groups (groups name their members by the target's
ids). A resource is found at the target by the id the facade recorded, else by
``externalId``, else (after a 409 on create) by ``userName`` or ``displayName``; it is then
replaced whole (PUT), so sending the same body twice changes nothing. A target that is down,
busy or failing is tried again later with back-off (``Retry-After`` when it gives one) and does
not hold back other targets, each of which has its own worker. Every delivery is recorded in
the access log before it is sent: pushing is a disclosure like any other.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import case, delete, func, or_, select, update
from sqlalchemy.exc import IntegrityError

from idm_facade.access.audit import AccessRecord
from idm_facade.access.audit.record import replica
from idm_facade.access.audit.record import source as audit_source
from idm_facade.directory.view import ClientView
from idm_facade.provisioning import desired, diff
from idm_facade.provisioning.client import Conflict, Gone, Refused, Retry, ScimClient
from idm_facade.provisioning.desired import GROUP, USER
from idm_facade.provisioning.targets import Target
from store import outbox
from store.engine import in_chunks
from store.outbox import outbox_item, outbox_lease, outbox_state
from store.validity import utcnow

log = logging.getLogger(__name__)

#: Longest wait between two tries of a failing delivery.
MAX_BACKOFF = 300.0
#: A delivery the target refused for good is tried again this much later (someone may fix
#: the target meanwhile), and no sooner.
REFUSED_BACKOFF = 600.0
INCOMPLETE = "incomplete"  # digest of a body sent without some references resolved
#: Deliveries whose access records are committed together, and whose outcome is recorded in
#: the store in one transaction: one commit each per delivery was most of a delivery's cost.
RECORD_CHUNK = 25
#: A round with at least this many resources the facade knows no target id for (a first
#: sync) lists the target's externalIds once, instead of searching for each one; the
#: listing is used for this many seconds.
LIST_FROM = 50
LIST_FOR = 60.0


@dataclass
class Round:
    """What one send round did."""

    sent: int = 0
    failed: int = 0
    retry: bool = False  # the target could not be reached or was busy: stopped early


def _upsert(conn: Any, table: Any, keys: dict, values: dict) -> None:
    done = conn.execute(update(table).where(*[table.c[k] == v for k, v in keys.items()])
                        .values(**values))
    if not done.rowcount:
        conn.execute(table.insert().values(**keys, **values))


def take_lease(engine: Any, name: str, seconds: float = 15.0) -> bool:
    """Take or renew this process's lease called ``name`` (a target, or ``feed:<name>``);
    False while another replica or worker holds it."""
    holder, now = replica(), utcnow()
    until = now + timedelta(seconds=seconds)
    try:
        with engine.begin() as conn:
            taken = conn.execute(update(outbox_lease).where(
                outbox_lease.c.target == name,
                or_(outbox_lease.c.holder == holder, outbox_lease.c.expires < now))
                .values(holder=holder, expires=until)).rowcount
            if taken:
                return True
            if conn.execute(select(outbox_lease.c.target).where(
                    outbox_lease.c.target == name)).first() is not None:
                return False
            conn.execute(outbox_lease.insert().values(target=name, holder=holder,
                                                      expires=until))
            return True
    except IntegrityError:
        return False  # another process inserted it first


def _rows(conn: Any, table: Any, target: str, ids: set[str] | None) -> list[Any]:
    """The target's rows of ``table``: all of them, or those of ``ids``."""
    if ids is None:
        return list(conn.execute(select(table).where(table.c.target == target)))
    return [row for chunk in in_chunks(ids) for row in conn.execute(
        select(table).where(table.c.target == target, table.c.entry_id.in_(chunk)))]


def _manager_depth(want: dict[str, desired.Wanted], entry_id: str) -> int:
    """How many managers up a wanted user's chain of managers goes among the wanted users.
    Users are sent in this order (it sets the ``queued`` microseconds, by which they are
    sent), so every manager has a target id before the users naming it are sent, and a
    first sync does not send a third of its users twice (first without their manager)."""
    depth, seen, at = 0, {entry_id}, want.get(entry_id)
    while at is not None and at.kind == USER and depth < 50:
        enterprise = at.body.get(desired.ENTERPRISE_USER)
        manager = enterprise.get("manager") if isinstance(enterprise, dict) else None
        above = manager.get("value") if isinstance(manager, dict) else None
        if above is None or above in seen or above not in want:
            break
        seen.add(above)
        depth, at = depth + 1, want[above]
    return depth


class Provisioner:
    """Plans and sends one target's deliveries."""

    def __init__(self, engine: Any, facade: Any, target: Target) -> None:
        self.engine = engine
        self.facade = facade
        self.target = target
        self.client = ScimClient(target)
        self.planned_snapshot: Any = None
        self.last_error: str | None = None
        self._wants = desired.pushed()
        #: What the last committed plan wanted (None: compare everything next time).
        self._last: dict[str, desired.Wanted] | None = None
        #: Entries sent without some references resolved, to be planned again.
        self._dirty: set[str] = set()
        #: (when, {(kind, externalId): target id}) of the last listing of the target.
        self._listed: tuple[float, dict[tuple[str, str], str]] | None = None
        outbox.create(engine)

    def close(self) -> None:
        self.client.close()

    def lease(self, seconds: float = 15.0) -> bool:
        """Take or renew this process's lease on the target; False while another replica
        or worker holds it (which may change the target's records meanwhile)."""
        if take_lease(self.engine, self.target.name, seconds):
            return True
        self.forget()
        return False

    def release(self) -> None:
        """Give the lease up (a CLI sync that is done)."""
        with self.engine.begin() as conn:
            conn.execute(update(outbox_lease).where(
                outbox_lease.c.target == self.target.name,
                outbox_lease.c.holder == replica()).values(expires=utcnow()))

    def view(self, snapshot: Any) -> ClientView:
        return ClientView.of(snapshot, self.facade.clients.policy(self.target.policy))

    # ------------------------------------------------------------------ plan

    def plan(self, snapshot: Any | None = None) -> int:
        """Queue the differences between what the target should hold and what it holds;
        returns how many deliveries were queued.

        Only entries whose body changed since the last plan (or that came or went, or were
        sent incomplete) are compared with the store's record of the target: the others
        were settled by that plan (queued, or already held) and only this provisioner's
        sends have changed their records since. The first plan, and the first after the
        records may have been changed elsewhere (a reconcile, another process holding the
        lease for a while), compares everything."""
        snapshot = snapshot if snapshot is not None else self.facade.directory.snapshot
        want = self.wanted(snapshot)
        last, dirty = self._last, self._dirty
        self._last, self._dirty = None, set()  # until this plan is committed
        touched = diff.touched(want, last, dirty)
        name, now = self.target.name, utcnow()
        queued = 0
        with self.engine.begin() as conn:
            held = {r.entry_id: diff.Held(r.kind, r.digest, r.state)
                    for r in _rows(conn, outbox_state, name, touched)}
            pending = {r.entry_id: r for r in _rows(conn, outbox_item, name, touched)}
            planned = diff.changes(diff.only(want, touched), held, self.target.leaver)
            changed = {c.entry_id for c in planned}
            for chunk in in_chunks(pending.keys() & (want.keys() - changed)):
                # changed and changed back before it was sent
                conn.execute(delete(outbox_item).where(
                    outbox_item.c.target == name, outbox_item.c.entry_id.in_(chunk)))
            new: list[dict] = []
            for change in planned:
                waiting = pending.get(change.entry_id)
                item = change.item
                digest = item.digest if item is not None else change.action
                if waiting is not None and waiting.action == change.action \
                        and waiting.digest == digest:
                    continue
                values = {"kind": change.kind, "action": change.action,
                          "body": item.body if item is not None else None, "digest": digest,
                          "subjects": list(item.subjects) if item is not None else [],
                          "queued": now + timedelta(
                              microseconds=_manager_depth(want, change.entry_id)),
                          "attempts": 0, "next_attempt": now, "last_error": None}
                if waiting is None:
                    new.append({"target": name, "entry_id": change.entry_id, **values})
                else:
                    conn.execute(update(outbox_item).where(
                        outbox_item.c.target == name,
                        outbox_item.c.entry_id == change.entry_id).values(**values))
                queued += 1
            if new:
                conn.execute(outbox_item.insert(), new)
        self.planned_snapshot = snapshot
        self._last = want
        return queued

    def wanted(self, snapshot: Any | None = None) -> dict[str, desired.Wanted]:
        """Everything the target should hold (:class:`desired.Wants`), users first."""
        snapshot = snapshot if snapshot is not None else self.facade.directory.snapshot
        return self._wants.of(self.view(snapshot), desired.users_filter(self.target.filter),
                              self.target.groups)

    def forget(self) -> None:
        """Compare everything at the next plan: the target's records may have been changed
        by someone else (a reconcile, another process that held the lease)."""
        self._last = None

    # ------------------------------------------------------------------ send

    def _remote_ids(self, conn: Any) -> dict[str, str]:
        return {r.entry_id: r.remote_id for r in conn.execute(
            select(outbox_state.c.entry_id, outbox_state.c.remote_id)
            .where(outbox_state.c.target == self.target.name)) if r.remote_id}

    def send(self, limit: int | None = None) -> Round:
        """Send the due deliveries (at most ``limit``, default the target's batch)."""
        name, now = self.target.name, utcnow()
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(outbox_item).where(outbox_item.c.target == name,
                                          outbox_item.c.next_attempt <= now)
                .order_by(case((outbox_item.c.kind == USER, 0), else_=1),
                          outbox_item.c.queued)
                .limit(limit or self.target.batch)).all()
            remote = self._remote_ids(conn)
        done = Round()
        unknown = sum(1 for r in rows if r.action == "upsert" and r.entry_id not in remote)
        if unknown >= LIST_FROM and not self._listing():
            try:
                self._list({r.kind for r in rows})
            except Retry as exc:
                self.last_error = str(exc)
                done.retry = True
                return done
        for start in range(0, len(rows), RECORD_CHUNK):
            chunk = rows[start:start + RECORD_CHUNK]
            self._record(chunk)
            settle: list[Callable[[Any], None]] = []
            try:
                for row in chunk:
                    try:
                        settle.append(self._deliver(row, remote))
                        done.sent += 1
                        self.last_error = None
                    except Retry as exc:
                        self._failed(row, str(exc), exc.after)
                        done.failed += 1
                        done.retry = True
                        break  # the target is away or busy: the rest waits, others go on
                    except Refused as exc:
                        self._failed(row, str(exc), REFUSED_BACKOFF)
                        done.failed += 1
            finally:
                if settle:
                    with self.engine.begin() as conn:
                        for step in settle:
                            step(conn)
            if done.retry:
                break
        return done

    def _record(self, rows: list[Any]) -> None:
        """No record, no delivery: the records of a few deliveries are committed together
        before the first of them is sent (AuditUnavailable stops the round). A round cut
        short leaves records of deliveries that were not sent yet (their status says
        ``sending``); they are recorded again when they are."""
        audit = self.facade.audit
        if audit is None:
            return
        host = urlsplit(self.target.url).netloc
        audit.record_many([AccessRecord(
            client=self.target.client_name, source=audit_source(f"push:{host}"),
            operation=f"provisioning.{row.action} /{row.kind}s", query=row.entry_id,
            status="sending", subjects=list(row.subjects or []), sensitive=[])
            for row in rows])

    def references(self, row: Any, remote: dict[str, str]) -> tuple[dict, bool]:
        """The body with the facade's ids replaced by the target's; False when some were not
        known yet (the body is then sent without them and planned again)."""
        body = dict(row.body)
        complete = True
        if row.kind == GROUP:
            members = []
            for member in body.get("members", ()):
                if member["value"] in remote:
                    members.append({"value": remote[member["value"]], "type": "User"})
                else:
                    complete = False
            body["members"] = members
        enterprise = body.get(desired.ENTERPRISE_USER)
        if isinstance(enterprise, dict) and "manager" in enterprise:
            enterprise = dict(enterprise)
            manager = remote.get(enterprise["manager"]["value"])
            if manager:
                enterprise["manager"] = {"value": manager}
            else:
                del enterprise["manager"]
                complete = False
            body[desired.ENTERPRISE_USER] = enterprise
        return body, complete

    def _deliver(self, row: Any, remote: dict[str, str]) -> Callable[[Any], None]:
        """Send one delivery; returns what records it in the store (run with the others of
        its chunk in one transaction: a crash before that sends it again, which changes
        nothing at the target: PUT by id, found by externalId)."""
        name, client = self.target.name, self.client
        known = remote.get(row.entry_id)
        if row.action == "delete":
            if known:
                client.delete(row.kind, known)
            remote.pop(row.entry_id, None)

            def deleted(conn: Any) -> None:
                conn.execute(delete(outbox_state).where(outbox_state.c.target == name,
                                                        outbox_state.c.entry_id == row.entry_id))
                self._done(conn, row)
            return deleted
        if row.action == "disable":
            if known:
                try:
                    client.patch_active(row.kind, known, False)
                except Gone:
                    pass

            def disabled(conn: Any) -> None:
                conn.execute(update(outbox_state).where(
                    outbox_state.c.target == name, outbox_state.c.entry_id == row.entry_id)
                    .values(state="disabled", sent=utcnow()))
                self._done(conn, row)
            return disabled
        body, complete = self.references(row, remote)
        remote_id = self.put(row.kind, row.entry_id, known, body)
        remote[row.entry_id] = remote_id
        if not complete:
            self._dirty.add(row.entry_id)

        def held(conn: Any) -> None:
            _upsert(conn, outbox_state, {"target": name, "entry_id": row.entry_id},
                    {"kind": row.kind, "remote_id": remote_id,
                     "digest": row.digest if complete else INCOMPLETE, "state": "present",
                     "sent": utcnow()})
            self._done(conn, row)
        return held

    def _listing(self) -> dict[tuple[str, str], str] | None:
        """The last listing of the target's externalIds, while it is recent enough."""
        listed = self._listed
        if listed is None or time.monotonic() - listed[0] > LIST_FOR:
            return None
        return listed[1]

    def _list(self, kinds: set[str]) -> None:
        """List the target's resources of ``kinds`` by externalId (one paged read instead
        of a search per resource)."""
        found: dict[tuple[str, str], str] = {}
        for kind in sorted(kinds):
            for resource in self.client.all(kind, page=1000, attributes="externalId"):
                external = resource.get("externalId")
                if external:
                    found.setdefault((kind, str(external)), str(resource["id"]))
        self._listed = (time.monotonic(), found)

    def put(self, kind: str, entry_id: str, known: str | None, body: dict) -> str:
        """Replace the resource at the target, creating it when it is not there."""
        client = self.client
        candidates = [known] if known else []
        if not candidates:
            listing = self._listing()
            found = listing.get((kind, entry_id)) if listing is not None \
                else client.find(kind, "externalId", entry_id)
            candidates = [found] if found else []
        for remote_id in candidates:
            try:
                client.replace(kind, remote_id, body)
                return remote_id
            except Gone:
                pass  # deleted there, or the target was reset: create it again
        try:
            return client.create(kind, body)
        except Conflict:
            key, value = ("userName", body.get("userName")) if kind == USER else \
                ("displayName", body.get("displayName"))
            adopted = client.find(kind, key, str(value)) if value else None
            if adopted is None:
                raise Refused(f"409 for {kind} {entry_id} and no {key} {value!r} to take "
                              f"over") from None
            client.replace(kind, adopted, body)
            return adopted

    def _done(self, conn: Any, row: Any) -> None:
        """Remove the delivery, unless a newer plan replaced it while it was being sent."""
        conn.execute(delete(outbox_item).where(
            outbox_item.c.target == self.target.name,
            outbox_item.c.entry_id == row.entry_id, outbox_item.c.queued == row.queued,
            outbox_item.c.digest == row.digest))

    def _failed(self, row: Any, error: str, after: float | None) -> None:
        attempts = int(row.attempts) + 1
        wait = after if after is not None else min(MAX_BACKOFF, 2.0 ** min(attempts, 9) / 4)
        self.last_error = error
        log.warning("provisioning %s: %s %s failed (attempt %d, next in %.1f s): %s",
                    self.target.name, row.action, row.entry_id, attempts, wait, error)
        with self.engine.begin() as conn:
            conn.execute(update(outbox_item).where(
                outbox_item.c.target == self.target.name,
                outbox_item.c.entry_id == row.entry_id, outbox_item.c.queued == row.queued)
                .values(attempts=attempts, last_error=error[:1000],
                        next_attempt=utcnow() + timedelta(seconds=wait)))

    # ------------------------------------------------------------------ status

    def status(self) -> dict[str, Any]:
        """Counts, lag and the last error (``provisioning status``, ``/metrics``)."""
        name = self.target.name
        with self.engine.connect() as conn:
            held = conn.scalar(select(func.count()).select_from(outbox_state).where(
                outbox_state.c.target == name, outbox_state.c.state == "present")) or 0
            pending = conn.scalar(select(func.count()).select_from(outbox_item).where(
                outbox_item.c.target == name)) or 0
            oldest = conn.scalar(select(func.min(outbox_item.c.queued)).where(
                outbox_item.c.target == name))
            error = conn.scalar(select(outbox_item.c.last_error).where(
                outbox_item.c.target == name, outbox_item.c.last_error.is_not(None))
                .order_by(outbox_item.c.next_attempt).limit(1))
        lag = (utcnow() - oldest).total_seconds() if oldest is not None else 0.0
        return {"target": name, "held": int(held), "pending": int(pending),
                "lag_seconds": max(0.0, lag), "last_error": error or self.last_error}

    def run_until_done(self, deadline: float) -> Round:
        """Plan, then send until nothing is due (CLI ``sync``); stops at ``deadline``
        (``time.monotonic()``) with what is left."""
        total = Round()
        if not self.lease(seconds=60):
            raise Refused(f"{self.target.name}: another process is sending to this target "
                          f"now (serve); try again when it stops, or let it do the work")
        self.plan()
        replans = 3  # bodies sent before what they name had a target id are sent again
        while time.monotonic() < deadline:
            self.lease(seconds=60)
            done = self.send()
            total.sent += done.sent
            total.failed += done.failed
            if done.sent == 0 and done.failed == 0:
                with self.engine.connect() as conn:
                    left = conn.scalar(select(func.count()).select_from(outbox_item).where(
                        outbox_item.c.target == self.target.name)) or 0
                if not left:
                    if replans and self.plan():
                        replans -= 1
                        continue
                    return total
                time.sleep(0.2)  # only deliveries waiting for their retry time
            elif done.retry:
                time.sleep(0.2)
        total.retry = True
        return total


class Worker(threading.Thread):
    """Keeps one target in step inside ``serve``: plans after every new snapshot, sends
    what is due, backs off while the target is away."""

    def __init__(self, provisioner: Provisioner, interval: float = 0.5) -> None:
        super().__init__(name=f"provisioning-{provisioner.target.name}", daemon=True)
        self.provisioner = provisioner
        self.interval = interval
        self.stopping = threading.Event()

    def run(self) -> None:
        from idm_facade.provisioning.reconcile import reconcile

        p = self.provisioner
        away = False  # the target could not be reached: it may come back reset or restored
        while not self.stopping.is_set():
            try:
                if not p.lease():
                    self.stopping.wait(self.interval * 4)  # another process sends
                    continue
                if p.facade.directory.snapshot is not p.planned_snapshot:
                    p.plan()
                done = p.send()
                if done.retry:
                    away = True
                elif away and done.sent:
                    # Back after an outage: what it holds may not be what it held (an
                    # in-memory target restarted empty, a restore from backup); look.
                    found = reconcile(p)
                    log.info("provisioning %s: back; reconciled (%d created, %d replaced, "
                             "%d removed)", p.target.name, len(found.missing),
                             len(found.changed), len(found.extra))
                    away = False
                if done.sent and not done.retry:
                    continue  # more may be due right away
            except Exception as exc:  # noqa: BLE001 - keep the worker alive, say why
                p.last_error = str(exc)
                log.exception("provisioning %s: round failed", p.target.name)
            self.stopping.wait(self.interval)

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=10)
        self.provisioner.close()
