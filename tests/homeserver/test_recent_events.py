"""RecentRoomEvents: the in-memory latest events of each room that incremental syncs read
instead of querying. An answer, when given, must be exact; when memory does not reach back far
enough the answer is None (the caller asks the database)."""

from __future__ import annotations

import random

from homeserver.services.notifier import Notifier
from homeserver.services.recent_events import RecentRoomEvents

START = 100


def filled(*events: tuple[str, int], per_room: int = 10, total: int = 100
           ) -> RecentRoomEvents:
    """A RecentRoomEvents started at START with ``(room, stream ordering)`` events added in
    order; each event's ID is ``$<stream ordering>``."""
    recent = RecentRoomEvents(START, per_room=per_room, total=total)
    for room_id, position in events:
        recent.add(room_id, position, f"${position}")
    return recent


# -- exact answers ----------------------------------------------------------------------------

def test_events_between_is_exact_and_oldest_first() -> None:
    recent = filled(("!a", 101), ("!b", 102), ("!a", 103), ("!a", 104), ("!b", 105))
    assert recent.events_between("!a", START, 105, 10) == ["$101", "$103", "$104"]
    assert recent.events_between("!b", START, 105, 10) == ["$102", "$105"]
    # The lower bound is exclusive, the upper inclusive.
    assert recent.events_between("!a", 101, 104, 10) == ["$103", "$104"]
    assert recent.events_between("!a", 101, 103, 10) == ["$103"]
    assert recent.events_between("!a", 103, 103, 10) == []
    assert recent.events_between("!a", 104, 110, 10) == []
    assert recent.events_between("!b", 102, 104, 10) == []


def test_limit_keeps_the_newest() -> None:
    recent = filled(*(("!a", p) for p in range(101, 108)))
    assert recent.events_between("!a", START, 107, 3) == ["$105", "$106", "$107"]
    assert recent.events_between("!a", START, 105, 2) == ["$104", "$105"]
    assert recent.events_between("!a", 103, 107, 1) == ["$107"]
    # Exactly as many as there are, and more than there are.
    assert recent.events_between("!a", 104, 107, 3) == ["$105", "$106", "$107"]
    assert recent.events_between("!a", 104, 107, 50) == ["$105", "$106", "$107"]
    # A limit of 0 asks for nothing (a timeline limit of 0 is legal).
    assert recent.events_between("!a", START, 107, 0) == []


def test_up_to_excludes_later_events() -> None:
    """Events committed after the sync read its position are for the next sync."""
    recent = filled(("!a", 101), ("!a", 102), ("!a", 103))
    assert recent.events_between("!a", START, 102, 10) == ["$101", "$102"]
    assert recent.events_between("!a", START, 100, 10) == []
    # The limit applies to the window, not to the whole deque.
    assert recent.events_between("!a", START, 102, 1) == ["$102"]


def test_room_never_seen() -> None:
    """A room with no event since start-up has no events after the start position; before it,
    memory knows nothing."""
    recent = filled(("!a", 101))
    assert recent.events_between("!quiet", START, 200, 10) == []
    assert recent.events_between("!quiet", 150, 200, 10) == []
    assert recent.events_between("!quiet", START - 1, 200, 10) is None
    assert recent.events_between("!a", START - 1, 200, 10) is None
    assert recent.events_between("!a", 0, 200, 10) is None


# -- per-room floor ---------------------------------------------------------------------------

def test_per_room_overflow_raises_that_rooms_floor() -> None:
    recent = filled(*(("!a", p) for p in range(101, 105)), ("!b", 105), per_room=3)
    # !a holds 102..104; 101 was pushed out, so memory reaches back to 101 only.
    assert recent.events_between("!a", START, 105, 10) is None
    assert recent.events_between("!a", 101, 105, 10) == ["$102", "$103", "$104"]
    assert recent.events_between("!a", 102, 105, 10) == ["$103", "$104"]
    # Even a limit the deque could satisfy needs the floor: the answer must be exact.
    assert recent.events_between("!a", START, 105, 1) is None
    # Other rooms keep their own floor.
    assert recent.events_between("!b", START, 105, 10) == ["$105"]
    assert recent.events_between("!never", START, 105, 10) == []

    recent.add("!a", 106, "$106")
    assert recent.events_between("!a", 101, 106, 10) is None
    assert recent.events_between("!a", 102, 106, 10) == ["$103", "$104", "$106"]


# -- the total budget and the global floor ----------------------------------------------------

