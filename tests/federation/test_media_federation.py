"""Media across servers: alice on A reads media bob uploaded on B (``mxc://B/...``), which A
fetches once over ``/_matrix/federation/v1/media/download`` and keeps; B's federation media
endpoints answered directly (signed as A) are checked against the server-server spec; the
address policy (``federation.ip_range_denylist``) keeps a server with a private address out
of reach; malformed multipart answers are refused without harm.

A and B are real ``ktchat`` processes federating over TLS on loopback (B on SQLite, and on
PostgreSQL with ``fed_pair_pg``).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import time
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.base_protocol import BaseProtocol
from PIL import Image

from core.crypto.signing_keys import load_signing_key
from core.errors import MatrixError
from federation.remote_media import BadMultipart, RemoteMediaClient, read_multipart_media
from federation.transport.client import FederationClient
from homeserver.config import DEFAULT_IP_RANGE_DENYLIST, FederationConfig
from tests.helpers.fake_peer import FakePeer
from tests.helpers.federation import FedPair, FedServer, User
from tests.helpers.spec import assert_matches_spec

AUTHED = "/_matrix/client/v1/media"


def jpeg(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (10, 200, 10)).save(out, "JPEG")
    return out.getvalue()


async def upload(user: User, data: bytes, content_type: str, filename: str) -> str:
    async with aiohttp.ClientSession() as session, session.post(
            f"{user.server.client_url}/_matrix/media/v3/upload", data=data,
            params={"filename": filename},
            headers={"Authorization": f"Bearer {user.access_token}",
                     "Content-Type": content_type}) as resp:
        body = await resp.json()
        assert resp.status == 200, body
        return str(body["content_uri"])


async def get(user: User, path: str, **params: str) -> tuple[int, bytes, Any]:
    async with aiohttp.ClientSession() as session, session.get(
            f"{user.server.client_url}{path}", params=params or None,
            headers={"Authorization": f"Bearer {user.access_token}"},
            timeout=aiohttp.ClientTimeout(total=60)) as resp:
        return resp.status, await resp.read(), resp.headers


class ListSink:
    """A ``MediaSink`` keeping what it is given (and how it came)."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    async def write(self, chunk: bytes) -> None:
        self.chunks.append(chunk)

    @property
    def data(self) -> bytes:
        return b"".join(self.chunks)


def stream_of(body: bytes) -> aiohttp.StreamReader:
    loop = asyncio.get_running_loop()
    reader = aiohttp.StreamReader(BaseProtocol(loop), 2 ** 22, loop=loop)
    reader.feed_data(body)
    reader.feed_eof()
    return reader


async def parse_answer(content_type: str | None, body: bytes, max_bytes: int = 10_000_000
                       ) -> tuple[Any, str | None, bytes]:
    """A federation media answer through the streaming parser: labels, Location, content."""
    sink = ListSink()
    headers = {"Content-Type": content_type} if content_type is not None else {}
    info, location = await read_multipart_media(headers, stream_of(body), sink, max_bytes)
    return info, location, sink.data


def split_mxc(uri: str) -> tuple[str, str]:
    server, media_id = uri.removeprefix("mxc://").rsplit("/", 1)
    return server, media_id


