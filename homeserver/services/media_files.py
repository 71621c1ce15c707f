"""Files of the media repository (``homeserver.services.media``): content written to a
temporary file, hashed as it comes, synced and renamed into place, so that a file in place
is always complete whatever crashed when."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


class ContentWriter:
    """A file being written under ``tmp/`` (a ``MediaSink``): hashed and counted as it is
    written; :meth:`finish` syncs it and moves it into place."""

    def __init__(self, tmp: Path, content_path: Callable[[str], Path]) -> None:
        self.tmp = tmp
        self.size = 0
        self._content_path = content_path
        self._digest = hashlib.sha256()
        self._file: BinaryIO | None = tmp.open("wb")

    async def write(self, chunk: bytes) -> None:
        assert self._file is not None, "written after finish"
        self._digest.update(chunk)
        self._file.write(chunk)
        self.size += len(chunk)

    async def finish(self, final: Path | None) -> tuple[str, int]:
        """Sync and move the file to ``final`` (None: ``content/`` by its hash); the hash
        and size."""
        assert self._file is not None
        sha256 = self._digest.hexdigest()
        await asyncio.to_thread(flush_and_sync, self._file)
        self.close()
        await asyncio.to_thread(place, self.tmp, final or self._content_path(sha256))
        return sha256, self.size

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def remove_tree(path: Path) -> None:
    """Remove a directory of files (none: nothing to do)."""
    if not path.is_dir():
        return
    for child in path.iterdir():
        with contextlib.suppress(FileNotFoundError):
            child.unlink()
    with contextlib.suppress(OSError):
        path.rmdir()


def flush_and_sync(f: object) -> None:
    f.flush()  # type: ignore[attr-defined]
    os.fsync(f.fileno())  # type: ignore[attr-defined]


def sync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def place(tmp: Path, final: Path) -> None:
    """Move a complete, synced file into place (already there: the same bytes)."""
    if final.exists():
        return
    final.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, final)
    sync_dir(final.parent)
