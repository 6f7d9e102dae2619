"""Minimal BER encoding for the replies the server sends, and a TLV reader for control values.

Requests are decoded by ldaptor. Replies are encoded here because a search reply is the hot
path: an entry is encoded once (cached per snapshot, policy and attribute selection) and only
the message envelope (message id, controls) is added per request, which costs a few
microseconds instead of the tens that an object-tree encoder needs.
"""

from __future__ import annotations

# Application tags of the responses (RFC 4511 §4.2 ff.).
BIND_RESPONSE = 0x61
SEARCH_ENTRY = 0x64
SEARCH_DONE = 0x65
MODIFY_RESPONSE = 0x67
ADD_RESPONSE = 0x69
DEL_RESPONSE = 0x6B
MODDN_RESPONSE = 0x6D
COMPARE_RESPONSE = 0x6F
EXTENDED_RESPONSE = 0x78

#: Notice of disconnection (RFC 4511 §4.4.1).
NOTICE_OF_DISCONNECTION = b"1.3.6.1.4.1.1466.20036"


class BERError(ValueError):
    """Malformed BER in a control value."""


def length(n: int) -> bytes:
    """BER definite length octets."""
    if n < 0x80:
        return bytes((n,))
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((0x80 | len(raw),)) + raw


def tlv(tag: int, content: bytes) -> bytes:
    """One tag-length-value."""
    n = len(content)
    if n < 0x80:
        return bytes((tag, n)) + content
    return bytes((tag,)) + length(n) + content


def octets(value: bytes, tag: int = 0x04) -> bytes:
    """OCTET STRING (or a context-tagged one)."""
    return tlv(tag, value)


def integer(n: int, tag: int = 0x02) -> bytes:
    """INTEGER / ENUMERATED (tag 0x0A) in minimal two's complement."""
    if 0 <= n < 0x8000:  # message IDs and result codes, mostly: one or two octets
        return bytes((tag, 1, n)) if n < 0x80 else bytes((tag, 2, n >> 8, n & 0xFF))
    raw = n.to_bytes(((n if n >= 0 else ~n).bit_length() + 8) // 8, "big", signed=True)
    return tlv(tag, raw)


def boolean(value: bool, tag: int = 0x01) -> bytes:
    """BOOLEAN."""
    return tlv(tag, b"\xff" if value else b"\x00")


def sequence(*parts: bytes, tag: int = 0x30) -> bytes:
    """SEQUENCE (or SET with tag 0x31) of already-encoded parts."""
    return tlv(tag, b"".join(parts))


def message(msgid: int, op: bytes, controls: bytes = b"") -> bytes:
    """An LDAPMessage envelope around an encoded protocol op."""
    return tlv(0x30, integer(msgid) + op + controls)


def result(tag: int, code: int, message_text: str = "", matched: str = "",
           extra: bytes = b"") -> bytes:
    """An LDAPResult-shaped op (BindResponse, SearchResultDone, ...)."""
    return tlv(tag, integer(code, 0x0A) + octets(matched.encode()) +
               octets(message_text.encode()) + extra)


def extended_response(code: int, message_text: str = "", name: bytes | None = None,
                      value: bytes | None = None) -> bytes:
    """ExtendedResponse with optional responseName [10] and response [11]."""
    extra = b""
    if name is not None:
        extra += octets(name, 0x8A)
    if value is not None:
        extra += octets(value, 0x8B)
    return result(EXTENDED_RESPONSE, code, message_text, extra=extra)


def control(oid: bytes, value: bytes | None = None, critical: bool = False) -> bytes:
    """One Control."""
    body = octets(oid)
    if critical:
        body += boolean(True)
    if value is not None:
        body += octets(value)
    return sequence(body)


def controls(*encoded: bytes) -> bytes:
    """The [0] Controls of an LDAPMessage."""
    return tlv(0xA0, b"".join(encoded)) if encoded else b""


def search_entry(dn: bytes, attributes: list[tuple[bytes, list[bytes]]]) -> bytes:
    """SearchResultEntry op: DN plus (type, values) pairs."""
    parts = []
    for name, values in attributes:
        parts.append(tlv(0x30, tlv(0x04, name) + tlv(0x31, b"".join(tlv(0x04, v)
                                                                    for v in values))))
    return tlv(SEARCH_ENTRY, tlv(0x04, dn) + tlv(0x30, b"".join(parts)))


# ------------------------------------------------------------------ reading


def read_tlv(data: bytes, pos: int = 0) -> tuple[int, bytes, int]:
    """(tag, content, next position) of the TLV at ``pos``; BERError when malformed."""
    if pos + 2 > len(data):
        raise BERError("truncated")
    tag = data[pos]
    first = data[pos + 1]
    pos += 2
    if first & 0x80:
        count = first & 0x7F
        if count == 0 or count > 4 or pos + count > len(data):
            raise BERError("bad length")
        size = int.from_bytes(data[pos:pos + count], "big")
        pos += count
    else:
        size = first
    end = pos + size
    if end > len(data):
        raise BERError("truncated")
    return tag, data[pos:end], end


def read_all(data: bytes) -> list[tuple[int, bytes]]:
    """All TLVs in ``data`` as (tag, content)."""
    out = []
    pos = 0
    while pos < len(data):
        tag, content, pos = read_tlv(data, pos)
        out.append((tag, content))
    return out


def read_int(content: bytes) -> int:
    """Value of an INTEGER's content octets."""
    return int.from_bytes(content, "big", signed=True) if content else 0


def pdu_length(buffer: bytes | bytearray | memoryview, pos: int) -> tuple[int, int] | None:
    """(header length, content length) of the LDAPMessage at ``pos``, None if incomplete.

    Raises BERError when the bytes cannot start an LDAPMessage (not a SEQUENCE: garbage or a
    TLS ClientHello on the plain port).
    """
    avail = len(buffer) - pos
    if avail < 2:
        if avail == 1 and buffer[pos] != 0x30:
            raise BERError("not an LDAPMessage")
        return None
    if buffer[pos] != 0x30:
        raise BERError("not an LDAPMessage")
    first = buffer[pos + 1]
    if not first & 0x80:
        return 2, first
    count = first & 0x7F
    if count == 0 or count > 4:
        raise BERError("unsupported length encoding")
    if avail < 2 + count:
        return None
    return 2 + count, int.from_bytes(bytes(buffer[pos + 2:pos + 2 + count]), "big")
