"""Who is asking: the API keys of the registry, checked for each request, and the admin key made
at the first start.

A replica looks a key up in the registry and may reuse the answer for ``auth_cache_seconds``
(default 1 s). A key revoked through any replica (or ``rag keys revoke``) stops working at once
on every replica all the same: each request first reads the registry's revocation watch
(``ingest/registry/revocations.py``: a PostgreSQL notification each replica listens for, or a
file beside the SQLite database), and a change empties the cache. Unknown tokens are never
cached (each costs one indexed SELECT). In ``auth=open`` mode (loopback only) every request acts
as :data:`OPEN`.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from ingest.registry import ApiKey, KeyStore
from rag.core.settings import Settings
from rag.service.quotas import RateLimiter

log = logging.getLogger(__name__)

OPEN = ApiKey(
    id="open",
    name="open",
    prefix="",
    scopes=("read", "write", "admin"),
    collections=("*",),
    created_at=datetime(1970, 1, 1, tzinfo=UTC),
)
CACHE_LIMIT = 10_000


class Authenticator:
    """The key store, and a short per-process cache of the keys it answered."""

    def __init__(
        self,
        store: KeyStore,
        *,
        open_mode: bool,
        cache_seconds: float,
        rate_per_minute: int = 0,
        clock: Callable[[], float] = time.monotonic,
        revocations: Callable[[], object] | None = None,
    ) -> None:
        self.store = store
        self.open_mode = open_mode
        self.rates = RateLimiter(rate_per_minute)
        self.cache_seconds = cache_seconds
        self._clock = clock
        self._cache: dict[str, tuple[float, ApiKey]] = {}
        self._revocations = revocations  # RevocationWatch.epoch: changes on every revocation
        self._epoch: object = None

    async def authenticate(self, token: str) -> ApiKey | None:
        """The live key of ``token``, or ``None``."""
        now = self._clock()
        if self._revocations is not None:
            epoch = self._revocations()
            if epoch != self._epoch:  # a key was revoked somewhere: forget them all
                self._cache.clear()
                self._epoch = epoch
        cached = self._cache.get(token)
        if cached is not None and now - cached[0] < self.cache_seconds:
            return cached[1]
        key = await self.store.lookup(token)
        if key is None:
            self._cache.pop(token, None)
            return None
        if self.cache_seconds > 0:
            if len(self._cache) >= CACHE_LIMIT:
                self._cache.clear()
            self._cache[token] = (now, key)
        return key

    async def revoke(self, key_id: str) -> ApiKey | None:
        key = await self.store.revoke(key_id)
        self._cache = {t: e for t, e in self._cache.items() if e[1].id != key_id}
        return key


async def bootstrap_admin_key(store: KeyStore, settings: Settings) -> str:
    """Make sure an admin key exists; return a line that says where it is.

    ``admin_key`` is added to the store if it is not there. Without it, the key of
    ``data_dir/admin.key`` is used, and when that file does not exist and the store has no admin
    key either, a new key is generated into it (mode 0600). A key that was revoked stays
    revoked: bootstrap only adds keys the store has never seen.
    """
    if settings.admin_key is not None:
        token = settings.admin_key.get_secret_value()
        if not await store.exists(token):
            await store.create(name="admin", scopes=["admin"], collections=["*"], token=token)
        return "admin key: the one in RAG_ADMIN_KEY"
    path = settings.admin_key_file
    if path.exists():
        token = path.read_text().strip()
        if not await store.exists(token):
            await store.create(name="admin", scopes=["admin"], collections=["*"], token=token)
        return f"admin key: in {path.resolve()}"
    if await store.has_admin():
        return "admin key: the store has one already (rag keys create makes another)"
    token, _ = await store.create(name="admin", scopes=["admin"], collections=["*"])
    write_secret(path, token)
    log.warning("generated an admin API key into %s (mode 0600)", path.resolve())
    return f"admin key: generated into {path.resolve()}"


def write_secret(path: Path, secret: str) -> None:
    """Write ``secret`` to a new file only its owner may read."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(secret + "\n")
