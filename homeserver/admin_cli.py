"""``ktchat admin -c FILE ...``: everyday administration straight on the configured database
(as ``register-user``): create-user, reset-password, deactivate, make-admin, list-users,
list-rooms. Exit status 0 done, 1 refused or failed, 2 bad usage. Passwords are read from a
file (``-``: standard input) or asked for on the terminal, and never printed.

A running server sees accounts, passwords and admin flags as soon as they are written; the
sessions it has already checked stay valid there until it restarts, so ending a live session
(deactivation, revoking admin) is the admin API's job on a running server."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy.exc import SQLAlchemyError

from core.errors import MatrixError
from homeserver.config import HomeserverConfig, load_config
from storage.migrations import SchemaTooNewError
from storage.stores.admin_rooms import RoomFilter
from storage.stores.admin_users import UserFilter

if TYPE_CHECKING:
    from homeserver.services.container import Services

EXIT_FAILED = 1
EXIT_USAGE = 2
_PAGE = 500


class UsageError(Exception):
    """Bad arguments: exit status 2."""


class Failed(Exception):
    """The command was refused or failed: exit status 1."""


def _read_password(args: argparse.Namespace) -> str:
    if args.password_file is not None:
        try:
            text = sys.stdin.read() if args.password_file == "-" \
                else Path(args.password_file).read_text(encoding="utf-8")
        except OSError as e:
            raise UsageError(f"--password-file: cannot read {args.password_file}: "
                             f"{e.strerror or e}") from None
        password = text.splitlines()[0] if text.splitlines() else ""
        if not password:
            raise UsageError("--password-file: the file is empty")
        return password
    if not sys.stdin.isatty():
        raise UsageError("--password-file: required when not run from a terminal")
    password = getpass.getpass("Password: ")
    if password != getpass.getpass("Confirm password: "):
        raise UsageError("the passwords do not match")
    return password


def _user_id(services: Services, user: str) -> str:
    """A localpart or a full user ID of this server."""
    if not user.startswith("@"):
        return services.accounts.user_id_for(user.lower())
    if not services.accounts.is_mine(user):
        raise Failed(f"{user} is not a user of {services.config.server_name}")
    return user


async def _existing(services: Services, user: str) -> str:
    user_id = _user_id(services, user)
    if await services.admin_users.find(user_id) is None:
        raise Failed(f"no such user: {user_id}")
    return user_id


async def create_user(services: Services, args: argparse.Namespace, password: str | None
                      ) -> None:
    localpart = args.name[1:].split(":", 1)[0] if args.name.startswith("@") else args.name
    _user_id(services, args.name)
    assert password is not None
    services.accounts.check_password_strength(password)
    user_id = await services.accounts.register(localpart, password, admin=args.admin)
    print(f"created {user_id}{' (admin)' if args.admin else ''}")


async def reset_password(services: Services, args: argparse.Namespace, password: str | None
                         ) -> None:
    user_id = await _existing(services, args.user)
    assert password is not None
    services.accounts.check_password_strength(password)
    await services.accounts.change_password(user_id, password, keep_device_id=None,
                                            logout_devices=not args.keep_devices)
    print(f"reset the password of {user_id}"
          f"{'' if args.keep_devices else '; its devices are logged out'}")


async def deactivate(services: Services, args: argparse.Namespace, _: str | None) -> None:
    user_id = await _existing(services, args.user)
    # Leaving rooms writes events, which only the serving process may do.
    await services.admin_users.deactivate(user_id, erase=args.erase, leave_rooms=False)
    print(f"deactivated {user_id}{' and erased its profile' if args.erase else ''}")


async def make_admin(services: Services, args: argparse.Namespace, _: str | None) -> None:
    user_id = await _existing(services, args.user)
    await services.accounts.set_admin(user_id, not args.revoke)
    print(f"{user_id} is {'no longer' if args.revoke else 'now'} a server admin")


def _row(*cells: object) -> str:
    return "\t".join("" if c is None else str(c) for c in cells)


async def list_users(services: Services, args: argparse.Namespace, _: str | None) -> None:
    user_filter = UserFilter(name=args.search, deactivated=None if args.deactivated else False)
    print(_row("user_id", "admin", "deactivated", "displayname", "created_ts"))
    offset = 0
    while True:
        users, total = await services.db.admin_users.page(
            user_filter, offset=offset, limit=_PAGE, order_by="name", backwards=False)
        for u in users:
            print(_row(u.user_id, "yes" if u.admin else "no",
                       "yes" if u.deactivated else "no", u.displayname, u.created_ts))
        offset += len(users)
        if not users or offset >= total:
            break


async def list_rooms(services: Services, args: argparse.Namespace, _: str | None) -> None:
    print(_row("room_id", "name", "canonical_alias", "joined_members", "creator"))
    offset = 0
    while True:
        body = await services.admin_rooms.list_rooms(
            RoomFilter(search_term=args.search or None), offset=offset, limit=_PAGE,
            order_by="name", backwards=False)
        for room in body["rooms"]:
            print(_row(room["room_id"], room["name"], room["canonical_alias"],
                       room["joined_members"], room["creator"]))
        offset += len(body["rooms"])
        if "next_batch" not in body:
            break


Command = Callable[["Services", argparse.Namespace, str | None], Awaitable[None]]


async def _run(config: HomeserverConfig, command: Command, args: argparse.Namespace,
               password: str | None) -> None:
    from homeserver.replication.bus import RedisBus
    from homeserver.services.container import build_services  # (slow to import: not for --help)

    # With workers, the running processes hear of what this changes (revoked sessions go at
    # once); without, a running server notices within a minute (its token cache rechecks).
    bus = RedisBus(config.redis.url, config.server_name, "admin") \
        if config.redis.url and config.workers else None
    services = build_services(config, replication=bus) if bus is not None \
        else build_services(config)
    await services.db.open()
    if bus is not None:
        await bus.start()
    try:
        await command(services, args, password)
    finally:
        if bus is not None:
            await bus.stop()
        await services.db.close()
        services.hasher.close()


def main(args: argparse.Namespace) -> int:
    config = load_config(Path(args.config))
    try:
        password = _read_password(args) if getattr(args, "needs_password", False) else None
        asyncio.run(_run(config, args.admin_func, args, password))
    except UsageError as e:
        print(f"ktchat admin: {e}", file=sys.stderr)
        return EXIT_USAGE
    except Failed as e:
        print(f"ktchat admin: {e}", file=sys.stderr)
        return EXIT_FAILED
    except MatrixError as e:
        print(f"ktchat admin: {e.message}", file=sys.stderr)
        return EXIT_FAILED
    except (OSError, SQLAlchemyError, SchemaTooNewError) as e:
        print(f"ktchat admin: cannot open the database: {e}".splitlines()[0], file=sys.stderr)
        return EXIT_FAILED
    return 0


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    admin = sub.add_parser("admin", help="everyday administration on the database")
    admin.add_argument("-c", "--config", required=True)
    admin.set_defaults(func=main)
    commands = admin.add_subparsers(dest="admin_command", required=True)

    def command(name: str, func: Command, help_text: str, *,
                password: bool = False) -> argparse.ArgumentParser:
        p = commands.add_parser(name, help=help_text)
        p.set_defaults(admin_func=func, needs_password=password)
        if password:
            p.add_argument("--password-file", metavar="FILE",
                           help="read the password from the first line of FILE (- for "
                                "standard input); asked for on a terminal otherwise")
        return p

    p = command("create-user", create_user, "create an account", password=True)
    p.add_argument("name", help="localpart or full user ID")
    p.add_argument("--admin", action="store_true", help="make it a server admin")
    p = command("reset-password", reset_password, "set a new password", password=True)
    p.add_argument("user", help="localpart or full user ID")
    p.add_argument("--keep-devices", action="store_true",
                   help="do not log the user's devices out")
    p = command("deactivate", deactivate, "deactivate an account")
    p.add_argument("user", help="localpart or full user ID")
    p.add_argument("--erase", action="store_true", help="also erase the profile")
    p = command("make-admin", make_admin, "make a user a server admin")
    p.add_argument("user", help="localpart or full user ID")
    p.add_argument("--revoke", action="store_true", help="take the admin flag away instead")
    p = command("list-users", list_users, "list accounts (tab-separated)")
    p.add_argument("--deactivated", action="store_true", help="include deactivated users")
    p.add_argument("--search", help="part of the user ID or display name")
    p = command("list-rooms", list_rooms, "list rooms (tab-separated)")
    p.add_argument("--search", help="part of the name, alias or room ID")
