"""URL previews (GET /_matrix/client/v1/media/preview_url): a small web site on loopback serves
an OpenGraph page, a page without OpenGraph, an image, redirects (one to a denied address) and
a page over ``media.url_preview.max_spider_bytes``; the server answers with the page's data,
its image stored as media (downloadable byte for byte), errors as Synapse's; previews are
cached and one fetch serves concurrent requests; off by default; the IP range policy refuses
loopback unless allowed. Answers are checked against the spec. SQLite and PostgreSQL (the
images are stored in the media tables)."""

from __future__ import annotations

import asyncio
import io
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from PIL import Image

from core.url_preview import parse_html_to_open_graph
from federation.transport.url_fetch import MAX_REDIRECTS, UrlFetchClient
from homeserver.app import build_app
from homeserver.config import ConfigError, HomeserverConfig, UrlPreviewConfig
from tests.conftest import make_config, postgres_url
from tests.helpers.harness import Harness
from tests.helpers.room_api import User, bearer, new_user
from tests.helpers.spec import assert_matches_spec

SPIDER_BYTES = 64 * 1024
ENABLED = {"media": {"url_preview": {"enabled": True, "max_spider_bytes": SPIDER_BYTES}}}
LOOPBACK = {**ENABLED, "federation": {"ip_range_allowlist": ["127.0.0.0/8"]},
            "presence": {"enabled": False}}
AUTHED = "/_matrix/client/v1/media"


