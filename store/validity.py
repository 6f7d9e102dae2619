"""Half-open validity intervals ``[valid_from, valid_to)``.

Every fact in the store carries one. ``valid_to`` NULL means open-ended. Times are naive UTC
datetimes: SQLite has no time zone type, and keeping one convention on both engines means a
round-trip through either returns the same value.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time

from sqlalchemy import DateTime, and_, or_
from sqlalchemy.orm import Mapped, mapped_column

#: The earliest instant the store uses for "valid since forever" in demo and import data.
BEGINNING = datetime(1900, 1, 1)


def utcnow() -> datetime:
    """Now, as the naive UTC datetime the store uses everywhere."""
    return datetime.now(UTC).replace(tzinfo=None, microsecond=0)


def to_datetime(value: datetime | date | str | None) -> datetime | None:
    """Parse an ISO date or datetime (or pass a datetime through) into naive UTC."""
    if value is None or isinstance(value, datetime) and value.tzinfo is None:
        return value  # type: ignore[return-value]
    if isinstance(value, datetime):
        return value.astimezone(UTC).replace(tzinfo=None)
    if isinstance(value, date):
        return datetime.combine(value, time())
    text = value.strip()
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    parsed = datetime.fromisoformat(text)
    return to_datetime(parsed) if parsed.tzinfo else parsed


def is_valid_at(valid_from: datetime, valid_to: datetime | None, at: datetime) -> bool:
    """True when ``at`` lies inside ``[valid_from, valid_to)``."""
    return valid_from <= at and (valid_to is None or at < valid_to)


class Validity:
    """Mixin giving a table the two validity columns and the matching helpers."""

    valid_from: Mapped[datetime] = mapped_column(DateTime, default=BEGINNING, nullable=False)
    valid_to: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)

    @classmethod
    def valid_at(cls, at: datetime):  # noqa: ANN206 - SQL expression
        """SQL condition: the row is in effect at ``at``."""
        return and_(cls.valid_from <= at, or_(cls.valid_to.is_(None), cls.valid_to > at))

    @classmethod
    def valid_now_or_later(cls, at: datetime):  # noqa: ANN206 - SQL expression
        """SQL condition: the row is in effect at ``at`` or starts later (not yet ended)."""
        return or_(cls.valid_to.is_(None), cls.valid_to > at)

    def in_effect(self, at: datetime) -> bool:
        """Python-side twin of :meth:`valid_at`."""
        return is_valid_at(self.valid_from, self.valid_to, at)
