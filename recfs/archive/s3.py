"""The archive on an S3-compatible store (AWS S3, MinIO, SeaweedFS, Wasabi, R2, ...).

boto3 is blocking, so every call runs in a trio worker thread, under limiters of
this store's own (never trio's shared default): ``max_uploads`` puts at a time, and
a few threads for heads and downloads. A put is driven from trio one request at a
time (create, each part, complete), so cancelling it takes effect between parts
and the unfinished multipart upload is aborted.

What goes over the wire, and where to:
* only to the endpoint (or AWS's S3 for the region when there is none): no proxies,
  endpoints or credentials from the environment or ~/.aws, so no instance-metadata
  lookups either; credentials come from archive_credentials=FILE or the standard
  AWS_* variables, read here.
* never an overwrite: the object is looked at first (head), then written with
  ``If-None-Match: *`` where the store honours it, so a race loses with 412 instead
  of replacing the winner's object.
* the SHA-256 recfs computed travels as user metadata (``x-amz-meta-sha256``), the
  CDR fields beside it (percent-encoded where not printable ASCII); where the store
  accepts S3's additional checksums, the body is sent with ``x-amz-checksum-sha256``
  too, so the store itself refuses bytes damaged on the way. A store that refuses
  the header (or conditional writes) is remembered, and recfs does without.
"""

from __future__ import annotations

import base64
import configparser
import hashlib
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO, TypeVar
from urllib.parse import quote, unquote, urlsplit

import boto3
import botocore.session
import trio
from botocore import exceptions as boto_errors
from botocore.config import Config

from recfs.archive.store import (
    CHUNK_SIZE,
    ArchiveDownload,
    ArchiveError,
    NotInArchive,
    ObjectInfo,
    PutOutcome,
    check_key,
    check_put_arguments,
    mismatch,
    normalise_prefix,
    read_ahead,
)

# The first read of a download: small, so that its first bytes come quickly over a
# slow link; then CHUNK_SIZE at a time.
FIRST_CHUNK = 64 * 1024
from recfs.logs import register_secret

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client

log = logging.getLogger("recfs.archive")

T = TypeVar("T")

MIN_PART_SIZE = 5 * 1024 * 1024  # S3's smallest part (except the last)
MAX_PARTS = 10000  # S3's most parts in one upload
MAX_METADATA = 2048  # S3's limit on user metadata (names and values, as sent)

# Error codes that say "this store does not do that": the checksum header or
# If-None-Match. Anything else is a real failure.
_UNSUPPORTED = {"NotImplemented", "InvalidArgument", "InvalidRequest", "UnsupportedOperation",
                "InvalidDigest"}
_CREDENTIALS = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken",
                "TokenRefreshRequired", "InvalidSecurity", "AuthorizationHeaderMalformed"}
_TEMPORARY_CODES = {"SlowDown", "RequestTimeout", "RequestTimeTooSkewed", "ServiceUnavailable",
                    "InternalError", "Throttling", "ThrottlingException", "BadDigest",
                    "IncompleteBody", "OperationAborted"}
# Printable ASCII but "%": metadata values keep these as they are.
_SAFE = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) != "%")


def encode_metadata_value(value: str) -> str:
    """S3 metadata travels in HTTP headers: ASCII only. Percent-encode the rest
    (and "%" itself, so decoding is exact)."""
    return quote(value, safe=_SAFE)


def decode_metadata_value(value: str) -> str:
    return unquote(value)


def read_private_file(path: str, option: str) -> str:
    """A secret's file, refused if every user may read it.

    The same rule as password_file in recfs/service/config.py (the mount options):
    a world-readable secret has already leaked, and silence would make it worse.
    """
    try:
        if os.stat(path).st_mode & 0o004:
            raise ArchiveError(f"{option} {path} is readable by every user: chmod o-r it "
                               "(e.g. chmod 600) first", temporary=False)
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except OSError as exc:
        raise ArchiveError(f"cannot read {option} {path}: {exc.strerror}", temporary=False) from None


@dataclass(frozen=True)
class Credentials:
    access_key: str
    secret_key: str
    session_token: str | None
    source: str  # for messages: "archive_credentials=FILE [profile]" or "AWS_* variables"

    def __repr__(self) -> str:  # never the keys, not even in a debugger's repr
        return f"Credentials(source={self.source!r})"


