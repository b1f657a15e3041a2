"""The principal of a TLS client certificate, built exactly as Kafka builds it.

Kafka's default principal builder (``ssl.principal.mapping.rules=DEFAULT``) names an SSL client
``User:`` + ``X500Principal.getName()``, the subject in RFC 2253 form as the JDK writes it. ACLs
and ``security.super_users`` match that string byte for byte, so it must be unambiguous: a
subject with the single attribute ``O=acme,CN=admin`` must not read like the two attributes
``CN=admin`` and ``O=acme``. Python's ``getpeercert()`` returns the subject already decoded and
without the attributes' string types, which is not enough to reproduce the JDK's output, so the
subject is read here from the certificate's DER bytes.

The JDK's rules, reproduced in full:
- RDNs are written from the last to the first (most specific first), separated by ``,``;
  the attributes of a multi-valued RDN are joined with ``+``, those with an RFC 2253 keyword
  first (ordered by their canonical form), then the others by OID.
- Only CN, C, L, ST, O, OU, STREET, DC and UID have keywords; any other attribute is written as
  its dotted OID, ``=``, ``#`` and the hex of its whole DER encoding (``emailAddress`` too).
- A value of a string type (UTF8, Printable, T61, IA5, General, BMP) is written as text with
  ``, = + < > # ; " \\`` escaped by a backslash, NUL as ``\\00``, and leading or trailing spaces
  (and CRs) escaped; a value of any other type is written as ``#`` + hex, like an unknown OID.

Nothing here does I/O; a certificate that cannot be parsed raises :class:`ValueError` (the
connection is refused rather than served as someone else).
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

SEQUENCE, SET, OID = 0x30, 0x31, 0x06
_EXPLICIT_VERSION = 0xA0

KEYWORDS: dict[str, str] = {
    "2.5.4.3": "CN",
    "2.5.4.6": "C",
    "2.5.4.7": "L",
    "2.5.4.8": "ST",
    "2.5.4.9": "STREET",
    "2.5.4.10": "O",
    "2.5.4.11": "OU",
    "0.9.2342.19200300.100.1.25": "DC",
    "0.9.2342.19200300.100.1.1": "UID",
}
_CHARSETS = {
    12: "utf-8",
    19: "latin-1",
    20: "latin-1",
    22: "latin-1",
    27: "latin-1",
    30: "utf-16-be",
}
_ESCAPED = frozenset(',=+<>#;"\\')
_CANONICAL_ESCAPED = frozenset(',+<>;"\\')


def _tlv(der: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, start of content, end of content) of the DER element at ``pos``."""
    if pos + 2 > len(der):
        raise ValueError("truncated DER element")
    tag = der[pos]
    if tag & 0x1F == 0x1F:
        raise ValueError("high tag numbers are not used in certificate names")
    first = der[pos + 1]
    pos += 2
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        if count == 0 or count > 4 or pos + count > len(der):
            raise ValueError("bad DER length")
        length = int.from_bytes(der[pos : pos + count], "big")
        pos += count
    end = pos + length
    if end > len(der):
        raise ValueError("DER element runs past its container")
    return tag, pos, end


def _children(der: bytes, start: int, end: int) -> list[tuple[int, int, int, int]]:
    """(tag, element start, content start, content end) of each element in ``[start, end)``."""
    out = []
    pos = start
    while pos < end:
        tag, cstart, cend = _tlv(der, pos)
        if cend > end:
            raise ValueError("DER element runs past its container")
        out.append((tag, pos, cstart, cend))
        pos = cend
    return out


