"""URL previews, continued: ``media.url_preview.url_blacklist`` (on the URL and every
redirect), oEmbed (a configured provider on the loopback site, the built-in list, HTML
discovery), and the preview cache in the database (reused after a restart and by another set
of services on the same database, expired rows refetched and pruned), on SQLite and
PostgreSQL; the new config keys and their validation."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from core.oembed import BUILTIN_ENDPOINTS, glob_to_pattern, oembed_url, parse_oembed
from core.url_preview import is_url_blocked, parse_html
from homeserver.app import build_app
from homeserver.config import ConfigError
from tests.client_api import test_url_preview as base
from tests.client_api.test_url_preview import LOOPBACK, PNG, PreviewHarness, Site, download, preview
from tests.conftest import make_config
from tests.helpers.room_api import User

# The harness, client and user of the first URL preview tests (with this module's site and
# config).
hs = base.hs
web_client = base.web_client
alice = base.alice

DISCOVER_PAGE = """<html><head><title>Page title</title>
<meta property="og:description" content="The page's own description">
<link rel="alternate" type="application/json+oembed" href="/oembed-rich?for=discover">
</head><body>text</body></html>"""
BLOCKED_DISCOVERY = """<html><head><title>Blocked oEmbed</title>
<link rel="alternative" type="application/json+oembed" href="/blocked/oembed">
</head></html>"""


class OEmbedSite(Site):
    """The loopback site with an oEmbed provider of its own."""

    def app(self) -> web.Application:
        app = super().app()

        async def video_oembed(request: web.Request) -> web.Response:
            return web.json_response({
                "version": "1.0", "type": "video", "title": "A &amp; B video",
                "author_name": "Someone", "provider_name": "Loopback Video",
                "thumbnail_url": self.url("/static/pic.png"), "width": 640, "height": 360,
                "html": "<iframe src='x'></iframe><p>Watch this video</p>",
                "cache_age": 120, "asked_for": request.query.get("url")})

        async def rich_oembed(_: web.Request) -> web.Response:
            return web.json_response({
                "version": "1.0", "type": "rich", "title": "oEmbed title",
                "author_name": "An author", "provider_name": "Rich",
                "html": "<div><img src='/static/pic.png'><p>Rich text</p></div>"})

        async def discover(_: web.Request) -> web.Response:
            return web.Response(text=DISCOVER_PAGE, content_type="text/html")

        async def blocked_discovery(_: web.Request) -> web.Response:
            return web.Response(text=BLOCKED_DISCOVERY, content_type="text/html")

        async def anything(_: web.Request) -> web.Response:
            return web.Response(text="<title>Should not be read</title>",
                                content_type="text/html")

        for path, handler in [("/oembed", video_oembed), ("/oembed-rich", rich_oembed),
                              ("/discover", discover), ("/discovery-of-blocked", blocked_discovery),
                              ("/video/{id}", anything), ("/blocked/{tail:.*}", anything)]:
            app.router.add_get(path, handler)
        return app


@pytest.fixture
async def site() -> AsyncIterator[OEmbedSite]:
    s = OEmbedSite()
    s.server = TestServer(s.app(), host="127.0.0.1")
    await s.server.start_server()
    try:
        yield s
    finally:
        s.slow.set()
        await s.server.close()


@pytest.fixture
def overrides(site: OEmbedSite) -> dict[str, Any]:
    assert site.server is not None
    base = f"http://127.0.0.1:{site.server.port}"
    return {**LOOPBACK, "media": {"url_preview": {
        **LOOPBACK["media"]["url_preview"],
        "url_blacklist": [{"path": "/blocked*"},
                          {"scheme": "http", "query": "^(.*&)?secret="}],
        "oembed_providers": [{
            "provider_name": "Loopback Video", "provider_url": base,
            "endpoints": [{"schemes": [f"{base}/video/*"], "url": f"{base}/oembed"},
                          {"schemes": [f"{base}/xml-only/*"], "url": f"{base}/oembed.xml"}]}],
    }}}


# -- the URL blacklist -----------------------------------------------------------------------


async def test_blacklisted_urls_and_redirects_are_refused(
        web_client: TestClient, alice: User, site: OEmbedSite) -> None:
    status, body = await preview(web_client, alice, site.url("/blocked/page"))
    assert (status, body["errcode"]) == (403, "M_UNKNOWN"), body
    assert body["error"] == "URL blocked by url pattern blocklist entry"
    assert site.hits["/blocked/page"] == 0
    # A redirect to a blocked URL: refused before it is asked.
    status, body = await preview(web_client, alice, site.url("/redirect?to=/blocked/other"))
    assert (status, body["errcode"]) == (403, "M_UNKNOWN"), body
    assert site.hits["/redirect"] == 1 and site.hits["/blocked/other"] == 0
    # An entry matches only when all its parts do (a ^regular expression on the query).
    status, body = await preview(web_client, alice, site.url("/og?a=1&secret=2"))
    assert status == 403, body
    status, og = await preview(web_client, alice, site.url("/og?secretive=1"))
    assert status == 200 and og["og:title"] == "The Title & more"
    # A page whose oEmbed link is blocked: previewed without it.
    status, og = await preview(web_client, alice, site.url("/discovery-of-blocked"))
    assert (status, og) == (200, {"og:title": "Blocked oEmbed"})
    assert site.hits["/blocked/oembed"] == 0


def test_is_url_blocked_as_synapse() -> None:
    blocklist = [{"netloc": "google.com"}, {"netloc": "*.google.com"},
                 {"netloc": "^.*\\.example\\.org$"}, {"scheme": "http", "port": "8080"},
                 {"username": "*"}]
    assert is_url_blocked("https://google.com/x", blocklist)
    assert is_url_blocked("https://mail.google.com/", blocklist)
    assert not is_url_blocked("https://notgoogle.com/", blocklist)
    assert is_url_blocked("https://a.b.example.org/", blocklist)
    assert is_url_blocked("http://host:8080/", blocklist)
    assert not is_url_blocked("https://host:8080/", blocklist)
    assert not is_url_blocked("http://host/", blocklist)  # no port: the entry fails
    assert is_url_blocked("http://user@host/", blocklist)
    assert not is_url_blocked("http://host:notaport/", blocklist)
    assert not is_url_blocked("https://matrix.org/", [])


# -- oEmbed --------------------------------------------------------------------------------------


async def test_a_configured_oembed_provider_is_used(
        web_client: TestClient, alice: User, site: OEmbedSite) -> None:
    url = site.url("/video/42")
    status, og = await preview(web_client, alice, url)
    assert status == 200, og
    assert site.hits["/video/42"] == 0 and site.hits["/oembed"] == 1  # asked of the API
    assert og["og:title"] == "A & B video"
    assert og["og:site_name"] == "Loopback Video"
    assert og["og:type"] == "video.other"
    assert (og["og:video:width"], og["og:video:height"]) == (640, 360)
    assert og["og:description"] == "Watch this video"
    assert og["og:url"] == url
    # The thumbnail, stored as media.
    assert og["og:image"].startswith("mxc://")
    assert og["og:image:type"] == "image/png"
    assert await download(web_client, alice, og["og:image"]) == PNG


async def test_oembed_discovery_from_html(web_client: TestClient, alice: User,
                                          site: OEmbedSite) -> None:
    status, og = await preview(web_client, alice, site.url("/discover"))
    assert status == 200, og
    assert site.hits["/oembed-rich"] == 1
    # The page's own data wins; the oEmbed answer fills in the rest.
    assert og["og:title"] == "Page title"
    assert og["og:description"] == "The page's own description"
    assert og["og:site_name"] == "Rich"
    assert og["og:image:type"] == "image/png"  # the <img> of the oEmbed HTML


def test_oembed_provider_patterns_and_answers() -> None:
    assert oembed_url("https://www.youtube.com/watch?v=abc", BUILTIN_ENDPOINTS) == (
        "https://www.youtube.com/oembed?url=https%3A%2F%2Fwww.youtube.com%2Fwatch%3Fv%3Dabc"
        "&format=json")
    assert oembed_url("https://x.com/someone/status/1", BUILTIN_ENDPOINTS) is not None
    vimeo = oembed_url("https://vimeo.com/12345", BUILTIN_ENDPOINTS)
    assert vimeo is not None and vimeo.startswith("https://vimeo.com/api/oembed.json?")
    assert oembed_url("https://example.org/watch", BUILTIN_ENDPOINTS) is None
    # A * in the host is one label: no crossing into another domain.
    assert glob_to_pattern("https://*.youtube.com/watch*").fullmatch(
        "https://evil.com/.youtube.com/watch") is None
    with pytest.raises(ValueError):
        glob_to_pattern("ftp://*.example.org/*")
    photo = parse_oembed("https://p/1", json.dumps({
        "version": "1.0", "type": "photo", "url": "https://p/1.jpg", "author_name": "A",
        "cache_age": "3600"}).encode())
    assert photo.og == {"og:url": "https://p/1", "og:image": "https://p/1.jpg"}
    assert (photo.author_name, photo.cache_age_ms) == ("A", 3_600_000)
    for bad in (b"not json", b"[1]", b'{"version": "2.0", "type": "link"}', b"\xff"):
        assert parse_oembed("https://p/", bad).og == {}
    og, link = parse_html(DISCOVER_PAGE.encode(), None, "https://site.example/a/b")
    assert link == "https://site.example/oembed-rich?for=discover"
    assert og["og:title"] == "Page title"


# -- the cache in the database -----------------------------------------------------------------


async def test_previews_are_kept_in_the_database(
        hs: PreviewHarness, web_client: TestClient, alice: User, site: OEmbedSite,
        aiohttp_client: Any) -> None:
    status, og = await preview(web_client, alice, site.url("/og"))
    assert status == 200
    assert site.hits["/og"] == 1
    # Another set of services on the same database: the same preview, not fetched again.
    other = PreviewHarness(hs.kind, hs.tmp_path, hs.overrides)
    other.schema = hs.schema
    services = await other.start()
    try:
        other_client = await aiohttp_client(build_app(services))
        assert await preview(other_client, alice, site.url("/og")) == (200, og)
        assert site.hits["/og"] == 1
    finally:
        await other.stop()
    # After a restart too.
    services = await hs.restart()
    again = await aiohttp_client(build_app(services))
    assert await preview(again, alice, site.url("/og")) == (200, og)
    assert site.hits["/og"] == 1


async def test_expired_previews_are_fetched_again_and_pruned(
        hs: PreviewHarness, web_client: TestClient, alice: User, site: OEmbedSite) -> None:
    assert hs.services is not None
    store = hs.services.db.url_previews
    now = hs.services.clock.time_ms()
    stale = site.url("/plain")
    await store.put(stale, {"og:title": "stale"}, now - 7_200_000, now - 3_600_000)
    await store.put(site.url("/other"), {"og:title": "old"}, now - 7_200_000, now - 1)
    status, og = await preview(web_client, alice, stale)
    assert status == 200 and og["og:title"] == "A plain page"
    assert site.hits["/plain"] == 1
    # Kept for an hour.
    kept = await store.get(stale, now + 3_500_000)
    assert kept is not None and kept["og:title"] == "A plain page"
    assert await store.get(stale, now + 3_700_000) is None
    # The housekeeping prunes what expired.
    assert await hs.services.url_previews.prune() == 1
    assert await store.get(site.url("/other"), 0) is None
    assert await store.get(stale, now) is not None
    # An oEmbed answer's cache_age (120 s) is followed.
    await preview(web_client, alice, site.url("/video/7"))
    assert await store.get(site.url("/video/7"), now + 100_000) is not None
    assert await store.get(site.url("/video/7"), now + 200_000) is None


# -- config --------------------------------------------------------------------------------------


def test_the_new_config_keys(tmp_path: Path) -> None:
    config = make_config(tmp_path, media={"url_preview": {
        "url_blacklist": [{"netloc": "*.example.org", "port": 8080}],
        "oembed_providers": [{"provider_name": "P", "provider_url": "https://p/",
                              "endpoints": [{"schemes": ["https://p/*"],
                                             "url": "https://p/oembed"}]}]}})
    preview_config = config.media.url_preview
    assert preview_config.url_blacklist == ((("netloc", "*.example.org"), ("port", "8080")),)
    assert len(preview_config.oembed_providers) == 1
    assert preview_config.oembed_providers[0].url == "https://p/oembed"
    assert make_config(tmp_path).media.url_preview.url_blacklist == ()
    for bad, key in [
            ({"url_blacklist": {"netloc": "x"}}, "media.url_preview.url_blacklist"),
            ({"url_blacklist": ["x"]}, "media.url_preview.url_blacklist[0]"),
            ({"url_blacklist": [{}]}, "media.url_preview.url_blacklist[0]"),
            ({"url_blacklist": [{"host": "x"}]}, "media.url_preview.url_blacklist[0].host"),
            ({"url_blacklist": [{"path": ["x"]}]}, "media.url_preview.url_blacklist[0].path"),
            ({"url_blacklist": [{"path": "^(unclosed"}]},
             "media.url_preview.url_blacklist[0].path"),
            ({"oembed_providers": {"a": 1}}, "media.url_preview.oembed_providers"),
            ({"oembed_providers": [{"endpoints": [{"url": "ftp://x", "schemes": []}]}]},
             "media.url_preview.oembed_providers"),
            ({"oembed_providers": [{"endpoints": [{"url": "https://x",
                                                   "schemes": ["gopher://x/*"]}]}]},
             "media.url_preview.oembed_providers")]:
        with pytest.raises(ConfigError) as excinfo:
            make_config(tmp_path, media={"url_preview": bad})
        assert any(p.startswith(key) for p in excinfo.value.problems), \
            (bad, excinfo.value.problems)
