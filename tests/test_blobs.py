"""The content-addressed store of original uploads, on a real folder."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

import pytest

from ingest.blobs import BlobNotFound, BlobStore, BlobTooLarge
from tests.conftest import wait_for


async def stream(parts: Iterable[bytes]) -> AsyncIterator[bytes]:
    for part in parts:
        await asyncio.sleep(0)
        yield part


def stored_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and "tmp" not in p.relative_to(root).parts]


def temp_files(root: Path) -> list[Path]:
    return list((root / "tmp").glob("*")) if (root / "tmp").exists() else []


@pytest.fixture
def store(tmp_path: Path) -> BlobStore:
    return BlobStore(tmp_path / "blobs", block_size=64 * 1024)


async def test_streamed_bytes_are_hashed_and_stored_by_content(store: BlobStore) -> None:
    data = os.urandom(300_000)
    parts = [data[i : i + 7_000] for i in range(0, len(data), 7_000)]
    sha256, size, path = await store.write_stream(stream(parts), max_bytes=len(data))
    assert sha256 == hashlib.sha256(data).hexdigest()
    assert size == len(data)
    assert path == store.root / sha256[:2] / sha256[2:4] / sha256 == store.path_for(sha256)
    assert path.read_bytes() == data
    assert await store.read(sha256) == data
    assert await store.exists(sha256)
    assert temp_files(store.root) == []


async def test_an_empty_upload_is_stored_too(store: BlobStore) -> None:
    sha256, size, _ = await store.write_stream(stream([]), max_bytes=10)
    assert (sha256, size) == (hashlib.sha256(b"").hexdigest(), 0)


async def test_too_large_stops_early_and_leaves_nothing(store: BlobStore) -> None:
    consumed: list[int] = []

    async def endless() -> AsyncIterator[bytes]:
        for i in range(1_000):
            consumed.append(i)
            yield b"x" * 1_000

    with pytest.raises(BlobTooLarge) as caught:
        await store.write_stream(endless(), max_bytes=10_000)
    assert caught.value.status == 413
    assert caught.value.details == {"max_bytes": 10_000}
    assert len(consumed) == 11  # stopped at the first chunk past the limit
    assert stored_files(store.root) == []
    assert temp_files(store.root) == []


async def test_exactly_max_bytes_is_accepted(store: BlobStore) -> None:
    _, size, _ = await store.write_stream(stream([b"a" * 5, b"b" * 5]), max_bytes=10)
    assert size == 10


async def test_identical_bytes_are_stored_once(store: BlobStore) -> None:
    data = b"same bytes" * 1_000
    first = await store.write_stream(stream([data]), max_bytes=len(data))
    second = await store.write_stream(stream([data[:5], data[5:]]), max_bytes=len(data))
    together = await asyncio.gather(
        *(store.write_stream(stream([data]), max_bytes=len(data)) for _ in range(4))
    )
    assert {first, second, *together} == {first}
    assert stored_files(store.root) == [first[2]]
    assert temp_files(store.root) == []


async def test_a_cancelled_upload_leaves_no_temporary_file(store: BlobStore) -> None:
    started = asyncio.Event()

    async def slow() -> AsyncIterator[bytes]:
        yield b"x" * 100_000
        started.set()
        await asyncio.sleep(30)  # a client that stalls mid-upload: until cancelled
        yield b"never"

    task = asyncio.create_task(store.write_stream(slow(), max_bytes=1 << 20))
    await started.wait()
    assert await wait_for(lambda: temp_files(store.root))  # the upload is under way
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert temp_files(store.root) == []
    assert stored_files(store.root) == []


async def test_delete_and_missing_blobs(store: BlobStore) -> None:
    sha256, _, path = await store.write_stream(stream([b"bye"]), max_bytes=3)
    assert await store.delete(sha256)
    assert not path.exists()
    assert not await store.exists(sha256)
    assert not await store.delete(sha256)
    with pytest.raises(BlobNotFound):
        await store.read(sha256)


@pytest.mark.parametrize("name", ["../../etc/passwd", "ABC", "a" * 63, "A" * 64, "g" * 64])
def test_only_sha256_digests_name_blobs(store: BlobStore, name: str) -> None:
    with pytest.raises(ValueError, match="sha256"):
        store.path_for(name)


async def test_stale_temporary_files_are_swept(store: BlobStore) -> None:
    tmp = store.root / "tmp"
    tmp.mkdir(parents=True)
    old, fresh = tmp / "upload-old.part", tmp / "upload-new.part"
    old.write_bytes(b"left by a crash")
    fresh.write_bytes(b"in progress")
    an_hour_ago = time.time() - 7_200
    os.utime(old, (an_hour_ago, an_hour_ago))
    assert await store.remove_stale_temp(older_than=3_600) == 1
    assert not old.exists()
    assert fresh.exists()
