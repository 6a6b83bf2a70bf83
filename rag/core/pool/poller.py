"""The poller: one asyncio task per upstream that reads ``/health``, ``/slots`` and ``/props``.

``/health`` and ``/props`` are read when an upstream is new or comes back; after that one
``/slots`` request per round tells both its health and its busy slots.

Quiet upstreams. ``GET /slots`` is a task in llama-server's queue: it wakes a server that sleeps
(``--sleep-idle-seconds``: the model unloaded) and restarts its idle timer, so polling it every
round would keep every upstream awake for good. An upstream on which this pool has had no
request for ``quiet`` seconds, and whose last ``/slots`` showed no other clients' load, is polled
with ``/health`` only (no task; answered while it sleeps) until this pool sends it a request
again: it may then sleep. Meanwhile the pool does not see requests that other clients send it
directly; the first request of its own brings ``/slots`` back at the next round.

Hushed upstreams. For a moment after one of the pool's requests there was given up before its
answer came (``Requests._abandoned`` in ``requesting.py``), an upstream is polled with
``/health`` only too: llama-server notices a closed connection only after a second in which
none of its tasks ended, and each ``/slots`` poll is a task that ends.

Every ``interval`` seconds (or at once when woken, e.g. after a failed request) it updates the
upstream's state and slot counts, then calls ``on_change()`` so that waiting requests are
dispatched. Every call has its own short timeout, and carries the upstream's API key
(``Upstream.auth``: ``/health`` is public, ``/slots`` and ``/props`` are not).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import httpx

from rag.core.pool.upstream import Upstream, UpstreamState

log = logging.getLogger(__name__)

POLL_TIMEOUT = httpx.Timeout(connect=1.0, read=2.0, write=2.0, pool=1.0)


async def poll_once(http: httpx.AsyncClient, upstream: Upstream, quiet: bool = False) -> None:
    """Read the upstream's health and slots once and record them on ``upstream``; ``quiet``:
    its health only, when it is known and has a ``/slots`` endpoint (see above)."""
    upstream.poll_sent(time.monotonic())
    try:
        state, error = await _poll(http, upstream, upstream.auth, quiet)
    except (httpx.HTTPError, ValueError) as exc:
        state, error = UpstreamState.UNREACHABLE, f"poll failed: {type(exc).__name__}"
    _set_state(upstream, state, error)


async def _poll(
    http: httpx.AsyncClient, upstream: Upstream, headers: Mapping[str, str], quiet: bool
) -> tuple[UpstreamState, str | None]:
    known = bool(upstream.props) and upstream.slots_endpoint
    upstream.quiet = quiet and known
    if not known or upstream.quiet:  # new, back again, without /slots, or left to sleep
        health = await http.get(f"{upstream.url}/health", timeout=POLL_TIMEOUT, headers=headers)
        if health.status_code == 503:
            return UpstreamState.LOADING, "loading the model (HTTP 503)"
        if health.status_code != 200:
            return UpstreamState.UNREACHABLE, f"/health: HTTP {health.status_code}"
        if not upstream.props:
            await _read_props(http, upstream, headers)
        if not upstream.slots_endpoint or upstream.quiet:
            return UpstreamState.HEALTHY, None
    # one request per round for a known upstream: llama-server answers /slots with 503 too
    # while a model loads (half the polling work of asking /health every time)
    slots = await http.get(f"{upstream.url}/slots", timeout=POLL_TIMEOUT, headers=headers)
    if slots.status_code == 200:
        listed: list[dict[str, Any]] = slots.json()
        upstream.polled(sum(1 for slot in listed if slot.get("is_processing")), len(listed))
        return UpstreamState.HEALTHY, None
    if slots.status_code == 503:
        return UpstreamState.LOADING, "loading the model (HTTP 503)"
    if slots.status_code in (404, 501):
        log.info("%s has no /slots endpoint: counting slots locally", upstream.url)
        upstream.slots_endpoint = False
        return UpstreamState.HEALTHY, None
    return UpstreamState.UNREACHABLE, f"/slots: HTTP {slots.status_code}"


async def _read_props(
    http: httpx.AsyncClient, upstream: Upstream, headers: Mapping[str, str]
) -> None:
    response = await http.get(f"{upstream.url}/props", timeout=POLL_TIMEOUT, headers=headers)
    if response.status_code != 200:
        return
    props: dict[str, Any] = response.json()
    upstream.props = props
    total = props.get("total_slots")
    if isinstance(total, int) and total > 0:
        upstream.slots_total = total
    model = props.get("model_path") or props.get("model_alias")
    upstream.model = str(model) if model else None


def _set_state(upstream: Upstream, state: UpstreamState, error: str | None) -> None:
    if upstream.state is not state:
        log.info("upstream %s: %s%s", upstream.url, state.value, f" ({error})" if error else "")
    if state is not UpstreamState.HEALTHY:
        upstream.props = {}  # read again when it comes back: it may be another model
        upstream.last_error = error
    upstream.state = state


async def run_poller(
    http: httpx.AsyncClient,
    upstream: Upstream,
    *,
    interval: float,
    wake: asyncio.Event,
    on_change: Callable[[], None],
    quiet: float = 0.0,
) -> None:
    """Poll ``upstream`` until cancelled; each round ends after ``interval`` or when woken. After
    ``quiet`` seconds without a request of this pool there (0: never), rounds are quiet."""
    handed, since = upstream.handed, time.monotonic()
    while True:
        wake.clear()
        now = time.monotonic()
        if upstream.handed != handed or upstream.in_flight:
            handed, since = upstream.handed, now
        idle = quiet > 0 and now - since >= quiet and upstream.foreign == 0
        try:
            await poll_once(http, upstream, quiet=idle or upstream.hushed_until > now)
        except Exception:  # a bug here must not end polling for good
            log.exception("polling %s failed", upstream.url)
        on_change()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(interval):
                await wake.wait()
