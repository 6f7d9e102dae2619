"""Erasure of one person's personal data (GDPR art. 17, within what archive rules allow).

The person row stays (engagements, accounts and role history point at it and public
employers must keep the employment facts), but everything that identifies the person is
removed: names become a pseudonym, CPR number, nicknames, user_key and seniority are cleared,
and every address of the person, of their engagements and of their accounts is deleted. The
write goes through :func:`store.engine.write_session`, so the change log records it and every
facade's directory drops the data at its next refresh.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine, or_, select

from store import models as m
from store.engine import write_session

PSEUDONYM_GIVEN = "Slettet"
PSEUDONYM_SURNAME = "person"


class UnknownPerson(KeyError):
    """No person with that id."""


@dataclass(frozen=True)
class Erasure:
    """What an erasure changed."""

    person_id: str
    addresses_deleted: int
    accounts: tuple[str, ...]


def erase_person(engine: Engine, person_id: str, actor: str = "erase-person") -> Erasure:
    """Remove ``person_id``'s personal data from the store in one logged transaction."""
    with write_session(engine, actor=actor) as session:
        person = session.get(m.Person, person_id)
        if person is None:
            raise UnknownPerson(person_id)
        person.given_name = PSEUDONYM_GIVEN
        person.surname = PSEUDONYM_SURNAME
        person.nickname_given_name = None
        person.nickname_surname = None
        person.cpr = None
        person.user_key = None
        person.seniority = None
        engagements = select(m.Engagement.id).where(m.Engagement.person_id == person_id)
        accounts = list(session.scalars(select(m.Account.id)
                                        .where(m.Account.person_id == person_id)))
        addresses = session.scalars(select(m.Address).where(or_(
            m.Address.person_id == person_id,
            m.Address.engagement_id.in_(engagements),
            m.Address.account_id.in_(accounts),
        ))).all()
        for address in addresses:
            session.delete(address)
        session.flush()
        return Erasure(person_id, len(addresses), tuple(accounts))