def _png(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(out, "PNG")
    return out.getvalue()


PNG = _png(40, 20)
OG_PAGE = """<!doctype html><html><head>
<meta charset="utf-8">
<title>Not this title</title>
<meta property="og:title" content="The Title &amp; more">
<meta property="og:description" content="What the page is about">
<meta property="og:type" content="article">
<meta property="og:image" content="/static/pic.png">
<meta property="og:image:width" content="999">
</head><body><p>Body text</p></body></html>"""
PLAIN_PAGE = """<html><head><title> A plain   page </title>
<meta name="Description" content="Described by meta">
</head><body><h1>Heading</h1>
<img src="tiny.png" width="5" height="5"><img src="/static/pic.png" width="400" height="300">
<img src="other.png" width="100" height="100"></body></html>"""
TEXT_PAGE = ("<html><head><title>Words</title><script>var x = 'not text';</script></head>"
             "<body><nav>Menu</nav><p>" + "word " * 200 + "</p></body></html>")


class Site:
    """The web site the previews are made of; counts the requests per path."""

    def __init__(self) -> None:
        self.hits: Counter[str] = Counter()
        self.server: TestServer | None = None
        self.slow = asyncio.Event()

    def url(self, path: str) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.port}{path}"

    def app(self) -> web.Application:
        async def og(_: web.Request) -> web.Response:
            return web.Response(text=OG_PAGE, content_type="text/html")

        async def plain(_: web.Request) -> web.Response:
            return web.Response(text=PLAIN_PAGE, content_type="text/html")

        async def text(_: web.Request) -> web.Response:
            return web.Response(text=TEXT_PAGE, content_type="text/html")

        async def latin1(_: web.Request) -> web.Response:
            return web.Response(body="<title>Café</title>".encode("latin-1"),
                                headers={"Content-Type": "text/html; charset=ISO-8859-1"})

        async def pic(_: web.Request) -> web.Response:
            return web.Response(body=PNG, content_type="image/png")

        async def pdf(_: web.Request) -> web.Response:
            return web.Response(body=b"%PDF-1.4" + b"x" * 1000,
                                content_type="application/pdf")

        async def huge(request: web.Request) -> web.StreamResponse:
            response = web.StreamResponse(headers={"Content-Type": "text/html"})
            await response.prepare(request)
            await response.write(b"<html><head><title>Huge</title></head><body>")
            for _ in range(SPIDER_BYTES // 1024 * 4):  # no Content-Length: streamed, stopped
                await response.write(b"<p>" + b"x" * 1021)
            return response

        async def slow(_: web.Request) -> web.Response:
            await self.slow.wait()
            return web.Response(text="<title>Slow</title>", content_type="text/html")

        async def redirect(request: web.Request) -> web.Response:
            raise web.HTTPFound(request.query["to"])

        async def loop(_: web.Request) -> web.Response:
            raise web.HTTPFound("/loop")

        async def missing(_: web.Request) -> web.Response:
            return web.Response(status=404, text="no")

        async def broken_image(_: web.Request) -> web.Response:
            return web.Response(text='<meta property="og:title" content="T">'
                                     '<meta property="og:image" content="/missing">',
                                content_type="text/html")

        @web.middleware
        async def count(request: web.Request, handler: Any) -> web.StreamResponse:
            self.hits[request.path] += 1
            return await handler(request)  # type: ignore[no-any-return]

        app = web.Application(middlewares=[count])
        for path, handler in [("/og", og), ("/plain", plain), ("/text", text),
                              ("/latin1", latin1), ("/static/pic.png", pic), ("/doc.pdf", pdf),
                              ("/huge", huge), ("/slow", slow), ("/redirect", redirect),
                              ("/loop", loop), ("/missing", missing),
                              ("/broken-image", broken_image)]:
            app.router.add_get(path, handler)
        return app


@pytest.fixture
async def site() -> AsyncIterator[Site]:
    s = Site()
    s.server = TestServer(s.app(), host="127.0.0.1")
    await s.server.start_server()
    try:
        yield s
    finally:
        s.slow.set()
        await s.server.close()


class PreviewHarness(Harness):
    """Services with the real URL fetcher."""

    def extras(self, config: HomeserverConfig) -> dict[str, Any]:
        return {"url_fetcher": UrlFetchClient(config.federation)}


@pytest.fixture
def overrides() -> dict[str, Any]:
    return LOOPBACK


@pytest.fixture(params=["sqlite", "postgres"])
async def hs(request: pytest.FixtureRequest, tmp_path: Path, overrides: dict[str, Any]
             ) -> AsyncIterator[PreviewHarness]:
    if request.param == "postgres" and postgres_url() is None:
        pytest.skip("KTCHAT_TEST_POSTGRES_URL is not set")
    h = PreviewHarness(request.param, tmp_path, overrides)
    try:
        await h.setup()
        yield h
    finally:
        await h.teardown()


@pytest.fixture
async def web_client(hs: PreviewHarness, aiohttp_client: Callable[..., Any]) -> TestClient:
    assert hs.services is not None
    return await aiohttp_client(build_app(hs.services))  # type: ignore[no-any-return]


@pytest.fixture
async def alice(web_client: TestClient) -> User:
    return await new_user(web_client, "alice")


async def preview(client: TestClient, user: User | None, url: str | None, *,
                  base: str = AUTHED, **query: str) -> tuple[int, Any]:
    params = {**({"url": url} if url is not None else {}), **query}
    resp = await client.get(f"{base}/preview_url", params=params,
                            headers=bearer(user.token) if user else None)
    body = await resp.json()
    if resp.status == 200:
        assert_matches_spec("client-server", "GET", "/media/preview_url", 200, body)
    return resp.status, body


async def download(client: TestClient, user: User, mxc: str) -> bytes:
    server, media_id = mxc.removeprefix("mxc://").split("/")
    resp = await client.get(f"{AUTHED}/download/{server}/{media_id}",
                            headers=bearer(user.token))
    assert resp.status == 200, await resp.text()
    return await resp.read()


async def test_an_opengraph_page_with_its_image_stored_as_media(
        web_client: TestClient, alice: User, site: Site) -> None:
    status, og = await preview(web_client, alice, site.url("/og"), ts="1510610716656")
    assert status == 200, og
    assert og["og:title"] == "The Title & more"
    assert og["og:description"] == "What the page is about"
    assert og["og:type"] == "article"
    assert og["og:image"].startswith("mxc://test.local/")
    # The image's own size and type, not what the page claimed.
    assert og["og:image:width"] == 40 and og["og:image:height"] == 20
    assert og["og:image:type"] == "image/png"
    assert og["matrix:image:size"] == len(PNG)
    assert await download(web_client, alice, og["og:image"]) == PNG


async def test_a_page_without_opengraph_falls_back_as_synapse(
        web_client: TestClient, alice: User, site: Site) -> None:
    status, og = await preview(web_client, alice, site.url("/plain"))
    assert status == 200, og
    assert og["og:title"] == "A plain page"
    assert og["og:description"] == "Described by meta"
    assert og["og:image:width"] == 40  # the largest <img> by its attributes: pic.png
    assert await download(web_client, alice, og["og:image"]) == PNG

    status, og = await preview(web_client, alice, site.url("/text"))
    assert status == 200, og
    assert og["og:title"] == "Words"
    assert og["og:description"].startswith("word word")
    assert "Menu" not in og["og:description"] and "not text" not in og["og:description"]
    assert len(og["og:description"]) <= 501 and og["og:description"].endswith("…")
    assert "og:image" not in og

    status, og = await preview(web_client, alice, site.url("/latin1"))
    assert (status, og) == (200, {"og:title": "Café"})


async def test_an_image_url_is_stored_and_described(
        web_client: TestClient, alice: User, site: Site) -> None:
    status, og = await preview(web_client, alice, site.url("/static/pic.png"))
    assert status == 200, og
    assert og["og:image:type"] == "image/png"
    assert (og["og:image:width"], og["og:image:height"]) == (40, 20)
    assert og["matrix:image:size"] == len(PNG)
    assert await download(web_client, alice, og["og:image"]) == PNG


async def test_other_content_types_give_an_empty_preview(
        web_client: TestClient, alice: User, site: Site) -> None:
    assert await preview(web_client, alice, site.url("/doc.pdf")) == (200, {})


async def test_an_image_that_cannot_be_fetched_is_left_out(
        web_client: TestClient, alice: User, site: Site) -> None:
    assert await preview(web_client, alice, site.url("/broken-image")) == (200, {"og:title": "T"})


async def test_redirects_are_followed_within_a_limit(
        web_client: TestClient, alice: User, site: Site) -> None:
    status, og = await preview(web_client, alice, site.url("/redirect?to=/og"))
    assert status == 200 and og["og:title"] == "The Title & more"
    status, body = await preview(web_client, alice, site.url("/loop"))
    assert status == 502 and body["errcode"] == "M_UNKNOWN"
    assert site.hits["/loop"] == MAX_REDIRECTS + 1  # the URL and 5 redirects


async def test_a_redirect_to_a_denied_address_is_refused(
        web_client: TestClient, alice: User, site: Site) -> None:
    for target in ("http://10.255.255.1:81/x", "http://[::1]:81/", "http://169.254.169.254/"):
        status, body = await preview(web_client, alice,
                                     site.url(f"/redirect?to={target}&n={target[-3:]}"))
        assert (status, body["errcode"]) == (403, "M_UNKNOWN"), body
        assert body["error"] == "IP address blocked"
    status, body = await preview(web_client, alice, site.url("/redirect?to=ftp://x/"))
    assert status == 502


async def test_a_huge_page_is_not_read_past_the_limit(
        web_client: TestClient, alice: User, site: Site) -> None:
    status, body = await preview(web_client, alice, site.url("/huge"))
    assert (status, body["errcode"]) == (502, "M_TOO_LARGE")


async def test_unreachable_and_failing_urls(
        web_client: TestClient, alice: User, site: Site) -> None:
    status, body = await preview(web_client, alice, site.url("/missing"))
    assert (status, body["errcode"]) == (502, "M_UNKNOWN")
    assert site.server is not None
    status, body = await preview(web_client, alice, "http://127.0.0.1:1/")
    assert (status, body["errcode"]) == (502, "M_UNKNOWN")
    status, body = await preview(web_client, alice, "http://no-such-host.invalid/")
    assert (status, body["errcode"]) == (502, "M_UNKNOWN")


async def test_bad_requests(web_client: TestClient, alice: User, site: Site) -> None:
    status, body = await preview(web_client, alice, None)
    assert (status, body["errcode"]) == (400, "M_MISSING_PARAM")
    status, body = await preview(web_client, alice, "")
    assert (status, body["errcode"]) == (400, "M_MISSING_PARAM")
    for bad in ("ftp://example.org/", "file:///etc/passwd", "not a url", "http://",
                "http://h:99999999/", "javascript:alert(1)", "http://x/" + "a" * 5000):
        status, body = await preview(web_client, alice, bad)
        assert (status, body["errcode"]) == (400, "M_INVALID_PARAM"), bad
    for ts in ("soon", "-1", "1.5"):
        status, body = await preview(web_client, alice, site.url("/og"), ts=ts)
        assert (status, body["errcode"]) == (400, "M_INVALID_PARAM"), ts
    status, body = await preview(web_client, None, site.url("/og"))
    assert (status, body["errcode"]) == (401, "M_MISSING_TOKEN")
    assert sum(site.hits.values()) == 0


async def test_previews_are_cached_and_concurrent_requests_share_one_fetch(
        web_client: TestClient, alice: User, site: Site) -> None:
    bob = await new_user(web_client, "bob")
    requests = [asyncio.create_task(preview(web_client, user, site.url("/slow")))
                for user in (alice, bob, alice)]
    await asyncio.sleep(0.3)
    site.slow.set()
    for status, og in await asyncio.gather(*requests):
        assert (status, og) == (200, {"og:title": "Slow"})
    assert site.hits["/slow"] == 1
    assert await preview(web_client, bob, site.url("/slow#fragment")) == (
        200, {"og:title": "Slow"})
    assert site.hits["/slow"] == 1
    # A failure is not cached.
    await preview(web_client, alice, site.url("/missing"))
    await preview(web_client, alice, site.url("/missing"))
    assert site.hits["/missing"] == 2


async def test_a_client_going_away_does_not_cancel_the_fetch(
        web_client: TestClient, alice: User, site: Site) -> None:
    first = asyncio.create_task(preview(web_client, alice, site.url("/slow")))
    await asyncio.sleep(0.3)
    first.cancel()
    second = asyncio.create_task(preview(web_client, alice, site.url("/slow")))
    await asyncio.sleep(0.1)
    site.slow.set()
    assert await second == (200, {"og:title": "Slow"})
    assert site.hits["/slow"] == 1


async def test_the_legacy_route_is_off_with_legacy_media(
        web_client: TestClient, alice: User, site: Site) -> None:
    status, body = await preview(web_client, alice, site.url("/og"), base="/_matrix/media/v3")
    assert (status, body["errcode"]) == (404, "M_NOT_FOUND")


class TestLegacy:
    @pytest.fixture
    def overrides(self) -> dict[str, Any]:
        return {**LOOPBACK, "media": {**ENABLED["media"], "legacy_unauthenticated": True}}

    async def test_legacy_route_with_legacy_media_on(
            self, web_client: TestClient, alice: User, site: Site) -> None:
        resp = await web_client.get("/_matrix/media/v3/preview_url",
                                    params={"url": site.url("/og")}, headers=bearer(alice.token))
        assert resp.status == 200
        body = await resp.json()
        assert_matches_spec("client-server", "GET", "/media/v3/preview_url", 200, body)
        assert body["og:title"] == "The Title & more"


class TestOff:
    @pytest.fixture
    def overrides(self) -> dict[str, Any]:
        return {"federation": {"ip_range_allowlist": ["127.0.0.0/8"]}}

    async def test_off_by_default(self, web_client: TestClient, alice: User,
                                  site: Site) -> None:
        for base in (AUTHED, "/_matrix/media/v3"):
            status, body = await preview(web_client, alice, site.url("/og"), base=base)
            assert status == 404, base
        status, body = await preview(web_client, alice, site.url("/og"))
        assert body["errcode"] == "M_UNRECOGNIZED"
        assert sum(site.hits.values()) == 0


class TestDenylist:
    @pytest.fixture
    def overrides(self) -> dict[str, Any]:
        return ENABLED  # the default denylist: loopback is refused

    async def test_loopback_is_refused_unless_allowed(
            self, web_client: TestClient, alice: User, site: Site) -> None:
        for url in (site.url("/og"), f"http://localhost:{site.server.port}/og"  # type: ignore[union-attr]
                    ):
            status, body = await preview(web_client, alice, url)
            assert (status, body) == (403, {"errcode": "M_UNKNOWN",
                                            "error": "IP address blocked"}), url
        assert sum(site.hits.values()) == 0


def test_parser_edge_cases() -> None:
    og = parse_html_to_open_graph(
        b'<html><head><meta property="og:image" content="  img/a.png ">'
        b'<meta name="twitter:title" content="Tw"></head>'
        b"<body><h1>H</h1><div><p>unclosed<br/>text", None, "https://example.org/a/b.html")
    assert og == {"og:image": "https://example.org/a/img/a.png", "og:title": "Tw",
                  "og:description": "H unclosed text"}
    assert parse_html_to_open_graph(b"", None, "http://x/") == {}
    # Broken markup and an unknown charset: whatever is readable, never an exception.
    assert isinstance(parse_html_to_open_graph(b"<<<>>><!-- <title>",
                                               "text/html; charset=bogus", "http://x/"), dict)
    many = b"".join(b'<meta property="og:p%d" content="v">' % i for i in range(100))
    assert len(parse_html_to_open_graph(many, None, "http://x/")) == 50


def test_the_config_keys(tmp_path: Path) -> None:
    assert make_config(tmp_path).media.url_preview == UrlPreviewConfig(
        enabled=False, max_spider_bytes=10 * 1024 * 1024)
    assert make_config(tmp_path, **ENABLED).media.url_preview == UrlPreviewConfig(
        enabled=True, max_spider_bytes=SPIDER_BYTES)
    for bad, key in [({"enabeld": True}, "media.url_preview.enabeld"),
                     ({"enabled": "yes"}, "media.url_preview.enabled"),
                     ({"max_spider_bytes": 0}, "media.url_preview.max_spider_bytes")]:
        with pytest.raises(ConfigError) as excinfo:
            make_config(tmp_path, media={"url_preview": bad})
        assert any(p.startswith(key) for p in excinfo.value.problems), excinfo.value.problems