async def _remote_download(pair: FedPair) -> None:
    data = jpeg(640, 480)
    uri = await upload(pair.bob, data, "image/jpeg", "garden.jpg")
    server, media_id = split_mxc(uri)
    assert server == pair.b.server_name
    path = f"{AUTHED}/download/{quote(server, safe='')}/{media_id}"
    # Several at once: A asks B once.
    answers = await asyncio.gather(*(get(pair.alice, path) for _ in range(5)))
    for status, body, headers in answers:
        assert status == 200, body
        assert body == data
        assert headers["Content-Type"] == "image/jpeg"
        assert headers["Content-Disposition"] == "inline; filename=garden.jpg"
        assert headers["X-Content-Type-Options"] == "nosniff"
    fed_path = f"/_matrix/federation/v1/media/download/{media_id}"
    assert pair.b.log().count(fed_path) == 1, pair.b.log_tail(50)
    # A thumbnail of it, asked of B (several at once: once) and kept.
    thumb_path = f"{AUTHED}/thumbnail/{quote(server)}/{media_id}"
    thumb_fed_path = f"/_matrix/federation/v1/media/thumbnail/{media_id}"
    answers = await asyncio.gather(*(get(pair.alice, thumb_path, width="96", height="96",
                                         method="crop") for _ in range(4)))
    for status, body, headers in answers:
        assert status == 200, body
        assert Image.open(io.BytesIO(body)).size == (96, 96)
        assert headers["Content-Type"] == "image/jpeg"
    assert pair.b.log().count(thumb_fed_path) == 1, pair.b.log_tail(50)
    status, body, _ = await get(pair.alice, thumb_path, width="90", height="90",
                                method="crop")  # the same configured size: kept
    assert status == 200
    assert pair.b.log().count(thumb_fed_path) == 1
    thumb96 = body
    # Cached: A answers with B down.
    pair.b.stop()
    try:
        status, body, _ = await get(pair.alice, path)
        assert (status, body) == (200, data)
        status, body, _ = await get(pair.alice, thumb_path, width="96", height="96",
                                    method="crop")
        assert (status, body) == (200, thumb96)
        # A size B never made, B down: made on A from the original it keeps.
        status, body, _ = await get(pair.alice, thumb_path, width="32", height="32",
                                    method="crop")
        assert status == 200, body
        assert Image.open(io.BytesIO(body)).size == (32, 32)
        # Something A never fetched, with B down: 502.
        status, raw, _ = await get(pair.alice, f"{AUTHED}/download/{quote(server)}/notfetched")
        assert status == 502, raw
    finally:
        pair.b.start()
    # Unknown on B: 404.
    status, raw, _ = await get(pair.alice, f"{AUTHED}/download/{quote(server)}/nosuchmedia")
    assert status == 404, raw
    # An admin on A purges the cache: the next download asks B again.
    admin = await pair.a.register("mediaadmin", admin=True)
    async with aiohttp.ClientSession() as session, session.post(
            f"{pair.a.client_url}/_synapse/admin/v1/purge_media_cache",
            params={"before_ts": str(int(time.time() * 1000) + 1000)},
            headers={"Authorization": f"Bearer {admin.access_token}"}) as resp:
        answer = await resp.json()
        assert resp.status == 200, answer
        assert answer["deleted"] >= 1
    status, body, _ = await get(pair.alice, path)
    assert (status, body) == (200, data)
    assert pair.b.log().count(fed_path) == 2
    # The thumbnails B made were purged too: asked again.
    status, body, _ = await get(pair.alice, thumb_path, width="96", height="96", method="crop")
    assert status == 200
    assert pair.b.log().count(thumb_fed_path) == 2
    # allow_remote=false: A does not ask.
    uri = await upload(pair.bob, b"later", "text/plain", "later.txt")
    _, other_id = split_mxc(uri)
    status, _, _ = await get(pair.alice, f"{AUTHED}/download/{quote(server)}/{other_id}",
                             allow_remote="false")
    assert status == 404


async def test_remote_media_is_fetched_once_and_kept(fed_pair: FedPair) -> None:
    await _remote_download(fed_pair)


async def test_remote_media_with_b_on_postgres(fed_pair_pg: FedPair) -> None:
    await _remote_download(fed_pair_pg)


def _signing_client(a: FedServer, **config: Any) -> FederationClient:
    fed_config = FederationConfig(verify_tls=False, **config)
    return FederationClient(a.server_name, load_signing_key(a.dir / "signing.key"),
                            fed_config)


