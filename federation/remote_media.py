"""Fetching another server's media for our clients
(``GET /_matrix/federation/v1/media/download/{mediaId}``, Matrix 1.11).

The answer is ``multipart/mixed``: a JSON part, then the content (or a ``Location`` to fetch
it from, fetched through the same address policy). A server that does not know the
endpoint (404/400 ``M_UNRECOGNIZED``) is asked on the legacy
``/_matrix/media/v3/download/{serverName}/{mediaId}?allow_remote=false``, as Synapse does.
Failures become errors of our own for the client: 404 when the server has no such media,
502 otherwise (``M_TOO_LARGE`` when it is over our upload limit).
"""

from __future__ import annotations

import logging
from email.message import Message
from urllib.parse import quote

from core.errors import MatrixError, NotFound
from federation.transport.client import (
    FederationClient,
    FederationClientError,
    FederationRequestError,
    RawResponse,
    ResponseTooLarge,
)
from homeserver.services.ports import RemoteMediaFile

logger = logging.getLogger(__name__)

# Room for the multipart framing around content of the largest size accepted.
_FRAMING_BYTES = 64 * 1024


class BadMultipart(ValueError):
    pass


def _header_params(value: str) -> Message:
    message = Message()
    message["Content-Type"] = value
    return message


def parse_multipart(content_type: str | None, body: bytes
                    ) -> list[tuple[dict[str, str], bytes]]:
    """The parts (lower-cased headers, content) of a ``multipart/*`` body.

    Raises:
        BadMultipart: not multipart, no boundary, or malformed.
    """
    if not content_type or not content_type.lower().startswith("multipart/"):
        raise BadMultipart("not multipart")
    boundary = _header_params(content_type).get_param("boundary")
    if not isinstance(boundary, str) or not boundary:
        raise BadMultipart("no boundary")
    delimiter = b"\r\n--" + boundary.encode("latin-1")
    pieces = (b"\r\n" + body).split(delimiter)
    parts: list[tuple[dict[str, str], bytes]] = []
    for piece in pieces[1:]:
        if piece.startswith(b"--"):
            return parts
        head, sep, content = piece.partition(b"\r\n\r\n")
        if not sep:
            raise BadMultipart("part without a blank line after its headers")
        headers: dict[str, str] = {}
        for line in head.split(b"\r\n"):
            if not line.strip():
                continue
            name, colon, value = line.decode("latin-1").partition(":")
            if not colon:
                raise BadMultipart("malformed part header")
            headers[name.strip().lower()] = value.strip()
        parts.append((headers, content))
    raise BadMultipart("no closing delimiter")


def _filename(disposition: str | None) -> str | None:
    if not disposition:
        return None
    message = Message()
    message["Content-Disposition"] = disposition
    name = message.get_filename()
    return name if isinstance(name, str) and name else None


class RemoteMediaClient:
    """``homeserver.services.ports.RemoteMedia`` over federation."""

    def __init__(self, client: FederationClient) -> None:
        self._client = client

    async def download(self, server: str, media_id: str, *, max_bytes: int,
                       timeout_s: float) -> RemoteMediaFile:
        try:
            try:
                answer = await self._client.get_raw(
                    server, f"/_matrix/federation/v1/media/download/{quote(media_id, safe='')}",
                    query={"timeout_ms": "20000"}, timeout_s=timeout_s,
                    max_response_bytes=max_bytes + _FRAMING_BYTES)
            except FederationRequestError as e:
                if e.errcode != "M_UNRECOGNIZED" or e.status not in (400, 404, 405):
                    raise
                return await self._legacy(server, media_id, max_bytes, timeout_s)
            return await self._from_multipart(server, answer, max_bytes, timeout_s)
        except FederationRequestError as e:
            logger.info("Media %s from %s: %d %s", media_id, server, e.status, e.errcode)
            if e.status == 404:
                raise NotFound("Remote media not found") from None
            raise MatrixError("The remote server could not give the media", status=502
                              ) from None
        except ResponseTooLarge:
            raise MatrixError("Remote media is too large", status=502,
                              errcode="M_TOO_LARGE") from None
        except FederationClientError as e:
            logger.info("Could not fetch media %s from %s: %s", media_id, server, e)
            raise MatrixError("The remote server could not be reached", status=502) from None

    async def _from_multipart(self, server: str, answer: RawResponse, max_bytes: int,
                              timeout_s: float) -> RemoteMediaFile:
        try:
            parts = parse_multipart(answer.content_type, answer.body)
        except BadMultipart as e:
            logger.info("Media answer from %s is unusable: %s", server, e)
            raise MatrixError("The remote server sent an unusable answer", status=502
                              ) from None
        if len(parts) < 2:
            raise MatrixError("The remote server sent an unusable answer", status=502)
        headers, content = parts[1]
        location = headers.get("location")
        if location is not None:
            fetched = await self._client.get_url(location, timeout_s=timeout_s,
                                                 max_response_bytes=max_bytes)
            return RemoteMediaFile(fetched.content_type, None, fetched.body)
        if len(content) > max_bytes:
            raise ResponseTooLarge(f"{server}: media over {max_bytes} bytes")
        return RemoteMediaFile(headers.get("content-type"),
                               _filename(headers.get("content-disposition")), content)

    async def _legacy(self, server: str, media_id: str, max_bytes: int,
                      timeout_s: float) -> RemoteMediaFile:
        answer = await self._client.get_raw(
            server, f"/_matrix/media/v3/download/{quote(server, safe='')}/"
                    f"{quote(media_id, safe='')}",
            query={"allow_remote": "false"}, timeout_s=timeout_s, max_response_bytes=max_bytes)
        return RemoteMediaFile(answer.content_type, None, answer.body)
