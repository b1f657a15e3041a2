"""Certificate principals exactly as Kafka (the JDK's X500Principal.getName()) writes them.

The expected strings follow the JDK's RFC 2253 writer: most specific RDN first, escaped
``, = + < > # ; " \\``, escaped leading/trailing spaces, ``#hex`` for attributes without an
RFC 2253 keyword and for values that are not strings.
"""

from __future__ import annotations

import datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.name import _ASN1Type
from cryptography.x509.oid import NameOID

from streamd.security.principal import escape_value, principal_from_der

A = x509.NameAttribute
_KEY = ec.generate_private_key(ec.SECP256R1())


def der(name: x509.Name) -> bytes:
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(x509.Name([A(NameOID.COMMON_NAME, "test CA")]))
        .public_key(_KEY.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(_KEY, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.DER)


def test_an_escaped_comma_is_not_a_second_attribute() -> None:
    forged = principal_from_der(der(x509.Name([A(NameOID.ORGANIZATION_NAME, "acme,CN=admin")])))
    real = principal_from_der(
        der(x509.Name([A(NameOID.COMMON_NAME, "admin"), A(NameOID.ORGANIZATION_NAME, "acme")]))
    )
    assert forged == "User:O=acme\\,CN\\=admin"
    assert real == "User:O=acme,CN=admin"
    assert forged != real


def test_most_specific_rdn_first() -> None:
    name = x509.Name(
        [
            A(NameOID.COUNTRY_NAME, "DE"),
            A(NameOID.STATE_OR_PROVINCE_NAME, "Berlin"),
            A(NameOID.LOCALITY_NAME, "Berlin"),
            A(NameOID.ORGANIZATION_NAME, "Acme"),
            A(NameOID.ORGANIZATIONAL_UNIT_NAME, "Ops"),
            A(NameOID.COMMON_NAME, "client1"),
        ]
    )
    assert principal_from_der(der(name)) == "User:CN=client1,OU=Ops,O=Acme,L=Berlin,ST=Berlin,C=DE"


def test_attributes_without_a_keyword_are_oid_and_hex() -> None:
    name = x509.Name([A(NameOID.COMMON_NAME, "svc"), A(NameOID.EMAIL_ADDRESS, "a@b.io")])
    # IA5String (tag 0x16), 6 bytes.
    expected = "User:1.2.840.113549.1.9.1=#16066140622e696f,CN=svc"
    assert principal_from_der(der(name)) == expected
    name = x509.Name([A(NameOID.DOMAIN_COMPONENT, "example"), A(NameOID.USER_ID, "u1")])
    assert principal_from_der(der(name)) == "User:UID=u1,DC=example"
    serial = x509.Name([A(NameOID.SERIAL_NUMBER, "42")])
    assert principal_from_der(der(serial)) == "User:2.5.4.5=#13023432"


def test_multi_valued_rdn_is_ordered_like_the_jdk() -> None:
    rdn = x509.RelativeDistinguishedName(
        [A(NameOID.ORGANIZATIONAL_UNIT_NAME, "b"), A(NameOID.COMMON_NAME, "a")]
    )
    assert principal_from_der(der(x509.Name([rdn]))) == "User:CN=a+OU=b"


@pytest.mark.parametrize(
    ("value", "escaped"),
    [
        ("a,b", "a\\,b"),
        ("a+b=c", "a\\+b\\=c"),
        ('q"<>;', 'q\\"\\<\\>\\;'),
        ("#x#", "\\#x\\#"),
        ("back\\slash", "back\\\\slash"),
        ("  padded ", "\\ \\ padded\\ "),
        ("nul\0", "nul\\00"),
        ("ünïcode", "ünïcode"),
    ],
)
def test_value_escaping(value: str, escaped: str) -> None:
    assert escape_value(value) == escaped
    assert principal_from_der(der(x509.Name([A(NameOID.COMMON_NAME, value)]))) == (
        "User:CN=" + escaped
    )


def test_string_types_are_decoded_by_their_charset() -> None:
    bmp = x509.Name([A(NameOID.COMMON_NAME, "bmp ü", _type=_ASN1Type.BMPString)])
    assert principal_from_der(der(bmp)) == "User:CN=bmp ü"
    universal = x509.Name([A(NameOID.COMMON_NAME, "u", _type=_ASN1Type.UniversalString)])
    assert principal_from_der(der(universal)) == "User:CN=#1c0400000075"


def test_no_certificate_and_garbage() -> None:
    assert principal_from_der(None) is None
    assert principal_from_der(b"") is None
    with pytest.raises(ValueError):
        principal_from_der(b"\x30\x03\x02\x01")