async def test_federation_media_endpoints_answer_multipart(fed_pair: FedPair) -> None:
    import ipaddress
    a, b = fed_pair.a, fed_pair.b
    data = jpeg(1000, 500)
    _, media_id = split_mxc(await upload(fed_pair.bob, data, "image/jpeg", "wide.jpg"))
    client = _signing_client(a, ip_range_allowlist=(ipaddress.ip_network("127.0.0.0/8"),))
    await client.start()
    try:
        answer = await client.get_raw(b.server_name,
                                      f"/_matrix/federation/v1/media/download/{media_id}")
        assert answer.content_type is not None
        assert answer.content_type.startswith("multipart/mixed; boundary=")
        assert answer.body.startswith(b"--")
        assert b"Content-Type: application/json\r\n\r\n{}\r\n" in answer.body
        info, location, content = await parse_answer(answer.content_type, answer.body)
        assert (info.content_type, info.filename, location) == ("image/jpeg", "wide.jpg", None)
        assert b"Content-Disposition: inline; filename=wide.jpg" in answer.body
        assert content == data
        # (The spec gives the 200 no JSON schema: multipart/mixed as checked above.)
        assert_matches_spec("server-server", "GET", f"/media/download/{media_id}", 200, None)
        answer = await client.get_raw(
            b.server_name, f"/_matrix/federation/v1/media/thumbnail/{media_id}",
            query={"width": "320", "height": "240", "method": "scale"})
        _, _, content = await parse_answer(answer.content_type, answer.body)
        assert Image.open(io.BytesIO(content)).size == (320, 160)
        # Errors are Matrix errors of the spec's statuses.
        for path, query, status in (
                ("/_matrix/federation/v1/media/download/unknownmedia", None, 404),
                (f"/_matrix/federation/v1/media/thumbnail/{media_id}", {"width": "x",
                                                                        "height": "3"}, 400)):
            try:
                await client.get_raw(b.server_name, path, query=query)
            except Exception as e:  # FederationRequestError
                assert getattr(e, "status", None) == status, e
            else:
                raise AssertionError(f"{path} answered 200")
        # Through RemoteMediaClient: the same bytes, type and name.
        sink = ListSink()
        fetched = await RemoteMediaClient(client).download(
            b.server_name, media_id, sink=sink, max_bytes=10_000_000, timeout_s=30)
        assert (fetched.content_type, fetched.filename, sink.data) == \
            ("image/jpeg", "wide.jpg", data)
        # Streamed: written as it came, in pieces.
        noise = os.urandom(300_000)
        _, noise_id = split_mxc(await upload(fed_pair.bob, noise, "application/octet-stream",
                                             "noise.bin"))
        sink = ListSink()
        await RemoteMediaClient(client).download(b.server_name, noise_id, sink=sink,
                                                 max_bytes=10_000_000, timeout_s=30)
        assert sink.data == noise
        assert len(sink.chunks) >= 300_000 // 65_536
        # A thumbnail B makes, the same way.
        sink = ListSink()
        fetched = await RemoteMediaClient(client).thumbnail(
            b.server_name, media_id, width=96, height=96, method="crop", animated=False,
            sink=sink, max_bytes=10_000_000, timeout_s=30)
        assert fetched.content_type == "image/jpeg"
        assert Image.open(io.BytesIO(sink.data)).size == (96, 96)
        # Over our limit: 502 M_TOO_LARGE, having written no more than the limit.
        sink = ListSink()
        with pytest.raises(MatrixError) as refused:
            await RemoteMediaClient(client).download(b.server_name, media_id, sink=sink,
                                                     max_bytes=100, timeout_s=30)
        assert (refused.value.status, refused.value.errcode) == (502, "M_TOO_LARGE")
        assert len(sink.data) <= 100
    finally:
        await client.close()
    # Unsigned: refused.
    async with aiohttp.ClientSession() as session, session.get(
            f"{b.federation_url}/_matrix/federation/v1/media/download/{media_id}",
            ssl=False) as resp:
        body = await resp.json()
        assert resp.status == 401, body
        assert body["errcode"] == "M_UNAUTHORIZED"


async def test_denied_addresses_are_never_asked(fed_pair: FedPair) -> None:
    import ipaddress
    networks = tuple(ipaddress.ip_network(n) for n in DEFAULT_IP_RANGE_DENYLIST)
    client = _signing_client(fed_pair.a, ip_range_denylist=networks)
    await client.start()
    before = fed_pair.b.log_size()
    try:
        with pytest.raises(MatrixError) as refused:
            await RemoteMediaClient(client).download(fed_pair.b.server_name, "anything",
                                                     sink=ListSink(), max_bytes=1000,
                                                     timeout_s=10)
        assert refused.value.status == 502
    finally:
        await client.close()
    assert "/media/download/anything" not in fed_pair.b.log()[before:]


@pytest.mark.parametrize(("content_type", "body"), [
    (None, b""),
    ("application/json", b"{}"),
    ("multipart/mixed", b"--x\r\n\r\n{}"),
    ("multipart/mixed; boundary=x", b"no delimiters at all"),
    ("multipart/mixed; boundary=x", b"--x\r\nContent-Type: application/json\r\n\r\n{}"),
    ("multipart/mixed; boundary=x", b"--x\r\nbroken header line\r\n\r\n{}\r\n--x--"),
    ("multipart/mixed; boundary=x", b"--x\r\nno blank line\r\n--x--"),
    # One part only.
    ("multipart/mixed; boundary=x", b"--x\r\nContent-Type: application/json\r\n\r\n{}"
                                    b"\r\n--x--\r\n"),
    # Truncated: the content never ends with the closing delimiter.
    ("multipart/mixed; boundary=x", b"--x\r\nContent-Type: application/json\r\n\r\n{}"
                                    b"\r\n--x\r\nContent-Type: text/plain\r\n\r\nhel"),
    # A JSON part far over what metadata can be.
    ("multipart/mixed; boundary=x", b"--x\r\nContent-Type: application/json\r\n\r\n"
                                    + b"x" * 200_000 + b"\r\n--x--\r\n"),
])
async def test_malformed_multipart_is_refused(content_type: str | None, body: bytes) -> None:
    with pytest.raises(BadMultipart):
        await parse_answer(content_type, body)


