"""The change feeds of ``[[provisioning.feed]]``: per feed, the events a polling consumer reads
(``feed_event``), what the feed last recorded of each entry (``feed_state``) and how far the
feed has got (``feed_head``).

Beside the outbox tables and for the same reasons: in the store's own database so nothing
else is needed, in tables of their own (written with Core statements, never through the
change log) because recording what a consumer was told is bookkeeping, not a change of the
organisation.

Cursors are per feed, dense and increasing: one planner appends to a feed at a time (the
lease of the outbox), each round in one transaction, and ``(feed, cursor)`` is the primary
key, so two appenders that both believed they held the lease cannot both commit the same
cursor. A reader therefore never sees cursor N+1 before N.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Column,
    DateTime,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    delete,
    func,
    select,
    update,
)

from store.engine import in_chunks

metadata = MetaData()

feed_event = Table(
    "feed_event", metadata,
    Column("feed", String(64), primary_key=True),
    Column("cursor", Integer, primary_key=True, autoincrement=False),
    Column("at", DateTime, nullable=False, index=True),
    Column("type", String(16), nullable=False),  # create | replace | delete
    Column("kind", String(16), nullable=False),  # User | Group
    Column("entry_id", String(64), nullable=False),
    Column("external_id", String(200), nullable=True),
    Column("body", JSON, nullable=True),  # the resource as the client reads it; None: delete
    Column("subjects", JSON, nullable=False),  # persons the body discloses
    Column("sensitive", JSON, nullable=False),  # sensitive attributes it shows ("cpr")
)

feed_state = Table(
    "feed_state", metadata,
    Column("feed", String(64), primary_key=True),
    Column("entry_id", String(64), primary_key=True),
    Column("kind", String(16), nullable=False),
    Column("digest", String(64), nullable=False),
)

feed_head = Table(
    "feed_head", metadata,
    Column("feed", String(64), primary_key=True),
    Column("last", Integer, nullable=False),  # the newest cursor given out (0: none yet)
    Column("pruned", Integer, nullable=False),  # every cursor up to this one is gone
    # who the events were planned for (the client and its policy's fingerprint)
    Column("reader", String(120), nullable=True),
)


@dataclass(frozen=True)
class Head:
    """How far a feed has got: cursors ``pruned+1 .. last`` can be read."""

    last: int = 0
    pruned: int = 0


def create(engine: Engine) -> None:
    """Create the feed tables where missing."""
    metadata.create_all(engine)


def head(conn: Any, feed: str) -> Head:
    """The feed's head (an empty one before its first event)."""
    row = conn.execute(select(feed_head).where(feed_head.c.feed == feed)).first()
    return Head(int(row.last), int(row.pruned)) if row is not None else Head()


def recorded(conn: Any, feed: str, ids: set[str] | None = None) -> dict[str, Any]:
    """What the feed last told of each entry it shows, or of ``ids`` only:
    {entry_id: row(kind, digest)}."""
    query = select(feed_state).where(feed_state.c.feed == feed)
    if ids is None:
        return {r.entry_id: r for r in conn.execute(query)}
    return {r.entry_id: r for chunk in in_chunks(ids)
            for r in conn.execute(query.where(feed_state.c.entry_id.in_(chunk)))}


def reader_changed(conn: Any, feed: str, reader: str) -> bool:
    """Note who the feed's events are planned for from now on; when that changed (another
    client, or its policy), every event kept so far is dropped (cursors up to the newest
    become unreadable): they show what the earlier reader was allowed, perhaps more than the
    new one is (a CPR grant taken away). Returns whether that happened."""
    row = conn.execute(select(feed_head).where(feed_head.c.feed == feed)).first()
    if row is None:
        conn.execute(feed_head.insert().values(feed=feed, last=0, pruned=0, reader=reader))
        return False
    if row.reader == reader:
        return False
    conn.execute(update(feed_head).where(feed_head.c.feed == feed)
                 .values(reader=reader, pruned=row.last))
    conn.execute(delete(feed_event).where(feed_event.c.feed == feed))
    return row.reader is not None


def append(conn: Any, feed: str, events: list[dict], at: datetime) -> int:
    """Append ``events`` (dicts of type, kind, entry_id, external_id, body, subjects,
    sensitive, digest) with the next cursors, and record the state they leave; returns the
    new last cursor. Runs in the caller's transaction."""
    now = head(conn, feed)
    cursor = now.last
    for event in events:
        cursor += 1
        conn.execute(feed_event.insert().values(
            feed=feed, cursor=cursor, at=at, type=event["type"], kind=event["kind"],
            entry_id=event["entry_id"], external_id=event.get("external_id"),
            body=event.get("body"), subjects=list(event.get("subjects") or ()),
            sensitive=list(event.get("sensitive") or ())))
        keys = (feed_state.c.feed == feed, feed_state.c.entry_id == event["entry_id"])
        conn.execute(delete(feed_state).where(*keys))
        if event["type"] != "delete":
            conn.execute(feed_state.insert().values(feed=feed, entry_id=event["entry_id"],
                                                    kind=event["kind"],
                                                    digest=event["digest"]))
    if not events:
        return now.last
    if conn.execute(update(feed_head).where(feed_head.c.feed == feed)
                    .values(last=cursor)).rowcount == 0:
        conn.execute(feed_head.insert().values(feed=feed, last=cursor, pruned=0))
    return cursor


def events(conn: Any, feed: str, after: int, limit: int) -> list[Any]:
    """Up to ``limit`` events after cursor ``after``, in cursor order."""
    return list(conn.execute(
        select(feed_event).where(feed_event.c.feed == feed, feed_event.c.cursor > after)
        .order_by(feed_event.c.cursor).limit(limit)))


def prune(engine: Engine, feed: str, before: datetime) -> int:
    """Remove the feed's events recorded before ``before``; returns how many. A consumer
    whose cursor is older than what is left must read everything again (the API says so)."""
    with engine.begin() as conn:
        gone = conn.scalar(select(func.max(feed_event.c.cursor)).where(
            feed_event.c.feed == feed, feed_event.c.at < before))
        if gone is None:
            return 0
        removed = conn.execute(delete(feed_event).where(
            feed_event.c.feed == feed, feed_event.c.cursor <= gone)).rowcount
        conn.execute(update(feed_head).where(feed_head.c.feed == feed, feed_head.c.pruned < gone)
                     .values(pruned=gone))
        return int(removed or 0)
