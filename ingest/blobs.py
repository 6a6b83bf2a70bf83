"""Content-addressed store of the original uploads: ``root/ab/cd/<sha256>``.

An upload is streamed to a temporary file in ``root/tmp`` while it is hashed and counted, so it is
never held in memory whole and an oversized one is stopped as soon as it passes the limit. The
finished file is fsynced and renamed into place atomically (then its folder is fsynced): a blob
path either does not exist or holds the complete bytes, even after a crash. Identical bytes are
stored once. All file I/O runs in worker threads, never on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import BinaryIO

from rag.core.errors import NotFound, PayloadTooLarge
from rag.core.files import fsync_dir

BLOCK_SIZE = 1 << 20
HEAD_BYTES = 64 * 1024
"""What a :class:`BlobWriter` keeps of an upload's start, for content detection."""
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class BlobTooLarge(PayloadTooLarge):
    """The upload passed ``max_bytes``; nothing was stored."""


class BlobNotFound(NotFound):
    """No blob with this sha256."""


class _TempBlob:
    """The blocking half of a write: a temporary file, its hash, its size and its head."""

    def __init__(self, folder: Path, head_bytes: int) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=folder, prefix="upload-", suffix=".part")
        self.path = Path(name)
        self.file: BinaryIO = os.fdopen(fd, "wb")
        self.hash = hashlib.sha256()
        self.head = b""
        self.head_bytes = head_bytes

    def write(self, block: bytes) -> None:
        self.file.write(block)
        self.hash.update(block)
        if len(self.head) < self.head_bytes:
            self.head += block[: self.head_bytes - len(self.head)]

    def finish(self) -> str:
        """Flush the file to disk and close it; its sha256."""
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        return self.hash.hexdigest()

    def place(self, root: Path, sha256: str) -> Path:
        target = root / sha256[:2] / sha256[2:4] / sha256
        if target.exists():  # the same bytes are stored already
            self.path.unlink()
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self.path, target)
        fsync_dir(target.parent)
        return target

    def discard(self) -> None:
        with contextlib.suppress(OSError):
            self.file.close()
        self.path.unlink(missing_ok=True)


class BlobWriter:
    """One upload on its way into the store: written in blocks (in worker threads), hashed and
    counted as it arrives, its first ``head_bytes`` kept for content detection.

    :meth:`finish` makes the bytes durable in the temporary file (:attr:`temp_path`, for a
    detector that needs the whole file, such as a ZIP's central directory), :meth:`commit` puts
    them in place, :meth:`discard` removes them. Memory held: one block plus the head.
    """

    def __init__(self, temp: _TempBlob, root: Path, max_bytes: int, block_size: int) -> None:
        self._temp = temp
        self._root = root
        self.max_bytes = max_bytes
        self.block_size = block_size
        self.size = 0
        self.sha256: str | None = None
        self.path: Path | None = None
        self._pending: list[bytes] = []
        self._buffered = 0

    @property
    def head(self) -> bytes:
        """The first bytes written (complete after :meth:`finish`)."""
        return self._temp.head

    @property
    def temp_path(self) -> Path:
        return self._temp.path

    async def write(self, data: bytes) -> None:
        """Append ``data``; :class:`BlobTooLarge` (and nothing kept) past ``max_bytes``."""
        self.size += len(data)
        if self.size > self.max_bytes:
            await self.discard()
            raise BlobTooLarge(
                f"upload larger than the limit of {self.max_bytes} bytes", max_bytes=self.max_bytes
            )
        self._pending.append(data)
        self._buffered += len(data)
        if self._buffered >= self.block_size:
            await self._flush()

    async def _flush(self) -> None:
        if self._pending:
            block = b"".join(self._pending)
            self._pending, self._buffered = [], 0
            await asyncio.to_thread(self._temp.write, block)

    async def finish(self) -> str:
        """Everything written is on disk in the temporary file; the sha256."""
        if self.sha256 is None:
            await self._flush()
            self.sha256 = await asyncio.to_thread(self._temp.finish)
        return self.sha256

    async def commit(self) -> Path:
        """Move the finished bytes into the store (once); the blob's path."""
        sha256 = await self.finish()
        if self.path is None:
            self.path = await asyncio.to_thread(self._temp.place, self._root, sha256)
        return self.path

    async def discard(self) -> None:
        """Remove the temporary file, unless committed."""
        if self.path is None:
            await asyncio.to_thread(self._temp.discard)


class BlobStore:
    def __init__(self, root: Path, *, block_size: int = BLOCK_SIZE) -> None:
        self.root = root
        self.block_size = block_size
        self._tmp = root / "tmp"

    def path_for(self, sha256: str) -> Path:
        """Where the blob with this sha256 (64 lowercase hex digits) lives."""
        if not _SHA256.match(sha256):
            raise ValueError(f"not a sha256 hex digest: {sha256!r}")
        return self.root / sha256[:2] / sha256[2:4] / sha256

    async def open_writer(self, max_bytes: int, *, head_bytes: int = HEAD_BYTES) -> BlobWriter:
        """A :class:`BlobWriter` for one upload of at most ``max_bytes``."""
        temp = await asyncio.to_thread(_TempBlob, self._tmp, head_bytes)
        return BlobWriter(temp, self.root, max_bytes, self.block_size)

    async def write_stream(
        self, chunks: AsyncIterator[bytes], max_bytes: int
    ) -> tuple[str, int, Path]:
        """Store the streamed bytes: ``(sha256, size, path)``.

        Raises :class:`BlobTooLarge` as soon as more than ``max_bytes`` arrive; the partial file is
        removed. Whatever else goes wrong (or a cancellation) removes it too.
        """
        writer = await self.open_writer(max_bytes)
        try:
            async for chunk in chunks:
                await writer.write(chunk)
            path = await writer.commit()
        except BaseException:
            await writer.discard()
            raise
        return await writer.finish(), writer.size, path

    async def read(self, sha256: str) -> bytes:
        path = self.path_for(sha256)
        try:
            return await asyncio.to_thread(path.read_bytes)
        except FileNotFoundError as exc:
            raise BlobNotFound(f"no stored original with sha256 {sha256}") from exc

    async def exists(self, sha256: str) -> bool:
        return await asyncio.to_thread(self.path_for(sha256).is_file)

    async def delete(self, sha256: str) -> bool:
        """Remove the blob; ``False`` if there was none. The caller checks that no document
        still refers to these bytes (:meth:`Registry.sha256_in_use`)."""
        path = self.path_for(sha256)

        def unlink() -> bool:
            try:
                path.unlink()
            except FileNotFoundError:
                return False
            return True

        return await asyncio.to_thread(unlink)

    async def remove_stale_temp(self, older_than: float = 3600.0) -> int:
        """Remove temporary files left by a crashed process (older than ``older_than`` seconds);
        the number removed. Safe to run at start-up next to live uploads with a generous age."""

        def sweep() -> int:
            if not self._tmp.is_dir():
                return 0
            cutoff = time.time() - older_than
            removed = 0
            for entry in self._tmp.iterdir():
                with contextlib.suppress(FileNotFoundError):
                    if entry.stat().st_mtime < cutoff:
                        entry.unlink()
                        removed += 1
            return removed

        return await asyncio.to_thread(sweep)
