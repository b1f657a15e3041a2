"""Object store on S3 or an S3-compatible server (MinIO, moto) through aiobotocore.

This is the only module that imports aiobotocore/botocore. One client (and its connection pool)
is created lazily on first use and kept until :meth:`S3Store.close`.

Decisions:

* Addressing: path-style when ``path_style`` is set, or by default when a custom
  ``endpoint_url`` is given (MinIO, moto); virtual-hosted style against AWS itself.
* Credentials: ``access_key_id``/``secret_access_key`` (and ``session_token``) when given,
  otherwise the standard AWS chain (``AWS_*`` environment variables, profiles, instance roles).
  Region: the option, else ``AWS_REGION``/``AWS_DEFAULT_REGION``, else ``us-east-1``.
* Retries are ours, not botocore's (its retry count is pinned to a single attempt): throttling
  (``SlowDown``, 429, 503), other 5xx, timeouts and connection errors are retried up to
  ``max_attempts`` times in total with exponential backoff and full jitter
  (``sleep = uniform(0, min(max_delay_s, base_delay_s * 2**n))``). Misconfiguration
  (``NoSuchBucket``, ``AccessDenied``, ``InvalidAccessKeyId``, ``SignatureDoesNotMatch``, missing
  credentials, TLS failures) fails at once with :class:`StoreAccessError` naming bucket and
  endpoint.
* Put-if-absent uses ``If-None-Match: *`` (AWS since 2024, MinIO, moto 5 all honour it; a 412
  means the key exists), on ``PutObject`` and on ``CompleteMultipartUpload`` (moto 5.2 checks
  it there too; a multipart upload also HEADs the key first, so an existing object does not
  cost a whole upload to find out). With ``conditional_writes=False``, or after the server
  answered 501 to it, the store falls back to head-then-put (not atomic against a concurrent
  writer) and logs so.
* Botocore's own flexible request checksums are only sent where an API requires them: streamd
  stamps its own CRC32C (``x-amz-meta-streamd-crc32c``), which many S3-compatible servers handle
  better than aws-chunked trailers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp
import botocore.exceptions as bex
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session

from streamd.errors import ConfigError
from streamd.tiering.checksum import crc32c, crc32c_hex, verify
from streamd.tiering.store import (
    CHECKSUM_METADATA_KEY,
    ObjectExists,
    ObjectInfo,
    ObjectNotFound,
    RangeNotSatisfiable,
    StoreAccessError,
    StoreError,
    normalize_metadata,
    pread_files,
    validate_key,
    validate_range,
)

log = logging.getLogger(__name__)

STREAM_PIECE = 256 * 1024

T = TypeVar("T")

_FATAL_CODES = frozenset(
    {
        "NoSuchBucket",
        "AccessDenied",
        "AllAccessDisabled",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "InvalidBucketName",
        "ExpiredToken",
        "InvalidToken",
        "AuthorizationHeaderMalformed",
        "PermanentRedirect",
        "AccountProblem",
    }
)
_RETRIABLE_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestLimitExceeded",
        "TooManyRequests",
        "RequestTimeout",
        "RequestTimeoutException",
        "InternalError",
        "ServiceUnavailable",
        "ConditionalRequestConflict",
    }
)
_TRANSIENT_EXCEPTIONS: tuple[type[BaseException], ...] = (
    bex.HTTPClientError,
    bex.ConnectionError,
    aiohttp.ClientError,
    TimeoutError,
    ConnectionError,
)


@dataclass(frozen=True, kw_only=True)
class S3Options:
    """Connection and retry settings (config keys ``tiering.s3.*`` carry the same names)."""

    endpoint_url: str | None = None
    region: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = None
    session_token: str | None = None
    path_style: bool | None = None
    max_attempts: int = 5
    base_delay_s: float = 0.1
    max_delay_s: float = 5.0
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 30.0
    max_pool_connections: int = 32
    conditional_writes: bool = True

    def __post_init__(self) -> None:
        for name in (
            "endpoint_url",
            "region",
            "access_key_id",
            "secret_access_key",
            "session_token",
        ):
            if getattr(self, name) == "":
                object.__setattr__(self, name, None)  # config writes "" for "not set"
        if (self.access_key_id is None) != (self.secret_access_key is None):
            raise ConfigError(
                "tiering.s3.access_key_id and tiering.s3.secret_access_key must be set together"
            )
        if self.max_attempts < 1:
            raise ConfigError("tiering.s3.max_attempts must be at least 1")
        if self.base_delay_s < 0 or self.max_delay_s < self.base_delay_s:
            raise ConfigError(
                "tiering.s3 retry delays must satisfy 0 <= base_delay_s <= max_delay_s"
            )


class S3Store:
    """:class:`streamd.tiering.store.ObjectStore` on one bucket, under an optional key prefix."""

    def __init__(self, bucket: str, *, prefix: str = "", options: S3Options | None = None) -> None:
        self._bucket = bucket
        self._prefix = prefix.strip("/")
        self._options = options or S3Options()
        self._client: Any = None
        self._stack: AsyncExitStack | None = None
        self._client_lock = asyncio.Lock()
        self._conditional_writes = self._options.conditional_writes
        if not self._conditional_writes:
            log.info(
                "%s: conditional writes disabled; put-if-absent is head-then-put (not atomic)",
                self.description,
            )
        self._list_page_size = 1000
        self.part_size = 16 << 20
        """put_file: files larger than this go up as multipart uploads of parts this large."""
        self.requests: Counter[str] = Counter()
        self.retries = 0

    @property
    def description(self) -> str:
        where = f"s3://{self._bucket}" + (f"/{self._prefix}" if self._prefix else "")
        return f"{where} at {self._options.endpoint_url or 'the default AWS endpoint'}"

    async def check(self) -> None:
        await self._call("head bucket", lambda c: c.head_bucket(Bucket=self._bucket), "HEAD")

    async def put(
        self,
        key: str,
        data: bytes,
        *,
        if_absent: bool = False,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        full = self._full_key(key)
        meta = normalize_metadata(metadata)
        meta[CHECKSUM_METADATA_KEY] = crc32c_hex(data)
        args: dict[str, Any] = {"Bucket": self._bucket, "Key": full, "Body": bytes(data)}
        args["Metadata"] = meta
        if if_absent and not self._conditional_writes:
            if await self.head(key) is not None:
                raise ObjectExists(f"object {key!r} already exists in {self.description}")
            if_absent = False
        if if_absent:
            try:
                await self._call(
                    f"put {key!r}", lambda c: c.put_object(**args, IfNoneMatch="*"), "PUT"
                )
                return
            except _ConditionalUnsupported:
                log.warning(
                    "%s does not support If-None-Match on PUT; "
                    "falling back to head-then-put (not atomic)",
                    self.description,
                )
                self._conditional_writes = False
                await self.put(key, data, if_absent=True, metadata=metadata)
                return
        await self._call(f"put {key!r}", lambda c: c.put_object(**args), "PUT")

    async def put_file(
        self,
        key: str,
        fd: int,
        size: int,
        *,
        checksum: str,
        if_absent: bool = False,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        await self.put_files(
            key, [(fd, size)], checksum=checksum, if_absent=if_absent, metadata=metadata
        )

    async def put_files(
        self,
        key: str,
        files: Sequence[tuple[int, int]],
        *,
        checksum: str,
        if_absent: bool = False,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        """Store the concatenated files (whose CRC32C is ``checksum``).

        Up to ``part_size`` bytes go in one PUT; more as a multipart upload of ``part_size``
        parts read one at a time, so memory stays bounded by one part whatever the object size.
        Each part is retried on its own; a failed upload is aborted (the bucket keeps no parts)
        and the whole object is tried again on the next tick.
        """
        size = sum(n for _, n in files)
        if size <= self.part_size:
            data = await asyncio.to_thread(pread_files, files, size, 0)
            if crc32c_hex(data) != checksum:
                raise StoreError(f"put {key!r}: the source changed while it was read")
            await self.put(key, data, if_absent=if_absent, metadata=metadata)
            return
        if if_absent and await self.head(key) is not None:
            raise ObjectExists(f"object {key!r} already exists in {self.description}")
        full = self._full_key(key)
        meta = normalize_metadata(metadata)
        meta[CHECKSUM_METADATA_KEY] = checksum
        created = await self._call(
            f"start multipart upload of {key!r}",
            lambda c: c.create_multipart_upload(Bucket=self._bucket, Key=full, Metadata=meta),
            "PUT",
        )
        upload_id = created["UploadId"]
        try:
            parts = []
            crc = 0
            for number, offset in enumerate(range(0, size, self.part_size), start=1):
                data = await asyncio.to_thread(
                    pread_files, files, min(self.part_size, size - offset), offset
                )
                crc = crc32c(data, crc)

                def upload(c: Any, n: int = number, body: bytes = data) -> Awaitable[Any]:
                    return c.upload_part(  # type: ignore[no-any-return]
                        Bucket=self._bucket, Key=full, UploadId=upload_id, PartNumber=n, Body=body
                    )

                resp = await self._call(f"upload part {number} of {key!r}", upload, "PUT")
                parts.append({"ETag": resp["ETag"], "PartNumber": number})
            if format(crc, "08x") != checksum:
                raise StoreError(f"put {key!r}: the source changed while it was read")
            condition = {"IfNoneMatch": "*"} if if_absent and self._conditional_writes else {}
            await self._call(
                f"complete multipart upload of {key!r}",
                lambda c: c.complete_multipart_upload(
                    Bucket=self._bucket,
                    Key=full,
                    UploadId=upload_id,
                    MultipartUpload={"Parts": parts},
                    **condition,
                ),
                "PUT",
            )
        except BaseException:
            with contextlib.suppress(Exception):
                await self._call(
                    f"abort multipart upload of {key!r}",
                    lambda c: c.abort_multipart_upload(
                        Bucket=self._bucket, Key=full, UploadId=upload_id
                    ),
                    "DELETE",
                )
            raise

    async def get(self, key: str, *, byte_range: tuple[int, int] | None = None) -> bytes:
        full = self._full_key(key)
        args: dict[str, Any] = {"Bucket": self._bucket, "Key": full}
        if byte_range is not None:
            start, end = validate_range(byte_range)
            if start == end:
                return b""
            args["Range"] = f"bytes={start}-{end - 1}"

        async def fetch(client: Any) -> tuple[bytes, dict[str, str], bool]:
            resp = await client.get_object(**args)
            async with resp["Body"] as body:
                data = await body.read()
            return data, resp.get("Metadata", {}), "ContentRange" in resp

        data, meta, ranged = await self._call(f"get {key!r}", fetch, "GET")
        if byte_range is None:
            expected = meta.get(CHECKSUM_METADATA_KEY)
            if expected is not None:
                verify(data, expected, what=f"object {key!r} in {self.description}")
        elif not ranged:
            data = data[byte_range[0] : byte_range[1]]
        return data

    async def read_range(
        self, key: str, byte_range: tuple[int, int], consume: Callable[[bytes], None]
    ) -> int:
        """Stream bytes ``[start, end)`` of ``key`` to ``consume`` in order, piece by piece as
        they arrive, and return how many were delivered (fewer when the object ends first).

        One GET (this is what lets a reader serve the first bytes of a large range before the
        last ones arrived). A transfer that breaks is retried like any request, resuming where
        it stopped; an exception raised by ``consume`` (a failed checksum) ends it at once.
        Nothing here is verified: the caller checks what it consumes."""
        full = self._full_key(key)
        start, end = validate_range(byte_range)
        got = 0

        async def attempt(client: Any) -> None:
            nonlocal got
            lo = start + got
            if lo >= end:
                return
            resp = await client.get_object(
                Bucket=self._bucket, Key=full, Range=f"bytes={lo}-{end - 1}"
            )
            skip = 0 if "ContentRange" in resp else lo  # a server that ignored Range
            async with resp["Body"] as body:
                while piece := await body.read(STREAM_PIECE):  # to EOF: the connection is reused
                    if skip:
                        dropped = min(skip, len(piece))
                        piece, skip = piece[dropped:], skip - dropped
                    piece = piece[: end - start - got]
                    if piece:
                        consume(piece)
                        got += len(piece)

        if start < end:
            await self._call(f"get {key!r}", attempt, "GET")
        return got

    async def head(self, key: str) -> ObjectInfo | None:
        full = self._full_key(key)
        try:
            resp = await self._call(
                f"head {key!r}", lambda c: c.head_object(Bucket=self._bucket, Key=full), "HEAD"
            )
        except ObjectNotFound:
            return None
        return ObjectInfo(
            key=key,
            size=int(resp["ContentLength"]),
            etag=resp.get("ETag"),
            metadata=dict(resp.get("Metadata", {})),
        )

    async def list(self, prefix: str = "") -> AsyncIterator[ObjectInfo]:
        full_prefix = f"{self._prefix}/{prefix}" if self._prefix else prefix
        strip = len(self._prefix) + 1 if self._prefix else 0
        token: str | None = None
        while True:
            args: dict[str, Any] = {
                "Bucket": self._bucket,
                "Prefix": full_prefix,
                "MaxKeys": self._list_page_size,
            }
            if token:
                args["ContinuationToken"] = token
            page = await self._call(
                f"list {prefix!r}", _op("list_objects_v2", **args), "LIST"
            )
            for item in page.get("Contents", []):
                yield ObjectInfo(
                    key=item["Key"][strip:], size=int(item["Size"]), etag=item.get("ETag")
                )
            if not page.get("IsTruncated"):
                return
            token = page["NextContinuationToken"]

    async def delete(self, key: str) -> None:
        full = self._full_key(key)
        await self._call(
            f"delete {key!r}", lambda c: c.delete_object(Bucket=self._bucket, Key=full), "DELETE"
        )

    async def delete_many(self, keys: Iterable[str]) -> None:
        full_keys = [self._full_key(key) for key in keys]
        for i in range(0, len(full_keys), 1000):
            batch = {"Objects": [{"Key": k} for k in full_keys[i : i + 1000]], "Quiet": True}
            resp = await self._call(
                "delete objects", _op("delete_objects", Bucket=self._bucket, Delete=batch),
                "DELETE",
            )
            errors = [e for e in resp.get("Errors", []) if e.get("Code") != "NoSuchKey"]
            if errors:
                first = errors[0]
                raise StoreError(
                    f"delete of {len(errors)} objects in {self.description} failed, first "
                    f"{first.get('Key')!r}: {first.get('Code')} {first.get('Message')}",
                    retriable=True,
                )

    async def close(self) -> None:
        async with self._client_lock:
            stack, self._stack, self._client = self._stack, None, None
        if stack is not None:
            await stack.aclose()

    def _full_key(self, key: str) -> str:
        validate_key(key)
        return f"{self._prefix}/{key}" if self._prefix else key

    async def _get_client(self) -> Any:
        if self._client is not None:
            return self._client
        async with self._client_lock:
            if self._client is None:
                opts = self._options
                path_style = (
                    opts.path_style if opts.path_style is not None else bool(opts.endpoint_url)
                )
                config = AioConfig(
                    s3={"addressing_style": "path" if path_style else "auto"},
                    retries={"total_max_attempts": 1, "mode": "standard"},
                    connect_timeout=opts.connect_timeout_s,
                    read_timeout=opts.read_timeout_s,
                    max_pool_connections=opts.max_pool_connections,
                    request_checksum_calculation="when_required",
                    response_checksum_validation="when_required",
                )
                region = (
                    opts.region
                    or os.environ.get("AWS_REGION")
                    or os.environ.get("AWS_DEFAULT_REGION")
                    or "us-east-1"
                )
                stack = AsyncExitStack()
                self._client = await stack.enter_async_context(
                    get_session().create_client(
                        "s3",
                        endpoint_url=opts.endpoint_url,
                        region_name=region,
                        aws_access_key_id=opts.access_key_id,
                        aws_secret_access_key=opts.secret_access_key,
                        aws_session_token=opts.session_token,
                        config=config,
                    )
                )
                self._stack = stack
        return self._client

    async def _call(self, what: str, op: Callable[[Any], Awaitable[T]], verb: str) -> T:
        """Run ``op(client)`` (one ``verb`` request) with retries; translate failures into
        store errors."""
        opts = self._options
        attempt = 0
        while True:
            attempt += 1
            self.requests[verb] += 1
            try:
                client = await self._get_client()
                return await op(client)
            except bex.ClientError as exc:
                error = self._translate(what, exc)
            except (bex.NoCredentialsError, bex.PartialCredentialsError, bex.SSLError) as exc:
                raise StoreAccessError(f"{what} on {self.description}: {exc}") from exc
            except _TRANSIENT_EXCEPTIONS as exc:
                error = StoreError(
                    f"{what} on {self.description}: {type(exc).__name__}: {exc}", retriable=True
                )
                error.__cause__ = exc
            if not error.retriable or attempt >= opts.max_attempts:
                if error.retriable:
                    raise StoreError(
                        f"{error} (gave up after {attempt} attempts)", retriable=True
                    ) from error.__cause__
                raise error
            self.retries += 1
            delay = random.uniform(0, min(opts.max_delay_s, opts.base_delay_s * 2 ** (attempt - 1)))
            log.debug("retrying %s in %.3fs after attempt %d: %s", what, delay, attempt, error)
            await asyncio.sleep(delay)

    def _translate(self, what: str, exc: bex.ClientError) -> StoreError:
        err = exc.response.get("Error", {})
        code = str(err.get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        message = (
            f"{what} on {self.description}: {code or status} {err.get('Message', '')}".rstrip()
        )
        error: StoreError
        if code in _FATAL_CODES or (status == 403 and code in ("", "403")):
            if code == "NoSuchBucket":
                message = f"bucket {self._bucket!r} does not exist ({message})"
            error = StoreAccessError(message)
        elif code == "404" and what == "head bucket":
            error = StoreAccessError(f"bucket {self._bucket!r} does not exist ({message})")
        elif code in ("NoSuchKey", "404", "NotFound"):
            error = ObjectNotFound(message)
        elif code == "PreconditionFailed" or status == 412:
            error = ObjectExists(message)
        elif code == "InvalidRange" or status == 416:
            error = RangeNotSatisfiable(message)
        elif status == 501 and what.startswith("put"):
            error = _ConditionalUnsupported(message)
        elif code in _RETRIABLE_CODES or status in (429, 500, 502, 503, 504) or status >= 500:
            error = StoreError(message, retriable=True)
        else:
            error = StoreError(message)
        error.__cause__ = exc
        return error


def _op(method: str, **kwargs: Any) -> Callable[[Any], Awaitable[Any]]:
    """``client.<method>(**kwargs)`` as a retriable operation for :meth:`S3Store._call`."""

    def run(client: Any) -> Awaitable[Any]:
        return getattr(client, method)(**kwargs)  # type: ignore[no-any-return]

    return run


class _ConditionalUnsupported(StoreError):
    """The server rejected If-None-Match with 501 Not Implemented."""
