"""What the full-text index holds and how a search term becomes an index query.

Both databases index the same token stream, made here: text is folded (compatibility forms,
Latin diacritics, case), split into words of letters, digits and combining marks, and runs of
scripts written without spaces between words (Chinese, Japanese, Thai, Lao, Khmer, Myanmar,
Korean syllables) are split into single characters. A search for such a word is then a
phrase of its characters, which finds it wherever it occurs, with no dictionary. Other words
are matched as prefixes ("messag" finds "messages"), as Synapse does.

The index value is the tokens joined by spaces; SQLite's FTS5 (``unicode61`` with marks as
token characters) and PostgreSQL's ``simple`` configuration split it back into exactly them.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

# The event types and content keys that are indexed (the spec's search `keys`).
INDEXED: dict[str, tuple[str, str]] = {
    "m.room.message": ("body", "content.body"),
    "m.room.name": ("name", "content.name"),
    "m.room.topic": ("topic", "content.topic"),
}
KEY_TYPES: dict[str, str] = {key: type_ for type_, (_, key) in INDEXED.items()}

MAX_INDEXED_CHARS = 20_000
MAX_QUERY_TERMS = 32


def _marks() -> str:
    ranges: list[tuple[int, int]] = []
    for code in range(0x20000):
        if unicodedata.category(chr(code))[0] == "M":
            if ranges and ranges[-1][1] == code - 1:
                ranges[-1] = (ranges[-1][0], code)
            else:
                ranges.append((code, code))
    return "".join(f"{re.escape(chr(a))}-{re.escape(chr(b))}" if a != b else re.escape(chr(a))
                   for a, b in ranges)


_MARKS = _marks()
_WORD = re.compile(f"(?:[^\\W_]|[{_MARKS}])+")
_ASCII_WORD = re.compile("[a-z0-9]+")
_LATIN_DIACRITICS = re.compile("[\u0300-\u036f]")
# Scripts written without spaces between words (after NFKC, so no half-width forms).
_UNSPACED = (
    "\u0e00-\u0eff"  # Thai, Lao
    "\u1000-\u109f"  # Myanmar
    "\u1780-\u17ff"  # Khmer
    "\u1100-\u11ff\u3130-\u318f\uac00-\ud7af"  # Hangul
    "\u3040-\u30ff\u31f0-\u31ff"  # Hiragana, Katakana
    "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"  # Han
    "\U00020000-\U0003134f"  # Han extensions
)
_HAS_UNSPACED = re.compile(f"[{_UNSPACED}]")
# One character of an unspaced script with its marks, or a run of anything else.
_PIECES = re.compile(f"[{_UNSPACED}][{_MARKS}]*|[^{_UNSPACED}]+")


def fold(text: str) -> str:
    """Case, compatibility forms and Latin diacritics folded away."""
    text = unicodedata.normalize("NFKD", text)
    text = _LATIN_DIACRITICS.sub("", text)
    return unicodedata.normalize("NFC", text).casefold()


def _word_tokens(word: str) -> list[str]:
    if not _HAS_UNSPACED.search(word):
        return [word]
    return [piece for piece in _PIECES.findall(word) if piece]


def tokens(text: str) -> list[str]:
    text = text[:MAX_INDEXED_CHARS]
    if text.isascii():
        return _ASCII_WORD.findall(text.lower())
    out: list[str] = []
    for match in _WORD.finditer(fold(text)):
        out += _word_tokens(match.group())
    return out


def index_value(text: str) -> str:
    """What the index stores for ``text``."""
    return " ".join(tokens(text))


def indexed_text(pdu: dict[str, object]) -> tuple[str, str] | None:
    """``(kind, index value)`` of an event (kind: ``body``, ``name`` or ``topic``), or None
    when it has nothing searchable."""
    wanted = INDEXED.get(str(pdu.get("type")))
    content = pdu.get("content")
    if wanted is None or not isinstance(content, dict):
        return None
    value = content.get(wanted[0])
    if not isinstance(value, str):
        return None
    indexed = index_value(value)
    return (wanted[0], indexed) if indexed else None


# -- queries ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Term:
    """Tokens that must appear together, in order; the last may be a prefix."""

    tokens: tuple[str, ...]
    prefix: bool
    negated: bool = False


@dataclass(frozen=True, slots=True)
class Query:
    """Alternatives (OR) of conjunctions (AND) of terms."""

    alternatives: tuple[tuple[Term, ...], ...]

    @property
    def words(self) -> set[str]:
        return {t for alt in self.alternatives for term in alt if not term.negated
                for t in term.tokens}


_QUERY_PARTS = re.compile(r'(-?)"([^"]*)"?|(\S+)')


def parse_query(search_term: str) -> Query | None:
    """The user's search term as a query: words (prefix-matched), "quoted phrases" (exact),
    ``-word`` to exclude, ``OR`` between alternatives. None when nothing is searchable."""
    alternatives: list[list[Term]] = [[]]
    count = 0
    for match in _QUERY_PARTS.finditer(search_term):
        negated_phrase, phrase, word = match.groups()
        if word == "OR":
            if alternatives[-1]:
                alternatives.append([])
            continue
        if count >= MAX_QUERY_TERMS:
            break
        if phrase is not None:
            found = tokens(phrase)
            if found:
                alternatives[-1].append(Term(tuple(found), False, bool(negated_phrase)))
                count += 1
            continue
        negated = word.startswith("-") and len(word) > 1
        for piece in _WORD.finditer(fold(word[1:] if negated else word)):
            found = _word_tokens(piece.group())
            # A word of an unspaced script is a phrase of its characters (no prefix: the
            # characters are whole tokens); any other word is a prefix.
            prefix = not _HAS_UNSPACED.search(found[-1])
            alternatives[-1].append(Term(tuple(found), prefix, negated))
            count += 1
    usable = tuple(tuple(alt) for alt in alternatives if any(not t.negated for t in alt))
    return Query(usable) if usable else None


def fts5_query(query: Query) -> str:
    """The query in FTS5's syntax (every token quoted, so nothing in it is an operator)."""

    def term(t: Term) -> str:
        return '"' + " ".join(t.tokens) + '"' + ("*" if t.prefix else "")

    alternatives = []
    for alt in query.alternatives:
        positive = " AND ".join(term(t) for t in alt if not t.negated)
        for t in alt:
            if t.negated:
                positive = f"({positive}) NOT {term(t)}"
        alternatives.append(f"({positive})")
    return " OR ".join(alternatives)


def tsquery(query: Query) -> str:
    """The query in PostgreSQL's ``to_tsquery`` syntax (tokens hold no operator characters)."""

    def term(t: Term) -> str:
        inner = " <-> ".join(t.tokens) + (":*" if t.prefix else "")
        return ("!" if t.negated else "") + f"({inner})"

    return " | ".join("(" + " & ".join(term(t) for t in alt) + ")"
                      for alt in query.alternatives)


def highlights(query: Query, text: str) -> set[str]:
    """The words of ``text`` a query matched (for clients to highlight)."""
    out: set[str] = set()
    wanted = [t for alt in query.alternatives for t in alt if not t.negated]
    for match in _WORD.finditer(text):
        word = match.group()
        folded = fold(word)
        for t in wanted:
            if len(t.tokens) == 1 and (folded.startswith(t.tokens[0]) if t.prefix
                                       else folded == t.tokens[0]):
                out.add(word)
    for t in wanted:
        if len(t.tokens) > 1 or _HAS_UNSPACED.search(t.tokens[0]):
            spaced = not all(_HAS_UNSPACED.match(token) for token in t.tokens)
            joined = (" " if spaced else "").join(t.tokens)
            if joined in fold(text):
                out.add(joined)
    return out
