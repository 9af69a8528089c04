"""The archive's storage layer (recfs.archive) against a real S3 server (SeaweedFS,
started by tests/servers.py on loopback) and against a directory (file://).

The same behaviour is asked of both stores: a streamed round trip (multipart on
S3), never overwriting (ALREADY_THERE, CONFLICT), refusing a file that is not what
the caller says; then what only S3 has: credentials, a missing bucket, a store
that is down or stalls mid-download, conditional writes, optional checksums.
"""

from __future__ import annotations

import base64
import hashlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from recfs.archive import ArchiveError, NotInArchive, PutOutcome, key_for, open_store
from recfs.archive.store import CHUNK_SIZE
from recfs.archive.local import LocalStore
from recfs.archive.s3 import (
    MIN_PART_SIZE,
    S3Settings,
    S3Store,
    decode_metadata_value,
    encode_metadata_value,
)
from recfs.logs import redact
from tests.servers import S3Bucket, SeaweedFS

NAME = "20240610083402-1718001234.88-0612345678-2001-Inbound.wav"
CDR = {"callid": "1718001234.88", "caller": "Jürgen Müller <0612345678>", "callee": "2001",
       "type": "Inbound", "timestart": "2024-06-10 08:34:02"}
THRESHOLD = MIN_PART_SIZE  # multipart above 5 MiB, in 5 MiB parts


