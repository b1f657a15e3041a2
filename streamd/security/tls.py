"""TLS server contexts for SSL and SASL_SSL listeners.

TLS 1.2 is the floor. ``client_auth`` follows Kafka's ``ssl.client.auth``: ``none`` (default),
``requested`` (verify a certificate when one is offered) or ``required``; verification uses
``ca_file``. Files are read once at startup; a missing or unreadable file stops startup.
"""

from __future__ import annotations

import ssl

CLIENT_AUTH = {"none": ssl.CERT_NONE, "requested": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}


def server_context(
    cert_file: str, key_file: str, ca_file: str = "", client_auth: str = "none"
) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert_file, key_file or None)
    mode = CLIENT_AUTH[client_auth]
    if mode != ssl.CERT_NONE:
        if not ca_file:
            raise ValueError(f"tls.client_auth={client_auth} needs tls.ca_file")
        ctx.load_verify_locations(cafile=ca_file)
    ctx.verify_mode = mode
    return ctx
