"""The archive: where recordings outlive the PBX.

The PBX deletes its oldest recordings on its own (auto-cleanup, quotas), so recfs
keeps a copy of each one in an archive: an S3-compatible bucket or a directory.
This package is the storage layer only: put a file under a key, look at a key,
stream a key back. Which recordings to archive, and when the catalog may count on
the copy, is the catalog's and the content layer's business.

    store = open_store("s3://bucket/calls", endpoint="https://s3.example.net",
                       credentials="/etc/recfs/archive.credentials")
    await store.check()                              # at start: clear errors early
    key = key_for("2024-06-10", name, store.prefix)  # PREFIX/YYYY/MM/DD/<name>
    outcome = await store.put(key, path, sha256=..., size=..., metadata={...})
    info = await store.head(key)                     # ObjectInfo | None
    async with store.get(key) as body:               # body.size, body.chunks()
        ...

Every failure is ArchiveError; ``.temporary`` says retry later or tell a person.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import unquote, urlsplit

from recfs.archive.store import (
    CHUNK_SIZE,
    ArchiveDownload,
    ArchiveError,
    ArchiveStore,
    NotInArchive,
    ObjectInfo,
    PutOutcome,
    key_for,
)

__all__ = [
    "ArchiveDownload", "ArchiveError", "ArchiveStore", "NotInArchive", "ObjectInfo",
    "PutOutcome", "key_for", "open_store",
]


def open_store(url: str, *, endpoint: str | None = None, credentials: str | None = None,
               profile: str = "default", region: str = "us-east-1", io_timeout: float = 30.0,
               max_uploads: int = 2, chunk_size: int = CHUNK_SIZE,
               environ: Mapping[str, str] | None = None) -> ArchiveStore:
    """The store that *url* (the archive= option) names.

    ``s3://BUCKET[/PREFIX]``: S3 or an S3-compatible store at *endpoint*
    (archive_endpoint=; None: AWS in *region*), keys from the *credentials* file
    (archive_credentials=, AWS shared-credentials format, section *profile*) or the
    AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY variables of *environ*.
    ``file:///PATH``: a directory (local disk or NFS); the other settings but
    max_uploads and chunk_size do not apply.

    Nothing is contacted here (check() does that); the credentials file is read.
    Raises ArchiveError(temporary=False) naming the option to fix.
    """
    parts = urlsplit(url)
    if parts.scheme == "s3":
        if not parts.netloc or parts.query or parts.fragment or "@" in parts.netloc:
            raise ArchiveError(f"archive= must be s3://BUCKET[/PREFIX], not {url!r}", temporary=False)
        from recfs.archive.s3 import (  # boto3 is imported only when used
            S3Settings,
            S3Store,
        )

        settings = S3Settings(bucket=parts.netloc, prefix=unquote(parts.path), endpoint=endpoint,
                              region=region, credentials_file=credentials, profile=profile,
                              io_timeout=io_timeout, max_uploads=max_uploads, chunk_size=chunk_size)
        try:
            return S3Store(settings, environ=environ)
        except ValueError as exc:
            raise ArchiveError(f"archive={url}: {exc}", temporary=False) from None
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/") \
                or parts.query or parts.fragment:
            raise ArchiveError(f"archive= must be file:///ABSOLUTE/PATH, not {url!r}", temporary=False)
        for option, value in (("archive_endpoint", endpoint), ("archive_credentials", credentials)):
            if value:
                raise ArchiveError(f"{option}= is for s3:// archives, not {url}", temporary=False)
        from recfs.archive.local import LocalStore

        return LocalStore(unquote(parts.path), max_uploads=max_uploads, chunk_size=chunk_size)
    raise ArchiveError(f"archive= must be s3://BUCKET[/PREFIX] or file:///PATH, not {url!r}",
                       temporary=False)
