"""Filters as compiled once and applied to many events: the same answers as the spec's
plain reading (type patterns with a trailing ``*``, senders, rooms, ``event_fields`` with
``\\``-escapes), caps on their lists, and a cost that does not grow with the filter."""

from __future__ import annotations

import time
from typing import Any

import pytest

from core.errors import BadJson, TooLarge
from homeserver.services.filtering import (
    MAX_FILTER_LIST,
    RoomEventFilter,
    SyncFilter,
    TypePatterns,
)

EVENT: dict[str, Any] = {
    "type": "m.room.message",
    "sender": "@alice:example.org",
    "event_id": "$e",
    "origin_server_ts": 1,
    "content": {"msgtype": "m.text", "body": "hi", "m.relates_to": {"rel_type": "m.x"},
                "a\\b": 1, "nested": {"deep": {"er": 2}, "other": 3}},
    "unsigned": {"age": 5},
}


@pytest.mark.parametrize(("patterns", "event_type", "expected"), [
    (["m.room.message"], "m.room.message", True),
    (["m.room.message"], "m.room.messages", False),
    (["m.room.*"], "m.room.message", True),
    (["m.room.*"], "m.room.", True),
    (["m.room.*"], "m.roo", False),
    (["*"], "anything", True),
    (["*"], "", True),
    (["m.*", "org.example.thing"], "org.example.thing", True),
    (["m.*", "org.example.thing"], "org.example", False),
    (["a*b"], "axb", False),  # only a trailing star is a wildcard
    (["a*b"], "a*b", True),
    (["a*b*"], "a*bc", True),
    ([], "m.room.message", False),
])
def test_type_patterns(patterns: list[str], event_type: str, expected: bool) -> None:
    compiled = TypePatterns(patterns)
    assert compiled.matches(event_type) is expected
    assert compiled.matches(event_type) is expected  # remembered: same answer


def test_room_event_filter_matches() -> None:
    f = RoomEventFilter.from_json({
        "types": ["m.room.*"], "not_types": ["m.room.member"],
        "senders": ["@alice:example.org", "@bob:example.org"], "not_senders": ["@bob:example.org"],
        "rooms": ["!a:x", "!b:x"], "not_rooms": ["!b:x"], "contains_url": False})
    event = {"type": "m.room.message", "sender": "@alice:example.org", "room_id": "!a:x",
             "content": {}}
    assert f.matches(event)
    assert not f.matches({**event, "type": "m.room.member"})
    assert not f.matches({**event, "type": "m.reaction"})
    assert not f.matches({**event, "sender": "@bob:example.org"})
    assert not f.matches({**event, "sender": "@carol:example.org"})
    assert not f.matches({**event, "room_id": "!b:x"})
    assert not f.matches({**event, "room_id": "!c:x"})
    assert not f.matches({**event, "content": {"url": "mxc://x/y"}})
    assert f.allows_type("m.room.topic") and not f.allows_type("m.room.member")
    # The lists stay readable as given (search and /messages read them).
    assert f.senders == ("@alice:example.org", "@bob:example.org")
    assert RoomEventFilter().matches(event)


def test_sync_filter_rooms() -> None:
    f = SyncFilter.from_json({"room": {"rooms": ["!a:x", "!b:x"], "not_rooms": ["!b:x"]}})
    assert f.room_allowed("!a:x")
    assert not f.room_allowed("!b:x") and not f.room_allowed("!c:x")
    assert SyncFilter().room_allowed("!c:x")


@pytest.mark.parametrize(("fields", "expected"), [
    (["type"], {"type": "m.room.message"}),
    (["content.body", "sender"], {"content": {"body": "hi"}, "sender": "@alice:example.org"}),
    (["content.m\\.relates_to.rel_type"], {"content": {"m.relates_to": {"rel_type": "m.x"}}}),
    (["content.a\\\\b"], {"content": {"a\\b": 1}}),
    (["content.nested.deep", "content.nested.missing"],
     {"content": {"nested": {"deep": {"er": 2}}}}),
    # A field taken whole takes its sub-fields with it, in either order.
    (["content", "content.body"], {"content": EVENT["content"]}),
    (["content.body", "content"], {"content": EVENT["content"]}),
    # Missing fields, and paths through something that is not an object, leave nothing.
    (["content.body.x", "nope", "unsigned.age.x"], {}),
    ([], {}),
])
def test_event_fields(fields: list[str], expected: dict[str, Any]) -> None:
    f = SyncFilter.from_json({"event_fields": fields})
    assert f.pick_fields(EVENT) == expected
    assert EVENT["content"]["body"] == "hi"  # the event itself is left alone


def test_no_event_fields_is_the_whole_event() -> None:
    assert SyncFilter().pick_fields(EVENT) is EVENT


@pytest.mark.parametrize("where", [
    lambda v: {"event_fields": v},
    lambda v: {"room": {"rooms": v}},
    lambda v: {"room": {"not_rooms": v}},
    lambda v: {"room": {"timeline": {"types": v}}},
    lambda v: {"room": {"state": {"not_types": v}}},
    lambda v: {"room": {"ephemeral": {"senders": v}}},
    lambda v: {"room": {"account_data": {"not_senders": v}}},
    lambda v: {"presence": {"rooms": v}},
    lambda v: {"account_data": {"not_rooms": v}},
])
def test_list_caps(where: Any) -> None:
    at_cap = [f"x{i}" for i in range(MAX_FILTER_LIST)]
    SyncFilter.from_json(where(at_cap))
    with pytest.raises(TooLarge):
        SyncFilter.from_json(where([*at_cap, "one more"]))
    with pytest.raises(BadJson):
        SyncFilter.from_json(where([1]))


def test_largest_filter_costs_little_per_event() -> None:
    """The largest lists allowed, applied to a thousand events: milliseconds, not seconds
    (before compiling, each event walked every pattern and re-parsed every field)."""
    big = [f"org.example.{'x' * (i % 200)}{i}.*" for i in range(MAX_FILTER_LIST)]
    f = SyncFilter.from_json({
        "event_fields": [f"content.f{i}" for i in range(MAX_FILTER_LIST - 2)]
        + ["type", "content.body"],
        "room": {"not_rooms": [f"!r{i}:x" for i in range(MAX_FILTER_LIST)],
                 "timeline": {"types": [*big[:-1], "m.room.*"],
                              "not_senders": [f"@u{i}:x" for i in range(MAX_FILTER_LIST)]}}})
    events = [{**EVENT, "room_id": "!a:x", "type": f"m.room.t{i % 50}",
               "content": {"body": str(i), **{f"g{j}": j for j in range(100)}}}
              for i in range(1000)]
    start = time.perf_counter()
    for _ in range(5):
        kept = [f.pick_fields(e) for e in events
                if f.room_allowed("!a:x") and f.timeline.matches(e)]
    elapsed = (time.perf_counter() - start) / 5
    assert len(kept) == 1000 and kept[0] == {"type": "m.room.t0", "content": {"body": "0"}}
    assert elapsed < 0.5, elapsed  # about 5 ms here; it was 1.6 s
