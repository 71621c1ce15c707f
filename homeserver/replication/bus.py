"""The bus between one server's processes: Redis pub/sub on one channel per server.

Each message is ``[origin, topic, payload]`` as JSON; a process skips its own. Messages
from one process arrive in the order it published them (one connection, one queue), so a
change's state (typing users, a presence) always arrives before the wake that follows it.
Publishing never blocks the caller: messages queue in process and one task sends them.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import redis.asyncio as aioredis

logger = logging.getLogger(__name__)

# Called with the payload and the publishing process; a coroutine function is awaited before
# the next message is handled (messages are applied in the order they were published).
Handler = Callable[[Any, str], None] | Callable[[Any, str], Awaitable[None]]


class NoBus:
    """One process: nothing to tell anyone."""

    origin = "main"
    active = False

    def publish(self, topic: str, payload: Any) -> None:
        pass

    def subscribe(self, topic: str, handler: Handler) -> None:
        pass


class RedisBus:
    """Publishes and receives on ``ktchat.<server name>.replication``."""

    active = True

    # Reconnect after this long when Redis went away (messages meanwhile are lost to the
    # others: they read what they missed from the database once resubscribed).
    RETRY_S = 0.5

    def __init__(self, url: str, server_name: str, process: str) -> None:
        self._url = url
        self._channel = f"ktchat.{server_name}.replication"
        # Unique per run: a restarted worker is another origin.
        self.origin = f"{process}.{secrets.token_hex(4)}"
        # How its connections show in Redis's CLIENT LIST.
        self.client_name = f"ktchat.{server_name}.{process}"
        self._handlers: dict[str, list[Handler]] = {}
        self._queue: asyncio.Queue[bytes] = asyncio.Queue()
        self._redis: aioredis.Redis | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._subscribed = asyncio.Event()
        # Called (with no argument) each time the subscription is (re)established: what was
        # published meanwhile was missed.
        self.on_resubscribed: list[Callable[[], None]] = []
        self.published = 0
        self.received = 0
        self.resubscribes = 0

    def subscribe(self, topic: str, handler: Handler) -> None:
        self._handlers.setdefault(topic, []).append(handler)

    def publish(self, topic: str, payload: Any) -> None:
        self._queue.put_nowait(orjson.dumps([self.origin, topic, payload]))

    async def start(self) -> None:
        self._redis = aioredis.from_url(self._url, client_name=self.client_name)
        await self._redis.ping()  # fail at start-up, not later, when Redis is not there
        self._tasks = [asyncio.create_task(self._send_loop()),
                       asyncio.create_task(self._receive_loop())]
        await asyncio.wait_for(self._subscribed.wait(), 10)

    async def stop(self) -> None:
        # What was published before stopping still goes out.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._drain(), 2)
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        if self._redis is not None:
            await self._redis.aclose()

    @property
    def backlog(self) -> int:
        """Messages waiting to be published (Redis slow or away)."""
        return self._queue.qsize()

    async def _drain(self) -> None:
        await self._queue.join()

    async def _send_loop(self) -> None:
        assert self._redis is not None
        while True:
            message = await self._queue.get()
            while True:
                try:
                    await self._redis.publish(self._channel, message)
                    self.published += 1
                    self._queue.task_done()
                    break
                except (aioredis.ConnectionError, aioredis.TimeoutError, OSError):
                    logger.warning("Redis unreachable; retrying to publish")
                    await asyncio.sleep(self.RETRY_S)

    async def _receive_loop(self) -> None:
        assert self._redis is not None
        first = True
        while True:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self._channel)
                self._subscribed.set()
                if not first:
                    self.resubscribes += 1
                    for callback in self.on_resubscribed:
                        callback()
                first = False
                async for message in pubsub.listen():
                    if message.get("type") == "message":
                        await self._dispatch(message["data"])
            except (aioredis.ConnectionError, aioredis.TimeoutError, OSError):
                logger.warning("Lost Redis; resubscribing")
                await asyncio.sleep(self.RETRY_S)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    async def _dispatch(self, data: bytes) -> None:
        try:
            origin, topic, payload = orjson.loads(data)
        except (orjson.JSONDecodeError, ValueError, TypeError):
            logger.warning("Dropped a malformed replication message")
            return
        if origin == self.origin:
            return
        self.received += 1
        for handler in self._handlers.get(topic, ()):
            try:
                result = handler(payload, origin)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                logger.exception("Replication handler for %s failed", topic)
