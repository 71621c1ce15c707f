"""The external services the suite relies on are reachable when configured (under CI=true
they must be: .ci/run starts and configures both)."""

from __future__ import annotations

import os

import asyncpg
import pytest
import redis.asyncio as redis

from tests.conftest import postgres_url


async def test_postgres_is_reachable() -> None:
    url = postgres_url()
    assert url is not None
    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        assert await conn.fetchval("SELECT 1") == 1
    finally:
        await conn.close()


async def test_redis_is_reachable() -> None:
    url = os.environ.get("KTCHAT_TEST_REDIS_URL")
    if not url:
        if os.environ.get("CI") == "true":
            pytest.fail("KTCHAT_TEST_REDIS_URL must be set under CI=true")
        pytest.skip("KTCHAT_TEST_REDIS_URL is not set")
    client = redis.from_url(url)
    try:
        assert await client.ping()
    finally:
        await client.aclose()
