"""Request bodies, validated with pydantic in strict mode (no silent type coercion)."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from core.errors import BadJson, MissingParam

M = TypeVar("M", bound=BaseModel)


class Body(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)


def parse_body(model: type[M], body: dict[str, Any]) -> M:
    """Validate ``body``; a missing field is 400 M_MISSING_PARAM, a wrong one M_BAD_JSON."""
    try:
        return model.model_validate(body)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(body)"
        if first["type"] == "missing":
            raise MissingParam(f"Missing parameter: {where}") from None
        raise BadJson(f"Invalid parameter {where}: {first['msg']}") from None


class LoginBody(Body):
    type: str
    identifier: dict[str, Any] | None = None
    user: str | None = None
    password: str | None = None
    device_id: str | None = Field(default=None, max_length=512)
    initial_device_display_name: str | None = Field(default=None, max_length=512)
    refresh_token: bool = False


class RefreshBody(Body):
    refresh_token: str


class RegisterBody(Body):
    auth: dict[str, Any] | None = None
    username: str | None = None  # length is checked as M_INVALID_USERNAME
    password: str | None = Field(default=None, max_length=512)
    device_id: str | None = Field(default=None, max_length=512)
    initial_device_display_name: str | None = Field(default=None, max_length=512)
    inhibit_login: bool = False
    refresh_token: bool = False


class AuthOnlyBody(Body):
    auth: dict[str, Any] | None = None


class PasswordBody(Body):
    auth: dict[str, Any] | None = None
    new_password: str = Field(max_length=512)
    logout_devices: bool = True


class DeactivateBody(Body):
    auth: dict[str, Any] | None = None
    erase: bool = False
    id_server: str | None = None


class DeleteDevicesBody(Body):
    auth: dict[str, Any] | None = None
    devices: list[str]


class DeviceUpdateBody(Body):
    display_name: str | None = Field(default=None, max_length=512)


class NewRegistrationTokenBody(Body):
    token: str | None = Field(default=None, min_length=1, max_length=64,
                              pattern=r"^[A-Za-z0-9._~-]+$")
    uses_allowed: int | None = Field(default=None, ge=0)
    expiry_time: int | None = Field(default=None, ge=0)
    length: int = Field(default=16, ge=1, le=64)


class CreateRoomBody(Body):
    visibility: str = "private"
    room_alias_name: str | None = None  # checked as a room alias (client_api.params)
    name: str | None = Field(default=None, max_length=255)
    topic: str | None = Field(default=None, max_length=65536)
    invite: list[str] = Field(default_factory=list, max_length=1000)
    invite_3pid: list[dict[str, Any]] = Field(default_factory=list)
    room_version: str | None = None
    creation_content: dict[str, Any] = Field(default_factory=dict)
    initial_state: list[dict[str, Any]] = Field(default_factory=list, max_length=1000)
    preset: str | None = None
    is_direct: bool = False
    power_level_content_override: dict[str, Any] | None = None


class MembershipBody(Body):
    reason: str | None = Field(default=None, max_length=4096)


class TargetBody(Body):
    user_id: str
    reason: str | None = Field(default=None, max_length=4096)


class RedactBody(Body):
    reason: str | None = Field(default=None, max_length=4096)


class AliasBody(Body):
    room_id: str


class VisibilityBody(Body):
    visibility: str = "private"


class PublicRoomsBody(Body):
    limit: int | None = Field(default=None, ge=0)
    since: str | None = None
    filter: dict[str, Any] | None = None
    server: str | None = None
    include_all_networks: bool = False
    third_party_instance_id: str | None = None


class TypingBody(Body):
    typing: bool
    timeout: int | None = Field(default=None, ge=0)


class ReceiptBody(Body):
    thread_id: str | None = Field(default=None, min_length=1, max_length=255)


class PresenceBody(Body):
    presence: str
    status_msg: str | None = Field(default=None, max_length=2048)


class SearchEventContext(Body):
    before_limit: int = Field(default=5, ge=0)
    after_limit: int = Field(default=5, ge=0)
    include_profile: bool = False


class SearchGroup(Body):
    key: str


class SearchGroupings(Body):
    group_by: list[SearchGroup] = []


class RoomEventsCriteria(Body):
    search_term: str = Field(max_length=4096)
    keys: list[str] | None = None
    filter: dict[str, Any] | None = None
    order_by: str = "rank"
    event_context: SearchEventContext | None = None
    include_state: bool = False
    groupings: SearchGroupings | None = None


class SearchCategories(Body):
    room_events: RoomEventsCriteria | None = None


class SearchBody(Body):
    search_categories: SearchCategories


class ClearHistoryBody(Body):
    up_to_event_id: str | None = Field(default=None, max_length=255)


class PurgeHistoryBody(Body):
    delete_local_events: bool = False
    purge_up_to_event_id: str | None = Field(default=None, max_length=255)
    # At most what the database stores (a signed 64-bit integer).
    purge_up_to_ts: int | None = Field(default=None, ge=0, le=2**63 - 1)


class DeleteRoomBody(Body):
    new_room_user_id: str | None = Field(default=None, max_length=255)
    room_name: str | None = Field(default=None, max_length=1024)
    message: str | None = Field(default=None, max_length=65536)
    block: bool = False
    purge: bool = True
    force_purge: bool = False


class BlockRoomBody(Body):
    block: bool
