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
import io
import time
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from PIL import Image

from core.crypto.signing_keys import load_signing_key
from core.errors import MatrixError
from federation.remote_media import BadMultipart, RemoteMediaClient, parse_multipart
from federation.transport.client import FederationClient
from homeserver.config import DEFAULT_IP_RANGE_DENYLIST, FederationConfig
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
    # A thumbnail of it, made on A.
    status, body, headers = await get(pair.alice, f"{AUTHED}/thumbnail/{quote(server)}/"
                                      f"{media_id}", width="96", height="96", method="crop")
    assert status == 200, body
    assert Image.open(io.BytesIO(body)).size == (96, 96)
    # Cached: A answers with B down.
    pair.b.stop()
    try:
        status, body, _ = await get(pair.alice, path)
        assert (status, body) == (200, data)
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
        parts = parse_multipart(answer.content_type, answer.body)
        assert len(parts) == 2
        assert parts[0] == ({"content-type": "application/json"}, b"{}")
        assert parts[1][0]["content-type"] == "image/jpeg"
        assert parts[1][0]["content-disposition"] == "inline; filename=wide.jpg"
        assert parts[1][1] == data
        # (The spec gives the 200 no JSON schema: multipart/mixed as checked above.)
        assert_matches_spec("server-server", "GET", f"/media/download/{media_id}", 200, None)
        answer = await client.get_raw(
            b.server_name, f"/_matrix/federation/v1/media/thumbnail/{media_id}",
            query={"width": "320", "height": "240", "method": "scale"})
        parts = parse_multipart(answer.content_type, answer.body)
        assert Image.open(io.BytesIO(parts[1][1])).size == (320, 160)
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
        fetched = await RemoteMediaClient(client).download(b.server_name, media_id,
                                                           max_bytes=10_000_000, timeout_s=30)
        assert (fetched.content_type, fetched.filename, fetched.data) == \
            ("image/jpeg", "wide.jpg", data)
        # Over our limit: 502 M_TOO_LARGE.
        with pytest.raises(MatrixError) as refused:
            await RemoteMediaClient(client).download(b.server_name, media_id, max_bytes=100,
                                                     timeout_s=30)
        assert (refused.value.status, refused.value.errcode) == (502, "M_TOO_LARGE")
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
                                                     max_bytes=1000, timeout_s=10)
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
])
def test_malformed_multipart_is_refused(content_type: str | None, body: bytes) -> None:
    with pytest.raises(BadMultipart):
        parse_multipart(content_type, body)


def test_multipart_with_preamble_and_quoted_boundary() -> None:
    body = (b"preamble\r\n--a b\r\nContent-Type: application/json\r\n\r\n{}\r\n"
            b"--a b\r\nContent-Type: text/plain\r\n\r\nhello\r\n--a b--\r\nepilogue")
    parts = parse_multipart('multipart/mixed; boundary="a b"', body)
    assert parts == [({"content-type": "application/json"}, b"{}"),
                     ({"content-type": "text/plain"}, b"hello")]


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
