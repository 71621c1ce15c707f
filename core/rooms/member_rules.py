"""Rule 5 of the authorization rules (v12 numbering, see ``core.rooms.auth``):
``m.room.member`` events: join, invite, leave, ban and knock."""

from __future__ import annotations

from collections.abc import Mapping

from core.events.model import Event
from core.rooms.auth_common import (
    AUTHORISING_USER,
    BAN,
    INVITE,
    JOIN,
    KNOCK,
    KNOCK_RESTRICTED,
    LEAVE,
    PUBLIC,
    RESTRICTED,
    THIRD_PARTY_INVITE,
    AuthError,
    StateMap,
    ThirdPartyInviteVerifier,
    current_join_rule,
    has_signature_from,
    is_user_id,
    membership_of,
    original_creator,
    server_of,
)
from core.rooms.power_levels import (
    PowerLevels,
)
from core.rooms.third_party_invites import third_party_invite_public_keys

# -- Rule 5: m.room.member ----------------------------------------------------------------------


def check_member_event(
    event: Event,
    state: StateMap,
    create: Event,
    levels: PowerLevels,
    verify_third_party_invite: ThirdPartyInviteVerifier,
) -> None:
    """Rule 5: ``m.room.member``; allows or raises, never falls through to rule 6."""
    target = event.state_key
    membership = event.membership
    # 5.1
    if target is None or membership is None:
        raise AuthError("A membership event needs a state_key and content.membership")
    # Not a numbered rule, but the m.room.member schema's, and Synapse and ruma reject such
    # events while authorising them: the state_key is a user ID.
    if not target.startswith("@") or ":" not in target:
        raise AuthError(f"Membership state_key {target!r} is not a user ID")
    # 5.2
    if event.room_version.restricted_join_rule and AUTHORISING_USER in event.content:
        authoriser = event.content[AUTHORISING_USER]
        if not is_user_id(authoriser) or not has_signature_from(event, server_of(authoriser)):
            raise AuthError(f"The event is not signed by the server of {authoriser!r}")
    if membership == JOIN:
        _check_join(event, state, create, levels)  # 5.3
    elif membership == INVITE:
        _check_invite(event, state, levels, verify_third_party_invite)  # 5.4
    elif membership == LEAVE:
        _check_leave(event, state, levels)  # 5.5
    elif membership == BAN:
        _check_ban(event, state, levels)  # 5.6
    elif membership == KNOCK and event.room_version.knock_join_rule:
        _check_knock(event, state)  # 5.7
    else:
        # 5.8
        raise AuthError(f"Unknown membership {membership!r}")


def _check_join(event: Event, state: StateMap, create: Event, levels: PowerLevels) -> None:
    """Rule 5.3: ``membership: join``."""
    sender, target = event.sender, event.state_key
    # 5.3.1: the creator's own first join (v10: content.creator; v11+: the create's sender).
    if event.prev_event_ids == [create.event_id] and target == original_creator(create):
        return
    # 5.3.2
    if sender != target:
        raise AuthError(f"{sender} may not join {target} to the room")
    membership = membership_of(state, sender)
    # 5.3.3
    if membership == BAN:
        raise AuthError(f"{sender} is banned from the room")
    join_rule = current_join_rule(event.room_version, state)
    # 5.3.4
    if join_rule in (INVITE, KNOCK):
        if membership in (INVITE, JOIN):
            return
        raise AuthError(f"{sender} is not invited to the room")
    # 5.3.5
    if join_rule in (RESTRICTED, KNOCK_RESTRICTED):
        if membership in (JOIN, INVITE):
            return
        authoriser = event.content.get(AUTHORISING_USER)
        if not isinstance(authoriser, str):
            raise AuthError("A restricted join needs join_authorised_via_users_server")
        # "A user with sufficient permission to invite": joined (5.4.2), invite level (5.4.4).
        if membership_of(state, authoriser) != JOIN:
            raise AuthError(f"Authorising user {authoriser} is not in the room")
        if levels.user_level(authoriser) < levels.invite_level:
            raise AuthError(f"Authorising user {authoriser} may not invite users")
        return
    # 5.3.6
    if join_rule == PUBLIC:
        return
    # 5.3.7
    raise AuthError(f"Join rule {join_rule!r} does not let {sender} join")


