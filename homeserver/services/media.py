"""The media repository: uploads, downloads, thumbnails, other servers' media, admin.

Files under ``media.store_path``:

- ``content/ab/cd/abcd…`` — content, named by its SHA-256: the same bytes uploaded twice are
  stored once (rows in the ``media`` table name them);
- ``thumbnails/abcd…/WxH-method[-animated]`` — thumbnails of that content, made on first
  request (in a thread pool, off the event loop) and kept;
- ``remote_thumbnails/{sha256 of server/mediaId}/WxH-method[-animated].{type}`` — thumbnails other
  servers made of their media (asked of them first; made here from the original when they
  give none);
- ``tmp/`` — uploads, fetched media and thumbnails being written.

Every file is written to ``tmp/`` (other servers' media too, streamed as it comes, never
held whole in memory), fsynced and renamed into place (``media_files``): a file under
``content/`` or ``thumbnails/`` is always complete, whatever crashed when.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import secrets
import string
from collections import OrderedDict
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from core.clock import Clock
from core.errors import LimitExceeded, MatrixError, NotFound, TooLarge
from core.types import is_valid_server_name
from homeserver.config import MediaConfig, ThumbnailSize
from homeserver.services import thumbnailer
from homeserver.services.media_files import (
    ContentWriter,
    flush_and_sync,
    place,
    remove_tree,
)
from homeserver.services.ports import ALONE, RemoteMedia, Replication
from storage.stores.media import Completion, MediaRecord, MediaStore

logger = logging.getLogger(__name__)

CANNOT_OVERWRITE_MEDIA = "M_CANNOT_OVERWRITE_MEDIA"
NOT_YET_UPLOADED = "M_NOT_YET_UPLOADED"
_ID_ALPHABET = string.ascii_letters + string.digits
_ID_LENGTH = 24
# How long a download waits at most for a reserved ID's content (the spec's timeout_ms).
DEFAULT_WAIT_MS = 20_000
MAX_WAIT_MS = 60_000
REMOTE_TIMEOUT_S = 60.0
# Other servers' media is streamed to disk as it comes (bounded by media.max_upload_bytes):
# this many fetches at once at most, so many clients asking cannot tie up every connection.
REMOTE_FETCHES_AT_ONCE = 4
THUMBNAIL_THREADS = 2
UNTHUMBNAILABLE_REMEMBERED = 10_000
_THUMBNAIL_TYPES = {".jpeg": "image/jpeg", ".png": "image/png", ".gif": "image/gif",
                    ".webp": "image/webp"}
_SUFFIXES = {v: k for k, v in _THUMBNAIL_TYPES.items()}


@dataclass(frozen=True, slots=True)
class MediaFile:
    """Content ready to send: its file and the labels it was uploaded with."""

    path: Path
    content_type: str
    upload_name: str | None
    size: int


def is_valid_media_id(media_id: str) -> bool:
    return 0 < len(media_id) <= 255 and all(
        c in _ID_ALPHABET or c in "-_=." for c in media_id)


class MediaService:
    """The media repository of one server (see the module docstring)."""

    def __init__(self, store: MediaStore, clock: Clock, config: MediaConfig, server_name: str,
                 *, remote: RemoteMedia | None = None, replication: Replication = ALONE
                 ) -> None:
        """``replication``: the other processes of the server hear of each upload to a
        reserved ID (their downloads may be waiting for it)."""
        self._store = store
        self._replication = replication
        self._clock = clock
        self._config = config
        self._server_name = server_name
        self._remote = remote
        self._root = config.store_path
        self._tmp = self._root / "tmp"
        self._executor = ThreadPoolExecutor(THUMBNAIL_THREADS, thread_name_prefix="thumbnail")
        # Downloads waiting for the upload to a reserved ID.
        self._waiters: dict[tuple[str, str], set[asyncio.Future[None]]] = {}
        # One fetch per remote media and one generation per thumbnail at a time.
        self._fetching: dict[tuple[str, str], asyncio.Future[MediaRecord]] = {}
        self._thumbnailing: dict[Path, asyncio.Future[Path]] = {}
        self._remote_thumbnailing: dict[Path, asyncio.Future[MediaFile | None]] = {}
        # Content found not to be thumbnailable (not decoded again), oldest first.
        self._unthumbnailable: OrderedDict[Path, bool] = OrderedDict()  # True: too large
        self._remote_slots = asyncio.Semaphore(REMOTE_FETCHES_AT_ONCE)

    @property
    def max_upload_bytes(self) -> int:
        return self._config.max_upload_bytes

    @property
    def legacy_unauthenticated(self) -> bool:
        return self._config.legacy_unauthenticated

    def is_mine(self, server_name: str) -> bool:
        return server_name == self._server_name

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    # -- uploads ----------------------------------------------------------------------------

    def _new_id(self) -> str:
        return "".join(secrets.choice(_ID_ALPHABET) for _ in range(_ID_LENGTH))

    async def create(self, user_id: str) -> tuple[str, int]:
        """Reserve a media ID for a later upload: its ``mxc://`` URI and when it expires."""
        now = self._clock.time_ms()
        expires = now + self._config.unused_expiration_ms
        media_id = self._new_id()
        if not await self._store.reserve(self._server_name, media_id, user_id, now, expires,
                                         self._config.max_pending_uploads):
            raise LimitExceeded(retry_after_ms=60_000)
        return f"mxc://{self._server_name}/{media_id}", expires

    async def check_upload_to(self, user_id: str, server_name: str, media_id: str) -> None:
        """Refuse an upload to a reserved ID before its body is read."""
        record = await self._store.get(server_name, media_id) \
            if self.is_mine(server_name) else None
        now = self._clock.time_ms()
        if record is None or (record.sha256 is None and record.unused_expires_ts is not None
                              and record.unused_expires_ts <= now):
            raise NotFound("Unknown media ID")
        if record.sha256 is not None:
            raise MatrixError("Media ID already has content", status=409,
                              errcode=CANNOT_OVERWRITE_MEDIA)
        if record.user_id != user_id:
            raise MatrixError("You may not upload to this media ID", status=403,
                              errcode="M_FORBIDDEN")

    async def upload(self, user_id: str, body: AsyncIterator[bytes], *,
                     content_type: str | None, upload_name: str | None,
                     media_id: str | None = None) -> str:
        """Store an upload (to a new ID, or to ``media_id`` reserved by :meth:`create`);
        its ``mxc://`` URI.

        Raises:
            TooLarge: the body is over ``media.max_upload_bytes`` (nothing is kept).
        """
        sha256, size = await self._receive(body)
        now = self._clock.time_ms()
        if media_id is None:
            media_id = self._new_id()
            await self._store.add(MediaRecord(
                self._server_name, media_id, content_type, upload_name, size, sha256, user_id,
                now, None, None))
        else:
            done = await self._store.complete(
                self._server_name, media_id, user_id, now, content_type=content_type,
                upload_name=upload_name, size=size, sha256=sha256)
            if done is not Completion.DONE:
                # Raced with another upload to the same ID: the same answers as before.
                await self.check_upload_to(user_id, self._server_name, media_id)
                raise NotFound("Unknown media ID")
            self._replication.publish("media_uploaded", media_id)
            self.uploaded(media_id)
        logger.info("Stored media %s (%d bytes) from %s", media_id, size, user_id)
        return f"mxc://{self._server_name}/{media_id}"

    def uploaded(self, media_id: str) -> None:
        """Content reached a reserved ID (here, or in another process): downloads waiting
        for it go on."""
        for waiter in self._waiters.pop((self._server_name, media_id), ()):
            if not waiter.done():
                waiter.set_result(None)

    def _content_path(self, sha256: str) -> Path:
        return self._root / "content" / sha256[:2] / sha256[2:4] / sha256

    async def _receive(self, body: AsyncIterator[bytes]) -> tuple[str, int]:
        """Write ``body`` to a file under ``content/`` (hash and size)."""
        limit = self._config.max_upload_bytes
        async with self._writing() as writer:
            async for chunk in body:
                if writer.size + len(chunk) > limit:
                    raise TooLarge(f"Upload over the limit of {limit} bytes")
                await writer.write(chunk)
            return await writer.finish(None)

    @contextlib.asynccontextmanager
    async def _writing(self) -> AsyncIterator[ContentWriter]:
        """A file under ``tmp/`` to write content to, hashed as it is written; removed
        unless :meth:`ContentWriter.finish` moved it into place."""
        self._tmp.mkdir(parents=True, exist_ok=True)
        writer = ContentWriter(self._tmp / f"upload-{secrets.token_hex(8)}", self._content_path)
        try:
            yield writer
        finally:
            writer.close()
            with contextlib.suppress(FileNotFoundError):
                writer.tmp.unlink()

    # -- downloads --------------------------------------------------------------------------

    async def _record(self, server_name: str, media_id: str, *, timeout_ms: int | None,
                      allow_remote: bool) -> MediaRecord:
        if not is_valid_media_id(media_id):
            raise NotFound("Unknown media ID")
        if not self.is_mine(server_name):
            if not allow_remote or not is_valid_server_name(server_name):
                raise NotFound("Unknown media ID")
            return await self._remote_record(server_name, media_id)
        record = await self._store.get(server_name, media_id)
        if record is not None and record.sha256 is None:
            record = await self._wait_for_upload(record, timeout_ms)
        if record is None:
            raise NotFound("Unknown media ID")
        if record.quarantined_by is not None:
            raise NotFound("Media is unavailable")
        return record

    async def _wait_for_upload(self, record: MediaRecord, timeout_ms: int | None
                               ) -> MediaRecord | None:
        now = self._clock.time_ms()
        if record.unused_expires_ts is not None and record.unused_expires_ts <= now:
            return None
        wait_ms = min(DEFAULT_WAIT_MS if timeout_ms is None else timeout_ms, MAX_WAIT_MS)
        key = (record.origin, record.media_id)
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(key, set()).add(waiter)
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(wait_ms, 0) / 1000):
                    await waiter
        finally:
            waiters = self._waiters.get(key)
            if waiters is not None:
                waiters.discard(waiter)
                if not waiters:
                    del self._waiters[key]
        fresh = await self._store.get(record.origin, record.media_id)
        if fresh is not None and fresh.sha256 is None:
            raise MatrixError("Content has not been uploaded yet", status=504,
                              errcode=NOT_YET_UPLOADED)
        return fresh

    async def download(self, server_name: str, media_id: str, *, timeout_ms: int | None = None,
                       allow_remote: bool = True) -> MediaFile:
        """The content of ``mxc://server_name/media_id`` (another server's fetched once and
        kept, unless ``allow_remote`` is false).

        Raises:
            NotFound: no such media (or quarantined).
        """
        record = await self._record(server_name, media_id, timeout_ms=timeout_ms,
                                    allow_remote=allow_remote)
        return self._file_of(record)

    def _file_of(self, record: MediaRecord) -> MediaFile:
        assert record.sha256 is not None
        path = self._content_path(record.sha256)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise NotFound("Media is unavailable") from None
        return MediaFile(path, record.content_type or "application/octet-stream",
                         record.upload_name, size)

    # -- other servers' media ---------------------------------------------------------------

    async def _remote_record(self, server_name: str, media_id: str) -> MediaRecord:
        record = await self._store.get(server_name, media_id)
        if record is None:
            key = (server_name, media_id)
            fetching = self._fetching.get(key)
            if fetching is None:
                fetching = asyncio.ensure_future(self._fetch(server_name, media_id))
                self._fetching[key] = fetching
                fetching.add_done_callback(lambda _: self._fetching.pop(key, None))
            record = await asyncio.shield(fetching)
        if record.quarantined_by is not None:
            raise NotFound("Media is unavailable")
        return record

    async def _fetch(self, server_name: str, media_id: str) -> MediaRecord:
        if self._remote is None:
            raise NotFound("Unknown media ID")
        async with self._remote_slots, self._writing() as writer:
            fetched = await self._remote.download(
                server_name, media_id, sink=writer, max_bytes=self._config.max_upload_bytes,
                timeout_s=REMOTE_TIMEOUT_S)
            sha256, size = await writer.finish(None)
            content_type, filename = fetched.content_type, fetched.filename
        record = MediaRecord(server_name, media_id, content_type, filename,
                             size, sha256, None, self._clock.time_ms(), None, None)
        if not await self._store.add(record):
            stored = await self._store.get(server_name, media_id)
            if stored is not None:
                return stored
        logger.info("Fetched media %s from %s (%d bytes)", media_id, server_name, size)
        return record

    # -- thumbnails -------------------------------------------------------------------------

    def choose_size(self, width: int, height: int, method: str) -> ThumbnailSize:
        """The smallest configured size of ``method`` (or, lacking any, of the other method)
        covering ``width``x``height``; the largest when none does."""
        sizes = [s for s in self._config.thumbnail_sizes if s.method == method] \
            or list(self._config.thumbnail_sizes)
        covering = [s for s in sizes if s.width >= width and s.height >= height]
        if covering:
            return min(covering, key=lambda s: (s.width * s.height, s.width))
        return max(sizes, key=lambda s: (s.width * s.height, s.width))

    async def thumbnail(self, server_name: str, media_id: str, width: int, height: int,
                        method: str, *, animated: bool = False, timeout_ms: int | None = None,
                        allow_remote: bool = True) -> MediaFile:
        """A thumbnail of the media for a ``width``x``height`` box.

        Raises:
            NotFound: no such media.
            MatrixError: 400 when the content cannot be thumbnailed (not a picture we decode,
                or over ``media.max_image_pixels``).
        """
        size = self.choose_size(width, height, method)
        if (allow_remote and self._remote is not None and not self.is_mine(server_name)
                and is_valid_server_name(server_name) and is_valid_media_id(media_id)):
            remote = await self._remote_thumbnail(server_name, media_id, size, animated)
            if remote is not None:
                return remote
        record = await self._record(server_name, media_id, timeout_ms=timeout_ms,
                                    allow_remote=allow_remote)
        original = self._file_of(record)
        assert record.sha256 is not None
        name = f"{size.width}x{size.height}-{size.method}{'-animated' if animated else ''}"
        path = self._root / "thumbnails" / record.sha256 / name
        final = await self._cached_thumbnail(path, original.path, size, animated)
        return MediaFile(final, _THUMBNAIL_TYPES[final.suffix], f"thumbnail{final.suffix}",
                         final.stat().st_size)

    def _remote_thumbnail_path(self, server_name: str, media_id: str, size: ThumbnailSize,
                               animated: bool) -> Path:
        """Where the thumbnail another server made is kept (its type's suffix added)."""
        name = f"{size.width}x{size.height}-{size.method}{'-animated' if animated else ''}"
        return self._remote_thumbnail_dir(server_name, media_id) / name

    def _remote_thumbnail_dir(self, server_name: str, media_id: str) -> Path:
        # Named by a hash: a server name or media ID such as ".." names no other directory.
        key = hashlib.sha256(f"{server_name}/{media_id}".encode()).hexdigest()
        return self._root / "remote_thumbnails" / key

    async def _remote_thumbnail(self, server_name: str, media_id: str, size: ThumbnailSize,
                                animated: bool) -> MediaFile | None:
        """The thumbnail ``server_name`` makes of its media for ``size`` (asked once, kept
        per media, size, method and type); None when it gives none (we then make one of the
        original).

        Raises:
            NotFound: the media is quarantined here, or the server has no such media and we
                do not have it either.
        """
        record = await self._store.get(server_name, media_id)
        if record is not None and record.quarantined_by is not None:
            raise NotFound("Media is unavailable")
        path = self._remote_thumbnail_path(server_name, media_id, size, animated)
        for suffix, content_type in _THUMBNAIL_TYPES.items():
            with contextlib.suppress(FileNotFoundError):
                found = path.with_suffix(suffix)
                return MediaFile(found, content_type, f"thumbnail{suffix}",
                                 found.stat().st_size)
        fetching = self._remote_thumbnailing.get(path)
        if fetching is None:
            fetching = asyncio.ensure_future(
                self._fetch_thumbnail(server_name, media_id, size, animated, path))
            self._remote_thumbnailing[path] = fetching
            fetching.add_done_callback(lambda _: self._remote_thumbnailing.pop(path, None))
        try:
            return await asyncio.shield(fetching)
        except NotFound:
            if record is None:
                raise
            return None  # we have the original: a thumbnail of it is made here

    async def _fetch_thumbnail(self, server_name: str, media_id: str, size: ThumbnailSize,
                               animated: bool, path: Path) -> MediaFile | None:
        assert self._remote is not None
        try:
            async with self._remote_slots, self._writing() as writer:
                fetched = await self._remote.thumbnail(
                    server_name, media_id, width=size.width, height=size.height,
                    method=size.method, animated=animated, sink=writer,
                    max_bytes=self._config.max_upload_bytes, timeout_s=REMOTE_TIMEOUT_S)
                content_type = (fetched.content_type or "").split(";", 1)[0].strip().lower()
                suffix = _SUFFIXES.get(content_type)
                if suffix is None:
                    logger.info("Thumbnail of %s from %s is a %r: made here instead",
                                media_id, server_name, content_type)
                    return None
                final = path.with_suffix(suffix)
                await writer.finish(final)
        except NotFound:
            raise
        except MatrixError as e:
            logger.info("No thumbnail of %s from %s (%s): made here instead", media_id,
                        server_name, e.message)
            return None
        logger.info("Fetched a thumbnail of %s from %s", media_id, server_name)
        return MediaFile(final, content_type, f"thumbnail{suffix}", final.stat().st_size)

    async def _cached_thumbnail(self, path: Path, source: Path, size: ThumbnailSize,
                                animated: bool) -> Path:
        """The thumbnail file (``path`` with its type's suffix), made if not there yet."""
        for suffix in _THUMBNAIL_TYPES:
            if path.with_suffix(suffix).exists():
                return path.with_suffix(suffix)
        too_large = self._unthumbnailable.get(source)
        if too_large is not None:
            raise _unthumbnailable(too_large)
        making = self._thumbnailing.get(path)
        if making is None:
            making = asyncio.get_running_loop().run_in_executor(
                self._executor, self._make_thumbnail, path, source, size, animated)
            self._thumbnailing[path] = making
            making.add_done_callback(lambda _: self._thumbnailing.pop(path, None))
        try:
            return await asyncio.shield(making)
        except thumbnailer.ThumbnailError as e:
            too_large = isinstance(e, thumbnailer.TooManyPixels)
            self._unthumbnailable[source] = too_large
            while len(self._unthumbnailable) > UNTHUMBNAILABLE_REMEMBERED:
                self._unthumbnailable.popitem(last=False)
            raise _unthumbnailable(too_large) from None

    def _make_thumbnail(self, path: Path, source: Path, size: ThumbnailSize,
                        animated: bool) -> Path:
        """(In the thread pool.) Make and write the thumbnail atomically; its file."""
        thumb = thumbnailer.make_thumbnail(source, size.width, size.height, size.method,
                                           animated=animated,
                                           max_pixels=self._config.max_image_pixels)
        final = path.with_suffix(_SUFFIXES[thumb.content_type])
        self._tmp.mkdir(parents=True, exist_ok=True)
        tmp = self._tmp / f"thumb-{secrets.token_hex(8)}"
        try:
            with tmp.open("wb") as f:
                f.write(thumb.data)
                flush_and_sync(f)
            place(tmp, final)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        return final

    # -- admin ------------------------------------------------------------------------------

    async def quarantine(self, server_name: str, media_id: str, admin: str | None) -> None:
        if not await self._store.quarantine(server_name, media_id, admin):
            raise NotFound("Unknown media ID")

    async def delete(self, server_name: str, media_id: str) -> None:
        existed, unused_sha = await self._store.delete(server_name, media_id)
        if not self.is_mine(server_name):
            await asyncio.to_thread(remove_tree,
                                    self._remote_thumbnail_dir(server_name, media_id))
        if not existed:
            raise NotFound("Unknown media ID")
        if unused_sha is not None:
            await asyncio.to_thread(self._remove_content, unused_sha)

    async def delete_local_before(self, before_ts: int, *, larger_than: int = 0) -> list[str]:
        """Delete this server's media uploaded before ``before_ts``; the IDs deleted."""
        deleted: list[str] = []
        while True:
            ids = await self._store.ids_before(self._server_name, before_ts,
                                               larger_than=larger_than)
            if not ids:
                return deleted
            for media_id in ids:
                with contextlib.suppress(NotFound):
                    await self.delete(self._server_name, media_id)
                    deleted.append(media_id)

    async def purge_remote_before(self, before_ts: int) -> int:
        """Forget other servers' media cached before ``before_ts`` (fetched again when
        asked for); how many."""
        purged = 0
        await asyncio.to_thread(self._purge_remote_thumbnails, before_ts)
        while True:
            keys = await self._store.remote_before(self._server_name, before_ts)
            if not keys:
                return purged
            for origin, media_id in keys:
                with contextlib.suppress(NotFound):
                    await self.delete(origin, media_id)
                    purged += 1

    def _purge_remote_thumbnails(self, before_ts: int) -> None:
        """Remove thumbnails other servers made that were fetched before ``before_ts``."""
        root = self._root / "remote_thumbnails"
        if not root.is_dir():
            return
        for media in root.iterdir():
            for thumb in media.iterdir():
                with contextlib.suppress(FileNotFoundError):
                    if thumb.stat().st_mtime * 1000 < before_ts:
                        thumb.unlink()
            with contextlib.suppress(OSError):
                media.rmdir()  # only when empty

    def _remove_content(self, sha256: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._content_path(sha256).unlink()
        remove_tree(self._root / "thumbnails" / sha256)

    async def expire_reservations(self) -> None:
        await self._store.delete_expired_reservations(self._clock.time_ms())


def _unthumbnailable(too_large: bool) -> MatrixError:
    if too_large:
        return MatrixError("The image is too large to thumbnail", status=400,
                           errcode="M_TOO_LARGE")
    return MatrixError("Cannot generate thumbnails for the requested content", status=400,
                       errcode="M_UNKNOWN")
