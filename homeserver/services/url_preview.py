"""URL previews (``GET /_matrix/client/v1/media/preview_url``), as Synapse's
``synapse/media/url_previewer.py``: the server fetches the page (through a :class:`UrlFetcher`
that applies ``federation.ip_range_denylist`` to every connection, redirects included),
reads its OpenGraph data (``core.url_preview``), fetches its ``og:image`` the same way and
stores it as this server's media; ``og:image`` in the answer is then its ``mxc://`` URI, with
``og:image:type``, ``og:image:width``/``height`` and ``matrix:image:size``. A URL of an image
is stored and described the same way. Other content types: an empty preview.

Previews are kept in memory for an hour (Synapse's cache, whatever ``ts`` asks for: the spec
lets a server answer with a newer preview); requests for a URL being fetched wait for that
fetch rather than starting another.
"""

from __future__ import annotations

import asyncio
import io
import logging
import warnings
from collections import OrderedDict
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit, urlunsplit

from PIL import Image

from core.clock import Clock
from core.errors import InvalidParam, MatrixError, Unrecognized
from core.url_preview import parse_html_to_open_graph
from homeserver.config import UrlPreviewConfig
from homeserver.services.media import MediaService

logger = logging.getLogger(__name__)

CACHE_TTL_MS = 3600 * 1000
CACHE_ENTRIES = 1000
# Pages and images are read into memory (up to max_spider_bytes each): this many previews are
# made at once at most, so many clients asking for many URLs cannot add up.
FETCHES_AT_ONCE = 4
MAX_URL_CHARS = 4096
HTML_TYPES = ("text/html", "application/xhtml+xml")
IMAGE_PREFIX = "image/"
_UPLOAD_NAME_CHARS = 200


@dataclass(frozen=True, slots=True)
class FetchedUrl:
    """What a URL answered (after redirects)."""

    url: str
    content_type: str | None  # lower case, without parameters
    content_type_header: str | None  # as sent (its charset)
    body: bytes  # empty when its content type was not one asked for


class UrlFetcher(Protocol):
    """Plain HTTP(S) GETs of URLs users give, under the server's IP range policy."""

    async def fetch(self, url: str, *, max_bytes: int,
                    content_types: Sequence[str]) -> FetchedUrl:
        """GET ``url`` following redirects; the body is read only when the content type
        starts with one of ``content_types``.

        Raises:
            MatrixError: for the client: 403 when an address (of the URL or a redirect) is
                denied, 502 when it cannot be fetched or answers non-2xx, 502 ``M_TOO_LARGE``
                when the body is over ``max_bytes``.
        """
        ...

    async def close(self) -> None: ...


