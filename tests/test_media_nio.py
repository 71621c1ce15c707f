"""Pictures end to end with matrix-nio against a real ``ktchat run`` process: one client
uploads a PNG (``AsyncClient.upload``) and sends it as ``m.image``; the other sees it in
/sync, downloads it through the authenticated media API (as nio 0.26 does) byte for byte, and
asks for a 32x32 crop thumbnail, which Pillow decodes to 32x32."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Iterator

import nio
import pytest
from PIL import Image

from tests.helpers.nio_server import nio_pair, run_server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    yield from run_server(tmp_path_factory.mktemp("nio-media"))


@pytest.fixture
async def alice_bob(server: str) -> AsyncIterator[tuple[nio.AsyncClient, nio.AsyncClient]]:
    async for pair in nio_pair(server):
        yield pair


def png(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (200, 40, 90)).save(out, format="PNG")
    return out.getvalue()


async def test_a_picture_sent_and_seen(alice_bob: tuple[nio.AsyncClient, nio.AsyncClient]
                                       ) -> None:
    alice, bob = alice_bob
    created = await alice.room_create(name="Pictures", invite=[bob.user_id])
    assert isinstance(created, nio.RoomCreateResponse), created
    room_id = created.room_id
    assert isinstance(await bob.join(room_id), nio.JoinResponse)

    data = png(640, 480)
    uploaded, _ = await alice.upload(io.BytesIO(data), content_type="image/png",
                                     filename="sunset.png", filesize=len(data))
    assert isinstance(uploaded, nio.UploadResponse), uploaded
    mxc = uploaded.content_uri
    assert mxc.startswith("mxc://localhost/")
    sent = await alice.room_send(room_id, "m.room.message", {
        "msgtype": "m.image", "body": "sunset.png", "url": mxc,
        "info": {"mimetype": "image/png", "size": len(data), "w": 640, "h": 480}})
    assert isinstance(sent, nio.RoomSendResponse), sent

    synced = await bob.sync(timeout=0, full_state=True)
    assert isinstance(synced, nio.SyncResponse), synced
    images = [e for e in synced.rooms.join[room_id].timeline.events
              if isinstance(e, nio.RoomMessageImage)]
    assert [e.url for e in images] == [mxc]

    got = await bob.download(mxc)
    assert isinstance(got, nio.DownloadResponse), got
    assert got.body == data
    assert got.content_type == "image/png"
    assert got.filename == "sunset.png"

    server_name, media_id = mxc.removeprefix("mxc://").split("/")
    thumb = await bob.thumbnail(server_name, media_id, 32, 32, nio.ResizingMethod.crop)
    assert isinstance(thumb, nio.ThumbnailResponse), thumb
    assert Image.open(io.BytesIO(thumb.body)).size == (32, 32)
