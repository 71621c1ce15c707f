"""The Matrix client-server API (and the admin API operators' tools use).

Routes only parse, authorize, call one service and serialize; they never touch storage.
"""

from __future__ import annotations

from aiohttp import web

from client_api import (
    account,
    account_data,
    admin,
    devices,
    directory,
    friends,
    history,
    key_backup,
    keys,
    login,
    membership,
    presence,
    profile,
    push_rules,
    receipts,
    register,
    rooms,
    search,
    spaces,
    sync,
    to_device,
    user_directory,
    versions,
)

_MODULES = (versions, login, register, account, devices, profile, admin, rooms, membership,
            directory, account_data, sync, push_rules, presence, receipts, friends,
            search, history, to_device, key_backup, keys, user_directory,
            spaces)


def add_client_routes(app: web.Application) -> None:
    for module in _MODULES:
        module.routes.add_to(app.router)
