"""Reporting events and rooms to the server's admins (``POST /rooms/{roomId}/report[/..]``)
and the admin API that lists them (Synapse's ``/_synapse/admin/v1/event_reports``)."""

from __future__ import annotations

from typing import Any

from core.clock import Clock
from core.errors import Forbidden, NotFound
from homeserver.services.messages import MessageService, Reader
from storage.stores.events import EventStore
from storage.stores.reports import Report, ReportStore
from storage.stores.state import StateStore

_NAME = ("m.room.name", "")
_ALIAS = ("m.room.canonical_alias", "")


class ReportService:
    def __init__(self, store: ReportStore, messages: MessageService, events: EventStore,
                 state: StateStore, clock: Clock) -> None:
        self._store = store
        self._messages = messages
        self._events = events
        self._state = state
        self._clock = clock

    async def report_event(self, reader: Reader, room_id: str, event_id: str,
                           reason: str | None, score: int | None) -> None:
        """Store a report of an event the reporter can see.

        Raises:
            NotFound: the event is unknown, not in that room, redacted, or not visible to
                the reporter (as Synapse: nobody learns of events they cannot see).
        """
        try:
            event = await self._messages.get_event(reader, room_id, event_id)
        except Forbidden:
            raise NotFound("Unable to report event: it does not exist or you aren't able "
                           "to see it.") from None
        except NotFound:
            raise NotFound("Unable to report event: it does not exist or you aren't able "
                           "to see it.") from None
        if "redacted_because" in (event.get("unsigned") or {}):
            raise NotFound("Unable to report event: it has been redacted.")
        await self._store.add(room_id=room_id, event_id=event_id, user_id=reader.user_id,
                              event_sender=str(event.get("sender")), reason=reason,
                              score=score, received_ts=self._clock.time_ms())

    async def report_room(self, user_id: str, room_id: str, reason: str) -> None:
        """Store a report of a room this server knows.

        Raises:
            NotFound: the room is unknown here.
        """
        if await self._events.room_info(room_id) is None:
            raise NotFound("Room does not exist")
        await self._store.add(room_id=room_id, event_id=None, user_id=user_id,
                              event_sender=None, reason=reason, score=None,
                              received_ts=self._clock.time_ms())

    # -- admin ----------------------------------------------------------------------------------

    async def list_reports(self, *, events: bool, offset: int, limit: int,
                           newest_first: bool, room_id: str | None, user_id: str | None,
                           event_sender: str | None) -> dict[str, Any]:
        """A page of event reports (``events``) or room reports as Synapse's admin API gives
        it: the reports, ``total`` and, when there are more, ``next_token``."""
        page, total = await self._store.page(
            events=events, offset=offset, limit=limit, newest_first=newest_first,
            room_id=room_id, user_id=user_id, event_sender=event_sender)
        rooms = await self._room_details({r.room_id for r in page})
        body: dict[str, Any] = {
            "event_reports" if events else "room_reports":
                [_report_json(r, rooms[r.room_id]) for r in page],
            "total": total}
        if offset + len(page) < total:
            body["next_token"] = offset + len(page)
        return body

    async def get_report(self, report_id: int, *, events: bool = True) -> dict[str, Any]:
        """One report; an event report with ``event_json`` (the event as stored).

        Raises:
            NotFound: no such report.
        """
        report = await self._store.get(report_id, events=events)
        if report is None:
            raise NotFound("Event report not found" if events else "Room report not found")
        rooms = await self._room_details({report.room_id})
        body = _report_json(report, rooms[report.room_id])
        if report.event_id is not None:
            stored = await self._events.get_event(report.event_id)
            body["event_json"] = stored.pdu if stored is not None else {}
        return body

    async def delete_report(self, report_id: int, *, events: bool = True) -> None:
        """Raises: NotFound: no such report."""
        if not await self._store.delete(report_id, events=events):
            raise NotFound("Event report not found" if events else "Room report not found")

    async def _room_details(self, room_ids: set[str]) -> dict[str, dict[str, Any]]:
        """Each room's current ``name`` and ``canonical_alias`` (None when unset or gone)."""
        out: dict[str, dict[str, Any]] = {}
        for room_id in room_ids:
            info = await self._events.room_info(room_id)
            state = await self._state.state_at_group(info[1] if info else None,
                                                     only=[_NAME, _ALIAS])
            found = await self._events.get_events(state.values())
            name = found.get(state.get(_NAME, ""))
            alias = found.get(state.get(_ALIAS, ""))
            name_value = (name.pdu.get("content") or {}).get("name") if name else None
            alias_value = (alias.pdu.get("content") or {}).get("alias") if alias else None
            out[room_id] = {
                "name": name_value if isinstance(name_value, str) else None,
                "canonical_alias": alias_value if isinstance(alias_value, str) else None}
        return out


def _report_json(report: Report, room: dict[str, Any]) -> dict[str, Any]:
    body: dict[str, Any] = {"id": report.id, "received_ts": report.received_ts,
                            "room_id": report.room_id, "user_id": report.user_id,
                            "reason": report.reason, **room}
    if report.event_id is not None:
        body.update(event_id=report.event_id, sender=report.event_sender,
                    score=report.score)
    return body
