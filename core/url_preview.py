"""OpenGraph data from an HTML page, as Synapse's ``synapse/media/preview_html.py`` builds it:
``og:*`` meta tags, falling back to the ``<title>`` (or first heading), the meta description
(or the start of the page's text) and the page's largest (or first) ``<img>``.

Pure: bytes in, a dict of strings out; parsed with the standard library's ``html.parser``.
Relative ``og:image`` URLs are resolved against the page's URL. Also the page's oEmbed link
(discovery) and ``is_url_blocked``, Synapse's ``url_preview_url_blacklist`` check.
"""

from __future__ import annotations

import codecs
import fnmatch
import re
from collections.abc import Mapping, Sequence
from html.parser import HTMLParser
from urllib.parse import SplitResult, urljoin, urlsplit

# At most this many og:* properties are kept (Synapse: 50), each cut to this many characters.
MAX_PROPERTIES = 50
MAX_VALUE_CHARS = 1000
# A description made from the page's text: at least this much (whole paragraphs), at most that.
SUMMARY_MIN_CHARS = 200
SUMMARY_MAX_CHARS = 500
# Only this much of a page's text is gathered for the summary.
_TEXT_GATHERED_CHARS = 4 * SUMMARY_MAX_CHARS
_SKIPPED_TEXT_TAGS = frozenset({
    "script", "style", "noscript", "head", "title", "header", "nav", "aside", "footer", "svg",
    "iframe", "button", "select", "textarea", "template", "form"})
_VOID_TAGS = frozenset({
    "area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source",
    "track", "wbr"})
_META_CHARSET = re.compile(rb"""<\s*meta[^>]*charset\s*=\s*["']?\s*([a-zA-Z0-9_:.-]+)""", re.I)
_XML_ENCODING = re.compile(rb"""^\s*<\?xml[^>]*encoding=["']([a-zA-Z0-9_:.-]+)["']""", re.I)
_SPACES = re.compile(r"\s+")


def decode_html(body: bytes, content_type: str | None) -> str:
    """The page's text: the charset of its ``Content-Type``, else of a ``<meta>`` tag or an XML
    declaration near its start, else UTF-8 (undecodable bytes replaced)."""
    candidates: list[str] = []
    if content_type:
        for part in content_type.split(";")[1:]:
            name, _, value = part.partition("=")
            if name.strip().lower() == "charset":
                candidates.append(value.strip().strip("\"'"))
    head = body[:1024]
    for pattern in (_META_CHARSET, _XML_ENCODING):
        match = pattern.search(head)
        if match:
            candidates.append(match.group(1).decode("ascii"))
    for name in candidates:
        try:
            codecs.lookup(name)
        except LookupError:
            continue
        return body.decode(name, errors="replace")
    return body.decode("utf-8", errors="replace")


class _PageParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.og: dict[str, str] = {}
        self.meta_description: str | None = None
        self.itemprop_image: str | None = None
        self.twitter: dict[str, str] = {}
        self.title: str | None = None
        self.heading: str | None = None
        self.images: list[tuple[str, int, int]] = []  # src, width, height (0: not given)
        self.icon: str | None = None
        self.oembed: str | None = None
        self.text: list[str] = []
        self._text_chars = 0
        self._stack: list[str] = []
        self._capture: str | None = None  # "title" or "h1".."h3" while inside one
        self._captured: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k.lower(): v for k, v in attrs if v is not None}
        if tag == "meta":
            self._meta(a)
        elif tag == "img" and a.get("src"):
            self.images.append((a["src"], _dimension(a.get("width")),
                                _dimension(a.get("height"))))
        elif tag == "link" and a.get("href"):
            rels = a.get("rel", "").lower().split()
            if "icon" in rels:
                self.icon = self.icon or a["href"]
            # oEmbed discovery (some sites, Flickr, say "alternative").
            if ("alternate" in rels or "alternative" in rels) \
                    and a.get("type", "").lower() == "application/json+oembed":
                self.oembed = self.oembed or a["href"].strip()
        elif tag == "title" and self.title is None and self._capture is None:
            self._capture, self._captured = "title", []
        elif tag in ("h1", "h2", "h3") and self.heading is None and self._capture is None:
            self._capture, self._captured = tag, []
        if tag not in _VOID_TAGS:
            self._stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if tag not in _VOID_TAGS and self._stack and self._stack[-1] == tag:
            self._stack.pop()

    def handle_endtag(self, tag: str) -> None:
        if tag == self._capture:
            text = _SPACES.sub(" ", "".join(self._captured)).strip()
            if tag == "title":
                self.title = text or None
            else:
                self.heading = text or None
            self._capture = None
        if tag in self._stack:
            while self._stack and self._stack.pop() != tag:
                pass

    def handle_data(self, data: str) -> None:
        if self._capture is not None:
            self._captured.append(data)
        if self._text_chars < _TEXT_GATHERED_CHARS and not any(
                t in _SKIPPED_TEXT_TAGS for t in self._stack):
            text = _SPACES.sub(" ", data).strip()
            if text:
                self.text.append(text)
                self._text_chars += len(text)

    def _meta(self, a: dict[str, str]) -> None:
        content = a.get("content")
        if content is None:
            return
        prop = a.get("property") or ""
        name = (a.get("name") or "").lower()
        if prop.startswith("og:") or name.startswith("og:"):
            key = prop if prop.startswith("og:") else name
            if key not in self.og and len(self.og) < MAX_PROPERTIES:
                self.og[key] = content[:MAX_VALUE_CHARS]
        elif name == "description" and self.meta_description is None:
            self.meta_description = content
        elif name.startswith("twitter:") or prop.startswith("twitter:"):
            self.twitter.setdefault(name or prop, content)
        if a.get("itemprop", "").lower() == "image" and self.itemprop_image is None:
            self.itemprop_image = content


