"""A minimal SCRAM client (RFC 5802) for driving the server state machine in tests."""

from __future__ import annotations

import base64
import hashlib
import hmac

from streamd.security.scram import ScramMechanism


class ScramClient:
    def __init__(self, mech: ScramMechanism, user: str, password: str, nonce: str) -> None:
        self.mech, self.user, self.password, self.nonce = mech, user, password, nonce
        self.bare = f"n={user},r={nonce}"

    def first(self) -> bytes:
        return ("n,," + self.bare).encode()

    def final(self, server_first: bytes, *, nonce: str | None = None) -> bytes:
        text = server_first.decode()
        attrs = dict(part.split("=", 1) for part in text.split(","))
        salt = base64.b64decode(attrs["s"])
        iterations = int(attrs["i"])
        full_nonce = attrs["r"] if nonce is None else nonce
        without_proof = f"c=biws,r={full_nonce}"
        salted = hashlib.pbkdf2_hmac(self.mech.hash_name, self.password.encode(), salt, iterations)
        client_key = hmac.new(salted, b"Client Key", self.mech.hash_name).digest()
        stored = hashlib.new(self.mech.hash_name, client_key).digest()
        auth = f"{self.bare},{text},{without_proof}".encode()
        signature = hmac.new(stored, auth, self.mech.hash_name).digest()
        proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        server_key = hmac.new(salted, b"Server Key", self.mech.hash_name).digest()
        self.expected_server_final = (
            b"v=" + base64.b64encode(hmac.new(server_key, auth, self.mech.hash_name).digest())
        )
        return f"{without_proof},p={base64.b64encode(proof).decode()}".encode()
