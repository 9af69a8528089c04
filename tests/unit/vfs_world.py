"""The world of the filesystem-core and content tests: a real catalog (with its
writer) and cache on disk, a ContentStore, a RecordingsFs, and the PBX played by
respx. The `world` fixture is in tests/unit/conftest.py."""

import os

import httpx
import trio

from recfs.catalog.database import Catalog
from recfs.catalog.writer import CatalogWriter
from recfs.content.cache import DiskCache
from recfs.content.store import ContentStore, DownloadPolicy
from recfs.pbx.client import PbxClient, ReportTarget
from recfs.pbx.reports import CallRecord
from recfs.vfs.core import Owner, RecordingsFs
from recfs.vfs.tree import ROOT_INO

API = "https://pbx.test:8088/api/v2.0.0"
NAME = "20240610083402-1718001234.88-0612345678-2001-Inbound.wav"
CALL = CallRecord(name=NAME, callid="1718001234.88", timestart="2024-06-10 08:33:54",
                  caller="0612345678", callee="2001", type="Inbound", status="ANSWERED")


def wav(n_data: int) -> bytes:
    header = b"RIFF" + (36 + n_data).to_bytes(4, "little") + b"WAVEfmt " + bytes(20) + b"data"
    return header + n_data.to_bytes(4, "little") + os.urandom(n_data)


class Pbx:
    """respx routes that count handshakes and can slow the body down."""

    def __init__(self, audio: bytes, *, chunk=4096, delay=0.0, error=None, length=True):
        self.audio, self.chunk, self.delay, self.error, self.length = audio, chunk, delay, error, length
        self.randoms = 0
        self.downloads = 0
        self.streaming = False

    def install(self, router):
        router.post(f"{API}/login").mock(
            return_value=httpx.Response(200, json={"status": "Success", "token": "t" * 32}))
        router.post(f"{API}/recording/get_random").mock(side_effect=self._random)
        router.get(f"{API}/recording/download").mock(side_effect=self._download)

    def _random(self, request):
        self.randoms += 1
        return httpx.Response(200, json={"status": "Success", "random": f"{self.randoms:032x}"})

    def _download(self, request):
        self.downloads += 1
        if self.error:
            return httpx.Response(200, json={"status": "Failed", "errno": self.error})

        async def body():
            self.streaming = True
            for i in range(0, len(self.audio), self.chunk):
                yield self.audio[i:i + self.chunk]
                await trio.sleep(self.delay)
            self.streaming = False

        headers = {"content-length": str(len(self.audio))} if self.length else {}
        return httpx.Response(200, content=body(), headers=headers)


async def make_world(tmp_path, nursery):
    catalog = Catalog(tmp_path / "state" / "catalog.sqlite")
    writer = CatalogWriter(catalog)
    await nursery.start(writer.run)
    client = PbxClient("https://pbx.test:8088", "api", lambda: "pw", target=ReportTarget(8260))
    content = ContentStore(catalog, DiskCache(tmp_path / "cache"), client, writer,
                           DownloadPolicy(max_downloads=2, backoff=0.01))
    await nursery.start(content.run)
    return make_fs(catalog, content)


def make_fs(catalog, content):
    return RecordingsFs(catalog, content, Owner(1000, 1000, 0o022), status=dict,
                        observe_read=lambda seconds: None)


async def add(fs, call=CALL):
    rec = await fs.content.writer.add(call)
    fs.refresh()
    return rec


async def settled(fs):
    """Wait until the last transfer has been verified, fsynced and renamed."""
    with trio.fail_after(5):
        while fs.content.transfers:
            await trio.sleep(0.01)


async def path_attrs(fs, *parts):
    ino = ROOT_INO
    for part in parts:
        attrs = await fs.lookup(ino, part)
        ino = attrs.ino
    return attrs


