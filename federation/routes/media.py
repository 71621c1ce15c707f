"""Our media for other servers: ``GET /_matrix/federation/v1/media/download/{mediaId}`` and
``/thumbnail/{mediaId}`` (https://spec.matrix.org/v1.16/server-server-api/#content-repository).

The answer is ``multipart/mixed`` with two parts: a JSON part (the metadata, ``{}``) and the
content with its ``Content-Type`` and ``Content-Disposition``. Only this server's own media
is served (never media it cached from others), as Synapse.
"""

from __future__ import annotations

import asyncio
import secrets
from typing import TYPE_CHECKING, Any

from aiohttp import web

from core.errors import NotFound
from federation.routes._base import federation_route
from homeserver.http.media import content_disposition, served_content_type
from homeserver.http.params import query_int, thumbnail_params
from homeserver.services.media import MediaFile

if TYPE_CHECKING:
    from federation.container import Federation

routes = web.RouteTableDef()

CHUNK_BYTES = 256 * 1024


def _read_chunk(path: Any, offset: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(CHUNK_BYTES)


async def _multipart(request: web.Request, file: MediaFile) -> web.StreamResponse:
    boundary = secrets.token_hex(16)
    head = (f"--{boundary}\r\nContent-Type: application/json\r\n\r\n{{}}\r\n"
            f"--{boundary}\r\nContent-Type: {served_content_type(file.content_type)}\r\n"
            f"Content-Disposition: {content_disposition(file.content_type, file.upload_name)}"
            f"\r\n\r\n").encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    response = web.StreamResponse(
        headers={"Content-Type": f"multipart/mixed; boundary={boundary}"})
    response.content_length = len(head) + file.size + len(tail)
    await response.prepare(request)
    await response.write(head)
    offset = 0
    while offset < file.size:
        chunk = await asyncio.to_thread(_read_chunk, file.path, offset)
        if not chunk:
            break
        await response.write(chunk)
        offset += len(chunk)
    await response.write(tail)
    await response.write_eof()
    return response


def _media(fed: Federation) -> Any:
    media = fed.served.media
    if media is None:
        raise NotFound("No media here")
    return media


@routes.get("/_matrix/federation/v1/media/download/{media_id}")
@federation_route
async def get_download(request: web.Request, fed: Federation, _origin: str, _body: Any
                       ) -> web.StreamResponse:
    """GET /_matrix/federation/v1/media/download/{mediaId}"""
    file = await _media(fed).download(fed.server_name, request.match_info["media_id"],
                                      timeout_ms=query_int(request, "timeout_ms"),
                                      allow_remote=False)
    return await _multipart(request, file)


@routes.get("/_matrix/federation/v1/media/thumbnail/{media_id}")
@federation_route
async def get_thumbnail(request: web.Request, fed: Federation, _origin: str, _body: Any
                        ) -> web.StreamResponse:
    """GET /_matrix/federation/v1/media/thumbnail/{mediaId}"""
    params = thumbnail_params(request)
    file = await _media(fed).thumbnail(
        fed.server_name, request.match_info["media_id"], params.width, params.height,
        params.method, animated=params.animated, timeout_ms=query_int(request, "timeout_ms"),
        allow_remote=False)
    return await _multipart(request, file)
