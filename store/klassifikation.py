"""Writing Klassifikation: create a class, rename it, retire it from a date.

The one place outside import that changes the store's classes: each call is one transaction
through :func:`store.engine.write_session`, so the change log records it with its actor and
the directory refreshes from it like from any other write. Classes are never deleted (rows
name them); a retired class has a ``valid_to`` and stops being in effect from that instant.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from store.engine import write_session
from store.models import Facet, Klasse
from store.validity import to_datetime

NAME_MAX = 200
USER_KEY_MAX = 100


class KlassifikationError(ValueError):
    """A change that cannot be made (unknown facet or class, empty or long name, ...)."""


def facets(engine: Engine) -> list[tuple[Facet, list[Klasse]]]:
    """Every facet with its classes (retired ones too), by user key and name."""
    with Session(engine) as session:
        rows = session.scalars(select(Facet).order_by(Facet.user_key)).all()
        classes = session.scalars(select(Klasse).order_by(Klasse.name, Klasse.id)).all()
        by_facet: dict[str, list[Klasse]] = {}
        for klasse in classes:
            by_facet.setdefault(klasse.facet_id, []).append(klasse)
        session.expunge_all()
        return [(facet, by_facet.get(facet.id, [])) for facet in rows]


def _name(name: str) -> str:
    name = (name or "").strip()
    if not name:
        raise KlassifikationError("a class needs a name")
    if len(name) > NAME_MAX:
        raise KlassifikationError(f"a class name has at most {NAME_MAX} characters")
    return name


def rename_class(engine: Engine, class_id: str, name: str, actor: str) -> None:
    """Give the class a new name (shown from the next directory refresh)."""
    name = _name(name)
    with write_session(engine, actor=actor) as session:
        klasse = session.get(Klasse, class_id)
        if klasse is None:
            raise KlassifikationError(f"unknown class {class_id!r}")
        klasse.name = name


def create_class(engine: Engine, facet_id: str, user_key: str, name: str,
                 valid_from: datetime, actor: str) -> str:
    """A new class of the facet, in effect from ``valid_from``; returns its id."""
    name = _name(name)
    user_key = (user_key or "").strip()
    if not user_key or len(user_key) > USER_KEY_MAX:
        raise KlassifikationError(f"a class needs a user key of at most {USER_KEY_MAX} "
                                  f"characters")
    with write_session(engine, actor=actor) as session:
        if session.get(Facet, facet_id) is None:
            raise KlassifikationError(f"unknown facet {facet_id!r}")
        taken = session.scalar(select(Klasse.id).where(Klasse.facet_id == facet_id,
                                                       Klasse.user_key == user_key))
        if taken is not None:
            raise KlassifikationError(f"the facet already has a class {user_key!r}")
        start = to_datetime(valid_from)
        assert start is not None
        klasse = Klasse(facet_id=facet_id, user_key=user_key, name=name, valid_from=start,
                        valid_to=None)
        session.add(klasse)
        session.flush()
        return klasse.id


def retire_class(engine: Engine, class_id: str, at: datetime, actor: str) -> None:
    """End the class at ``at`` (no longer in effect from that instant)."""
    end = to_datetime(at)
    assert end is not None
    with write_session(engine, actor=actor) as session:
        klasse = session.get(Klasse, class_id)
        if klasse is None:
            raise KlassifikationError(f"unknown class {class_id!r}")
        if klasse.valid_from is not None and end <= klasse.valid_from:
            raise KlassifikationError("a class can only be retired after it begins")
        klasse.valid_to = end
