"""The media repository over real HTTP, on SQLite and on PostgreSQL: uploads (direct and to a
reserved ID), downloads with their safety headers, thumbnails decoded with Pillow,
decompression bombs and lying Content-Types, the legacy endpoints, the size limit, the media
listener resource; JSON answers checked against the spec's OpenAPI definitions."""

from __future__ import annotations

import asyncio
import io
import struct
import zlib
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from aiohttp.test_utils import TestClient
from PIL import Image

from homeserver.app import build_app
from homeserver.services.container import Services
from tests.conftest import bearer
from tests.helpers.harness import Harness, harness_services
from tests.helpers.room_api import User, assert_error
from tests.helpers.spec import assert_matches_spec

MAX_UPLOAD = 2 * 1024 * 1024
CS = "client-server"
AUTHED = "/_matrix/client/v1/media"
LEGACY = "/_matrix/media/v3"
SERVER = "test.local"


@pytest.fixture
def config_overrides() -> dict[str, Any]:
    # The JSON body limit of other endpoints is far below the upload limit: uploads stream.
    return {"media": {"max_upload_bytes": MAX_UPLOAD, "max_pending_uploads": 3},
            "http": {"max_request_body_bytes": 100_000}}


services = harness_services




def jpeg(width: int, height: int, color: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), color).save(out, "JPEG")
    return out.getvalue()


