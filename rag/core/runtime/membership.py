"""Supervised local ``llama-server`` children join and leave a pool as their state changes.

The one mechanism by which supervised children become upstreams, used by the service and by the
evaluation runtime. ``follow_supervisor(pool, supervisor, role)`` subscribes to the supervisor: a
child of that role is registered when it becomes healthy and removed (without draining: it is
gone) when it stops, or when it is removed from the supervisor. While a child restarts it stays
registered; the pool's poller sees it unreachable or loading and sends it nothing meanwhile.
Every start of a child has its own API key (``Child.api_key``): the pool gets it with the child,
and again each time the child starts anew, so its requests and polls always carry the current one.
"""

from __future__ import annotations

import asyncio
import logging

from rag.core.pool.pool import Pool
from rag.core.runtime.supervisor import Child, ChildState, Supervisor

log = logging.getLogger(__name__)


def follow_supervisor(pool: Pool, supervisor: Supervisor, role: str) -> None:
    tasks: set[asyncio.Task[None]] = set()

    def on_change(child: Child) -> None:
        if child.spec.role != role:
            return
        url = child.spec.url
        if child.state is ChildState.STOPPED:
            if url in pool.urls:
                task = asyncio.get_running_loop().create_task(
                    pool.remove_upstream(url, drain=False)
                )
                tasks.add(task)
                task.add_done_callback(tasks.discard)
        elif child.state is ChildState.HEALTHY or url in pool.urls:
            pool.add_upstream(url, api_key=child.api_key)  # known: a restart's new key

    supervisor.subscribe(on_change)
    for child in supervisor.children:
        on_change(child)
