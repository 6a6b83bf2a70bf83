"""``rag worker``: ingestion workers in their own process, stopped cleanly by SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import signal

from rag.core.settings import Settings
from rag.service.components import open_components
from rag.service.metrics import Metrics

log = logging.getLogger(__name__)


async def run_worker(settings: Settings) -> None:
    if settings.qdrant_url is None:
        log.warning(
            "RAG_QDRANT_URL is not set: this worker opens the embedded vector store in %s, which "
            "only one process may hold; separate workers need a Qdrant server",
            settings.data_dir,
        )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with open_components(settings, Metrics(), run_workers=True) as components:
        if components.workers is None:
            log.error("RAG_WORKERS is 0: this worker would run no job loop")
            return
        log.info("worker %s started with %d job loops", components.workers.owner, settings.workers)
        await stop.wait()
        log.info("worker stopping; jobs in progress are released when their lease expires")
