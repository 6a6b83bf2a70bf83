"""The embedding servers an evaluation run talks to: started here, or given by URL.

By default a run starts what it needs by itself, like ``rag run`` does: the prepared
``llama-server`` binary and embedding model (``rag runtime prepare``), ``eval_embedding_servers``
supervised children with the production flags (:func:`rag.core.runtime.children.embedding_args`)
that join an in-process :class:`rag.core.pool.Pool` as they become healthy
(:func:`rag.core.runtime.membership.follow_supervisor`, as in the service). Given URLs (``--url``, a
llama-server started with ``--embeddings --pooling mean`` or a ``rag balancer``), it uses those
instead and starts nothing. Either way the model is identified in the report: by the sha256 of the
GGUF file when it is local, else by what the server reports of itself (``/props``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from rag.core.pool import Pool
from rag.core.pool.settings import build_client, build_pool
from rag.core.runtime.build import sha256_of
from rag.core.runtime.children import embedding_args
from rag.core.runtime.membership import follow_supervisor
from rag.core.runtime.prepare import prepare_runtime
from rag.core.runtime.supervisor import ChildSpec, Supervisor, free_port
from rag.core.settings import Settings

READY_TIMEOUT = 120.0


class EvalRuntimeError(RuntimeError):
    """The embedding servers could not be started or reached."""


@dataclass(frozen=True)
class EmbeddingService:
    pool: Pool
    model: dict[str, Any]
    """Identity of the served model: ``name``, ``path``, ``sha256`` (local files) or ``props``."""
    urls: list[str]


@contextlib.asynccontextmanager
async def embedding_service(
    settings: Settings, *, urls: list[str] | None = None
) -> AsyncIterator[EmbeddingService]:
    """Yield a pool of ready embedding servers; stop whatever was started on exit."""
    urls = [url.rstrip("/") for url in (urls or settings.embedding_urls)]
    async with contextlib.AsyncExitStack() as stack:
        # an evaluation sends its whole corpus at once: a deeper buffer and a longer wait
        pool_settings = settings.pool.model_copy(
            update={
                "buffer_size": max(settings.pool.buffer_size, 256),
                "buffer_timeout": max(settings.pool.buffer_timeout, settings.pool.read_timeout),
                "max_connections": 64,
            }
        )
        http = await stack.enter_async_context(build_client(pool_settings))
        pool = build_pool("eval-embedding", http, pool_settings)
        await pool.start()
        stack.push_async_callback(pool.stop)
        if urls:
            model = await _remote_identity(http, urls[0])
            for url in urls:
                pool.add_upstream(url)
        else:
            prepared = await asyncio.to_thread(prepare_runtime, settings)
            model_path = prepared.embedding_model
            args = embedding_args(settings, model_path)
            specs = [
                ChildSpec(f"eval-embedding-{os.getpid()}-{index}", "embedding", args, free_port())
                for index in range(settings.eval_embedding_servers)
            ]
            supervisor = Supervisor(
                prepared.llama_server, specs, logs_dir=settings.logs_dir, http=http,
                start_timeout=settings.child_start_timeout,
                backoff_max=settings.child_restart_backoff_max, api_keys=True,
            )  # fmt: skip
            follow_supervisor(pool, supervisor, "embedding")
            await supervisor.start()
            stack.push_async_callback(supervisor.stop)
            if not await supervisor.wait_healthy(READY_TIMEOUT):
                raise EvalRuntimeError(
                    f"the embedding llama-server did not start; see {settings.logs_dir}"
                )
            urls = [spec.url for spec in specs]
            sha = await asyncio.to_thread(sha256_of, model_path)
            model = {"name": model_path.name, "path": str(model_path), "sha256": sha}
        yield EmbeddingService(pool=pool, model=model, urls=urls)


async def _remote_identity(http: httpx.AsyncClient, url: str) -> dict[str, Any]:
    try:
        response = await http.get(f"{url}/props")
        response.raise_for_status()
        props = response.json()
    except (httpx.HTTPError, ValueError) as exc:
        raise EvalRuntimeError(f"embedding server {url} is not reachable: {exc}") from exc
    path = str(props.get("model_path") or "")
    return {
        "name": Path(path).name if path else "unknown",
        "path": path,
        "sha256": None,
        "url": url,
        "props": {key: props.get(key) for key in ("model_path", "build_info", "total_slots")},
    }