def write_file(path: Path, size: int, seed: int = 1) -> tuple[str, int]:
    """A file of *size* pseudo-random bytes; its SHA-256 and size."""
    block = hashlib.sha256(str(seed).encode()).digest() * 2048  # 64 KiB
    data = (block * (size // len(block) + 1))[:size]
    data = bytes(b ^ (i % 251) for i, b in enumerate(data[:4096])) + data[4096:]
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest(), size


def credentials_file(directory: Path, access: str, secret: str, mode: int = 0o600) -> str:
    path = directory / "archive.credentials"
    path.write_text(f"[default]\naws_access_key_id = {access}\naws_secret_access_key = {secret}\n")
    path.chmod(mode)
    return str(path)


def s3_store(bucket: S3Bucket, tmp_path: Path, *, secret: str | None = None,
             access: str | None = None, name: str | None = None, **tuning) -> S3Store:
    settings = {"bucket": name or bucket.name, "prefix": "calls", "endpoint": bucket.endpoint,
                "credentials_file": credentials_file(tmp_path, access or bucket.access_key,
                                                     secret or bucket.secret_key),
                "io_timeout": 5.0, "multipart_threshold": THRESHOLD, "part_size": MIN_PART_SIZE}
    settings.update(tuning)
    return S3Store(S3Settings(**settings))  # type: ignore[arg-type]


@pytest.fixture(params=["s3", "file"])
def store(request, tmp_path) -> Iterator[S3Store | LocalStore]:
    if request.param == "s3":
        bucket = request.getfixturevalue("s3_bucket")
        made: S3Store | LocalStore = s3_store(bucket, tmp_path)
    else:
        (tmp_path / "archive").mkdir()
        made = LocalStore(tmp_path / "archive")
    yield made


@pytest.fixture(autouse=True)
def _no_secret_in_logs(request, caplog):
    """Whatever the test did, no warning or error line holds the server's keys."""
    yield
    if "seaweedfs" in request.fixturenames:
        server: SeaweedFS = request.getfixturevalue("seaweedfs")
        assert server.secret_key not in caplog.text
        assert server.access_key not in caplog.text


async def read_all(store, key: str) -> tuple[bytes, list[int], int]:
    async with store.get(key) as body:
        chunks = [chunk async for chunk in body.chunks()]
        return b"".join(chunks), [len(c) for c in chunks], body.announced_size


# -- both stores ---------------------------------------------------------------------


async def test_a_multi_mib_recording_goes_in_and_streams_back(store, tmp_path):
    source = tmp_path / NAME
    sha256, size = write_file(source, 2 * MIN_PART_SIZE + 12345)  # three parts on S3
    key = key_for("2024-06-10", NAME, store.prefix)
    assert await store.head(key) is None

    assert await store.put(key, str(source), sha256=sha256, size=size, metadata=CDR) is PutOutcome.STORED

    info = await store.head(key)
    assert info is not None
    assert (info.key, info.size, info.sha256) == (key, size, sha256)
    assert info.metadata == CDR  # non-ASCII caller included
    data, lengths, announced = await read_all(store, key)
    assert announced == size and len(data) == size
    assert hashlib.sha256(data).hexdigest() == sha256
    assert max(lengths) <= CHUNK_SIZE and len(lengths) > 1  # streamed, in bounded chunks


async def test_the_same_recording_again_is_already_there(store, tmp_path):
    source = tmp_path / NAME
    sha256, size = write_file(source, 100_000)
    key = key_for("2024-06-10", NAME, store.prefix, pbx="head-office")
    assert key.endswith(f"head-office/2024/06/10/{NAME}")
    assert await store.put(key, str(source), sha256=sha256, size=size, metadata=CDR) is PutOutcome.STORED
    copy = tmp_path / "copy.wav"
    copy.write_bytes(source.read_bytes())
    assert await store.put(key, str(copy), sha256=sha256, size=size, metadata={}) is PutOutcome.ALREADY_THERE
    info = await store.head(key)
    assert info is not None and info.metadata == CDR  # the first put's metadata stays


@pytest.mark.parametrize("size", [100_000, 2 * MIN_PART_SIZE + 1])
async def test_a_different_recording_at_the_same_key_is_a_conflict_and_never_overwrites(store, tmp_path, size):
    first, second = tmp_path / "first.wav", tmp_path / "second.wav"
    sha1, size1 = write_file(first, size, seed=1)
    sha2, size2 = write_file(second, size, seed=2)
    key = key_for("2024-06-10", NAME, store.prefix)
    assert await store.put(key, str(first), sha256=sha1, size=size1, metadata=CDR) is PutOutcome.STORED
    assert await store.put(key, str(second), sha256=sha2, size=size2, metadata=CDR) is PutOutcome.CONFLICT
    # Same bytes claimed with another size: a conflict too.
    assert await store.put(key, str(first), sha256=sha1, size=size1 + 1, metadata=CDR) is PutOutcome.CONFLICT
    info = await store.head(key)
    assert info is not None and info.sha256 == sha1
    data, _, _ = await read_all(store, key)
    assert hashlib.sha256(data).hexdigest() == sha1


@pytest.mark.parametrize("size", [1000, 2 * MIN_PART_SIZE + 1])
async def test_a_file_that_is_not_what_the_caller_says_is_not_archived(store, tmp_path, size):
    source = tmp_path / NAME
    sha256, size = write_file(source, size)
    key = key_for("2024-06-10", NAME, store.prefix)
    with pytest.raises(ArchiveError) as caught:
        await store.put(key, str(source), sha256="0" * 64, size=size, metadata=CDR)
    assert not caught.value.temporary and "not archived" in str(caught.value)
    with pytest.raises(ArchiveError):
        await store.put(key, str(source), sha256=sha256, size=size - 1, metadata=CDR)
    assert await store.head(key) is None
    assert await store.put(key, str(source), sha256=sha256, size=size, metadata=CDR) is PutOutcome.STORED


async def test_a_missing_object(store):
    key = key_for("2024-06-10", NAME, store.prefix)
    assert await store.head(key) is None
    with pytest.raises(NotInArchive) as caught:
        async with store.get(key):
            pass
    assert not caught.value.temporary and NAME in str(caught.value)


async def test_check_passes_on_a_usable_store(store):
    await store.check()


async def test_an_empty_recording(store, tmp_path):
    source = tmp_path / "empty.wav"
    source.write_bytes(b"")
    sha256 = hashlib.sha256(b"").hexdigest()
    key = key_for("2024-06-10", "empty.wav", store.prefix)
    assert await store.put(key, str(source), sha256=sha256, size=0, metadata={}) is PutOutcome.STORED
    assert await read_all(store, key) == (b"", [], 0)


# -- S3 ----------------------------------------------------------------------------


async def test_s3_objects_carry_the_sha256_as_metadata_and_checksum(s3_bucket, tmp_path):
    store = s3_store(s3_bucket, tmp_path)
    small, large = tmp_path / "small.wav", tmp_path / "large.wav"
    sha_small, size_small = write_file(small, 1000)
    sha_large, size_large = write_file(large, 2 * MIN_PART_SIZE + 7)
    for path, sha, size in ((small, sha_small, size_small), (large, sha_large, size_large)):
        key = key_for("2024-06-10", path.name, store.prefix)
        assert await store.put(key, str(path), sha256=sha, size=size, metadata=CDR) is PutOutcome.STORED
    raw = s3_bucket.client()
    head = raw.head_object(Bucket=s3_bucket.name, Key="calls/2024/06/10/small.wav", ChecksumMode="ENABLED")
    assert head["Metadata"]["sha256"] == sha_small
    assert head["Metadata"]["caller"] == "J%C3%BCrgen M%C3%BCller <0612345678>"  # ASCII on the wire
    assert head["ChecksumSHA256"] == base64.b64encode(bytes.fromhex(sha_small)).decode()
    assert head["ContentType"] == "audio/wav"
    head = raw.head_object(Bucket=s3_bucket.name, Key="calls/2024/06/10/large.wav", ChecksumMode="ENABLED")
    assert head["ETag"].endswith('-3"')  # multipart: three parts of 5 MiB at most
    assert head["Metadata"]["sha256"] == sha_large
    assert head["ChecksumSHA256"].endswith("-3")  # per-part SHA-256s, checked by the store
    assert raw.list_multipart_uploads(Bucket=s3_bucket.name).get("Uploads", []) == []


async def test_an_unfinished_multipart_upload_is_aborted(s3_bucket, tmp_path):
    store = s3_store(s3_bucket, tmp_path)
    source = tmp_path / NAME
    sha256, size = write_file(source, 2 * MIN_PART_SIZE + 1)
    key = key_for("2024-06-10", NAME, store.prefix)
    with pytest.raises(ArchiveError):
        await store.put(key, str(source), sha256="f" * 64, size=size, metadata={})
    assert s3_bucket.client().list_multipart_uploads(Bucket=s3_bucket.name).get("Uploads", []) == []
    # Cancelled between parts: aborted too.
    with trio.move_on_after(0.05):
        await store.put(key, str(source), sha256=sha256, size=size, metadata={})
    assert s3_bucket.client().list_multipart_uploads(Bucket=s3_bucket.name).get("Uploads", []) == []
    assert await store.head(key) is None


@pytest.mark.parametrize("size", [1000, 2 * MIN_PART_SIZE + 1])
async def test_a_race_lost_to_another_writer_never_overwrites(s3_bucket, tmp_path, size):
    """Between put's look (head) and its write, someone stores an object there:
    If-None-Match makes the write fail instead of replacing it."""
    store = s3_store(s3_bucket, tmp_path)
    theirs, ours = tmp_path / "theirs.wav", tmp_path / "ours.wav"
    sha_theirs, _ = write_file(theirs, size, seed=7)
    sha_ours, _ = write_file(ours, size, seed=8)
    key = key_for("2024-06-10", NAME, store.prefix)
    assert await store.put(key, str(theirs), sha256=sha_theirs, size=size, metadata={}) is PutOutcome.STORED
    real_head = store.head
    looks = 0

    async def head_that_missed_it(key):
        nonlocal looks
        looks += 1
        return None if looks == 1 else await real_head(key)

    store.head = head_that_missed_it  # type: ignore[method-assign]
    assert await store.put(key, str(ours), sha256=sha_ours, size=size, metadata={}) is PutOutcome.CONFLICT
    looks = 0
    assert await store.put(key, str(theirs), sha256=sha_theirs, size=size,
                           metadata={}) is PutOutcome.ALREADY_THERE
    store.head = real_head  # type: ignore[method-assign]
    info = await store.head(key)
    assert info is not None and info.sha256 == sha_theirs


async def test_a_store_without_sha256_checksums_is_used_without_them(s3_bucket, tmp_path, caplog):
    from botocore.exceptions import ClientError

    store = s3_store(s3_bucket, tmp_path)
    client = store._client
    real_put = client.put_object
    sent: list[dict] = []

    def put_object(**kwargs):
        sent.append(kwargs)
        if "ChecksumSHA256" in kwargs:
            raise ClientError({"Error": {"Code": "NotImplemented", "Message": "no"},
                               "ResponseMetadata": {"HTTPStatusCode": 501}}, "PutObject")
        return real_put(**kwargs)

    client.put_object = put_object  # type: ignore[method-assign]
    for n in (1, 2):
        source = tmp_path / f"{n}.wav"
        sha256, size = write_file(source, 1000, seed=n)
        key = key_for("2024-06-10", source.name, store.prefix)
        assert await store.put(key, str(source), sha256=sha256, size=size, metadata={}) is PutOutcome.STORED
    assert [("ChecksumSHA256" in s, "IfNoneMatch" in s) for s in sent] == [(True, True), (False, True),
                                                                           (False, True)]
    assert "does not take SHA-256 checksums" in caplog.text


async def test_wrong_credentials_are_not_temporary_and_never_shown(s3_bucket, tmp_path):
    wrong_secret = "Wr0ng" + s3_bucket.secret_key[5:][::-1]
    store = s3_store(s3_bucket, tmp_path, secret=wrong_secret)
    for attempt in (store.check(), store.head(key_for("2024-06-10", NAME, store.prefix))):
        with pytest.raises(ArchiveError) as caught:
            await attempt
        message = str(caught.value)
        assert not caught.value.temporary
        assert "archive_credentials" in message
        for secret in (s3_bucket.access_key, s3_bucket.secret_key, wrong_secret):
            assert secret not in message and secret not in repr(caught.value)
    assert "SignatureDoesNotMatch" in str(caught.value) or "403" in str(caught.value)
    # A key id the store does not know: the same, and recfs's log filter knows it.
    unknown = "AKIDNOTKNOWN" + "7" * 8
    store = s3_store(s3_bucket, tmp_path, access=unknown)
    with pytest.raises(ArchiveError) as caught:
        await store.check()
    assert not caught.value.temporary and "InvalidAccessKeyId" in str(caught.value)
    assert unknown not in str(caught.value)
    assert unknown not in redact(f"Credential={unknown}/20240610/us-east-1/s3/aws4_request")


async def test_a_missing_bucket_is_a_clear_error(s3_bucket, tmp_path):
    store = s3_store(s3_bucket, tmp_path, name="no-such-bucket")
    with pytest.raises(ArchiveError) as caught:
        await store.check()
    assert not caught.value.temporary
    assert "no-such-bucket does not exist" in str(caught.value) and "archive=" in str(caught.value)
    source = tmp_path / NAME
    sha256, size = write_file(source, 1000)
    with pytest.raises(ArchiveError) as caught:
        await store.put(key_for("2024-06-10", NAME, store.prefix), str(source), sha256=sha256,
                        size=size, metadata={})
    assert not caught.value.temporary and "does not exist" in str(caught.value)


async def test_seaweedfs_listens_and_talks_on_loopback_only(s3_bucket, tmp_path):
    store = s3_store(s3_bucket, tmp_path)
    await store.check()  # some traffic, so that connections exist
    sockets = s3_bucket.server.sockets()
    assert any(state == "LISTEN" for _, _, state in sockets)
    assert any(state == "ESTABLISHED" for _, _, state in sockets)  # its parts talk to each other
    for local, remote, state in sockets:
        assert local.startswith("127.0.0.1:"), (local, remote, state)
        if state != "LISTEN":
            assert remote.startswith("127.0.0.1:"), (local, remote, state)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_a_store_that_is_down_is_temporary_and_quick(s3_bucket, tmp_path):
    store = s3_store(s3_bucket, tmp_path, endpoint=f"http://127.0.0.1:{closed_port()}")
    started = time.monotonic()
    for attempt in (store.check(), store.head(key_for("2024-06-10", NAME, store.prefix))):
        with pytest.raises(ArchiveError) as caught:
            await attempt
        assert caught.value.temporary and "unreachable" in str(caught.value)
    assert time.monotonic() - started < 6


async def test_a_store_killed_while_in_use(tmp_path):
    server = SeaweedFS.start(tmp_path / "weed")
    try:
        bucket = S3Bucket(server, server.new_bucket())
        store = s3_store(bucket, tmp_path)
        source = tmp_path / NAME
        sha256, size = write_file(source, 1000)
        key = key_for("2024-06-10", NAME, store.prefix)
        assert await store.put(key, str(source), sha256=sha256, size=size, metadata={}) is PutOutcome.STORED
        server.kill()
        started = time.monotonic()
        for attempt in (store.head(key), store.put(key, str(source), sha256=sha256, size=size, metadata={})):
            with pytest.raises(ArchiveError) as caught:
                await attempt
            assert caught.value.temporary
        assert time.monotonic() - started < 6
    finally:
        server.stop()


class StallingServer:
    """Answers every request with 200, a Content-Length of *length* and only the
    first *sent* bytes of the body (or nothing at all before the headers), then
    stays silent, connection open."""

    def __init__(self, length: int, sent: int, headers: bool = True):
        self.length, self.sent, self.headers = length, sent, headers
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.port = self.sock.getsockname()[1]
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        connections = []
        self.sock.settimeout(0.1)
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            connections.append(conn)
            conn.settimeout(2)
            request = b""
            while b"\r\n\r\n" not in request:
                data = conn.recv(65536)
                if not data:
                    break
                request += data
            if self.headers:
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: audio/wav\r\n"
                             b"Content-Length: %d\r\n\r\n" % self.length + b"\0" * self.sent)
        for conn in connections:
            conn.close()

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        self.sock.close()


async def test_a_download_that_stalls_midway_fails_within_the_timeout(tmp_path):
    server = StallingServer(length=1024 * 1024, sent=100 * 1024)
    try:
        store = S3Store(S3Settings(bucket="b", endpoint=f"http://127.0.0.1:{server.port}",
                                   credentials_file=credentials_file(tmp_path, "AKIDSTALL0001", "s3cr3t"),
                                   io_timeout=1.0, attempts=1, chunk_size=64 * 1024))
        received = 0
        started = time.monotonic()
        with pytest.raises(ArchiveError) as caught:
            async with store.get("calls/2024/06/10/x.wav") as body:
                assert body.announced_size == 1024 * 1024
                async for chunk in body.chunks():
                    received += len(chunk)
        elapsed = time.monotonic() - started
        assert caught.value.temporary
        assert 64 * 1024 <= received < 1024 * 1024  # what arrived was served
        assert elapsed < 3, elapsed
        # No answer at all (not even headers): the same.
        silent = StallingServer(length=0, sent=0, headers=False)
        try:
            store = S3Store(S3Settings(bucket="b", endpoint=f"http://127.0.0.1:{silent.port}",
                                       credentials_file=credentials_file(tmp_path, "AKIDSTALL0001", "s3cr3t"),
                                       io_timeout=1.0, attempts=1))
            started = time.monotonic()
            with pytest.raises(ArchiveError) as caught:
                await store.head("calls/2024/06/10/x.wav")
            assert caught.value.temporary and time.monotonic() - started < 3
        finally:
            silent.close()
    finally:
        server.close()


async def test_nothing_from_the_environment_redirects_recfs(s3_bucket, tmp_path, monkeypatch):
    """Proxies, endpoint overrides and ~/.aws files in the environment are ignored:
    recfs talks to archive_endpoint= (or AWS) only, with the keys it was given."""
    dead = f"http://127.0.0.1:{closed_port()}"
    aws_config = tmp_path / "aws-config"
    aws_config.write_text(f"[default]\nendpoint_url = {dead}\nregion = eu-west-3\n")
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY"):
        monkeypatch.setenv(name, dead)
    monkeypatch.setenv("AWS_ENDPOINT_URL", dead)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", dead)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(aws_config))
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    store = s3_store(s3_bucket, tmp_path)
    await store.check()
    source = tmp_path / NAME
    sha256, size = write_file(source, 1000)
    key = key_for("2024-06-10", NAME, store.prefix)
    assert await store.put(key, str(source), sha256=sha256, size=size, metadata={}) is PutOutcome.STORED
    aws = S3Store(S3Settings(bucket="b", region="eu-central-1"),
                  environ={"AWS_ACCESS_KEY_ID": "AKIDENV", "AWS_SECRET_ACCESS_KEY": "x"})
    assert aws._client.meta.endpoint_url == "https://s3.eu-central-1.amazonaws.com"


def test_a_credentials_file_readable_by_everyone_is_refused(tmp_path):
    path = credentials_file(tmp_path, "AKIDWORLD0001", "s3cr3t", mode=0o644)
    for make in (lambda: S3Store(S3Settings(bucket="b", credentials_file=path)),
                 lambda: open_store("s3://b", credentials=path)):
        with pytest.raises(ArchiveError) as caught:
            make()
        assert not caught.value.temporary
        assert "archive_credentials" in str(caught.value) and "readable by every user" in str(caught.value)
        assert "s3cr3t" not in str(caught.value)


def test_credentials_files_and_variables(tmp_path):
    path = tmp_path / "creds"
    path.write_text("[default]\naws_access_key_id = A1\naws_secret_access_key = S1\n"
                    "[archive]\naws_access_key_id = A2\naws_secret_access_key = S2\n")
    path.chmod(0o600)
    assert S3Store(S3Settings(bucket="b", credentials_file=str(path), profile="archive"),
                   environ={})._credentials.access_key == "A2"
    with pytest.raises(ArchiveError, match=r"no \[other\] section"):
        S3Store(S3Settings(bucket="b", credentials_file=str(path), profile="other"))
    with pytest.raises(ArchiveError, match="archive_credentials=FILE") as caught:
        S3Store(S3Settings(bucket="b"), environ={})
    assert not caught.value.temporary
    store = S3Store(S3Settings(bucket="b"), environ={"AWS_ACCESS_KEY_ID": "AKIDENVVAR",
                                                     "AWS_SECRET_ACCESS_KEY": "S3CRETVAR"})
    assert "S3CRETVAR" not in repr(store._credentials)
    assert "S3CRETVAR" not in redact("x S3CRETVAR y")  # registered with the log filter


# -- the directory store -------------------------------------------------------------


async def test_a_directory_archive_holds_plain_files_and_readable_sidecars(tmp_path):
    root = tmp_path / "archive"
    root.mkdir()
    store = LocalStore(root)
    source = tmp_path / NAME
    sha256, size = write_file(source, 300_000)
    key = key_for("2024-06-10", NAME, "", pbx="pbx1")
    assert await store.put(key, str(source), sha256=sha256, size=size, metadata=CDR) is PutOutcome.STORED
    final = root / "pbx1/2024/06/10" / NAME
    assert final.read_bytes() == source.read_bytes()
    sidecar = json.loads((root / "pbx1/2024/06/10" / (NAME + ".meta.json")).read_text())
    assert sidecar == {"sha256": sha256, "size": size, "metadata": CDR}
    assert sorted(p.name for p in final.parent.iterdir()) == [NAME, NAME + ".meta.json"]  # no temporaries


async def test_a_lost_sidecar_is_rebuilt_from_the_object(tmp_path):
    """A crash between the object's link and its sidecar: the object says what it is."""
    root = tmp_path / "archive"
    root.mkdir()
    store = LocalStore(root)
    source = tmp_path / NAME
    sha256, size = write_file(source, 10_000)
    key = key_for("2024-06-10", NAME, "")
    assert await store.put(key, str(source), sha256=sha256, size=size, metadata=CDR) is PutOutcome.STORED
    sidecar = root / "2024/06/10" / (NAME + ".meta.json")
    sidecar.unlink()
    info = await store.head(key)
    assert info is not None and (info.sha256, info.size) == (sha256, size)
    assert await store.put(key, str(source), sha256=sha256, size=size, metadata=CDR) is PutOutcome.ALREADY_THERE
    assert json.loads(sidecar.read_text())["sha256"] == sha256


async def test_check_of_a_missing_or_unwritable_directory(tmp_path):
    store = open_store(f"file://{tmp_path}/nowhere")
    with pytest.raises(ArchiveError) as caught:
        await store.check()
    assert not caught.value.temporary and "archive=" in str(caught.value)
    (tmp_path / "a-file").write_text("")
    with pytest.raises(ArchiveError, match="not a directory"):
        await open_store(f"file://{tmp_path}/a-file").check()
    await open_store(f"file://{tmp_path}").check()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".recfs")] == []


