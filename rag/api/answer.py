"""``POST /v1/answer``: a grammar-constrained answer from the retrieved sources, as one JSON object
or as Server-Sent Events (``sources``, ``delta``..., ``answer``, ``done``; ``error`` on failure).

Everything that can fail before the model starts (bad question, unknown collection, Qdrant or the
pools unreachable, no upstream able to take the request) fails as an ordinary HTTP error, because
the upstream stream is opened before the response starts. After that, failures are ``error``
events. The upstream stream is closed however the response ends, so a client that disconnects
stops the generation and frees the slot.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, Field
from starlette.requests import ClientDisconnect
from starlette.types import Receive, Scope, Send

from rag.answer import Question
from rag.answer.service import Event
from rag.api.auth import ReadKey, hidden_collection, usable_collection
from rag.api.deps import AnswersDep
from rag.api.search import FilterBody
from rag.core.errors import NotFound

router = APIRouter(tags=["retrieval"])


class AnswerBody(BaseModel):
    question: str = Field(description="The question; its length limit is a setting.")
    collection: str = "default"
    top_k: int | None = Field(None, ge=1, le=20, description="Sources to retrieve.")
    stream: bool = Field(False, description="Server-Sent Events instead of one JSON object.")
    filter: FilterBody | None = None


class EventStreamResponse(StreamingResponse):
    """``text/event-stream`` whose ``cleanup`` runs however the response ends."""

    def __init__(
        self, events: AsyncIterator[Event], cleanup: Callable[[], Awaitable[None]]
    ) -> None:
        super().__init__(
            encode_events(events),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
        self._cleanup = cleanup

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        except ClientDisconnect:
            pass  # the client left (ASGI servers of spec 2.4 report it so): nothing to send
        finally:
            await self._cleanup()


async def encode_events(events: AsyncIterator[Event]) -> AsyncIterator[bytes]:
    async for name, data in events:
        yield format_event(name, data)


def format_event(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


@router.post(
    "/v1/answer",
    summary="Answer a question from the collection's documents",
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def answer(body: AnswerBody, service: AnswersDep, key: ReadKey) -> Response:
    question = Question(
        text=body.question,
        collection=usable_collection(key, body.collection),
        top_k=body.top_k,
        filter=body.filter.to_filter() if body.filter else None,
    )
    try:
        prepared = await service.prepare(question)
    except NotFound as exc:  # one wording, whichever store: as for a collection the key lacks
        raise hidden_collection(question.collection) from exc
    if not body.stream:
        return JSONResponse(await service.answer(prepared))
    stream = await service.open(prepared)
    events = service.events(prepared, stream)

    async def cleanup() -> None:
        await events.aclose()
        if stream is not None:
            await stream.aclose()

    return EventStreamResponse(events, cleanup)
