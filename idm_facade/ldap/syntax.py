"""LDAP's string forms: distinguished names (RFC 4514) and generalized time (RFC 4517).

Parsing a DN normalises it for comparison (attribute types and values folded, escapes
resolved), so DNs that differ only in case, spacing or escaping name the same entry.
"""

from __future__ import annotations

from datetime import UTC, datetime, timezone
from functools import lru_cache
from typing import Any

from schemas.attributes import BOOLEAN, DATETIME


class InvalidDN(ValueError):
    """A string that is not a DN (RFC 4514)."""


# ------------------------------------------------------------------ DN syntax

RDN = tuple[tuple[str, str], ...]
NormDN = tuple[RDN, ...]

_HEX = "0123456789abcdefABCDEF"
#: Characters RFC 4514 §2.4 lets a backslash escape (besides a pair of hex digits).
_ESCAPABLE = frozenset(' "#+,;<=>\\')


def _unescape(value: str) -> str:
    if "\\" not in value:
        return value
    out = bytearray()
    i = 0
    while i < len(value):
        ch = value[i]
        if ch == "\\":
            if i + 1 >= len(value):
                raise InvalidDN("dangling escape")
            nxt = value[i + 1]
            if nxt in _HEX and i + 2 < len(value) and value[i + 2] in _HEX:
                out.append(int(value[i + 1:i + 3], 16))
                i += 3
                continue
            if nxt not in _ESCAPABLE:
                raise InvalidDN(f"\\{nxt} is not an escape (RFC 4514: a special character "
                                "or two hex digits)")
            out.extend(nxt.encode())
            i += 2
            continue
        out.extend(ch.encode())
        i += 1
    try:
        return out.decode()
    except UnicodeDecodeError as exc:
        raise InvalidDN("escaped bytes are not UTF-8") from exc


def _split(text: str, sep: str) -> list[str]:
    parts, start, i, quoted = [], 0, 0, False
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            i += 2
            continue
        if ch == '"':
            quoted = not quoted
        elif ch == sep and not quoted:
            parts.append(text[start:i])
            start = i + 1
        i += 1
    parts.append(text[start:])
    return parts


def parse_dn(text: str) -> NormDN:
    """Normalised DN: RDNs leaf first, attribute types lower-case, values unescaped and
    case-folded (every RDN attribute here matches case-insensitively). Raises InvalidDN.

    Memoised for DNs of ordinary length (a normalised DN is immutable): every search parses
    its base, nearly always one of a few, and that was 3 % of a distinct search's time in
    the event loop. Long DNs are parsed afresh, so nobody can fill memory with them."""
    return _parsed(text) if len(text) <= 256 else _parse(text)


@lru_cache(maxsize=4096)
def _parsed(text: str) -> NormDN:
    return _parse(text)


def _parse(text: str) -> NormDN:
    text = text.strip()
    if not text:
        return ()
    rdns = []
    for raw in _split(text, ","):
        avas = []
        for ava in _split(raw, "+"):
            if "=" not in ava:
                raise InvalidDN(f"no '=' in RDN {raw.strip()!r}")
            type_, value = ava.split("=", 1)
            type_ = type_.strip().lower()
            if not type_ or not (type_[0].isalpha() or type_[0].isdigit()):
                raise InvalidDN(f"bad attribute type in {raw.strip()!r}")
            value = value.strip()
            if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
                value = value[1:-1]
            value = _unescape(value)
            avas.append((type_, " ".join(value.split()).casefold()))
        rdns.append(tuple(sorted(avas)))
    return tuple(rdns)


def escape_value(value: str) -> str:
    """Escape an attribute value for a DN string (RFC 4514 §2.4)."""
    out = []
    for i, ch in enumerate(value):
        if ch in ',+"\\<>;=' or (ch == "#" and i == 0) or (ch == " " and i in (0, len(value) - 1)):
            out.append("\\" + ch)
        elif ord(ch) < 0x20:
            out.append(f"\\{ord(ch):02x}")
        else:
            out.append(ch)
    return "".join(out)


def escape_filter_value(value: str) -> str:
    """Escape an assertion value for a filter string (RFC 4515 §3)."""
    return "".join(f"\\{ord(ch):02x}" if ch in "*()\\\0" else ch for ch in value)


# ------------------------------------------------------------------ value rendering


def generalized_time(value: datetime) -> str:
    """GeneralizedTime in UTC (``20240131120000Z``)."""
    if value.tzinfo is not None:
        value = value.astimezone(UTC)
    return value.strftime("%Y%m%d%H%M%SZ")


def parse_generalized_time(text: str) -> datetime:
    """GeneralizedTime (``YYYYMMDDHH[MM[SS]][.f]Z`` or with an offset) to an aware datetime."""
    text = text.strip()
    tz = UTC
    if text.endswith("Z"):
        text = text[:-1]
    elif len(text) > 5 and text[-5] in "+-":
        sign = 1 if text[-5] == "+" else -1
        from datetime import timedelta

        tz = timezone(sign * timedelta(hours=int(text[-4:-2]), minutes=int(text[-2:])))
        text = text[:-5]
    text = text.split(".")[0].split(",")[0]
    if len(text) not in (10, 12, 14) or not text.isdigit():
        raise ValueError("not a GeneralizedTime")
    text = text.ljust(14, "0")
    return datetime.strptime(text, "%Y%m%d%H%M%S").replace(tzinfo=tz)


def ldap_value(spec_type: str, value: Any) -> str:
    """A directory value as LDAP text under its attribute's type (booleans TRUE/FALSE,
    instants as generalized time)."""
    if spec_type == BOOLEAN or isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, datetime):
        return generalized_time(value)
    if spec_type == DATETIME:
        return str(value)
    return str(value)
