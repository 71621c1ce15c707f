"""oEmbed (https://oembed.com/) for URL previews, as Synapse's ``synapse/media/oembed.py``:
providers in the format of oembed.com's ``providers.json`` (a small built-in list, more from
the config), a URL matching one of a provider's schemes is previewed through its API
endpoint, and an oEmbed answer becomes OpenGraph data.

Pure: no I/O; the caller fetches.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

from core.url_preview import parse_html_to_open_graph

# A few of oembed.com's providers (the ones chat links most often point to). More can be
# configured (``media.url_preview.oembed_providers``, the same format).
BUILTIN_PROVIDERS: list[dict[str, Any]] = [
    {"provider_name": "YouTube", "provider_url": "https://www.youtube.com/",
     "endpoints": [{"schemes": ["https://*.youtube.com/watch*", "https://*.youtube.com/v/*",
                                "https://youtu.be/*", "https://*.youtube.com/playlist?list=*",
                                "https://youtube.com/playlist?list=*",
                                "https://*.youtube.com/shorts*", "https://youtube.com/shorts*"],
                    "url": "https://www.youtube.com/oembed", "discovery": True}]},
    {"provider_name": "Twitter", "provider_url": "https://twitter.com/",
     "endpoints": [{"schemes": ["https://twitter.com/*", "https://twitter.com/*/status/*",
                                "https://*.twitter.com/*/status/*", "https://x.com/*/status/*",
                                "https://*.x.com/*/status/*"],
                    "url": "https://publish.twitter.com/oembed"}]},
    {"provider_name": "Vimeo", "provider_url": "https://vimeo.com/",
     "endpoints": [{"schemes": ["https://vimeo.com/*", "https://vimeo.com/album/*/video/*",
                                "https://vimeo.com/channels/*/*",
                                "https://vimeo.com/groups/*/videos/*",
                                "https://vimeo.com/ondemand/*/*",
                                "https://player.vimeo.com/video/*"],
                    "url": "https://vimeo.com/api/oembed.{format}", "discovery": True}]},
]


@dataclass(frozen=True, slots=True)
class OEmbedEndpoint:
    """An API endpoint and the URLs it describes."""

    url: str
    patterns: tuple[re.Pattern[str], ...]


@dataclass(frozen=True, slots=True)
class OEmbedResult:
    og: dict[str, Any]
    author_name: str | None
    cache_age_ms: int | None  # what the answer asked for, if anything


def glob_to_pattern(glob: str) -> re.Pattern[str]:
    """A provider's scheme (``https://*.youtube.com/watch*``) as a regular expression, as
    Synapse: the scheme must be http(s), a ``*`` in the host is one label's characters,
    elsewhere one or more of anything.

    Raises:
        ValueError: not an http(s) URL pattern.
    """
    parts = urlsplit(glob)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"unsupported oEmbed scheme in {glob!r}")
    return re.compile(urlunsplit((
        parts.scheme, re.escape(parts.netloc).replace("\\*", "[a-zA-Z0-9_-]+"),
        *(re.escape(part).replace("\\*", ".+") for part in parts[2:]))))


def parse_providers(providers: Any) -> tuple[OEmbedEndpoint, ...]:
    """The JSON-capable endpoints of providers in ``providers.json`` form.

    Raises:
        ValueError: not of that form, or a scheme or endpoint that is not http(s).
    """
    if not isinstance(providers, list):
        raise ValueError("must be a list of providers")
    endpoints: list[OEmbedEndpoint] = []
    for i, provider in enumerate(providers):
        if not isinstance(provider, dict) or not isinstance(provider.get("endpoints"), list):
            raise ValueError(f"provider {i} must be a mapping with a list of endpoints")
        for endpoint in provider["endpoints"]:
            if not isinstance(endpoint, dict):
                raise ValueError(f"provider {i}: an endpoint must be a mapping")
            url, schemes = endpoint.get("url"), endpoint.get("schemes")
            formats = endpoint.get("formats")
            if not isinstance(url, str) or urlsplit(url).scheme not in ("http", "https"):
                raise ValueError(f"provider {i}: an endpoint's url must be http(s)")
            if not isinstance(schemes, list) or not all(isinstance(s, str) for s in schemes):
                raise ValueError(f"provider {i}: an endpoint's schemes must be strings")
            if formats is not None and not isinstance(formats, list):
                raise ValueError(f"provider {i}: an endpoint's formats must be a list")
            # Only JSON is read (as Synapse): XML-only endpoints are left out.
            if (formats is not None and "json" not in formats) or url.endswith(".xml"):
                continue
            endpoints.append(OEmbedEndpoint(url, tuple(glob_to_pattern(s) for s in schemes)))
    return tuple(endpoints)


BUILTIN_ENDPOINTS = parse_providers(BUILTIN_PROVIDERS)


def oembed_url(url: str, endpoints: Sequence[OEmbedEndpoint]) -> str | None:
    """The oEmbed API URL to preview ``url`` through, if a provider describes it."""
    for endpoint in endpoints:
        if any(pattern.fullmatch(url) for pattern in endpoint.patterns):
            api = endpoint.url.replace("{format}", "json")
            return f"{api}?{urlencode({'url': url, 'format': 'json'})}"
    return None


def parse_oembed(url: str, body: bytes) -> OEmbedResult:
    """An oEmbed answer (JSON) as OpenGraph data for ``url`` (empty when unusable)."""
    try:
        oembed = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return OEmbedResult({}, None, None)
    if not isinstance(oembed, dict) or oembed.get("version", "1.0") not in ("1.0", 1, 1.0):
        return OEmbedResult({}, None, None)
    cache_age: int | None
    try:
        cache_age = int(oembed.get("cache_age")) * 1000  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        cache_age = None
    og: dict[str, Any] = {"og:url": url}
    title = oembed.get("title")
    if title and isinstance(title, str):
        og["og:title"] = html.unescape(title)
    author = oembed.get("author_name")
    provider = oembed.get("provider_name")
    if provider and isinstance(provider, str):
        og["og:site_name"] = provider
    thumbnail = oembed.get("thumbnail_url")
    if thumbnail and isinstance(thumbnail, str):
        og["og:image"] = thumbnail
    kind = oembed.get("type")
    if kind == "photo":
        photo = oembed.get("url")
        if photo and isinstance(photo, str):
            og["og:image"] = photo
    elif kind in ("rich", "video"):
        if kind == "video":
            og["og:type"] = "video.other"
            for size in ("width", "height"):
                value = oembed.get(size)
                if type(value) is int:
                    og[f"og:video:{size}"] = value
        markup = oembed.get("html")
        if isinstance(markup, str):
            from_html = parse_html_to_open_graph(markup.encode(), "text/html; charset=utf-8",
                                                 url)
            if "og:image" not in og and "og:image" in from_html:
                og["og:image"] = from_html["og:image"]
            if "og:description" in from_html:
                og["og:description"] = from_html["og:description"]
    elif kind == "link":
        og["og:type"] = "website"
    return OEmbedResult(og, author if isinstance(author, str) else None, cache_age)
