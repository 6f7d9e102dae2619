"""Choosing demo entries for a test by what the test needs, never by position.

The demo generator draws ids and dates from one random stream, so which entry comes first
changes with the reference day the demo is generated for (every run's "today"). A test that
takes "the first account with a CPR" and expects it to be the only one with that CPR passes
on some days and fails on others; these helpers find an entry with the property instead.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any


def sole_account(accounts: Iterable[Any], *, needs: str = "personId") -> Any:
    """The first account (in the order given) that has ``needs`` and whose person holds no
    other account, so a change to the person, or a search by the person's CPR, concerns it
    alone."""
    accounts = list(accounts)
    per_person = Counter(a.first("personId") for a in accounts if a.attrs.get("personId"))
    for account in accounts:
        person = account.first("personId")
        if person and per_person[person] == 1 and account.attrs.get(needs):
            return account
    raise AssertionError(f"no account with {needs} whose person holds only that account")