def _dimension(value: str | None) -> int:
    try:
        return max(0, int(value.strip().removesuffix("px"))) if value else 0
    except ValueError:
        return 0


def _summary(texts: list[str]) -> str | None:
    """The first paragraphs of text, at least SUMMARY_MIN_CHARS when there is as much, cut
    at a word under SUMMARY_MAX_CHARS (Synapse's ``summarize_paragraphs``)."""
    summary = ""
    for text in texts:
        if len(summary) >= SUMMARY_MIN_CHARS:
            break
        summary = f"{summary} {text}".strip() if summary else text
    if len(summary) > SUMMARY_MAX_CHARS:
        cut = summary[:SUMMARY_MAX_CHARS].rsplit(" ", 1)[0].rstrip(" .,;:")
        summary = cut + "…"
    return summary or None


def parse_html_to_open_graph(body: bytes, content_type: str | None,
                             page_url: str) -> dict[str, str]:
    """The OpenGraph properties of a page (strings; ``og:image`` an absolute URL)."""
    return parse_html(body, content_type, page_url)[0]


def parse_html(body: bytes, content_type: str | None,
               page_url: str) -> tuple[dict[str, str], str | None]:
    """The OpenGraph properties of a page (as ``parse_html_to_open_graph``) and the absolute
    URL of its oEmbed JSON (``<link rel="alternate" type="application/json+oembed">``)."""
    parser = _PageParser()
    try:
        parser.feed(decode_html(body, content_type))
        parser.close()
    except (AssertionError, ValueError):  # html.parser's rare give-ups on broken markup
        pass
    og = dict(parser.og)
    if not og.get("og:title"):
        title = parser.twitter.get("twitter:title") or parser.title or parser.heading
        if title:
            og["og:title"] = title[:MAX_VALUE_CHARS]
    if not og.get("og:image"):
        image = parser.itemprop_image or parser.twitter.get("twitter:image") \
            or _best_image(parser.images) or parser.icon
        if image:
            og["og:image"] = image
    if not og.get("og:description"):
        description = parser.meta_description or parser.twitter.get("twitter:description") \
            or _summary(parser.text)
        if description:
            og["og:description"] = _SPACES.sub(" ", description).strip()[:MAX_VALUE_CHARS]
    if og.get("og:image"):
        og["og:image"] = urljoin(page_url, og["og:image"].strip())
    oembed = urljoin(page_url, parser.oembed) if parser.oembed else None
    return {k: v for k, v in og.items() if v}, oembed


# The parts of a URL a ``media.url_preview.url_blacklist`` entry may name (urlsplit's).
URL_PARTS = ("scheme", "netloc", "path", "query", "fragment", "username", "password",
             "hostname", "port")


def is_url_blocked(url: str, blocklist: Sequence[Mapping[str, str]]) -> bool:
    """Whether an entry of ``blocklist`` matches ``url``, as Synapse's
    ``url_preview_url_blacklist``: an entry matches when every part it names does, a
    pattern starting with ``^`` a regular expression (``re.match``), else a glob."""
    parts = urlsplit(url)
    for entry in blocklist:
        if all(_part_matches(parts, name, pattern) for name, pattern in entry.items()):
            return True
    return False


def _part_matches(parts: SplitResult, name: str, pattern: str) -> bool:
    try:
        value = getattr(parts, name)
    except ValueError:  # a port that is no number
        return False
    if value is None:
        return False
    if pattern.startswith("^"):
        return re.match(pattern, str(value)) is not None
    return fnmatch.fnmatch(str(value), pattern)


def _best_image(images: list[tuple[str, int, int]]) -> str | None:
    """The largest image over 10x10 pixels by its attributes, else the first one."""
    sized = [(w * h, src) for src, w, h in images if w > 10 and h > 10]
    if sized:
        return max(sized, key=lambda item: item[0])[1]
    return images[0][0] if images else None
