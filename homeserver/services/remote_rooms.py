"""What other servers say about rooms is untrusted JSON: the checks the public room directory
and space hierarchies share before passing a remote room summary on to clients."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

MAX_ID_CHARS = 255
# Free text of a remote entry is cut to this length rather than dropped.
MAX_TEXT_CHARS = {"name": 255, "topic": 1024}
MAX_COUNT = 2**53 - 1
_OPTIONAL = (("canonical_alias", "#"), ("avatar_url", "mxc://"), ("join_rule", ""),
             ("room_type", ""))


def is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_COUNT


def short_str(value: Any, prefix: str = "") -> bool:
    return isinstance(value, str) and value.startswith(prefix) and \
        len(prefix) < len(value) <= MAX_ID_CHARS


def checked_summary(raw: Any, extra: Iterable[tuple[str, str]] = ()
                    ) -> dict[str, Any] | None:
    """A room summary from another server with the spec's fields alone: None without a
    required field of the right type; an optional one (and those of ``extra``: key, the
    prefix its value needs) of the wrong type or form is left out, free text cut short."""
    if not isinstance(raw, Mapping) or not short_str(raw.get("room_id"), "!") \
            or not is_count(raw.get("num_joined_members")) \
            or not isinstance(raw.get("world_readable"), bool) \
            or not isinstance(raw.get("guest_can_join"), bool):
        return None
    entry = {k: raw[k] for k in ("room_id", "num_joined_members", "world_readable",
                                 "guest_can_join")}
    for key, limit in MAX_TEXT_CHARS.items():
        if isinstance(raw.get(key), str):
            entry[key] = raw[key][:limit]
    for key, prefix in (*_OPTIONAL, *extra):
        if short_str(raw.get(key), prefix):
            entry[key] = raw[key]
    return entry
