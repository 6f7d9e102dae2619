"""The change log: every write to the store appends what changed, who, and when.

A ``before_flush`` hook on the session records one :class:`~store.models.Change` per object
inserted, updated or deleted, in the same transaction as the write, so a committed change is
always logged and a rolled-back one never is. Bulk loads that bypass the ORM call
:func:`record_bulk` instead, which tells readers to rebuild everything.
"""

from __future__ import annotations

from sqlalchemy import event, func, select
from sqlalchemy.orm import Session, sessionmaker

from store.models import Change, new_id
from store.validity import utcnow


def install(factory: sessionmaker[Session]) -> None:
    """Attach the logging hook to sessions made by ``factory``."""
    event.listen(factory, "before_flush", _log_flush)


def _log_flush(session: Session, _context, _instances) -> None:  # noqa: ANN001
    actor = session.info.get("actor", "system")
    at = utcnow()
    for operation, objects in (
        ("create", session.new),
        ("update", session.dirty),
        ("delete", session.deleted),
    ):
        for obj in list(objects):
            if isinstance(obj, Change):
                continue
            if operation == "update" and not session.is_modified(obj):
                continue
            if operation == "create" and hasattr(obj, "id") and obj.id is None:
                obj.id = new_id()  # defaults apply only at flush; the log needs the id now
            session.add(
                Change(
                    at=at,
                    actor=actor,
                    object_type=obj.__tablename__,
                    object_id=getattr(obj, "id", None),
                    operation=operation,
                )
            )


def record_bulk(session: Session, actor: str, operation: str = "import") -> None:
    """Log a bulk write that bypassed the ORM: readers must rebuild from scratch."""
    session.add(Change(at=utcnow(), actor=actor, object_type="*", object_id=None,
                       operation=operation))


def last_seq(session: Session) -> int:
    """The newest sequence number in the log (0 for an empty log)."""
    return session.scalar(select(func.coalesce(func.max(Change.seq), 0))) or 0


def changes_since(session: Session, seq: int) -> list[Change]:
    """All changes after ``seq``, oldest first."""
    return list(session.scalars(select(Change).where(Change.seq > seq).order_by(Change.seq)))
