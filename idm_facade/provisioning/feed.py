"""Filling the change feeds of ``[[provisioning.feed]]``: after every new snapshot, what the
feed's client reads (:func:`desired.read`, under its policy) is compared with what the
feed last recorded for it, by the same diff as a push target's outbox (:mod:`diff`), and each
difference is appended to the feed as one event: ``create``, ``replace`` or ``delete``.

A feed is a pull target: nothing is sent, the consumer polls ``GET /feed/{name}`` for the
events after its cursor (:mod:`idm_facade.feed.api`). An entry the client can no longer read
(an ended account, a policy narrowed) becomes a ``delete``: the feed cannot show what the
client may not see. A change of the client's policy is planned too, within a few seconds,
without a write to the store; and since events already kept show what the earlier policy
allowed (a CPR grant since taken away), they are dropped then: a consumer behind is told to
read everything again, under the policy it has now.

One process fills a feed at a time (the outbox's lease, named ``feed:<name>``), so cursors
are dense and in commit order. The same worker prunes events older than the feed's
retention.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from idm_facade.directory.policy import Policy
from idm_facade.directory.view import ClientView
from idm_facade.feed.settings import Feed
from idm_facade.provisioning import desired, diff
from idm_facade.provisioning.outbox import take_lease
from store import feed as feed_store
from store import outbox
from store.validity import utcnow

log = logging.getLogger(__name__)

#: How often the worker looks whether the client's policy changed (or it was revoked).
POLICY_CHECK = 5.0


class FeedPlanner:
    """Plans one feed's events."""

    def __init__(self, engine: Any, facade: Any, feed: Feed) -> None:
        self.engine = engine
        self.facade = facade
        self.feed = feed
        self.planned_snapshot: Any = None
        self.planned_policy: Policy | None = None
        self._warned = False
        self._wants = desired.read()
        #: What the last committed plan wanted (None: compare everything next time).
        self._last: dict[str, desired.Wanted] | None = None
        outbox.create(engine)  # the lease table
        feed_store.create(engine)

    def policy(self) -> Policy | None:
        """The policy of the feed's client now; None when it is unknown or revoked (the
        feed then stands still: nobody may read it)."""
        from idm_facade.access.clients import ClientError

        info = next((c for c in self.facade.clients.list() if c.name == self.feed.client),
                    None)
        problem = None
        if info is None or info.revoked is not None:
            problem = "is unknown or revoked"
        else:
            try:
                return self.facade.clients.policy(info.policy)
            except ClientError as exc:
                problem = f"has a policy that cannot be used: {exc}"
        if not self._warned:
            log.warning("feed %s: client %s %s; no events are planned",
                        self.feed.name, self.feed.client, problem)
            self._warned = True
        return None

    def plan(self, snapshot: Any | None = None, policy: Policy | None = None) -> int:
        """Append the differences between what the client reads and what the feed last
        recorded; returns how many events were appended."""
        snapshot = snapshot if snapshot is not None else self.facade.directory.snapshot
        policy = policy if policy is not None else self.policy()
        if policy is None:
            return 0
        self._warned = False
        view = ClientView.of(snapshot, policy)
        want = self._wants.of(view, desired.users_filter(self.feed.filter), self.feed.groups)
        last = self._last if policy == self.planned_policy else None
        self._last = None  # until this plan is committed
        touched = diff.touched(want, last, set())
        name = self.feed.name
        with self.engine.begin() as conn:
            if feed_store.reader_changed(conn, name, f"{self.feed.client}:{policy.fingerprint}"):
                log.warning("feed %s: the client or its policy changed; the events kept so "
                            "far were dropped (a reader at an older cursor is told to read "
                            "everything again)", name)
                touched = None
            held = {entry_id: diff.Held(row.kind, row.digest)
                    for entry_id, row in feed_store.recorded(conn, name, touched).items()}
            events: list[dict[str, Any]] = []
            for change in diff.changes(diff.only(want, touched), held, leaver="delete"):
                item = change.item
                if item is None:
                    events.append({"type": "delete", "kind": change.kind,
                                   "entry_id": change.entry_id, "digest": change.action})
                    continue
                external = item.body.get("externalId")
                events.append({"type": "replace" if change.known else "create",
                               "kind": change.kind, "entry_id": change.entry_id,
                               "external_id": str(external) if external else None,
                               "body": item.body, "digest": item.digest,
                               "subjects": item.subjects, "sensitive": item.sensitive})
            feed_store.append(conn, name, events, utcnow())
        self.planned_snapshot = snapshot
        self.planned_policy = policy
        self._last = want
        return len(events)

    def forget(self) -> None:
        """Compare everything at the next plan: another process may have filled the feed
        while it held the lease."""
        self._last = None

    def prune(self) -> int:
        """Remove events older than the feed's retention."""
        return feed_store.prune(self.engine, self.feed.name, self.feed.cutoff(utcnow()))

    def prune_interval(self) -> float:
        """Seconds between two prunes: a quarter of the retention, between 1 s and 5 min."""
        now = utcnow()
        span = (now - self.feed.cutoff(now)).total_seconds()
        return min(300.0, max(1.0, span / 4))


class FeedWorker(threading.Thread):
    """Keeps one feed filled inside ``serve``: plans after every new snapshot and when the
    client's policy changes, prunes old events."""

    def __init__(self, planner: FeedPlanner, interval: float = 0.5) -> None:
        super().__init__(name=f"feed-{planner.feed.name}", daemon=True)
        self.planner = planner
        self.interval = interval
        self.stopping = threading.Event()

    def run(self) -> None:
        p = self.planner
        policy_checked = pruned = 0.0
        policy: Policy | None = None
        while not self.stopping.is_set():
            try:
                if not take_lease(p.engine, p.feed.lease_name,
                                  seconds=max(15.0, self.interval * 8)):
                    p.forget()
                    self.stopping.wait(self.interval * 4)  # another process fills it
                    continue
                now = time.monotonic()
                if now - policy_checked >= POLICY_CHECK or policy is None:
                    policy, policy_checked = p.policy(), now
                snapshot = p.facade.directory.snapshot
                if policy is not None and (snapshot is not p.planned_snapshot
                                           or policy != p.planned_policy):
                    added = p.plan(snapshot, policy)
                    if added:
                        log.info("feed %s: %d events", p.feed.name, added)
                if now - pruned >= p.prune_interval():
                    p.prune()
                    pruned = now
            except Exception:  # noqa: BLE001 - keep the worker alive, say why
                log.exception("feed %s: round failed", p.feed.name)
            self.stopping.wait(self.interval)

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=10)