def load_credentials(credentials_file: str | None, profile: str,
                     environ: Mapping[str, str]) -> Credentials:
    """From the shared-credentials FILE (``[profile]`` with aws_access_key_id and
    aws_secret_access_key, optionally aws_session_token), else from the standard
    variables AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY (, AWS_SESSION_TOKEN)."""
    if credentials_file:
        source = f"archive_credentials={credentials_file} [{profile}]"
        parser = configparser.RawConfigParser(default_section="\x00none")
        try:
            parser.read_string(read_private_file(credentials_file, "archive_credentials"))
        except configparser.Error as exc:
            raise ArchiveError(f"archive_credentials {credentials_file} is not an AWS credentials "
                               f"file ({type(exc).__name__})", temporary=False) from None
        if not parser.has_section(profile):
            raise ArchiveError(f"archive_credentials {credentials_file} has no [{profile}] section",
                               temporary=False)
        section = parser[profile]
        access, secret = section.get("aws_access_key_id"), section.get("aws_secret_access_key")
        token = section.get("aws_session_token")
        if not access or not secret:
            raise ArchiveError(f"archive_credentials {credentials_file} [{profile}] needs "
                               "aws_access_key_id and aws_secret_access_key", temporary=False)
    else:
        source = "the AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY variables"
        access, secret = environ.get("AWS_ACCESS_KEY_ID"), environ.get("AWS_SECRET_ACCESS_KEY")
        token = environ.get("AWS_SESSION_TOKEN")
        if not access or not secret:
            raise ArchiveError("no archive credentials: give archive_credentials=FILE (AWS "
                               "shared-credentials format) or set AWS_ACCESS_KEY_ID and "
                               "AWS_SECRET_ACCESS_KEY", temporary=False)
    credentials = Credentials(access.strip(), secret.strip(), token.strip() if token else None, source)
    for value in (credentials.access_key, credentials.secret_key, credentials.session_token):
        register_secret(value)  # recfs.logs: botocore's debug lines carry the key id
    return credentials


@dataclass(frozen=True)
class S3Settings:
    """Where and how to reach an S3-compatible archive (the archive_* mount options)."""

    bucket: str
    prefix: str = ""
    endpoint: str | None = None  # http(s)://host[:port]; None: AWS S3 in `region`
    region: str = "us-east-1"
    credentials_file: str | None = None  # AWS shared-credentials format
    profile: str = "default"
    io_timeout: float = 30.0  # connect and per-read timeout: a stalled store fails in this time
    max_uploads: int = 2
    threads: int = 8  # heads and downloads at a time
    attempts: int = 2  # tries per request (botocore's own retries), before ArchiveError
    multipart_threshold: int = 16 * 1024 * 1024
    part_size: int = 8 * 1024 * 1024
    chunk_size: int = CHUNK_SIZE

    def __post_init__(self) -> None:
        if not self.bucket:
            raise ArchiveError("archive=s3://BUCKET[/PREFIX] needs a bucket name", temporary=False)
        if self.endpoint is not None:
            parts = urlsplit(self.endpoint)
            if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/") \
                    or parts.query or parts.username or parts.password:
                raise ArchiveError(f"archive_endpoint must be http(s)://HOST[:PORT], not "
                                   f"{self.endpoint!r}", temporary=False)
        if self.part_size < MIN_PART_SIZE:
            raise ValueError(f"part_size must be at least {MIN_PART_SIZE} (S3's smallest part)")
        if self.max_uploads < 1 or self.threads < 1 or self.attempts < 1 or self.chunk_size < 1:
            raise ValueError("max_uploads, threads, attempts and chunk_size must be at least 1")