def png_rgba(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGBA", (width, height), (0, 0, 255, 128)).save(out, "PNG")
    return out.getvalue()


def animated_gif(width: int, height: int, frames: int = 3) -> bytes:
    images = [Image.new("RGB", (width, height), (i * 80, 0, 0)) for i in range(frames)]
    out = io.BytesIO()
    images[0].save(out, "GIF", save_all=True, append_images=images[1:], duration=100, loop=0)
    return out.getvalue()


def png_bomb(width: int = 50_000, height: int = 50_000) -> bytes:
    """A small PNG whose header declares ``width``x``height`` pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    row = b"\x00" + b"\x00" * (width * 3)
    compressor = zlib.compressobj(9)
    data = compressor.compress(row * 10) + compressor.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data)
            + chunk(b"IEND", b""))


async def upload(client: TestClient, user: User, data: bytes,
                 content_type: str = "image/jpeg", filename: str | None = None,
                 prefix: str = LEGACY) -> str:
    params = {"filename": filename} if filename is not None else None
    resp = await client.post(f"{prefix}/upload", data=data, params=params,
                             headers={**bearer(user.token), "Content-Type": content_type})
    body = await resp.json()
    assert resp.status == 200, body
    assert_matches_spec(CS, "POST", "/media/v3/upload", 200, body)
    uri = body["content_uri"]
    assert uri.startswith(f"mxc://{SERVER}/")
    return str(uri.rsplit("/", 1)[1])


async def download(client: TestClient, user: User | None, media_id: str,
                   file_name: str | None = None, base: str = AUTHED,
                   server: str = SERVER, **query: str) -> tuple[int, bytes, Any]:
    path = f"{base}/download/{server}/{media_id}"
    if file_name is not None:
        path += "/" + quote(file_name, safe="")
    resp = await client.get(path, params=query or None,
                            headers=bearer(user.token) if user else None)
    return resp.status, await resp.read(), resp.headers


async def thumbnail(client: TestClient, user: User, media_id: str, **query: Any
                    ) -> tuple[int, bytes, Any]:
    resp = await client.get(f"{AUTHED}/thumbnail/{SERVER}/{media_id}",
                            params={k: str(v) for k, v in query.items()},
                            headers=bearer(user.token))
    return resp.status, await resp.read(), resp.headers


def error_of(raw: bytes) -> Any:
    import json
    return json.loads(raw)


# -- upload and download ----------------------------------------------------------------------


async def test_upload_then_download_keeps_bytes_type_and_name(client: TestClient,
                                                              alice: User) -> None:
    data = jpeg(64, 48)
    media_id = await upload(client, alice, data, "image/jpeg", filename="cat.jpg")
    status, body, headers = await download(client, alice, media_id)
    assert status == 200
    assert body == data
    assert headers["Content-Type"] == "image/jpeg"
    assert headers["Content-Disposition"] == "inline; filename=cat.jpg"
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Content-Security-Policy"].startswith("sandbox; default-src 'none'")
    assert headers["Cross-Origin-Resource-Policy"] == "cross-origin"
    # The file name in the path wins, encoded per RFC 6266 when it is no plain token.
    status, body, headers = await download(client, alice, media_id, "chat été.jpg",
                                           timeout_ms="1000", allow_redirect="true")
    assert status == 200 and body == data
    assert headers["Content-Disposition"] == \
        "inline; filename*=utf-8''chat%20%C3%A9t%C3%A9.jpg"


async def test_unsafe_types_are_attachments(client: TestClient, alice: User) -> None:
    for content_type in ("text/html", "image/svg+xml", "application/javascript"):
        media_id = await upload(client, alice, b"<script>alert(1)</script>", content_type,
                                filename="x.html")
        status, _, headers = await download(client, alice, media_id)
        assert status == 200
        assert headers["Content-Disposition"].startswith("attachment"), content_type
        assert headers["X-Content-Type-Options"] == "nosniff"
    media_id = await upload(client, alice, b"hello", "text/plain")
    _, _, headers = await download(client, alice, media_id)
    assert headers["Content-Type"] == "text/plain; charset=UTF-8"
    assert headers["Content-Disposition"] == "inline"


async def test_same_content_is_stored_once(client: TestClient, alice: User, bob: User,
                                           services: Services) -> None:
    data = b"the same bytes" * 1000
    first = await upload(client, alice, data, "application/octet-stream")
    second = await upload(client, bob, data, "application/octet-stream")
    assert first != second
    files = [p for p in (services.config.media.store_path / "content").rglob("*")
             if p.is_file()]
    assert len(files) == 1
    for media_id in (first, second):
        status, body, _ = await download(client, alice, media_id)
        assert (status, body) == (200, data)


async def test_download_errors(client: TestClient, alice: User) -> None:
    media_id = await upload(client, alice, b"x", "text/plain")
    status, raw, _ = await download(client, None, media_id)
    assert_error(status, error_of(raw), 401, "M_MISSING_TOKEN")
    status, raw, _ = await download(client, alice, "doesnotexist")
    assert_error(status, error_of(raw), 404, "M_NOT_FOUND")
    status, raw, _ = await download(client, alice, "bad$id")
    assert_error(status, error_of(raw), 404, "M_NOT_FOUND")
    # Another server's media without federation: not found.
    status, raw, _ = await download(client, alice, "abc", server="elsewhere.example")
    assert_error(status, error_of(raw), 404, "M_NOT_FOUND")
    status, raw, _ = await download(client, alice, "abc", server="elsewhere.example",
                                    allow_remote="false")
    assert_error(status, error_of(raw), 404, "M_NOT_FOUND")
    status, raw, _ = await download(client, alice, media_id, timeout_ms="soon")
    assert_error(status, error_of(raw), 400, "M_INVALID_PARAM")


async def test_config(client: TestClient, alice: User) -> None:
    for path, spec_path in ((f"{AUTHED}/config", "/media/config"),
                            (f"{LEGACY}/config", "/media/v3/config")):
        resp = await client.get(path, headers=bearer(alice.token))
        body = await resp.json()
        assert resp.status == 200, body
        assert_matches_spec(CS, "GET", spec_path, 200, body)
        assert body == {"m.upload.size": MAX_UPLOAD}
    resp = await client.get(f"{AUTHED}/config")
    assert_error(resp.status, await resp.json(), 401, "M_MISSING_TOKEN")


async def test_upload_needs_a_token(client: TestClient) -> None:
    resp = await client.post(f"{LEGACY}/upload", data=b"x")
    assert_error(resp.status, await resp.json(), 401, "M_MISSING_TOKEN")


async def test_too_large_upload_is_refused_and_nothing_kept(client: TestClient, alice: User,
                                                            services: Services) -> None:
    # Announced too large: refused at once.
    resp = await client.post(f"{LEGACY}/upload", data=b"x" * (MAX_UPLOAD + 1),
                             headers={**bearer(alice.token), "Content-Type": "text/plain"})
    body = await resp.json()
    assert_error(resp.status, body, 413, "M_TOO_LARGE")
    assert_matches_spec(CS, "POST", "/media/v3/upload", 413, body)

    # Chunked, no length announced: refused as it streams past the limit.
    async def chunks() -> Any:
        for _ in range(MAX_UPLOAD // 65536 + 2):
            yield b"y" * 65536

    resp = await client.post(f"{LEGACY}/upload", data=chunks(),
                             headers={**bearer(alice.token), "Content-Type": "text/plain"})
    assert_error(resp.status, await resp.json(), 413, "M_TOO_LARGE")
    store = services.config.media.store_path
    assert not [p for p in (store / "content").rglob("*") if p.is_file()] \
        if (store / "content").exists() else True
    assert not list((store / "tmp").iterdir())
    # Exactly the limit is fine, and over the JSON body limit of other endpoints too.
    media_id = await upload(client, alice, b"z" * MAX_UPLOAD, "application/octet-stream")
    status, body_bytes, _ = await download(client, alice, media_id)
    assert status == 200 and len(body_bytes) == MAX_UPLOAD


# -- create + PUT -----------------------------------------------------------------------------


async def create(client: TestClient, user: User) -> tuple[str, int]:
    resp = await client.post("/_matrix/media/v1/create", headers=bearer(user.token))
    body = await resp.json()
    assert resp.status == 200, body
    assert_matches_spec(CS, "POST", "/media/v1/create", 200, body)
    return str(body["content_uri"].rsplit("/", 1)[1]), int(body["unused_expires_at"])


async def put_upload(client: TestClient, user: User, media_id: str, data: bytes,
                     server: str = SERVER) -> tuple[int, Any]:
    resp = await client.put(f"{LEGACY}/upload/{server}/{media_id}", data=data,
                            params={"filename": "late.txt"},
                            headers={**bearer(user.token), "Content-Type": "text/plain"})
    return resp.status, await resp.json()


async def test_create_then_upload(client: TestClient, alice: User, bob: User,
                                  services: Services) -> None:
    media_id, expires = await create(client, alice)
    assert expires > services.clock.time_ms()
    # Not uploaded yet: a download waits up to timeout_ms, then 504 M_NOT_YET_UPLOADED.
    status, raw, _ = await download(client, alice, media_id, timeout_ms="50")
    assert_error(status, error_of(raw), 504, "M_NOT_YET_UPLOADED")
    # Someone else's ID: 403.
    status, body = await put_upload(client, bob, media_id, b"hijack")
    assert_error(status, body, 403, "M_FORBIDDEN")
    assert_matches_spec(CS, "PUT", f"/media/v3/upload/{SERVER}/x", 403, body)
    # A download waiting for the upload gets it as soon as it lands.
    waiting = asyncio.ensure_future(download(client, alice, media_id, timeout_ms="10000"))
    await asyncio.sleep(0.1)
    status, body = await put_upload(client, alice, media_id, b"hello later")
    assert status == 200, body
    assert_matches_spec(CS, "PUT", f"/media/v3/upload/{SERVER}/x", 200, body)
    status, data, headers = await waiting
    assert (status, data) == (200, b"hello later")
    assert headers["Content-Disposition"] == "inline; filename=late.txt"
    # Twice: 409 M_CANNOT_OVERWRITE_MEDIA.
    status, body = await put_upload(client, alice, media_id, b"again")
    assert_error(status, body, 409, "M_CANNOT_OVERWRITE_MEDIA")
    # Never created, or another server's name: 404.
    status, body = await put_upload(client, alice, "nevercreated", b"x")
    assert_error(status, body, 404, "M_NOT_FOUND")
    status, body = await put_upload(client, alice, media_id, b"x", server="other.example")
    assert_error(status, body, 404, "M_NOT_FOUND")


async def test_reservations_expire_and_are_limited(client: TestClient, alice: User,
                                                   services: Services) -> None:
    ids = [(await create(client, alice))[0] for _ in range(3)]
    resp = await client.post("/_matrix/media/v1/create", headers=bearer(alice.token))
    body = await resp.json()
    assert_error(resp.status, body, 429, "M_LIMIT_EXCEEDED")
    assert_matches_spec(CS, "POST", "/media/v1/create", 429, body)
    # Past unused_expires_at the IDs are gone (and the housekeeping deletes them).
    later = services.clock.time_ms() + services.config.media.unused_expiration_ms + 1
    original = services.clock.time_ms
    services.clock.time_ms = lambda: later  # type: ignore[method-assign]
    try:
        status, body = await put_upload(client, alice, ids[0], b"late")
        assert_error(status, body, 404, "M_NOT_FOUND")
        status, raw, _ = await download(client, alice, ids[1])
        assert_error(status, error_of(raw), 404, "M_NOT_FOUND")
        await services.media.expire_reservations()
        assert await services.db.media.get(SERVER, ids[2]) is None
        await create(client, alice)
    finally:
        services.clock.time_ms = original  # type: ignore[method-assign]


# -- legacy endpoints -------------------------------------------------------------------------


async def test_legacy_download_is_off_by_default(client: TestClient, alice: User) -> None:
    media_id = await upload(client, alice, jpeg(40, 40))
    status, raw, _ = await download(client, alice, media_id, base=LEGACY)
    assert_error(status, error_of(raw), 404, "M_NOT_FOUND")
    resp = await client.get(f"{LEGACY}/thumbnail/{SERVER}/{media_id}",
                            params={"width": "32", "height": "32"})
    assert_error(resp.status, await resp.json(), 404, "M_NOT_FOUND")


@pytest.mark.parametrize("config_overrides", [
    {"media": {"legacy_unauthenticated": True, "max_upload_bytes": MAX_UPLOAD}}])
async def test_legacy_download_when_enabled(client: TestClient, alice: User) -> None:
    data = jpeg(40, 40)
    media_id = await upload(client, alice, data)
    status, body, headers = await download(client, None, media_id, "a.jpg", base=LEGACY)
    assert (status, body) == (200, data)
    assert headers["X-Content-Type-Options"] == "nosniff"
    resp = await client.get(f"{LEGACY}/thumbnail/{SERVER}/{media_id}",
                            params={"width": "32", "height": "32", "method": "crop"})
    assert resp.status == 200
    assert Image.open(io.BytesIO(await resp.read())).size == (32, 32)


# -- thumbnails -------------------------------------------------------------------------------


@pytest.mark.parametrize(("query", "expected"), [
    ({"width": 32, "height": 32, "method": "crop"}, (32, 32)),
    ({"width": 50, "height": 50, "method": "crop"}, (96, 96)),
    ({"width": 96, "height": 96, "method": "crop"}, (96, 96)),
    ({"width": 300, "height": 200, "method": "scale"}, (320, 240)),
    ({"width": 600, "height": 400, "method": "scale"}, (640, 480)),
    ({"width": 5000, "height": 5000, "method": "scale"}, (800, 600)),
])
async def test_thumbnail_sizes(client: TestClient, alice: User, query: dict[str, Any],
                               expected: tuple[int, int]) -> None:
    media_id = await upload(client, alice, jpeg(1600, 1200))
    status, body, headers = await thumbnail(client, alice, media_id, **query)
    assert status == 200, body
    assert headers["Content-Type"] == "image/jpeg"
    assert headers["Content-Disposition"] == "inline; filename=thumbnail.jpeg"
    assert headers["X-Content-Type-Options"] == "nosniff"
    image = Image.open(io.BytesIO(body))
    assert image.format == "JPEG"
    assert image.size == expected


async def test_scale_keeps_aspect_and_never_enlarges(client: TestClient, alice: User) -> None:
    media_id = await upload(client, alice, jpeg(1000, 250))
    status, body, _ = await thumbnail(client, alice, media_id, width=320, height=240,
                                      method="scale")
    assert status == 200
    assert Image.open(io.BytesIO(body)).size == (320, 80)
    small = await upload(client, alice, jpeg(100, 50, (1, 2, 3)))
    status, body, _ = await thumbnail(client, alice, small, width=640, height=480)
    assert status == 200
    assert Image.open(io.BytesIO(body)).size == (100, 50)
    # Crop fills the box exactly, whatever the aspect.
    status, body, _ = await thumbnail(client, alice, media_id, width=96, height=96,
                                      method="crop")
    assert Image.open(io.BytesIO(body)).size == (96, 96)


async def test_alpha_gives_png_and_thumbnails_are_cached(client: TestClient, alice: User,
                                                         services: Services) -> None:
    media_id = await upload(client, alice, png_rgba(500, 500), "image/png")
    status, body, headers = await thumbnail(client, alice, media_id, width=96, height=96,
                                            method="crop")
    assert status == 200
    assert headers["Content-Type"] == "image/png"
    image = Image.open(io.BytesIO(body))
    assert (image.format, image.size, image.mode) == ("PNG", (96, 96), "RGBA")
    cached = list((services.config.media.store_path / "thumbnails").rglob("*.png"))
    assert len(cached) == 1
    mtime = cached[0].stat().st_mtime_ns
    status, again, _ = await thumbnail(client, alice, media_id, width=90, height=90,
                                       method="crop")
    assert (status, again) == (200, body)
    assert cached[0].stat().st_mtime_ns == mtime


async def test_animated_gif(client: TestClient, alice: User) -> None:
    media_id = await upload(client, alice, animated_gif(400, 400), "image/gif")
    status, body, headers = await thumbnail(client, alice, media_id, width=96, height=96,
                                            method="crop", animated="true")
    assert status == 200
    assert headers["Content-Type"] == "image/gif"
    image = Image.open(io.BytesIO(body))
    assert image.is_animated and image.n_frames == 3 and image.size == (96, 96)
    status, body, headers = await thumbnail(client, alice, media_id, width=96, height=96,
                                            method="crop")
    assert status == 200
    assert not getattr(Image.open(io.BytesIO(body)), "is_animated", False)


async def test_decompression_bomb_is_refused(client: TestClient, alice: User) -> None:
    bomb = png_bomb()
    assert len(bomb) < 200_000
    media_id = await upload(client, alice, bomb, "image/png")
    status, raw, _ = await thumbnail(client, alice, media_id, width=32, height=32)
    assert status == 400
    assert_matches_spec(CS, "GET", f"/media/thumbnail/{SERVER}/x", 400, error_of(raw))
    # Asked again (another size too): the same answer, from memory.
    for width in (32, 800):
        status, again, _ = await thumbnail(client, alice, media_id, width=width, height=32)
        assert (status, again) == (400, raw)
    # The server is fine, and the upload still downloads as it is.
    status, body, _ = await download(client, alice, media_id)
    assert (status, body) == (200, bomb)
    ok = await upload(client, alice, jpeg(100, 100))
    status, _, _ = await thumbnail(client, alice, ok, width=32, height=32)
    assert status == 200


async def test_wrong_content_type_does_no_harm(client: TestClient, alice: User) -> None:
    junk = b"this is not a picture at all" * 10
    media_id = await upload(client, alice, junk, "image/png")
    status, raw, _ = await thumbnail(client, alice, media_id, width=32, height=32)
    assert status == 400
    assert error_of(raw)["errcode"] == "M_UNKNOWN"
    status, body, headers = await download(client, alice, media_id)
    assert (status, body) == (200, junk)
    # HTML labelled as a picture still goes out with nosniff and the sandbox.
    html = await upload(client, alice, b"<html><script>x</script></html>", "image/png")
    status, raw, _ = await thumbnail(client, alice, html, width=32, height=32)
    assert status == 400
    status, _, headers = await download(client, alice, html)
    assert status == 200
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert "sandbox" in headers["Content-Security-Policy"]


async def test_thumbnail_parameter_errors(client: TestClient, alice: User) -> None:
    media_id = await upload(client, alice, jpeg(50, 50))
    for query, errcode in (({"height": 32}, "M_MISSING_PARAM"),
                           ({"width": "x", "height": 32}, "M_INVALID_PARAM"),
                           ({"width": 0, "height": 32}, "M_INVALID_PARAM"),
                           ({"width": -5, "height": 32}, "M_INVALID_PARAM"),
                           ({"width": 32, "height": 32, "method": "zoom"}, "M_INVALID_PARAM"),
                           ({"width": 32, "height": 32, "animated": "yes"},
                            "M_INVALID_PARAM")):
        status, raw, _ = await thumbnail(client, alice, media_id, **query)
        assert_error(status, error_of(raw), 400, errcode)
    status, raw, _ = await thumbnail(client, alice, "unknown", width=32, height=32)
    assert_error(status, error_of(raw), 404, "M_NOT_FOUND")
    resp = await client.get(f"{AUTHED}/thumbnail/{SERVER}/{media_id}",
                            params={"width": "32", "height": "32"})
    assert_error(resp.status, await resp.json(), 401, "M_MISSING_TOKEN")


# -- the media listener resource ----------------------------------------------------------------


async def test_media_resource_alone_serves_media(services: Services, alice: User,
                                                 aiohttp_client: Any) -> None:
    media_only = await aiohttp_client(build_app(services, ("media",)))
    data = jpeg(20, 20)
    media_id = await upload(media_only, alice, data)
    status, body, _ = await download(media_only, alice, media_id)
    assert (status, body) == (200, data)
    resp = await media_only.get("/_matrix/client/v3/account/whoami",
                                headers=bearer(alice.token))
    assert resp.status == 404


def test_store_path_is_under_tmp(services: Services, tmp_path: Path) -> None:
    assert services.config.media.store_path.is_relative_to(tmp_path)


# -- admin --------------------------------------------------------------------------------------

ADMIN = "/_synapse/admin/v1"


@pytest.fixture
async def admin(client: TestClient) -> User:
    from tests.client_api.test_admin import admin_token
    token = await admin_token(client)
    return User("@admin:test.local", token, "")


async def admin_call(client: TestClient, user: User, method: str, path: str,
                     **query: str) -> tuple[int, Any]:
    resp = await client.request(method, ADMIN + path, params=query or None,
                                headers=bearer(user.token))
    return resp.status, await resp.json()


async def test_quarantine(client: TestClient, alice: User, admin: User) -> None:
    data = jpeg(100, 100)
    media_id = await upload(client, alice, data)
    status, body = await admin_call(client, alice, "POST",
                                    f"/media/quarantine/{SERVER}/{media_id}")
    assert_error(status, body, 403, "M_FORBIDDEN")
    status, body = await admin_call(client, admin, "POST",
                                    f"/media/quarantine/{SERVER}/{media_id}")
    assert (status, body) == (200, {})
    status, raw, _ = await download(client, alice, media_id)
    assert_error(status, error_of(raw), 404, "M_NOT_FOUND")
    status, raw, _ = await thumbnail(client, alice, media_id, width=32, height=32)
    assert_error(status, error_of(raw), 404, "M_NOT_FOUND")
    status, body = await admin_call(client, admin, "POST",
                                    f"/media/unquarantine/{SERVER}/{media_id}")
    assert (status, body) == (200, {})
    status, body_bytes, _ = await download(client, alice, media_id)
    assert (status, body_bytes) == (200, data)
    status, body = await admin_call(client, admin, "POST", f"/media/quarantine/{SERVER}/nope")
    assert_error(status, body, 404, "M_NOT_FOUND")


async def test_delete_by_id(client: TestClient, alice: User, bob: User, admin: User,
                            services: Services) -> None:
    shared = b"shared content"
    first = await upload(client, alice, shared, "text/plain")
    second = await upload(client, bob, shared, "text/plain")
    own = await upload(client, alice, jpeg(300, 300))
    await thumbnail(client, alice, own, width=32, height=32)
    store = services.config.media.store_path
    status, body = await admin_call(client, bob, "DELETE", f"/media/{SERVER}/{first}")
    assert_error(status, body, 403, "M_FORBIDDEN")
    status, body = await admin_call(client, admin, "DELETE", f"/media/{SERVER}/{first}")
    assert (status, body) == (200, {"deleted_media": [first], "total": 1})
    status, raw, _ = await download(client, alice, first)
    assert_error(status, error_of(raw), 404, "M_NOT_FOUND")
    # The same content under another ID stays.
    status, data, _ = await download(client, bob, second)
    assert (status, data) == (200, shared)
    # Its file and thumbnails go with the last ID naming them.
    status, body = await admin_call(client, admin, "DELETE", f"/media/{SERVER}/{own}")
    assert status == 200
    assert not list((store / "thumbnails").rglob("*.jpeg"))
    status, body = await admin_call(client, admin, "DELETE", f"/media/{SERVER}/{own}")
    assert_error(status, body, 404, "M_NOT_FOUND")
    status, body = await admin_call(client, admin, "DELETE", f"/media/other.example/{own}")
    assert_error(status, body, 400, "M_INVALID_PARAM")


async def test_delete_older_than(client: TestClient, alice: User, admin: User,
                                 services: Services) -> None:
    old_small = await upload(client, alice, b"small", "text/plain")
    old_big = await upload(client, alice, b"b" * 5000, "text/plain")
    cutoff = services.clock.time_ms() + 1
    await asyncio.sleep(0.01)
    new = await upload(client, alice, b"new" * 5000, "text/plain")
    status, body = await admin_call(client, admin, "POST", "/media/delete")
    assert_error(status, body, 400, "M_MISSING_PARAM")
    status, body = await admin_call(client, admin, "POST", "/media/delete",
                                    before_ts="soon")
    assert_error(status, body, 400, "M_INVALID_PARAM")
    status, body = await admin_call(client, admin, "POST", "/media/delete",
                                    before_ts=str(cutoff), size_gt="100")
    assert (status, body) == (200, {"deleted_media": [old_big], "total": 1})
    status, body = await admin_call(client, admin, "POST", f"/media/{SERVER}/delete",
                                    before_ts=str(cutoff))
    assert (status, body) == (200, {"deleted_media": [old_small], "total": 1})
    status, _data, _ = await download(client, alice, new)
    assert status == 200
    status, body = await admin_call(client, alice, "POST", "/media/delete",
                                    before_ts=str(cutoff))
    assert_error(status, body, 403, "M_FORBIDDEN")


@pytest.mark.parametrize("config_overrides", [
    {"http": {"request_body_timeout_ms": 300, "request_body_min_bytes_per_second": 1_000_000}}])
async def test_a_dribbled_upload_is_given_up(client: TestClient, alice: User,
                                             services: Services) -> None:
    async def dribble() -> Any:
        yield b"x" * 10
        await asyncio.sleep(2)
        yield b"y" * 10

    resp = await client.post(f"{LEGACY}/upload", data=dribble(),
                             headers={**bearer(alice.token), "Content-Type": "text/plain"})
    assert resp.status == 408
    assert not list((services.config.media.store_path / "tmp").iterdir())


async def test_media_survives_a_restart(harness: Harness, client: TestClient, alice: User,
                                        aiohttp_client: Any) -> None:
    import hashlib
    data = jpeg(120, 90)
    media_id = await upload(client, alice, data, filename="kept.jpg")
    reserved, _ = await create(client, alice)
    store = harness.services.config.media.store_path if harness.services else None
    assert store is not None
    # Content is named by its hash; nothing half-written is left in tmp/.
    digest = hashlib.sha256(data).hexdigest()
    assert (store / "content" / digest[:2] / digest[2:4] / digest).read_bytes() == data
    assert not list((store / "tmp").iterdir())
    services = await harness.restart()
    again = await aiohttp_client(build_app(services))
    status, body, headers = await download(again, alice, media_id)
    assert (status, body) == (200, data)
    assert headers["Content-Disposition"] == "inline; filename=kept.jpg"
    status, answer = await put_upload(again, alice, reserved, b"after the restart")
    assert status == 200, answer


async def test_purge_media_cache_needs_an_admin_and_a_date(client: TestClient, alice: User,
                                                           admin: User) -> None:
    status, body = await admin_call(client, alice, "POST", "/purge_media_cache",
                                    before_ts="1")
    assert_error(status, body, 403, "M_FORBIDDEN")
    status, body = await admin_call(client, admin, "POST", "/purge_media_cache")
    assert_error(status, body, 400, "M_MISSING_PARAM")
    local = await upload(client, alice, b"mine", "text/plain")
    status, body = await admin_call(client, admin, "POST", "/purge_media_cache",
                                    before_ts=str(2**50))
    assert (status, body) == (200, {"deleted": 0})
    status, data, _ = await download(client, alice, local)
    assert (status, data) == (200, b"mine")


async def test_an_empty_upload(client: TestClient, alice: User) -> None:
    media_id = await upload(client, alice, b"", "application/octet-stream")
    status, body, headers = await download(client, alice, media_id)
    assert (status, body) == (200, b"")
    assert headers["Content-Disposition"] == "attachment"
    # No Content-Type: kept as unknown, served as application/octet-stream.
    resp = await client.post(f"{LEGACY}/upload", data=b"raw", skip_auto_headers=["Content-Type"],
                             headers=bearer(alice.token))
    uri = (await resp.json())["content_uri"]
    status, body, headers = await download(client, alice, uri.rsplit("/", 1)[1])
    assert (status, body) == (200, b"raw")
    assert headers["Content-Type"] == "application/octet-stream"


# -- HEAD -------------------------------------------------------------------------------------


async def test_head_answers_the_headers_of_get_without_a_body(client: TestClient,
                                                              alice: User) -> None:
    data = jpeg(120, 90)
    media_id = await upload(client, alice, data, "image/jpeg", filename="head.jpg")
    for path, params in ((f"{AUTHED}/download/{SERVER}/{media_id}", None),
                         (f"{AUTHED}/download/{SERVER}/{media_id}/other.jpg", None),
                         (f"{AUTHED}/thumbnail/{SERVER}/{media_id}",
                          {"width": "32", "height": "32", "method": "crop"})):
        got = await client.get(path, params=params, headers=bearer(alice.token))
        body = await got.read()
        assert got.status == 200
        head = await client.head(path, params=params, headers=bearer(alice.token))
        assert head.status == 200
        assert await head.read() == b""
        for name in ("Content-Type", "Content-Disposition", "Content-Security-Policy",
                     "X-Content-Type-Options"):
            assert head.headers[name] == got.headers[name], name
        assert int(head.headers["Content-Length"]) == len(body)
    # Errors are the same: 401 without a token, 404 for unknown media, 400 for bad sizes.
    head = await client.head(f"{AUTHED}/download/{SERVER}/{media_id}")
    assert head.status == 401
    head = await client.head(f"{AUTHED}/download/{SERVER}/nosuchmedia",
                             headers=bearer(alice.token))
    assert head.status == 404
    head = await client.head(f"{AUTHED}/thumbnail/{SERVER}/{media_id}",
                             params={"width": "0", "height": "3"}, headers=bearer(alice.token))
    assert head.status == 400
    # The legacy routes are off by default, for HEAD too.
    head = await client.head(f"{LEGACY}/download/{SERVER}/{media_id}")
    assert head.status == 404


@pytest.mark.parametrize("config_overrides", [
    {"media": {"legacy_unauthenticated": True, "max_upload_bytes": MAX_UPLOAD}}])
async def test_head_on_legacy_routes_when_enabled(client: TestClient, alice: User) -> None:
    data = jpeg(50, 50)
    media_id = await upload(client, alice, data)
    head = await client.head(f"{LEGACY}/download/{SERVER}/{media_id}/x.jpg")
    assert head.status == 200
    assert head.headers["Content-Type"] == "image/jpeg"
    assert int(head.headers["Content-Length"]) == len(data)
    assert await head.read() == b""
    head = await client.head(f"{LEGACY}/thumbnail/{SERVER}/{media_id}",
                             params={"width": "20", "height": "20", "method": "crop"})
    assert head.status == 200
    assert head.headers["Content-Type"] == "image/jpeg"
