"""URL previews (``GET /_matrix/client/v1/media/preview_url``), as Synapse's
``synapse/media/url_previewer.py``: the server fetches the page (through a :class:`UrlFetcher`
that applies ``federation.ip_range_denylist`` to every connection and
``media.url_preview.url_blacklist`` to every URL, redirects included), reads its OpenGraph
data (``core.url_preview``), fetches its ``og:image`` the same way and stores it as this
server's media; ``og:image`` in the answer is then its ``mxc://`` URI, with
``og:image:type``, ``og:image:width``/``height`` and ``matrix:image:size``. A URL of an image
is stored and described the same way. Other content types: an empty preview.

oEmbed (``core.oembed``): a URL a provider describes (built-in ones and
``media.url_preview.oembed_providers``) is previewed through the provider's API; a page
naming its oEmbed JSON (``<link rel="alternate" type="application/json+oembed">``) has it
fetched too (under the same rules), the page's own OpenGraph data winning.

Previews are kept in the database for an hour (Synapse's ``local_media_repository_url_cache``;
whatever ``ts`` asks for: the spec lets a server answer with a newer preview), so another
process or a restart reuses them; expired rows are pruned by the housekeeping. Requests for a
URL being fetched wait for that fetch rather than starting another.
"""

from __future__ import annotations

import asyncio
import io
import logging
import warnings
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit, urlunsplit

from PIL import Image

from core.clock import Clock
from core.errors import InvalidParam, MatrixError, Unrecognized
from core.oembed import BUILTIN_ENDPOINTS, oembed_url, parse_oembed
from core.url_preview import is_url_blocked, parse_html
from homeserver.config import UrlPreviewConfig
from homeserver.services.media import MediaService
from storage.stores.url_previews import UrlPreviewStore

logger = logging.getLogger(__name__)

CACHE_TTL_MS = 3600 * 1000
# An oEmbed answer's cache_age is followed, within these bounds.
MIN_CACHE_TTL_MS = 60 * 1000
MAX_CACHE_TTL_MS = 24 * 3600 * 1000
# Pages and images are read into memory (up to max_spider_bytes each): this many previews are
# made at once at most, so many clients asking for many URLs cannot add up.
FETCHES_AT_ONCE = 4
MAX_URL_CHARS = 4096
HTML_TYPES = ("text/html", "application/xhtml+xml")
JSON_TYPES = ("application/json", "text/javascript", "application/javascript")
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

    async def fetch(self, url: str, *, max_bytes: int, content_types: Sequence[str],
                    blocked: Callable[[str], bool] | None = None) -> FetchedUrl:
        """GET ``url`` following redirects; the body is read only when the content type
        starts with one of ``content_types``.

        Raises:
            MatrixError: for the client: 403 when an address (of the URL or a redirect) is
                denied or ``blocked`` says so of the URL or a redirect, 502 when it cannot be
                fetched or answers non-2xx, 502 ``M_TOO_LARGE`` when the body is over
                ``max_bytes``.
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

    def __init__(self, fetcher: UrlFetcher | None, media: MediaService,
                 store: UrlPreviewStore, clock: Clock, config: UrlPreviewConfig) -> None:
        self._fetcher = fetcher
        self._media = media
        self._store = store
        self._clock = clock
        self._config = config
        self._blocklist = [dict(entry) for entry in config.url_blacklist]
        self._oembed = (*config.oembed_providers, *BUILTIN_ENDPOINTS)
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

    def is_blocked(self, url: str) -> bool:
        return bool(self._blocklist) and is_url_blocked(url, self._blocklist)

    async def preview(self, user_id: str, url: str, ts: int | None = None) -> dict[str, Any]:
        """The preview of ``url`` (``ts``: the time asked for; any preview of the last hour
        is as good).

        Raises:
            Unrecognized: previews are off.
            InvalidParam: not an http(s) URL.
            MatrixError: 403 when ``media.url_preview.url_blacklist`` refuses it; the fetch
                failed (see :meth:`UrlFetcher.fetch`).
        """
        if not self.enabled:
            raise Unrecognized("Unrecognized request")
        key = _normalise(url)
        if self.is_blocked(key):
            raise MatrixError("URL blocked by url pattern blocklist entry", status=403)
        cached = await self._store.get(key, self._clock.time_ms())
        if cached is not None:
            return cached
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
        if not task.cancelled():
            task.exception()  # failures are not kept: the next request tries again

    async def prune(self) -> int:
        """Forget expired previews; how many."""
        return await self._store.prune(self._clock.time_ms())

    async def _generate(self, user_id: str, url: str) -> dict[str, Any]:
        async with self._slots:
            og, ttl_ms = await self._make(user_id, url)
        now = self._clock.time_ms()
        await self._store.put(url, og, now, now + ttl_ms)
        return og

    async def _fetch(self, url: str, content_types: Sequence[str]) -> FetchedUrl:
        assert self._fetcher is not None
        return await self._fetcher.fetch(url, max_bytes=self._max_bytes,
                                         content_types=content_types, blocked=self.is_blocked)

    async def _make(self, user_id: str, url: str) -> tuple[dict[str, Any], int]:
        """The preview and how long to keep it."""
        api_url = oembed_url(url, self._oembed)
        fetched = await self._fetch(api_url or url,
                                    (*HTML_TYPES, IMAGE_PREFIX, *JSON_TYPES))
        content_type = fetched.content_type or ""
        ttl_ms = CACHE_TTL_MS
        author: str | None = None
        if content_type.startswith(IMAGE_PREFIX):
            return await self._store_image(user_id, fetched), ttl_ms
        if content_type in HTML_TYPES:
            # html.parser is pure Python: megabytes of markup take a while, off the loop.
            og, discovered = await asyncio.to_thread(
                parse_html, fetched.body, fetched.content_type_header, fetched.url)
            if discovered is not None and urlsplit(discovered).scheme in ("http", "https"):
                try:
                    answer = await self._fetch(discovered, JSON_TYPES)
                    result = parse_oembed(url, answer.body)
                    og = {**result.og, **og}  # the page's own data wins (as Synapse)
                    author, ttl_ms = result.author_name, _ttl(result.cache_age_ms, ttl_ms)
                except MatrixError as e:
                    logger.info("URL preview: the page's oEmbed could not be fetched (%s)",
                                e.message)
        elif api_url is not None and content_type in JSON_TYPES:
            result = parse_oembed(url, fetched.body)
            og, author = result.og, result.author_name
            ttl_ms = _ttl(result.cache_age_ms, ttl_ms)
        else:
            logger.info("URL preview of a %s: nothing to show", content_type or "typeless body")
            return {}, ttl_ms
        if not og.get("og:title") and author:
            og["og:title"] = author
        return await self._with_image(user_id, og), ttl_ms

    async def _with_image(self, user_id: str, og: dict[str, Any]) -> dict[str, Any]:
        """``og`` with its image fetched and stored as media (left out when it cannot be)."""
        image_url = og.pop("og:image", None)
        for name in [k for k in og if k.startswith("og:image:")]:
            del og[name]  # the page's word; the image's own are given below
        if isinstance(image_url, str) and urlsplit(image_url).scheme in ("http", "https"):
            try:
                image = await self._fetch(image_url, (IMAGE_PREFIX,))
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


def _ttl(cache_age_ms: int | None, default: int) -> int:
    if cache_age_ms is None:
        return default
    return max(MIN_CACHE_TTL_MS, min(cache_age_ms, MAX_CACHE_TTL_MS))


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
