"""Password hashing with argon2id (argon2-cffi), off the event loop.

Parameters follow OWASP's argon2id minimum (19 MiB, 2 iterations, 1 lane): strong enough, and
cheap enough that logins are not a denial-of-service lever. Hashes carry their parameters, so a
later change of cost re-hashes on the next successful login (``needs_rehash``).
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from argon2 import PasswordHasher as _Argon2
from argon2.exceptions import InvalidHashError, VerificationError


class PasswordHasher:
    """Hashes and checks passwords in a small thread pool (argon2 releases the GIL)."""

    def __init__(self, *, memory_kib: int = 19 * 1024, time_cost: int = 2, workers: int = 2
                 ) -> None:
        self._argon2 = _Argon2(time_cost=time_cost, memory_cost=memory_kib, parallelism=1)
        # Bounded: concurrent logins queue here instead of each taking 19 MiB at once.
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="pwhash")

    async def hash(self, password: str) -> str:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._argon2.hash, password)

    async def verify(self, password_hash: str, password: str) -> bool:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._verify, password_hash, password)

    def _verify(self, password_hash: str, password: str) -> bool:
        try:
            return bool(self._argon2.verify(password_hash, password))
        except (VerificationError, InvalidHashError):
            return False

    def needs_rehash(self, password_hash: str) -> bool:
        try:
            return bool(self._argon2.check_needs_rehash(password_hash))
        except InvalidHashError:
            return True

    def close(self) -> None:
        self._pool.shutdown(wait=False)