def _image_size(data: bytes) -> tuple[int, int] | None:
    """Width and height from an image's header (nothing is decoded)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as image:
                return image.size
    except Exception:  # any file Pillow cannot read: its size is unknown
        return None


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


class UrlPreviewService:
    """See the module docstring. ``fetcher`` None (or ``media.url_preview.enabled`` false):
    the endpoint is not there (404 ``M_UNRECOGNIZED``)."""

    def __init__(self, fetcher: UrlFetcher | None, media: MediaService, clock: Clock,
                 config: UrlPreviewConfig) -> None:
        self._fetcher = fetcher
        self._media = media
        self._clock = clock
        self._config = config
        self._cache: OrderedDict[str, tuple[int, dict[str, Any]]] = OrderedDict()
        self._inflight: dict[str, asyncio.Task[dict[str, Any]]] = {}
        self._slots = asyncio.Semaphore(FETCHES_AT_ONCE)

    @property
    def enabled(self) -> bool:
        return self._config.enabled and self._fetcher is not None

    async def close(self) -> None:
        for task in list(self._inflight.values()):
            task.cancel()
        if self._fetcher is not None:
            await self._fetcher.close()

    async def preview(self, user_id: str, url: str, ts: int | None = None) -> dict[str, Any]:
        """The preview of ``url`` (``ts``: the time asked for; any preview of the last hour
        is as good).

        Raises:
            Unrecognized: previews are off.
            InvalidParam: not an http(s) URL.
            MatrixError: the fetch failed (see :meth:`UrlFetcher.fetch`).
        """
        if not self.enabled:
            raise Unrecognized("Unrecognized request")
        key = _normalise(url)
        now = self._clock.time_ms()
        cached = self._cache.get(key)
        if cached is not None:
            if cached[0] > now:
                return dict(cached[1])
            del self._cache[key]
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.create_task(self._generate(user_id, key))
            self._inflight[key] = task
            task.add_done_callback(lambda t: self._done(key, t))
        # A client that goes away does not cancel the fetch others wait for.
        return dict(await asyncio.shield(task))

    def _done(self, key: str, task: asyncio.Task[dict[str, Any]]) -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]
        if task.cancelled() or task.exception() is not None:
            return  # failures are not kept: the next request tries again
        self._cache[key] = (self._clock.time_ms() + CACHE_TTL_MS, task.result())
        while len(self._cache) > CACHE_ENTRIES:
            self._cache.popitem(last=False)

    async def _generate(self, user_id: str, url: str) -> dict[str, Any]:
        async with self._slots:
            return await self._make(user_id, url)

    async def _make(self, user_id: str, url: str) -> dict[str, Any]:
        assert self._fetcher is not None
        fetched = await self._fetcher.fetch(url, max_bytes=self._max_bytes,
                                            content_types=(*HTML_TYPES, IMAGE_PREFIX))
        content_type = fetched.content_type or ""
        if content_type.startswith(IMAGE_PREFIX):
            return await self._store_image(user_id, fetched)
        if content_type not in HTML_TYPES:
            logger.info("URL preview of a %s: nothing to show", content_type or "typeless body")
            return {}
        # html.parser is pure Python: megabytes of markup take a while, off the event loop.
        og: dict[str, Any] = await asyncio.to_thread(
            parse_html_to_open_graph, fetched.body, fetched.content_type_header, fetched.url)
        image_url = og.pop("og:image", None)
        for name in [k for k in og if k.startswith("og:image:")]:
            del og[name]  # the page's word; the image's own are given below
        if image_url is not None and urlsplit(image_url).scheme in ("http", "https"):
            try:
                image = await self._fetcher.fetch(image_url, max_bytes=self._max_bytes,
                                                  content_types=(IMAGE_PREFIX,))
                if (image.content_type or "").startswith(IMAGE_PREFIX):
                    og.update(await self._store_image(user_id, image))
            except MatrixError as e:
                logger.info("URL preview: the page's image could not be fetched (%s)",
                            e.message)
        return og

    @property
    def _max_bytes(self) -> int:
        return min(self._config.max_spider_bytes, self._media.max_upload_bytes)

    async def _store_image(self, user_id: str, fetched: FetchedUrl) -> dict[str, Any]:
        name = unquote(urlsplit(fetched.url).path.rsplit("/", 1)[-1])[:_UPLOAD_NAME_CHARS]
        uri = await self._media.upload(user_id, _once(fetched.body),
                                       content_type=fetched.content_type,
                                       upload_name=name or None)
        og: dict[str, Any] = {"og:image": uri, "og:image:type": fetched.content_type,
                              "matrix:image:size": len(fetched.body)}
        size = await asyncio.to_thread(_image_size, fetched.body)
        if size is not None:
            og["og:image:width"], og["og:image:height"] = size
        return og


def _normalise(url: str) -> str:
    """The URL to fetch (its fragment dropped: it never goes to the server).

    Raises:
        InvalidParam: not an absolute http(s) URL.
    """
    if len(url) > MAX_URL_CHARS:
        raise InvalidParam("URL too long")
    try:
        parts = urlsplit(url.strip())
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        raise InvalidParam("Invalid URL") from None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise InvalidParam("Only http and https URLs can be previewed")
    return urlunsplit((parts.scheme.lower(), parts.netloc, parts.path or "/", parts.query, ""))
