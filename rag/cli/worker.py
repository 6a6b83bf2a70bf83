"""``rag worker``: ingestion workers in their own process, stopped cleanly by SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import signal

from rag.metrics import Metrics
from rag.services import open_services
from rag.settings import Settings

log = logging.getLogger(__name__)


async def run_worker(settings: Settings) -> None:
    if settings.qdrant_url is None:
        log.warning(
            "RAG_QDRANT_URL is not set: this worker opens Qdrant local mode in %s, which only one "
            "process may hold; separate workers need a Qdrant server",
            settings.data_dir / "qdrant",
        )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with open_services(settings, Metrics(), run_workers=True) as services:
        assert services.workers is not None
        log.info("worker %s started with %d job loops", services.workers.owner, settings.workers)
        await stop.wait()
        log.info("worker stopping; jobs in progress are released when their lease expires")
