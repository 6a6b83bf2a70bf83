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

BLOCK_SIZE = 1 << 20
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class BlobTooLarge(PayloadTooLarge):
    """The upload passed ``max_bytes``; nothing was stored."""


class BlobNotFound(NotFound):
    """No blob with this sha256."""


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _TempBlob:
    """The blocking half of a write: a temporary file, its hash and its size."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=folder, prefix="upload-", suffix=".part")
        self.path = Path(name)
        self.file: BinaryIO = os.fdopen(fd, "wb")
        self.hash = hashlib.sha256()

    def write(self, block: bytes) -> None:
        self.file.write(block)
        self.hash.update(block)

    def commit(self, root: Path) -> tuple[str, Path]:
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        sha256 = self.hash.hexdigest()
        target = root / sha256[:2] / sha256[2:4] / sha256
        if target.exists():  # the same bytes are stored already
            self.path.unlink()
            return sha256, target
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self.path, target)
        _fsync_dir(target.parent)
        return sha256, target

    def discard(self) -> None:
        with contextlib.suppress(OSError):
            self.file.close()
        self.path.unlink(missing_ok=True)


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

    async def write_stream(
        self, chunks: AsyncIterator[bytes], max_bytes: int
    ) -> tuple[str, int, Path]:
        """Store the streamed bytes: ``(sha256, size, path)``.

        Raises :class:`BlobTooLarge` as soon as more than ``max_bytes`` arrive; the partial file is
        removed. Whatever else goes wrong (or a cancellation) removes it too.
        """
        temp = await asyncio.to_thread(_TempBlob, self._tmp)
        size = 0
        pending: list[bytes] = []
        buffered = 0
        try:
            async for chunk in chunks:
                size += len(chunk)
                if size > max_bytes:
                    raise BlobTooLarge(
                        f"upload larger than the limit of {max_bytes} bytes", max_bytes=max_bytes
                    )
                pending.append(chunk)
                buffered += len(chunk)
                if buffered >= self.block_size:
                    await asyncio.to_thread(temp.write, b"".join(pending))
                    pending, buffered = [], 0
            if pending:
                await asyncio.to_thread(temp.write, b"".join(pending))
            sha256, path = await asyncio.to_thread(temp.commit, self.root)
        except BaseException:
            await asyncio.to_thread(temp.discard)
            raise
        return sha256, size, path

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
