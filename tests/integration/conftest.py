"""Fixtures of this test folder: the session's moto S3 server (see tests/support/moto.py)."""

from tests.support.moto import moto_s3  # noqa: F401  (session fixture)