async def test_multipart_with_preamble_and_quoted_boundary() -> None:
    body = (b"preamble\r\n--a b\r\nContent-Type: application/json\r\n\r\n{}\r\n"
            b"--a b\r\nContent-Type: text/plain\r\n"
            b"Content-Disposition: attachment; filename=\"h.txt\"\r\n\r\nhello\r\n"
            b"--a b--\r\nepilogue")
    info, location, content = await parse_answer('multipart/mixed; boundary="a b"', body)
    assert (info.content_type, info.filename, location, content) == \
        ("text/plain", "h.txt", None, b"hello")


async def test_multipart_over_the_limit_stops_early() -> None:
    big = b"y" * 300_000
    body = (b"--x\r\nContent-Type: application/json\r\n\r\n{}\r\n--x\r\n"
            b"Content-Type: application/octet-stream\r\n\r\n" + big + b"\r\n--x--\r\n")
    from federation.transport.client import ResponseTooLarge
    sink = ListSink()
    with pytest.raises(ResponseTooLarge):
        await read_multipart_media({"Content-Type": "multipart/mixed; boundary=x"},
                                   stream_of(body), sink, 100_000)
    assert len(sink.data) <= 100_000
    _, _, content = await parse_answer("multipart/mixed; boundary=x", body, 300_000)
    assert content == big


async def test_media_with_synapse_both_ways(interop: FedPair) -> None:
    """KT-Chat (A, alice) and Synapse (B, sam): each reads the other's media over
    federation, the bytes, type and name intact."""
    ktchat_user, synapse_user = interop.alice, interop.bob
    theirs = jpeg(300, 200)
    server, media_id = split_mxc(await upload(synapse_user, theirs, "image/jpeg", "syn.jpg"))
    status, body, headers = await get(ktchat_user,
                                      f"{AUTHED}/download/{quote(server)}/{media_id}")
    assert status == 200, body
    assert body == theirs
    assert headers["Content-Type"] == "image/jpeg"
    assert "syn.jpg" in headers["Content-Disposition"]
    status, body, _ = await get(ktchat_user, f"{AUTHED}/thumbnail/{quote(server)}/{media_id}",
                                width="32", height="32", method="crop")
    assert status == 200
    assert Image.open(io.BytesIO(body)).size == (32, 32)

    ours = jpeg(400, 300)
    server, media_id = split_mxc(await upload(ktchat_user, ours, "image/jpeg", "kt.jpg"))
    status, body, headers = await get(synapse_user,
                                      f"{AUTHED}/download/{quote(server)}/{media_id}")
    assert status == 200, body
    assert body == ours
    assert headers["Content-Type"] == "image/jpeg"
    status, body, _ = await get(synapse_user, f"{AUTHED}/thumbnail/{quote(server)}/{media_id}",
                                width="96", height="96", method="crop")
    assert status == 200, body
    assert Image.open(io.BytesIO(body)).size == (96, 96)


# -- a server of the old kind (a fake peer on loopback) ----------------------------------------


@pytest_asyncio.fixture
async def media_peer(tmp_path: Any) -> Any:
    """A server without the federation media endpoints (404 M_UNRECOGNIZED, as before
    Matrix 1.11) that serves the legacy ``/_matrix/media/v3`` ones, plus a multipart answer
    pointing elsewhere (``Location``) and an endless body."""
    peer = FakePeer(tmp_path / "peer")
    picture = jpeg(200, 100)

    async def legacy_download(request: web.Request) -> web.StreamResponse:
        if request.match_info["media_id"] == "endless":
            response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
            await response.prepare(request)
            with contextlib.suppress(ConnectionError):
                for _ in range(1_000):  # 64 MiB
                    await response.write(b"z" * 65_536)
            return response
        return web.Response(body=picture, headers={
            "Content-Type": "image/jpeg", "Content-Disposition": "inline; filename=old.jpg"})

    async def legacy_thumbnail(request: web.Request) -> web.Response:
        out = io.BytesIO()
        Image.new("RGB", (int(request.query["width"]), int(request.query["height"])),
                  (1, 2, 3)).save(out, "PNG")
        return web.Response(body=out.getvalue(), content_type="image/png")

    async def redirected(request: web.Request) -> web.Response:
        boundary = "b0und"
        body = (f"--{boundary}\r\nContent-Type: application/json\r\n\r\n{{}}\r\n"
                f"--{boundary}\r\nLocation: https://{peer.server_name}/elsewhere/pic\r\n\r\n"
                f"\r\n--{boundary}--\r\n").encode()
        return web.Response(body=body, headers={
            "Content-Type": f"multipart/mixed; boundary={boundary}"})

    async def elsewhere(request: web.Request) -> web.Response:
        return web.Response(body=picture, content_type="image/jpeg")

    peer.extra_routes += [
        ("GET", "/_matrix/media/v3/download/{server}/{media_id}", legacy_download),
        ("GET", "/_matrix/media/v3/thumbnail/{server}/{media_id}", legacy_thumbnail),
        ("GET", "/_matrix/federation/v1/media/download/redirected", redirected),
        ("GET", "/elsewhere/pic", elsewhere)]
    await peer.start()
    peer.picture = picture  # type: ignore[attr-defined]
    try:
        yield peer
    finally:
        await peer.close()


