"""The headers media is served with (client downloads and the federation media API alike).

As Synapse (``synapse/media/_base.py``): content shows inline in a browser only when its type
is on a list of types that cannot carry script; anything else (HTML, SVG, ...) is an
attachment. Browsers may not sniff another type, and a sandboxing Content-Security-Policy
covers what an old browser would render anyway.
"""

from __future__ import annotations

from urllib.parse import quote

# Synapse's INLINE_CONTENT_TYPES.
INLINE_CONTENT_TYPES = frozenset({
    "text/css", "text/plain", "text/csv", "application/json", "application/ld+json",
    "image/jpeg", "image/gif", "image/png", "image/apng", "image/webp", "image/avif",
    "video/mp4", "video/webm", "video/ogg", "video/quicktime",
    "audio/mp4", "audio/webm", "audio/aac", "audio/mpeg", "audio/ogg", "audio/wave",
    "audio/wav", "audio/x-wav", "audio/x-pn-wav", "audio/flac", "audio/x-flac",
})

CONTENT_SECURITY_POLICY = ("sandbox; default-src 'none'; script-src 'none'; "
                           "plugin-types application/pdf; style-src 'unsafe-inline'; "
                           "media-src 'self'; object-src 'self';")

SAFETY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "Cross-Origin-Resource-Policy": "cross-origin",
}

# RFC 2616 token characters (a filename that is one goes unquoted).
_TOKEN = frozenset("!#$%&'*+-.^_`|~0123456789"
                   "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")


def served_content_type(content_type: str) -> str:
    """The Content-Type to send: text without a charset is declared UTF-8."""
    if content_type.lower().startswith("text/") and "charset" not in content_type.lower():
        return f"{content_type}; charset=UTF-8"
    return content_type


def is_inline(content_type: str) -> bool:
    return content_type.split(";", 1)[0].strip().lower() in INLINE_CONTENT_TYPES


def content_disposition(content_type: str, filename: str | None) -> str:
    """``inline`` or ``attachment``, with the filename per RFC 6266 (a plain token as
    ``filename=``, anything else as ``filename*=utf-8''…``)."""
    disposition = "inline" if is_inline(content_type) else "attachment"
    if not filename:
        return disposition
    if all(c in _TOKEN for c in filename):
        return f"{disposition}; filename={filename}"
    return f"{disposition}; filename*=utf-8''{quote(filename, safe='')}"


def media_headers(content_type: str, filename: str | None) -> dict[str, str]:
    """Every header of a media response but its length."""
    return {"Content-Type": served_content_type(content_type),
            "Content-Disposition": content_disposition(content_type, filename),
            "Cache-Control": "public,max-age=86400,s-maxage=86400",
            **SAFETY_HEADERS}
