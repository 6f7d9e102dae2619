"""Danish CPR numbers: structural validation and the birth date they encode.

A CPR number is ``DDMMYY`` followed by a four-digit serial. The first serial digit (position 7)
together with ``YY`` fixes the century (CPR-kontoret's table below), and the last digit is odd
for men and even for women. Since 2007 numbers need not satisfy the old modulus-11 check, so we
deliberately do not test it: rejecting valid numbers issued after 2007 would be worse than
accepting a typo.

The importer uses :func:`cpr_problem` so a document with an impossible date (``310299...``)
is refused before anything is written.
"""

from __future__ import annotations

from datetime import date


def century(year2: int, digit7: int) -> int:
    """The century (1800, 1900 or 2000) of a CPR with two-digit year ``year2``.

    Position 7 of the CPR selects the century: 0-3 always 1900; 4 and 9 mean 2000 for
    years 00-36, else 1900; 5-8 mean 2000 for years 00-57, else 1800.
    """
    if digit7 <= 3:
        return 1900
    if digit7 in (4, 9):
        return 2000 if year2 <= 36 else 1900
    return 2000 if year2 <= 57 else 1800


def birth_date(cpr: str) -> date:
    """The birth date encoded in ``cpr``; raises ValueError if it is not a possible CPR."""
    if len(cpr) != 10 or not cpr.isascii() or not cpr.isdigit():
        raise ValueError("must be exactly 10 digits")
    day, month, year2 = int(cpr[0:2]), int(cpr[2:4]), int(cpr[4:6])
    year = century(year2, int(cpr[6])) + year2
    try:
        return date(year, month, day)
    except ValueError as exc:
        raise ValueError(f"encodes an impossible birth date ({exc})") from None


def is_male(cpr: str) -> bool:
    """True when the CPR's gender digit (the last) is odd, the CPR convention for men."""
    return int(cpr[9]) % 2 == 1


def cpr_problem(cpr: str) -> str | None:
    """A human-readable reason ``cpr`` is not a structurally valid CPR number, or None."""
    try:
        birth_date(cpr)
    except ValueError as exc:
        return str(exc)
    return None


def digit7_for(year: int, choices: tuple[int, ...] = (0, 1, 2, 3, 4, 5, 6, 7, 8, 9)) -> list[int]:
    """The position-7 digits (among ``choices``) that encode birth ``year``'s century."""
    return [d for d in choices if century(year % 100, d) + year % 100 == year]
