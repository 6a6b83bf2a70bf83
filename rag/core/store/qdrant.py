"""Qdrant through ``AsyncQdrantClient``: against a server, or in local mode at a path.

A server is async network I/O and runs on the caller's loop. Local mode does all its work in
Python inside the client (numpy scoring, pickled storage), so here it runs on a private event
loop in a thread of its own: the service's loop keeps running while local mode computes.
qdrant-client errors are translated here.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, TypeVar

import httpx
from qdrant_client import AsyncQdrantClient, models
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from rag.core.errors import NotFound, StoreUnavailable
from rag.core.sparse import document_vector, query_vector
from rag.core.store.base import (
    Backend,
    ChunkPoint,
    Hit,
    Record,
    Retrieval,
    StoreBackend,
    point_id,
    qdrant_name,
)
from rag.core.store.layout import DENSE, INTEGER_FIELDS, KEYWORD_FIELDS, PREFETCH_FACTOR, SPARSE

T = TypeVar("T")


class _LoopThread:
    """An event loop in a daemon thread; coroutines submitted to it are awaited from outside."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_forever, name="qdrant-local", daemon=True
        )
        self.thread.start()

    async def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self.loop))

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


class QdrantBackend(StoreBackend):
    def __init__(
        self, make_client: Callable[[], AsyncQdrantClient], *, server: bool, dimensions: int
    ) -> None:
        self.name: Backend = "server" if server else "local"
        self.server = server  # payload indexes only exist (and only matter) on a server
        self.dimensions = dimensions
        self._known: set[str] = set()
        self._thread = None if server else _LoopThread()
        self._make_client = make_client
        self._client: AsyncQdrantClient | None = make_client() if server else None

    @classmethod
    def server_at(cls, url: str, *, timeout: float, dimensions: int) -> QdrantBackend:
        # no version check: it runs at start-up in a thread and fails while Qdrant is down
        return cls(
            lambda: AsyncQdrantClient(
                url=url, timeout=int(max(1, timeout)), check_compatibility=False
            ),
            server=True,
            dimensions=dimensions,
        )

    @classmethod
    def local_at(cls, path: str, *, dimensions: int) -> QdrantBackend:
        return cls(lambda: AsyncQdrantClient(path=path), server=False, dimensions=dimensions)

    async def _run(self, call: Callable[[AsyncQdrantClient], Awaitable[T]]) -> T:
        """Run ``call(client)`` where the client lives, translating its errors."""

        async def go() -> T:
            if self._client is None:  # local mode opens (and loads) in its own thread
                self._client = self._make_client()
            return await call(self._client)

        try:
            if self._thread is None:
                return await go()
            return await self._thread.run(go())
        except (NotFound, StoreUnavailable):
            raise
        except Exception as exc:
            raise _translate(exc) from exc

    async def close(self) -> None:
        async def shut() -> None:
            if self._client is not None:
                await self._client.close()

        if self._thread is None:
            await shut()
            return
        await self._thread.run(shut())
        await asyncio.to_thread(self._thread.stop)

    async def ping(self) -> None:
        await self._run(lambda c: c.get_collections())

    async def collections(self) -> list[str]:
        response = await self._run(lambda c: c.get_collections())
        return [item.name for item in response.collections]

    async def ensure_collection(self, collection: str) -> None:
        name = qdrant_name(collection)
        if name in self._known:
            return

        async def create(client: AsyncQdrantClient) -> None:
            if await client.collection_exists(name):
                return
            try:
                await client.create_collection(
                    name,
                    vectors_config={
                        DENSE: models.VectorParams(
                            size=self.dimensions, distance=models.Distance.COSINE
                        )
                    },
                    sparse_vectors_config={
                        SPARSE: models.SparseVectorParams(modifier=models.Modifier.IDF)
                    },
                )
            except UnexpectedResponse as exc:
                if exc.status_code == 409:  # created meanwhile by another process
                    return
                raise
            if self.server:
                for field in KEYWORD_FIELDS:
                    await client.create_payload_index(name, field, models.PayloadSchemaType.KEYWORD)
                for field in INTEGER_FIELDS:
                    await client.create_payload_index(name, field, models.PayloadSchemaType.INTEGER)

        await self._run(create)
        self._known.add(name)

    async def collection_exists(self, collection: str) -> bool:
        return await self._run(lambda c: c.collection_exists(qdrant_name(collection)))

    async def upsert(self, collection: str, points: Sequence[ChunkPoint]) -> None:
        structs = await asyncio.to_thread(_structs, points)
        await self._run(lambda c: c.upsert(qdrant_name(collection), points=structs, wait=True))

    async def delete(self, collection: str, flt: models.Filter) -> None:
        name = qdrant_name(collection)

        async def delete(client: AsyncQdrantClient) -> None:
            if await client.collection_exists(name):
                await client.delete(
                    name, points_selector=models.FilterSelector(filter=flt), wait=True
                )

        await self._run(delete)

    async def count(self, collection: str, flt: models.Filter | None) -> int:
        result = await self._run(
            lambda c: c.count(qdrant_name(collection), count_filter=flt, exact=True)
        )
        return result.count

    async def search(
        self,
        collection: str,
        *,
        vector: list[float] | None,
        text: str,
        top_k: int,
        flt: models.Filter | None,
        retrieval: Retrieval,
        score_threshold: float | None,
    ) -> list[Hit]:
        name = qdrant_name(collection)
        indices, values = query_vector(text)
        sparse = models.SparseVector(indices=indices, values=values)

        async def query(client: AsyncQdrantClient) -> list[Hit]:
            if not await client.collection_exists(name):
                raise NotFound(f"collection {collection!r} does not exist")
            if retrieval == "dense":
                assert vector is not None
                response = await client.query_points(
                    name, query=vector, using=DENSE, limit=top_k, query_filter=flt,
                    score_threshold=score_threshold, with_payload=True,
                )  # fmt: skip
            elif retrieval == "sparse":
                if not indices:
                    return []
                response = await client.query_points(
                    name, query=sparse, using=SPARSE, limit=top_k, query_filter=flt,
                    with_payload=True,
                )  # fmt: skip
            else:
                assert vector is not None
                limit = top_k * PREFETCH_FACTOR
                prefetch = [models.Prefetch(query=vector, using=DENSE, limit=limit, filter=flt)]
                if indices:
                    prefetch.append(
                        models.Prefetch(query=sparse, using=SPARSE, limit=limit, filter=flt)
                    )
                response = await client.query_points(
                    name, prefetch=prefetch, query=models.FusionQuery(fusion=models.Fusion.RRF),
                    limit=top_k, with_payload=True,
                )  # fmt: skip
            return [Hit(str(p.id), float(p.score), dict(p.payload or {})) for p in response.points]

        return await self._run(query)

    async def optimize(self) -> None:
        return None  # Qdrant (server and local mode) indexes by itself

    async def scroll(
        self,
        collection: str,
        *,
        flt: models.Filter | None,
        fields: list[str] | None,
        with_vectors: bool,
        limit: int,
        offset: str | None,
    ) -> tuple[list[Record], str | None]:
        points, after = await self._run(
            lambda c: c.scroll(
                qdrant_name(collection), scroll_filter=flt, limit=limit, offset=offset,
                with_payload=fields if fields is not None else True,
                with_vectors=[DENSE] if with_vectors else False,
            )
        )  # fmt: skip
        records = []
        for point in points:
            dense: list[float] | None = None
            if with_vectors and isinstance(point.vector, dict):
                dense = [float(x) for x in point.vector[DENSE]]  # type: ignore[arg-type]
            records.append(Record(str(point.id), dict(point.payload or {}), dense))
        return records, None if after is None else str(after)


def _structs(points: Sequence[ChunkPoint]) -> list[models.PointStruct]:
    structs = []
    for point in points:
        indices, values = document_vector(point.text)
        structs.append(
            models.PointStruct(
                id=point_id(point.document_id, point.chunk_index),
                vector={
                    DENSE: point.vector,
                    SPARSE: models.SparseVector(indices=indices, values=values),
                },
                payload=point.stored_payload(),
            )
        )
    return structs


def _translate(exc: Exception) -> Exception:
    if isinstance(exc, UnexpectedResponse):
        if exc.status_code == 404:
            return NotFound("collection does not exist")
        return StoreUnavailable(f"Qdrant answered HTTP {exc.status_code}", retry_after=2)
    if isinstance(
        exc, ResponseHandlingException | httpx.HTTPError | ConnectionError | TimeoutError
    ):
        return StoreUnavailable("Qdrant is unreachable", retry_after=2)
    return exc