class S3Store:
    """An ArchiveStore on S3 (see the module's docstring)."""

    def __init__(self, settings: S3Settings, *, environ: Mapping[str, str] | None = None,
                 credentials: Credentials | None = None):
        self.settings = settings
        self._prefix = normalise_prefix(settings.prefix)
        self._credentials = credentials or load_credentials(
            settings.credentials_file, settings.profile, os.environ if environ is None else environ)
        self._client: S3Client = _make_client(settings, self._credentials)
        self._uploads = trio.CapacityLimiter(settings.max_uploads)  # whole puts
        self._upload_threads = trio.CapacityLimiter(settings.max_uploads)  # their requests
        self._threads = trio.CapacityLimiter(settings.threads)  # everything else
        self._checksums = True  # until the store refuses x-amz-checksum-sha256
        self._conditional = True  # until the store refuses If-None-Match
        # check() saw the store answer a second If-None-Match put of one key with
        # 412: a small put may then go without a HEAD first (one request, not two).
        self._no_overwrite_proven = False

    # -- the ArchiveStore protocol ----------------------------------------------

    @property
    def url(self) -> str:
        where = f"s3://{self.settings.bucket}/{self._prefix}".rstrip("/")
        return where + (f" at {self.settings.endpoint}" if self.settings.endpoint else "")

    @property
    def prefix(self) -> str:
        return self._prefix

    async def check(self) -> None:
        bucket = self.settings.bucket
        # A GET of a key that does not exist: it needs only read permission, and
        # unlike HEAD its answer has a body with an error code that tells wrong
        # credentials from a missing bucket.
        probe = f"{self._prefix}/.recfs-check" if self._prefix else ".recfs-check"
        try:
            response = await self._call(self._client.get_object, Bucket=bucket, Key=probe)
            response["Body"].close()
        except NotInArchive:
            await self._prove_no_overwrite()  # credentials work, the bucket exists
            return
        except _Denied as denied:
            # Without ListBucket permission a missing key is "AccessDenied": the
            # bucket may still be fine for recfs (put and get by key).
            try:
                await self._call(self._client.head_bucket, Bucket=bucket)
            except ArchiveError as second:
                if second.temporary:
                    raise
                raise denied from None

    async def _prove_no_overwrite(self) -> None:
        """Put one small probe object twice with If-None-Match: a store that answers
        the second with 412 never overwrites (some S3-compatible stores ignore the
        header: for them every put is preceded by a HEAD)."""
        key = f"{self._prefix}/.recfs-no-overwrite" if self._prefix else ".recfs-no-overwrite"
        for _ in range(2):
            try:
                await self._upload_call(self._client.put_object, Bucket=self.settings.bucket,
                                        Key=key, Body=b"recfs never overwrites\n",
                                        IfNoneMatch="*")
            except _Refused as refused:
                self._no_overwrite_proven = refused.precondition
                return
            except ArchiveError:
                return

    async def head(self, key: str) -> ObjectInfo | None:
        check_key(key)
        try:
            response = await self._call(self._client.head_object, Bucket=self.settings.bucket, Key=key)
        except NotInArchive:
            return None
        metadata = {name: decode_metadata_value(value)
                    for name, value in response.get("Metadata", {}).items()}
        sha256 = metadata.pop("sha256", None)
        return ObjectInfo(key, int(response["ContentLength"]), sha256, metadata)

    async def put(self, key: str, path: str, *, sha256: str, size: int,
                  metadata: Mapping[str, str]) -> PutOutcome:
        fields = check_put_arguments(key, sha256, size, metadata)
        small = size <= self.settings.multipart_threshold
        if not (small and self._conditional and self._no_overwrite_proven):
            existing = await self.head(key)
            if existing is not None:
                return (PutOutcome.ALREADY_THERE if existing.same_as(sha256, size)
                        else PutOutcome.CONFLICT)
        headers = {name: encode_metadata_value(value) for name, value in fields.items()}
        headers["sha256"] = sha256
        if sum(len(name) + len(value) for name, value in headers.items()) > MAX_METADATA:
            raise ArchiveError(f"{key}: the metadata is larger than S3's {MAX_METADATA} bytes: "
                               "not archived", temporary=False)
        async with self._uploads:
            if small:
                stored = await self._put_whole(key, path, sha256, size, headers)
            else:
                stored = await self._put_parts(key, path, sha256, size, headers)
        if stored:
            return PutOutcome.STORED
        # If-None-Match lost a race: someone stored an object there meanwhile.
        existing = await self.head(key)
        if existing is not None and existing.same_as(sha256, size):
            return PutOutcome.ALREADY_THERE
        return PutOutcome.CONFLICT

    @asynccontextmanager
    async def get(self, key: str) -> AsyncIterator[ArchiveDownload]:
        check_key(key)
        response = await self._call(self._client.get_object, Bucket=self.settings.bucket, Key=key)
        body = response["Body"]
        chunk_size = self.settings.chunk_size

        sizes = iter([FIRST_CHUNK])  # a reader waits for the first bytes: few of them

        def read() -> bytes:
            return body.read(next(sizes, chunk_size))

        def in_thread(function: Callable[[], bytes]) -> Awaitable[bytes]:
            return self._call(function, _operation="GetObject")

        try:
            async with read_ahead(key, int(response["ContentLength"]), read, in_thread) as download:
                yield download
        finally:
            body.close()  # an unfinished body: the connection is dropped, not reused

    async def aclose(self) -> None:
        await trio.to_thread.run_sync(self._client.close, limiter=self._threads)

    # -- puts ---------------------------------------------------------------------

    async def _put_whole(self, key: str, path: str, sha256: str, size: int,
                         headers: dict[str, str]) -> bool:
        """One PutObject; False if If-None-Match found an object there."""
        data = await trio.to_thread.run_sync(_read_whole, path, size, limiter=self._upload_threads)
        got = hashlib.sha256(data)
        if len(data) != size or got.hexdigest() != sha256:
            raise mismatch(path, sha256, size, got.hexdigest(), len(data))
        while True:
            extra: dict[str, Any] = {}
            if self._checksums:
                extra["ChecksumSHA256"] = base64.b64encode(got.digest()).decode("ascii")
            if self._conditional:
                extra["IfNoneMatch"] = "*"
            try:
                await self._upload_call(self._client.put_object, Bucket=self.settings.bucket,
                                        Key=key, Body=data, Metadata=headers,
                                        ContentType=_content_type(key), **extra)
                return True
            except _Refused as refused:
                if refused.precondition:
                    return False
                self._do_without(refused)

    async def _put_parts(self, key: str, path: str, sha256: str, size: int,
                         headers: dict[str, str]) -> bool:
        """A multipart upload, one part in memory at a time, the file hashed as it
        is read; aborted unless it completes."""
        part_size = max(self.settings.part_size, -(-size // MAX_PARTS))
        bucket = self.settings.bucket
        while True:  # again without the checksum, if the store refuses it
            checksums = self._checksums
            try:
                created = await self._upload_call(
                    self._client.create_multipart_upload, Bucket=bucket, Key=key, Metadata=headers,
                    ContentType=_content_type(key),
                    **({"ChecksumAlgorithm": "SHA256"} if checksums else {}))
                break
            except _Refused as refused:
                if not checksums:
                    raise refused.error from None
                self._do_without(refused)
        upload_id = created["UploadId"]
        completed = False
        try:
            source = await trio.to_thread.run_sync(_open_binary, path, limiter=self._upload_threads)
            with source:
                whole = hashlib.sha256()
                parts: list[dict[str, Any]] = []
                read = 0
                while True:
                    piece = await trio.to_thread.run_sync(source.read, part_size,
                                                          limiter=self._upload_threads)
                    if not piece and parts:
                        break
                    whole.update(piece)
                    read += len(piece)
                    if read > size:
                        break
                    number = len(parts) + 1
                    extra: dict[str, Any] = {}
                    if checksums:
                        extra["ChecksumSHA256"] = base64.b64encode(hashlib.sha256(piece).digest()).decode()
                    answer = await self._call(
                        self._client.upload_part, _limiter=self._upload_threads, Bucket=bucket, Key=key, UploadId=upload_id,
                        PartNumber=number, Body=piece, **extra)
                    part: dict[str, Any] = {"ETag": answer["ETag"], "PartNumber": number}
                    if checksums and answer.get("ChecksumSHA256"):
                        part["ChecksumSHA256"] = answer["ChecksumSHA256"]
                    parts.append(part)
                    if len(piece) < part_size:
                        break
            if read != size or whole.hexdigest() != sha256:
                raise mismatch(path, sha256, size, whole.hexdigest(), read)
            while True:
                try:
                    await self._upload_call(
                        self._client.complete_multipart_upload, Bucket=bucket, Key=key,
                        UploadId=upload_id, MultipartUpload={"Parts": parts},
                        **({"IfNoneMatch": "*"} if self._conditional else {}))
                    completed = True
                    return True
                except _Refused as refused:
                    if refused.precondition:
                        return False
                    if not self._conditional:
                        raise refused.error from None
                    self._conditional = False
                    log.warning("the archive %s does not take If-None-Match (%s): relying on "
                                "looking before writing", self.url, refused.code)
        except OSError as exc:
            raise ArchiveError(f"cannot read {path}: {exc.strerror}", temporary=False) from None
        finally:
            if not completed:
                with trio.CancelScope(shield=True), trio.move_on_after(self.settings.io_timeout):
                    try:
                        await self._call(self._client.abort_multipart_upload, Bucket=bucket,
                                         Key=key, UploadId=upload_id)
                    except ArchiveError as exc:
                        log.warning("could not abort an unfinished upload to %s (%s): its parts "
                                    "stay until a lifecycle rule for incomplete multipart "
                                    "uploads removes them", key, exc)

    def _do_without(self, refused: _Refused) -> None:
        """The store refused a header that is an extra: stop sending it."""
        if self._checksums:
            self._checksums = False
            log.warning("the archive %s does not take SHA-256 checksums (%s): relying on "
                        "recfs's own (x-amz-meta-sha256)", self.url, refused.code)
        elif self._conditional:
            self._conditional = False
            log.warning("the archive %s does not take If-None-Match (%s): relying on "
                        "looking before writing", self.url, refused.code)
        else:
            raise refused.error from None

    async def _upload_call(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """An upload request: refusals that may mean "unsupported" or "precondition
        failed" come back as _Refused, for the caller to decide."""
        return await self._call(function, *args, _limiter=self._upload_threads, _refusals=True, **kwargs)

    # -- the one way to call boto3 --------------------------------------------------

    async def _call(self, function: Callable[..., T], *args: Any, _operation: str | None = None,
                    _limiter: trio.CapacityLimiter | None = None, _refusals: bool = False,
                    **kwargs: Any) -> T:
        def blocking() -> T:
            return function(*args, **kwargs)

        try:
            return await trio.to_thread.run_sync(blocking, limiter=_limiter or self._threads)
        except Exception as exc:  # noqa: BLE001  (_translate re-raises what is not boto3's)
            error = self._translate(exc, _operation or _operation_name(function), kwargs.get("Key"))
            if _refusals and isinstance(error, _Refused):
                raise error from None
            if isinstance(error, _Refused):
                raise error.error from None
            raise error from None

    def _translate(self, exc: Exception, operation: str, key: str | None = None) -> ArchiveError:
        """Any failure of boto3 as ArchiveError, its message free of secrets."""
        where = self.url
        if isinstance(exc, ArchiveError):
            return exc
        if isinstance(exc, boto_errors.ClientError):
            error = exc.response.get("Error", {})
            code = str(error.get("Code") or "")
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
            if code in ("NoSuchKey", "404") or (status == 404 and operation in ("HeadObject", "GetObject")
                                                and code != "NoSuchBucket"):
                return NotInArchive(f"no object {key or ''} in the archive {where}".replace("  ", " "))
            if code == "NoSuchBucket" or (status == 404 and operation == "HeadBucket"):
                return ArchiveError(f"the bucket {self.settings.bucket} does not exist at "
                                    f"{self.settings.endpoint or 'AWS S3'}: create it, or fix "
                                    "archive= (or archive_endpoint=)", temporary=False)
            if code in _CREDENTIALS:
                return ArchiveError(f"the archive {where} refused the credentials from "
                                    f"{self._credentials.source} ({code}): fix archive_credentials=",
                                    temporary=False)
            if code == "AccessDenied" or status == 403:
                return _Denied(f"the archive {where} refused {operation} ({code or status}): "
                                    "the credentials from "
                                    f"{self._credentials.source} are wrong or may not do this; fix "
                                    "archive_credentials= or the bucket's policy", temporary=False)
            if status == 412 or code in ("PreconditionFailed", "ConditionalRequestConflict"):
                return _Refused(code, ArchiveError(f"{operation}: {code}", temporary=True),
                                precondition=True)
            if code in _UNSUPPORTED or status == 501:
                return _Refused(code, ArchiveError(
                    f"the archive {where} refused {operation} ({code or status})", temporary=False))
            if status == 301 or code in ("PermanentRedirect", "AuthorizationHeaderMalformed"):
                return ArchiveError(f"the bucket {self.settings.bucket} is in another region than "
                                    f"{self.settings.region} ({code}): fix archive_region= or "
                                    "archive_endpoint=", temporary=False)
            temporary = status >= 500 or status in (408, 429) or code in _TEMPORARY_CODES
            return ArchiveError(self._scrub(f"the archive {where} answered {operation} with "
                                            f"{code or 'HTTP'} {status}"), temporary=temporary)
        if isinstance(exc, (*_NETWORK, OSError)) or _is_urllib3(exc):
            text = self._scrub(f"{type(exc).__name__}: {exc}")
            return ArchiveError(f"the archive {where} is unreachable or failed during {operation} "
                                f"({text})", temporary=True)
        if isinstance(exc, boto_errors.BotoCoreError):  # botocore refused the request itself
            return ArchiveError(self._scrub(f"{operation} for the archive {where} failed: "
                                            f"{type(exc).__name__}: {exc}"), temporary=False)
        raise exc

    def _scrub(self, text: str) -> str:
        for secret in (self._credentials.access_key, self._credentials.secret_key,
                       self._credentials.session_token):
            if secret:
                text = text.replace(secret, "***")
        return text


class _Denied(ArchiveError):
    """403 AccessDenied: the credentials are valid but may not do this (or, for
    some stores, are wrong: a HEAD's 403 says no more)."""


class _Refused(ArchiveError):
    """A put's request refused in a way the put handles itself: 412 (If-None-Match
    lost) or "not implemented" (an optional header)."""

    def __init__(self, code: str, error: ArchiveError, *, precondition: bool = False):
        super().__init__(error.message, temporary=error.temporary)
        self.code = code
        self.error = error
        self.precondition = precondition


# The store is down, slow or cut the answer short: a retry later may well work.
_NETWORK: tuple[type[Exception], ...] = (
    boto_errors.HTTPClientError, boto_errors.ConnectionError, boto_errors.IncompleteReadError,
    boto_errors.ChecksumError, boto_errors.FlexibleChecksumError)


def _operation_name(function: Callable[..., Any]) -> str:
    name = getattr(function, "__name__", "request")
    return "".join(part.capitalize() for part in name.split("_")) if "_" in name else name


def _is_urllib3(exc: Exception) -> bool:
    return type(exc).__module__.startswith("urllib3")


def _open_binary(path: str) -> BinaryIO:
    return open(path, "rb")


def _read_whole(path: str, size: int) -> bytes:
    try:
        with open(path, "rb") as source:
            return source.read(size + 1)  # one more: a file longer than said is a mismatch
    except OSError as exc:
        raise ArchiveError(f"cannot read {path}: {exc.strerror}", temporary=False) from None


def _content_type(key: str) -> str:
    return "audio/wav" if key.lower().endswith(".wav") else "application/octet-stream"


def _make_client(settings: S3Settings, credentials: Credentials) -> S3Client:
    """A client that talks to the endpoint only, as configured here: nothing from
    ~/.aws or AWS_* variables but the keys (already read), no proxies."""
    core = botocore.session.Session()
    # No shared config or credentials files: settings there (endpoint_url, proxies,
    # credential_process) would send recfs somewhere the mount's options do not say.
    core.set_config_variable("config_file", os.devnull)
    core.set_config_variable("credentials_file", os.devnull)
    # Nor AWS_ENDPOINT_URL(_S3): the endpoint is archive_endpoint=, or AWS's own.
    core.set_config_variable("ignore_configured_endpoint_urls", True)
    session = boto3.session.Session(botocore_session=core)
    connect = min(settings.io_timeout, 10.0)
    config = Config(
        region_name=settings.region,
        connect_timeout=connect,
        read_timeout=settings.io_timeout,
        retries={"total_max_attempts": settings.attempts, "mode": "standard"},
        proxies={},
        max_pool_connections=settings.max_uploads + settings.threads,
        # Path-style: the host is the endpoint's, never BUCKET.endpoint.
        s3={"addressing_style": "path" if settings.endpoint else "auto"},
        # Checksums only where recfs asks for them (SHA-256): some S3-compatible
        # stores refuse the CRC32 headers newer botocore adds on its own.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        user_agent_extra="recfs",
    )
    return session.client(
        "s3",
        endpoint_url=settings.endpoint,
        region_name=settings.region,
        aws_access_key_id=credentials.access_key,
        aws_secret_access_key=credentials.secret_key,
        aws_session_token=credentials.session_token,
        config=config,
    )

