"""The Matrix client-server API (and the admin API operators' tools use).

Routes only parse, authorize, call one service and serialize; they never touch storage.
"""

from __future__ import annotations

from aiohttp import web

from client_api import (
    account,
    account_data,
    admin,
    admin_federation,
    admin_rooms,
    admin_users,
    dehydrated_devices,
    devices,
    directory,
    friends,
    history,
    key_backup,
    keys,
    login,
    media,
    membership,
    presence,
    profile,
    push_rules,
    receipts,
    register,
    relations,
    reports,
    rooms,
    search,
    sliding_sync,
    spaces,
    sync,
    threepid,
    timestamp_to_event,
    to_device,
    user_directory,
    versions,
    voip,
)

_MODULES = (versions, login, register, account, devices, profile, admin, rooms, membership,
            directory, account_data, sync, push_rules, presence, receipts, friends,
            search, history, to_device, key_backup, keys, dehydrated_devices,
            relations, voip, threepid, reports, timestamp_to_event, user_directory, spaces,
            sliding_sync, admin_users, admin_rooms, admin_federation)


def add_client_routes(app: web.Application) -> None:
    for module in _MODULES:
        module.routes.add_to(app.router)


def add_media_routes(app: web.Application) -> None:
    """The media repository (the ``media`` listener resource; ``client`` serves it too)."""
    media.routes.add_to(app.router)