def _oid(content: bytes) -> tuple[int, ...]:
    arcs: list[int] = []
    value = 0
    for i, byte in enumerate(content):
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            if not arcs:
                head = min(value // 40, 2)
                arcs += [head, value - 40 * head]
            else:
                arcs.append(value)
            value = 0
        elif i == len(content) - 1:
            raise ValueError("truncated OID")
    if not arcs:
        raise ValueError("empty OID")
    return tuple(arcs)


@dataclass(frozen=True, slots=True)
class Attribute:
    """One AttributeTypeAndValue: its OID, its value's tag and content, and the whole value."""

    oid: tuple[int, ...]
    tag: int
    content: bytes
    encoded: bytes

    @property
    def dotted(self) -> str:
        return ".".join(map(str, self.oid))

    @property
    def keyword(self) -> str | None:
        return KEYWORDS.get(self.dotted)

    def text(self) -> str | None:
        charset = _CHARSETS.get(self.tag)
        if charset is None:
            return None
        try:
            return self.content.decode(charset)
        except UnicodeDecodeError as exc:
            raise ValueError(f"attribute {self.dotted} is not valid {charset}") from exc

    def rfc2253(self) -> str:
        keyword = self.keyword
        text = self.text()
        if keyword is None or text is None:
            return f"{keyword or self.dotted}=#{self.encoded.hex()}"
        return f"{keyword}={escape_value(text)}"

    def canonical(self) -> str:
        """The JDK's ``toRFC2253CanonicalString``: orders the attributes of one RDN."""
        keyword = self.keyword
        text = self.text() if self.tag in (12, 19) else None
        if keyword is None or text is None:
            return f"{keyword or self.dotted}=#{self.encoded.hex()}".lower()
        out: list[str] = []
        previous_white = False
        for i, c in enumerate(text):
            if c in _CANONICAL_ESCAPED or (i == 0 and c == "#"):
                out.append("\\")
            if c.isspace():
                if previous_white:
                    continue
                previous_white = True
            else:
                previous_white = False
            out.append(c)
        value = "".join(out).strip()
        return unicodedata.normalize("NFKD", f"{keyword}={value}".upper().lower())


def escape_value(text: str) -> str:
    """An attribute value as the JDK's RFC 2253 writer escapes it."""
    chars: list[str] = []
    for c in text:
        if c in _ESCAPED:
            chars += ["\\", c]
        elif c == "\0":
            chars += ["\\", "0", "0"]
        else:
            chars.append(c)
    lead = 0
    while lead < len(chars) and chars[lead] in " \r":
        lead += 1
    trail = len(chars) - 1
    while trail >= 0 and chars[trail] in " \r":
        trail -= 1
    return "".join(
        "\\" + c if i < lead or i > trail else c for i, c in enumerate(chars)
    )


def _rdn_key(attr: Attribute) -> tuple[int, str, tuple[int, ...]]:
    if attr.keyword is not None:
        return (0, attr.canonical(), ())
    return (1, "", attr.oid)


def subject_rdns(der: bytes) -> list[list[Attribute]]:
    """The subject of a DER certificate: its RDNs in certificate order, each a set of attributes."""
    tag, start, end = _tlv(der, 0)
    if tag != SEQUENCE:
        raise ValueError("not a certificate")
    tag, start, end = _tlv(der, start)
    if tag != SEQUENCE:
        raise ValueError("not a certificate (tbsCertificate)")
    fields = _children(der, start, end)
    if fields and fields[0][0] == _EXPLICIT_VERSION:
        fields = fields[1:]
    if len(fields) < 5:
        raise ValueError("certificate without a subject")
    tag, _, start, end = fields[4]  # serial, signature, issuer, validity, subject
    if tag != SEQUENCE:
        raise ValueError("certificate subject is not a Name")
    rdns = []
    for tag, _, rstart, rend in _children(der, start, end):
        if tag != SET:
            raise ValueError("RDN is not a SET")
        attrs = []
        for tag, _, astart, aend in _children(der, rstart, rend):
            parts = _children(der, astart, aend) if tag == SEQUENCE else []
            if len(parts) != 2 or parts[0][0] != OID:
                raise ValueError("malformed AttributeTypeAndValue")
            (_, _, ostart, oend), (vtag, vpos, vstart, vend) = parts
            attrs.append(
                Attribute(_oid(der[ostart:oend]), vtag, der[vstart:vend], der[vpos:vend])
            )
        if not attrs:
            raise ValueError("empty RDN")
        rdns.append(attrs)
    return rdns


def rfc2253_name(rdns: list[list[Attribute]]) -> str:
    return ",".join(
        "+".join(a.rfc2253() for a in sorted(rdn, key=_rdn_key)) for rdn in reversed(rdns)
    )


def principal_from_der(der: bytes | None) -> str | None:
    """``User:<subject in RFC 2253 form>`` of a verified client certificate; None without one."""
    if not der:
        return None
    return "User:" + rfc2253_name(subject_rdns(der))