def test_eviction_drops_least_recently_active_room_and_raises_global_floor() -> None:
    recent = filled(("!a", 101), ("!a", 102), ("!b", 103), ("!c", 104), per_room=10,
                    total=4)
    # !a was active again after !b: !b is now the least recently active.
    recent.add("!a", 105, "$105")
    assert recent.events_between("!b", START, 105, 10) is None
    # The global floor is !b's last event: rooms not held have nothing after it.
    assert recent.events_between("!b", 103, 105, 10) == []
    assert recent.events_between("!never", 103, 105, 10) == []
    assert recent.events_between("!never", 102, 105, 10) is None
    # The rooms still held keep their own (older) floors and stay exact.
    assert recent.events_between("!a", START, 105, 10) == ["$101", "$102", "$105"]
    assert recent.events_between("!c", START, 105, 10) == ["$104"]

    # Another eviction: !c (last at 104) goes, the floor becomes 104.
    recent.add("!d", 106, "$106")
    assert recent.events_between("!c", 103, 106, 10) is None
    assert recent.events_between("!c", 104, 106, 10) == []
    assert recent.events_between("!b", 103, 106, 10) is None
    # A room first seen starts at the floor of its time (103: nothing of !d came before).
    assert recent.events_between("!d", 103, 106, 10) == ["$106"]
    assert recent.events_between("!d", 102, 106, 10) is None
    assert recent.events_between("!a", START, 106, 10) == ["$101", "$102", "$105"]
    # A room first seen after the floor rose to 104 starts there.
    recent.add("!e", 107, "$107")
    assert recent.events_between("!e", 104, 107, 10) == ["$107"]
    assert recent.events_between("!e", 103, 107, 10) is None


def test_evicted_room_comes_back_with_the_global_floor() -> None:
    recent = filled(("!a", 101), ("!b", 102), ("!b", 103), per_room=10, total=2)
    # !a was evicted (floor 101); it speaks again.
    recent.add("!a", 104, "$104")
    assert recent.events_between("!a", START, 104, 10) is None
    assert recent.events_between("!a", 101, 104, 10) == ["$104"]


def test_successive_evictions_raise_the_floor() -> None:
    recent = filled(("!a", 101), ("!a", 102), ("!a", 103), ("!b", 104), per_room=10,
                    total=3)
    # !a (last at 103) was evicted for !b.
    assert recent.events_between("!never", 103, 104, 10) == []
    recent.add("!c", 105, "$105")
    recent.add("!c", 106, "$106")
    recent.add("!c", 107, "$107")
    # !b (last at 104) went next: the floor is 104, not lower.
    assert recent.events_between("!never", 103, 107, 10) is None
    assert recent.events_between("!never", 104, 107, 10) == []
    assert recent.events_between("!a", 103, 107, 10) is None
    assert recent.events_between("!c", 104, 107, 10) == ["$105", "$106", "$107"]


def test_the_active_room_is_kept_even_over_budget() -> None:
    recent = filled(*(("!a", p) for p in range(101, 106)), per_room=10, total=2)
    assert recent.events_between("!a", START, 105, 10) == [f"${p}" for p in range(101, 106)]


# -- reset ------------------------------------------------------------------------------------

def test_reset_forgets_everything_and_moves_the_floor() -> None:
    recent = filled(("!a", 101), ("!b", 102))
    recent.reset(200)
    assert recent.events_between("!a", 200, 300, 10) == []
    assert recent.events_between("!a", 199, 300, 10) is None
    assert recent.events_between("!a", START, 300, 10) is None
    recent.add("!a", 201, "$201")
    assert recent.events_between("!a", 200, 201, 10) == ["$201"]
    assert recent.events_between("!b", 200, 201, 10) == []


def test_notifier_feeds_recent_events() -> None:
    notifier = Notifier()
    notifier.set_initial_position(50)
    notifier.on_new_events(52, ["!a", "!b"], events=[("!a", 51, "$51"), ("!b", 52, "$52")])
    notifier.on_new_events(53, ["!a"], events=[("!a", 53, "$53")])
    assert notifier.recent.events_between("!a", 50, notifier.position, 10) == ["$51", "$53"]
    assert notifier.recent.events_between("!b", 51, notifier.position, 10) == ["$52"]
    assert notifier.recent.events_between("!a", 49, notifier.position, 10) is None
    # A restart position resets what memory claims to know.
    notifier.set_initial_position(60)
    assert notifier.recent.events_between("!a", 50, 60, 10) is None
    assert notifier.recent.events_between("!a", 60, 60, 10) == []


# -- against a model --------------------------------------------------------------------------

def test_random_traffic_matches_a_model() -> None:
    """Whatever the budgets evict, every answer that is not None is exactly what the room
    holds in the window."""
    rng = random.Random(20240611)
    for per_room, total in ((1, 3), (3, 5), (4, 40), (8, 8)):
        recent = RecentRoomEvents(START, per_room=per_room, total=total)
        history: dict[str, list[tuple[int, str]]] = {}
        rooms = [f"!r{i}" for i in range(6)]
        position = START
        answered = 0
        for _ in range(300):
            position += 1
            room_id = rng.choice(rooms[:2] if rng.random() < 0.6 else rooms)
            event_id = f"${position}"
            recent.add(room_id, position, event_id)
            history.setdefault(room_id, []).append((position, event_id))
            for _ in range(3):
                asked = rng.choice([*rooms, "!never"])
                after = rng.randint(START - 2, position)
                up_to = rng.randint(after, position)
                limit = rng.randint(0, 6)
                got = recent.events_between(asked, after, up_to, limit)
                if got is None:
                    assert after < position  # nothing to answer is never "unknown"
                    continue
                answered += 1
                window = [e for p, e in history.get(asked, []) if after < p <= up_to]
                assert got == (window[-limit:] if limit else []), (asked, after, up_to, limit)
        assert answered > 50
