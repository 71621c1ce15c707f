"""The media repository's client endpoints: uploads (``/_matrix/media/v3/upload``, ``/v1/create``),
authenticated downloads and thumbnails (``/_matrix/client/v1/media/...``), and the legacy
unauthenticated ``/_matrix/media/v3/download|thumbnail`` (only with
``media.legacy_unauthenticated``; otherwise ``404 M_NOT_FOUND``, as Synapse).

Upload bodies are streamed to disk as they come (the request-body middleware leaves them
alone), bounded by ``media.max_upload_bytes`` as they are read.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

from aiohttp import web

from client_api._routing import ClientRoutes, Handler
from client_api.auth import require_admin, require_requester
from core.errors import (
    InvalidParam,
    MatrixError,
    MissingParam,
    NotFound,
    TooLarge,
    Unrecognized,
)
from homeserver.appkeys import SERVICES
from homeserver.http.disconnect import CLIENT_CLOSED_REQUEST
from homeserver.http.json import json_response
from homeserver.http.media import media_headers
from homeserver.http.middleware import error_response
from homeserver.http.params import query_bool, query_int, thumbnail_params
from homeserver.services.media import MediaFile

routes = ClientRoutes()

AUTHED = ("/_matrix/client/v1/media",)
LEGACY = ("/_matrix/media/v3", "/_matrix/media/r0")
CREATE = ("/_matrix/media/v1",)
CHUNK_BYTES = 64 * 1024


@routes.get("/config", versions=(*AUTHED, *LEGACY))
async def get_config(request: web.Request) -> web.Response:
    """GET /_matrix/client/v1/media/config (and /_matrix/media/v3/config)"""
    await require_requester(request)
    return json_response({"m.upload.size": request.app[SERVICES].media.max_upload_bytes})


@routes.post("/create", versions=CREATE)
async def post_create(request: web.Request) -> web.Response:
    """POST /_matrix/media/v1/create"""
    requester = await require_requester(request)
    uri, expires = await request.app[SERVICES].media.create(requester.user_id)
    return json_response({"content_uri": uri, "unused_expires_at": expires})


async def _body(request: web.Request) -> AsyncIterator[bytes]:
    """The body as it comes, under the request-body middleware's deadline: its grace
    (``http.request_body_timeout_ms``) plus a second per ``request_body_min_bytes_per_second``
    bytes received (``TimeoutError`` past it)."""
    http = request.app[SERVICES].config.http
    loop = asyncio.get_running_loop()
    started = loop.time()
    received = 0
    while True:
        deadline = (started + http.request_body_timeout_ms / 1000
                    + received / http.request_body_min_bytes_per_second)
        async with asyncio.timeout_at(deadline):
            chunk = await request.content.read(CHUNK_BYTES)
        if not chunk:
            return
        received += len(chunk)
        yield chunk


async def _upload(request: web.Request, media_id: str | None) -> web.Response:
    requester = await require_requester(request)
    media = request.app[SERVICES].media
    if media_id is not None:
        server_name = request.match_info["server_name"]
        try:
            await media.check_upload_to(requester.user_id, server_name, media_id)
        except MatrixError as e:
            return _closing(e)  # the body is not read
    limit = media.max_upload_bytes
    if request.content_length is not None and request.content_length > limit:
        return _closing(TooLarge(f"Upload over the limit of {limit} bytes"))
    filename = request.query.get("filename") or None
    content_type = request.headers.get("Content-Type") or None
    try:
        uri = await media.upload(requester.user_id, _body(request), content_type=content_type,
                                 upload_name=filename, media_id=media_id)
    except TooLarge as e:
        return _closing(e)
    except TimeoutError:
        return _closing(MatrixError("Request body not received in time", status=408))
    except ConnectionError:
        # The client went away mid-body (the disconnect middleware logs the 499).
        return web.Response(status=CLIENT_CLOSED_REQUEST)
    return json_response({"content_uri": uri} if media_id is None else {})


def _closing(error: MatrixError) -> web.Response:
    """An answer before the body was all read: the connection closes after it."""
    response = error_response(error)
    response.force_close()
    return response


@routes.post("/upload", versions=LEGACY)
async def post_upload(request: web.Request) -> web.Response:
    """POST /_matrix/media/v3/upload"""
    return await _upload(request, None)


@routes.put("/upload/{server_name}/{media_id}", versions=LEGACY)
async def put_upload(request: web.Request) -> web.Response:
    """PUT /_matrix/media/v3/upload/{serverName}/{mediaId}"""
    return await _upload(request, request.match_info["media_id"])


# -- downloads ------------------------------------------------------------------------------


def _common_params(request: web.Request) -> tuple[int | None, bool]:
    """``timeout_ms`` and ``allow_remote`` (``allow_redirect`` is accepted and unused: we
    never redirect)."""
    timeout_ms = query_int(request, "timeout_ms")
    allow_remote = query_bool(request, "allow_remote", True)
    query_bool(request, "allow_redirect", False)
    return timeout_ms, allow_remote


def _file_response(file: MediaFile, filename: str | None) -> web.FileResponse:
    return web.FileResponse(file.path, chunk_size=256 * 1024,
                            headers=media_headers(file.content_type, filename))


async def _download(request: web.Request) -> web.StreamResponse:
    timeout_ms, allow_remote = _common_params(request)
    file = await request.app[SERVICES].media.download(
        request.match_info["server_name"], request.match_info["media_id"],
        timeout_ms=timeout_ms, allow_remote=allow_remote)
    return _file_response(file, request.match_info.get("file_name") or file.upload_name)


async def _thumbnail(request: web.Request) -> web.StreamResponse:
    timeout_ms, allow_remote = _common_params(request)
    params = thumbnail_params(request)
    file = await request.app[SERVICES].media.thumbnail(
        request.match_info["server_name"], request.match_info["media_id"], params.width,
        params.height, params.method, animated=params.animated, timeout_ms=timeout_ms,
        allow_remote=allow_remote)
    return _file_response(file, file.upload_name)  # "thumbnail.jpeg": the spec's SHOULD


def _get_and_head(path: str, versions: tuple[str, ...]
                  ) -> Callable[[Handler], Handler]:
    """GET and HEAD (the same headers, no body: aiohttp's responses send none for HEAD)."""
    def decorate(handler: Handler) -> Handler:
        return routes.route("HEAD", path, versions)(routes.get(path, versions)(handler))
    return decorate


@_get_and_head("/download/{server_name}/{media_id}", versions=AUTHED)
@_get_and_head("/download/{server_name}/{media_id}/{file_name}", versions=AUTHED)
async def get_download(request: web.Request) -> web.StreamResponse:
    """GET /_matrix/client/v1/media/download/{serverName}/{mediaId}[/{fileName}]"""
    await require_requester(request)
    return await _download(request)


@_get_and_head("/thumbnail/{server_name}/{media_id}", versions=AUTHED)
async def get_thumbnail(request: web.Request) -> web.StreamResponse:
    """GET /_matrix/client/v1/media/thumbnail/{serverName}/{mediaId}"""
    await require_requester(request)
    return await _thumbnail(request)


def _require_legacy(request: web.Request) -> None:
    if not request.app[SERVICES].media.legacy_unauthenticated:
        raise NotFound("Not found")


@_get_and_head("/download/{server_name}/{media_id}", versions=LEGACY)
@_get_and_head("/download/{server_name}/{media_id}/{file_name}", versions=LEGACY)
async def get_legacy_download(request: web.Request) -> web.StreamResponse:
    """GET /_matrix/media/v3/download/{serverName}/{mediaId}[/{fileName}] (legacy)"""
    _require_legacy(request)
    return await _download(request)


@_get_and_head("/thumbnail/{server_name}/{media_id}", versions=LEGACY)
async def get_legacy_thumbnail(request: web.Request) -> web.StreamResponse:
    """GET /_matrix/media/v3/thumbnail/{serverName}/{mediaId} (legacy)"""
    _require_legacy(request)
    return await _thumbnail(request)


# -- URL previews ---------------------------------------------------------------------------


async def _preview(request: web.Request, user_id: str) -> web.Response:
    previews = request.app[SERVICES].url_previews
    if not previews.enabled:
        raise Unrecognized("Unrecognized request")
    url = request.query.get("url")
    if not url:
        raise MissingParam("Missing string query parameter 'url'")
    ts = query_int(request, "ts")
    return json_response(await previews.preview(user_id, url, ts))


@routes.get("/preview_url", versions=AUTHED)
async def get_preview_url(request: web.Request) -> web.Response:
    """GET /_matrix/client/v1/media/preview_url?url=&ts= (404 M_UNRECOGNIZED when
    ``media.url_preview.enabled`` is off)"""
    requester = await require_requester(request)
    return await _preview(request, requester.user_id)


@routes.get("/preview_url", versions=LEGACY)
async def get_legacy_preview_url(request: web.Request) -> web.Response:
    """GET /_matrix/media/v3/preview_url (legacy: only with ``media.legacy_unauthenticated``;
    it still takes an access token, as the spec says)"""
    _require_legacy(request)
    requester = await require_requester(request)
    return await _preview(request, requester.user_id)


# -- admin (Synapse's media admin API) -----------------------------------------------------------

ADMIN_V1 = ("/_synapse/admin/v1",)


@routes.post("/media/quarantine/{server_name}/{media_id}", versions=ADMIN_V1)
async def post_quarantine(request: web.Request) -> web.Response:
    """POST /_synapse/admin/v1/media/quarantine/{serverName}/{mediaId}: nobody can download
    or thumbnail it any more (404), here or over federation."""
    admin = await require_admin(request)
    await request.app[SERVICES].media.quarantine(
        request.match_info["server_name"], request.match_info["media_id"], admin.user_id)
    return json_response({})


@routes.post("/media/unquarantine/{server_name}/{media_id}", versions=ADMIN_V1)
async def post_unquarantine(request: web.Request) -> web.Response:
    """POST /_synapse/admin/v1/media/unquarantine/{serverName}/{mediaId}"""
    await require_admin(request)
    await request.app[SERVICES].media.quarantine(
        request.match_info["server_name"], request.match_info["media_id"], None)
    return json_response({})


@routes.delete("/media/{server_name}/{media_id}", versions=ADMIN_V1)
async def delete_media(request: web.Request) -> web.Response:
    """DELETE /_synapse/admin/v1/media/{serverName}/{mediaId}: this server's media, its
    file (when nothing else has the same content) and its thumbnails."""
    await require_admin(request)
    media = request.app[SERVICES].media
    server_name, media_id = request.match_info["server_name"], request.match_info["media_id"]
    if not media.is_mine(server_name):
        raise InvalidParam("Can only delete local media")
    await media.delete(server_name, media_id)
    return json_response({"deleted_media": [media_id], "total": 1})


@routes.post("/media/delete", versions=ADMIN_V1)
@routes.post("/media/{server_name}/delete", versions=ADMIN_V1)
async def post_delete_old_media(request: web.Request) -> web.Response:
    """POST /_synapse/admin/v1/media/delete?before_ts=&size_gt=: this server's media uploaded
    before ``before_ts`` (ms), larger than ``size_gt`` bytes."""
    await require_admin(request)
    media = request.app[SERVICES].media
    server_name = request.match_info.get("server_name")
    if server_name is not None and not media.is_mine(server_name):
        raise InvalidParam("Can only delete local media")
    before_ts = query_int(request, "before_ts")
    if before_ts is None:
        raise MissingParam("Missing integer query parameter 'before_ts'")
    size_gt = query_int(request, "size_gt", 0)
    deleted = await media.delete_local_before(before_ts, larger_than=size_gt + 1
                                              if size_gt else 0)
    return json_response({"deleted_media": deleted, "total": len(deleted)})


@routes.post("/purge_media_cache", versions=ADMIN_V1)
async def post_purge_media_cache(request: web.Request) -> web.Response:
    """POST /_synapse/admin/v1/purge_media_cache?before_ts=: forget other servers' media
    fetched before ``before_ts`` (ms; it is fetched again when next asked for)."""
    await require_admin(request)
    before_ts = query_int(request, "before_ts")
    if before_ts is None:
        raise MissingParam("Missing integer query parameter 'before_ts'")
    return json_response({"deleted": await request.app[SERVICES].media.purge_remote_before(
        before_ts)})