async def test_legacy_endpoints_and_location_of_an_old_server(fed_pair: FedPair,
                                                              media_peer: Any) -> None:
    import ipaddress
    client = _signing_client(fed_pair.a, ip_range_allowlist=(
        ipaddress.ip_network("127.0.0.0/8"),))
    await client.start()
    remote = RemoteMediaClient(client)
    peer_name = media_peer.server_name
    try:
        sink = ListSink()
        info = await remote.download(peer_name, "oldpic", sink=sink, max_bytes=1_000_000,
                                     timeout_s=30)
        assert (info.content_type, info.filename, sink.data) == \
            ("image/jpeg", "old.jpg", media_peer.picture)
        sink = ListSink()
        info = await remote.thumbnail(peer_name, "oldpic", width=40, height=30,
                                      method="scale", animated=False, sink=sink,
                                      max_bytes=1_000_000, timeout_s=30)
        assert info.content_type == "image/png"
        assert Image.open(io.BytesIO(sink.data)).size == (40, 30)
        # Asked first on the federation endpoint, then on the legacy one with
        # allow_remote=false.
        paths = [r.path for r in media_peer.requests]
        assert any(p.startswith("/_matrix/federation/v1/media/download/oldpic") for p in paths)
        assert any(p.startswith("/_matrix/federation/v1/media/thumbnail/oldpic")
                   for p in paths)
        # (Only unknown routes are recorded: the legacy ones were answered.)
        # A multipart answer pointing elsewhere: fetched from there.
        sink = ListSink()
        info = await remote.download(peer_name, "redirected", sink=sink,
                                     max_bytes=1_000_000, timeout_s=30)
        assert (info.content_type, sink.data) == ("image/jpeg", media_peer.picture)
        # An endless body: cut at the limit, 502 M_TOO_LARGE, no more written.
        sink = ListSink()
        with pytest.raises(MatrixError) as refused:
            await remote.download(peer_name, "endless", sink=sink, max_bytes=500_000,
                                  timeout_s=30)
        assert (refused.value.status, refused.value.errcode) == (502, "M_TOO_LARGE")
        assert len(sink.data) <= 500_000
    finally:
        await client.close()


async def test_a_thumbnail_from_an_old_server_through_a(fed_pair: FedPair,
                                                        media_peer: Any) -> None:
    """alice on A asks for a thumbnail of the old server's media: A gets it from its
    legacy endpoint, keeps it, and downloads the original only when asked for it."""
    peer_name = media_peer.server_name
    thumb_path = f"{AUTHED}/thumbnail/{quote(peer_name)}/oldpic"
    # Endless media: cut at A's limit (media.max_upload_bytes, 50 MiB by default), 502
    # M_TOO_LARGE, and nothing of it is left in A's store.
    status, raw, _ = await get(fed_pair.alice,
                               f"{AUTHED}/download/{quote(peer_name)}/endless")
    assert status == 502, raw
    assert b"M_TOO_LARGE" in raw
    tmp = fed_pair.a.dir / "media" / "tmp"
    assert not tmp.exists() or list(tmp.iterdir()) == []
    status, body, headers = await get(fed_pair.alice, thumb_path, width="320", height="240",
                                      method="scale")
    assert status == 200, body
    assert headers["Content-Type"] == "image/png"
    assert Image.open(io.BytesIO(body)).size == (320, 240)  # the peer's own (scaled up)
    # Kept: asked once.
    await media_peer.close()
    status, again, _ = await get(fed_pair.alice, thumb_path, width="320", height="240",
                                 method="scale")
    assert (status, again) == (200, body)
    # The original was never fetched: with the peer gone, 502.
    status, raw, _ = await get(fed_pair.alice, f"{AUTHED}/download/{quote(peer_name)}/oldpic")
    assert status == 502, raw