# -- keys, URLs, metadata --------------------------------------------------------------


def test_keys():
    assert key_for("2024-06-10", NAME, "calls") == f"calls/2024/06/10/{NAME}"
    assert key_for("2024-06-10", NAME, "/a/b/", pbx="hq") == f"a/b/hq/2024/06/10/{NAME}"
    assert key_for("2024-06-10", NAME, "") == f"2024/06/10/{NAME}"
    for day, name, prefix, pbx in (("2024-6-10", NAME, "", ""), ("2024-06-10", "a/b", "", ""),
                                   ("2024-06-10", "..", "", ""), ("2024-06-10", NAME, "a/../b", ""),
                                   ("2024-06-10", NAME, "", "x/y"), ("2024-06-10", "", "", "")):
        with pytest.raises(ValueError):
            key_for(day, name, prefix, pbx)


def test_open_store_urls(tmp_path):
    env = {"AWS_ACCESS_KEY_ID": "AKIDURL", "AWS_SECRET_ACCESS_KEY": "x"}
    store = open_store("s3://recordings/pbx/calls/", endpoint="http://127.0.0.1:9000", environ=env)
    assert isinstance(store, S3Store)
    assert (store.settings.bucket, store.prefix) == ("recordings", "pbx/calls")
    assert store.url == "s3://recordings/pbx/calls at http://127.0.0.1:9000"
    local = open_store(f"file://{tmp_path}")
    assert isinstance(local, LocalStore) and local.root == tmp_path and local.prefix == ""
    for url, option in (("ftp://host/x", "archive="), ("s3://", "archive="), ("file://host/x", "archive="),
                        ("/just/a/path", "archive="), ("s3://b/../x", "archive="),
                        ("file:///x", "archive_endpoint=")):
        with pytest.raises(ArchiveError) as caught:
            open_store(url, environ=env, endpoint="http://e:1" if option == "archive_endpoint=" else None)
        assert option in str(caught.value) and not caught.value.temporary
    with pytest.raises(ArchiveError, match="archive_endpoint"):
        open_store("s3://b", endpoint="127.0.0.1:9000", environ=env)


def test_metadata_values_are_ascii_on_the_wire_and_exact_back():
    for value in ("plain 2001", "Jürgen", "50% off", "line\r\nbreak", "日本", "%C3%BC"):
        encoded = encode_metadata_value(value)
        assert encoded.isascii() and "\n" not in encoded
        assert decode_metadata_value(encoded) == value
    assert encode_metadata_value("2024-06-10 08:34:02") == "2024-06-10 08:34:02"