def _check_invite(
    event: Event,
    state: StateMap,
    levels: PowerLevels,
    verify_third_party_invite: ThirdPartyInviteVerifier,
) -> None:
    """Rule 5.4: ``membership: invite``."""
    sender, target = event.sender, event.state_key
    assert target is not None  # 5.1
    target_membership = membership_of(state, target)
    # 5.4.1
    if "third_party_invite" in event.content:
        _check_third_party_signed_invite(event, state, target_membership, verify_third_party_invite)
        return
    # 5.4.2
    if membership_of(state, sender) != JOIN:
        raise AuthError(f"{sender} is not in the room")
    # 5.4.3
    if target_membership == JOIN:
        raise AuthError(f"{target} is already in the room")
    if target_membership == BAN:
        raise AuthError(f"{target} is banned from the room")
    # 5.4.4
    if levels.user_level(sender) >= levels.invite_level:
        return
    # 5.4.5
    raise AuthError(f"{sender} may not invite users")


def _check_third_party_signed_invite(
    event: Event,
    state: StateMap,
    target_membership: str | None,
    verify: ThirdPartyInviteVerifier,
) -> None:
    """Rule 5.4.1: an invite made from an ``m.room.third_party_invite``."""
    # 5.4.1.1
    if target_membership == BAN:
        raise AuthError(f"{event.state_key} is banned from the room")
    third_party_invite = event.content["third_party_invite"]
    # 5.4.1.2
    signed = third_party_invite.get("signed") if isinstance(third_party_invite, Mapping) else None
    if not isinstance(signed, Mapping):
        raise AuthError("third_party_invite has no signed object")
    # 5.4.1.3
    mxid, token = signed.get("mxid"), signed.get("token")
    if not isinstance(mxid, str) or not isinstance(token, str):
        raise AuthError("third_party_invite.signed needs mxid and token")
    # 5.4.1.4
    if mxid != event.state_key:
        raise AuthError("third_party_invite.signed.mxid is not the invited user")
    # 5.4.1.5
    invite = state.get((THIRD_PARTY_INVITE, token))
    if invite is None:
        raise AuthError("No m.room.third_party_invite matches the token")
    # 5.4.1.6
    if invite.sender != event.sender:
        raise AuthError("Only the sender of the third-party invite may use it")
    # 5.4.1.7
    if verify(signed, third_party_invite_public_keys(invite)):
        return
    # 5.4.1.8
    raise AuthError("third_party_invite.signed is not signed by the invite's keys")


def _check_leave(event: Event, state: StateMap, levels: PowerLevels) -> None:
    """Rule 5.5: ``membership: leave`` (leaving, rejecting, retracting, kicking, unbanning)."""
    sender, target = event.sender, event.state_key
    assert target is not None  # 5.1
    sender_membership = membership_of(state, sender)
    # 5.5.1
    if sender == target:
        if sender_membership in (INVITE, JOIN, KNOCK):
            return
        raise AuthError(f"{sender} is not in, invited to or knocking on the room")
    # 5.5.2
    if sender_membership != JOIN:
        raise AuthError(f"{sender} is not in the room")
    sender_level = levels.user_level(sender)
    # 5.5.3
    if membership_of(state, target) == BAN and sender_level < levels.ban_level:
        raise AuthError(f"{sender} may not unban users")
    # 5.5.4
    if sender_level >= levels.kick_level and levels.user_level(target) < sender_level:
        return
    # 5.5.5
    raise AuthError(f"{sender} may not kick {target}")


def _check_ban(event: Event, state: StateMap, levels: PowerLevels) -> None:
    """Rule 5.6: ``membership: ban``."""
    sender, target = event.sender, event.state_key
    assert target is not None  # 5.1
    # 5.6.1
    if membership_of(state, sender) != JOIN:
        raise AuthError(f"{sender} is not in the room")
    sender_level = levels.user_level(sender)
    # 5.6.2
    if sender_level >= levels.ban_level and levels.user_level(target) < sender_level:
        return
    # 5.6.3
    raise AuthError(f"{sender} may not ban {target}")


def _check_knock(event: Event, state: StateMap) -> None:
    """Rule 5.7: ``membership: knock``."""
    sender = event.sender
    # 5.7.1
    if current_join_rule(event.room_version, state) not in (KNOCK, KNOCK_RESTRICTED):
        raise AuthError("The room does not allow knocking")
    # 5.7.2
    if sender != event.state_key:
        raise AuthError(f"{sender} may not knock for another user")
    # 5.7.3
    membership = membership_of(state, sender)
    if membership not in (BAN, INVITE, JOIN):
        return
    # 5.7.4
    raise AuthError(f"{sender} may not knock while their membership is {membership}")


