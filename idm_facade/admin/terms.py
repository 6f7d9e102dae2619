"""Local terms: a municipality's own words for the console's labels.

Each label (``texts.TEXTS``) can be given a local text per language, e.g. ``title_field`` in
Danish as "Jobfunktion" where the default says "Stilling". Kept in the facade's table
``facade_term`` (beside the clients and administrators, so every process and replica sees
them), read at most every :data:`REFRESH_SECONDS` per process and at once in the process
that changed them.
"""

from __future__ import annotations

import threading
import time

from sqlalchemy import Engine, String, delete, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from idm_facade.admin.texts import LANGUAGES, TEXTS

REFRESH_SECONDS = 5.0
MAX_TEXT = 200


class _Base(DeclarativeBase):
    pass


class Term(_Base):
    """One local text for one label in one language."""

    __tablename__ = "facade_term"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    language: Mapped[str] = mapped_column(String(5), primary_key=True)
    text: Mapped[str] = mapped_column(String(MAX_TEXT))


class Terms:
    """The local terms in ``engine``'s database, cached per process."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        _Base.metadata.create_all(engine)
        self._lock = threading.Lock()
        self._loaded = 0.0
        self._local: dict[tuple[str, str], str] = {}

    def local(self) -> dict[tuple[str, str], str]:
        """(key, language) -> local text, at most :data:`REFRESH_SECONDS` old."""
        now = time.monotonic()
        if now - self._loaded > REFRESH_SECONDS:
            with Session(self.engine) as session:
                rows = session.scalars(select(Term)).all()
                found = {(r.key, r.language): r.text for r in rows}
            with self._lock:
                self._local, self._loaded = found, now
        return self._local

    def text(self, key: str, language: str) -> str | None:
        return self.local().get((key, language))

    def save(self, changes: dict[tuple[str, str], str]) -> None:
        """Set (non-empty text) or clear (empty) local texts, in one transaction."""
        for (key, language), value in changes.items():
            if key not in TEXTS or language not in LANGUAGES:
                raise ValueError(f"unknown label {key!r} or language {language!r}")
            if len(value) > MAX_TEXT:
                raise ValueError(f"a label has at most {MAX_TEXT} characters")
        with Session(self.engine) as session, session.begin():
            for (key, language), value in changes.items():
                session.execute(delete(Term).where(Term.key == key, Term.language == language))
                if value.strip():
                    session.add(Term(key=key, language=language, text=value.strip()))
        self._loaded = 0.0  # read again at the next label
