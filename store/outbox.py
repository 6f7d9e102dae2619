"""The outbox of outbound provisioning: what must be sent to each target, and what each
target was last confirmed to hold.

In the store's own database so the facade needs nothing else, but in tables of their own
(their own metadata, written with Core statements, never through the change log): writing
here is bookkeeping about deliveries, not a change of the organisation, and must not make
every directory refresh itself.

- ``outbox_item``: one pending delivery per (target, entry): the action and the body to send.
  A newer plan for the same entry replaces the pending one, so an entry that changes three
  times while its target is down is sent once, as it is now.
- ``outbox_state``: per (target, entry), the target's id for it and the digest of the body it
  last accepted. The planner compares what should be there with this to find the changes;
  a crash between sending and recording only means the same body is sent again, which the
  target takes as a replace of the same content.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    Column,
    DateTime,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

metadata = MetaData()

outbox_item = Table(
    "outbox_item", metadata,
    Column("target", String(64), primary_key=True),
    Column("entry_id", String(64), primary_key=True),
    Column("kind", String(16), nullable=False),  # the target's resource type
    Column("action", String(16), nullable=False),  # upsert | disable | delete
    Column("body", JSON, nullable=True),
    Column("digest", String(64), nullable=False),
    Column("subjects", JSON, nullable=False),  # persons the body discloses (access log)
    Column("queued", DateTime, nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt", DateTime, nullable=False),
    Column("last_error", Text, nullable=True),
)

outbox_state = Table(
    "outbox_state", metadata,
    Column("target", String(64), primary_key=True),
    Column("entry_id", String(64), primary_key=True),
    Column("kind", String(16), nullable=False),
    Column("remote_id", String(200), nullable=True),
    Column("digest", String(64), nullable=False),
    Column("state", String(16), nullable=False),  # present | disabled
    Column("sent", DateTime, nullable=False),
)

#: Who sends to a target now: one process among replicas and workers (a lease renewed while
#: it works and taken over when it runs out), so no two send the same delivery at once.
outbox_lease = Table(
    "outbox_lease", metadata,
    Column("target", String(64), primary_key=True),
    Column("holder", String(120), nullable=False),
    Column("expires", DateTime, nullable=False),
)


def create(engine: Engine) -> None:
    """Create the outbox tables where missing."""
    metadata.create_all(engine)
