"""Fetching another server's media for our clients
(``GET /_matrix/federation/v1/media/download|thumbnail/{mediaId}``, Matrix 1.11).

The answer is ``multipart/mixed``: a JSON part, then the content (or a ``Location`` to fetch
it from, fetched through the same address policy). It is parsed as it comes (aiohttp's
``MultipartReader``) and the content written to the caller's sink chunk by chunk: nothing is
held whole in memory, and the fetch stops as soon as it is over ``max_bytes``. A server that
does not know the endpoint (404/400 ``M_UNRECOGNIZED``) is asked on the legacy
``/_matrix/media/v3/download|thumbnail/{serverName}/{mediaId}?allow_remote=false``, as
Synapse does. Failures become errors of our own for the client: 404 when the server has no
such media, 502 otherwise (``M_TOO_LARGE`` when it is over our upload limit), 400 when it
cannot thumbnail it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from email.message import Message
from typing import Any
from urllib.parse import quote

import aiohttp
from aiohttp import hdrs
from aiohttp.http_exceptions import HttpProcessingError

from core.errors import MatrixError, NotFound
from federation.transport.client import (
    FederationClient,
    FederationClientError,
    FederationRequestError,
    ResponseTooLarge,
)
from homeserver.services.ports import MediaSink, RemoteMediaInfo

logger = logging.getLogger(__name__)

CHUNK_BYTES = 64 * 1024
# The JSON part (metadata) of a multipart answer: more is refused.
MAX_JSON_PART_BYTES = 64 * 1024
REMOTE_WAIT_MS = "20000"


class BadMultipart(ValueError):
    pass


def _filename(disposition: str | None) -> str | None:
    if not disposition:
        return None
    message = Message()
    message["Content-Disposition"] = disposition
    name = message.get_filename()
    return name if isinstance(name, str) and name else None


async def _copy(read: Any, sink: MediaSink, max_bytes: int, what: str) -> int:
    """Copy ``read(CHUNK_BYTES)`` chunks to ``sink`` until an empty one; the size.

    Raises:
        ResponseTooLarge: over ``max_bytes``.
    """
    size = 0
    while chunk := await read(CHUNK_BYTES):
        size += len(chunk)
        if size > max_bytes:
            raise ResponseTooLarge(f"{what}: media over {max_bytes} bytes")
        await sink.write(chunk)
    return size


async def read_multipart_media(headers: Mapping[str, str], content: aiohttp.StreamReader,
                               sink: MediaSink, max_bytes: int
                               ) -> tuple[RemoteMediaInfo, str | None]:
    """Read a federation media answer (``multipart/mixed``: JSON, then the content) as it
    comes, the content into ``sink``; its labels, and the ``Location`` to fetch the content
    from instead (then nothing was written).

    Raises:
        BadMultipart: not multipart, no boundary, malformed, truncated, or fewer than two
            parts.
        ResponseTooLarge: the content is over ``max_bytes``.
    """
    content_type = headers.get(hdrs.CONTENT_TYPE, "")
    if not content_type.lower().startswith("multipart/"):
        raise BadMultipart("not multipart")
    try:
        reader = aiohttp.MultipartReader(headers, content)
        metadata = await reader.next()
        if not isinstance(metadata, aiohttp.BodyPartReader):
            raise BadMultipart("no JSON part")
        json_bytes = 0
        while chunk := await metadata.read_chunk(CHUNK_BYTES):
            json_bytes += len(chunk)
            if json_bytes > MAX_JSON_PART_BYTES:
                raise BadMultipart("JSON part too large")
        part = await reader.next()
        if not isinstance(part, aiohttp.BodyPartReader):
            raise BadMultipart("no content part")
        info = RemoteMediaInfo(part.headers.get(hdrs.CONTENT_TYPE),
                               _filename(part.headers.get(hdrs.CONTENT_DISPOSITION)))
        location = part.headers.get(hdrs.LOCATION)
        if location is None:
            await _copy(part.read_chunk, sink, max_bytes, "multipart answer")
        # The closing delimiter must come: a truncated answer is not content.
        while not reader.at_eof():
            extra = await reader.next()
            if extra is not None:
                await extra.release()
        return info, location
    except (ValueError, KeyError, AssertionError, HttpProcessingError,
            aiohttp.ClientPayloadError) as e:
        if isinstance(e, BadMultipart):
            raise
        raise BadMultipart(f"{type(e).__name__}: {e}") from None


class RemoteMediaClient:
    """``homeserver.services.ports.RemoteMedia`` over federation."""

    def __init__(self, client: FederationClient) -> None:
        self._client = client

    async def download(self, server: str, media_id: str, *, sink: MediaSink, max_bytes: int,
                       timeout_s: float) -> RemoteMediaInfo:
        quoted = quote(media_id, safe="")
        return await self._fetch(
            server, media_id, f"/_matrix/federation/v1/media/download/{quoted}",
            {"timeout_ms": REMOTE_WAIT_MS},
            f"/_matrix/media/v3/download/{quote(server, safe='')}/{quoted}",
            {"allow_remote": "false", "timeout_ms": REMOTE_WAIT_MS}, sink, max_bytes,
            timeout_s)

    async def thumbnail(self, server: str, media_id: str, *, width: int, height: int,
                        method: str, animated: bool, sink: MediaSink, max_bytes: int,
                        timeout_s: float) -> RemoteMediaInfo:
        quoted = quote(media_id, safe="")
        query = {"width": str(width), "height": str(height), "method": method,
                 "timeout_ms": REMOTE_WAIT_MS}
        if animated:
            query["animated"] = "true"
        return await self._fetch(
            server, media_id, f"/_matrix/federation/v1/media/thumbnail/{quoted}", query,
            f"/_matrix/media/v3/thumbnail/{quote(server, safe='')}/{quoted}",
            {**query, "allow_remote": "false"}, sink, max_bytes, timeout_s)

    async def _fetch(self, server: str, media_id: str, path: str, query: dict[str, str],
                     legacy_path: str, legacy_query: dict[str, str], sink: MediaSink,
                     max_bytes: int, timeout_s: float) -> RemoteMediaInfo:
        try:
            try:
                info, location = await self._client.get_streamed(
                    server, path, lambda r: self._multipart(server, r, sink, max_bytes),
                    query=query, timeout_s=timeout_s)
            except FederationRequestError as e:
                if e.errcode != "M_UNRECOGNIZED" or e.status not in (400, 404, 405):
                    raise
                info = await self._client.get_streamed(
                    server, legacy_path, lambda r: _raw(server, r, sink, max_bytes),
                    query=legacy_query, timeout_s=timeout_s)
                return info  # type: ignore[no-any-return]
            if location is None:
                return info  # type: ignore[no-any-return]
            redirected: RemoteMediaInfo = await self._client.get_url(
                location, timeout_s=timeout_s,
                consume=lambda r: _raw(server, r, sink, max_bytes))
            return RemoteMediaInfo(redirected.content_type or info.content_type,
                                   info.filename)
        except FederationRequestError as e:
            logger.info("Media %s from %s: %d %s", media_id, server, e.status, e.errcode)
            if e.status == 404:
                raise NotFound("Remote media not found") from None
            if e.status == 400 and path.startswith("/_matrix/federation/v1/media/thumbnail"):
                raise MatrixError(e.error or "The remote server cannot thumbnail it",
                                  status=400, errcode="M_UNKNOWN") from None
            raise MatrixError("The remote server could not give the media", status=502
                              ) from None
        except ResponseTooLarge:
            raise MatrixError(f"Requested file is too large > {max_bytes} bytes", status=502,
                              errcode="M_TOO_LARGE") from None
        except BadMultipart as e:
            logger.info("Media answer from %s is unusable: %s", server, e)
            raise MatrixError("The remote server sent an unusable answer", status=502
                              ) from None
        except FederationClientError as e:
            logger.info("Could not fetch media %s from %s: %s", media_id, server, e)
            raise MatrixError("The remote server could not be reached", status=502) from None

    @staticmethod
    async def _multipart(server: str, response: aiohttp.ClientResponse, sink: MediaSink,
                         max_bytes: int) -> tuple[RemoteMediaInfo, str | None]:
        return await read_multipart_media(response.headers, response.content, sink,
                                          max_bytes)


async def _raw(server: str, response: aiohttp.ClientResponse, sink: MediaSink,
               max_bytes: int) -> RemoteMediaInfo:
    """A plain (legacy or redirected) answer's body into ``sink``."""
    if response.content_length is not None and response.content_length > max_bytes:
        raise ResponseTooLarge(f"{server}: media of {response.content_length} bytes")
    await _copy(response.content.read, sink, max_bytes, server)
    return RemoteMediaInfo(response.headers.get(hdrs.CONTENT_TYPE),
                           _filename(response.headers.get(hdrs.CONTENT_DISPOSITION)))
