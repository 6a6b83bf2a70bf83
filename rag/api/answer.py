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
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, time, timedelta
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, Field
from starlette.requests import ClientDisconnect
from starlette.types import Receive, Scope, Send

from ingest.registry import ApiKey, UsageStore
from rag.answer import Question
from rag.answer.service import Event
from rag.api.auth import KEYED_ERRORS, ReadKey, hidden_collection, usable_collection
from rag.api.deps import AnswersDep, ComponentsDep, SettingsDep
from rag.api.search import FilterBody
from rag.core.embeddings import Account, bill_to
from rag.core.errors import NotFound, QuotaExceeded
from rag.service.usage import UsageRecorder
from rag.web.error_schema import error_responses

router = APIRouter(tags=["retrieval"], responses=KEYED_ERRORS)
log = logging.getLogger(__name__)


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
    responses={200: {"content": {"text/event-stream": {}}}, **error_responses(400, 404, 502)},
)
async def answer(
    body: AnswerBody,
    service: AnswersDep,
    key: ReadKey,
    components: ComponentsDep,
    settings: SettingsDep,
) -> Response:
    if settings.key_tokens_per_day and not components.auth.open_mode:
        await check_token_budget(components.usage, key, settings.key_tokens_per_day)
    question = Question(
        text=body.question,
        collection=usable_collection(key, body.collection),
        top_k=body.top_k,
        filter=body.filter.to_filter() if body.filter else None,
    )
    account = Account(key.id, key.name, question.collection)
    bill_to(account)  # the query's and the citation checks' embeddings (streamed ones too)
    recorder = components.recorder
    try:
        prepared = await service.prepare(question)
    except NotFound as exc:  # one wording, whichever store: as for a collection the key lacks
        raise hidden_collection(question.collection) from exc
    if not body.stream:
        final = await service.answer(prepared)
        await record_usage(recorder, account, final)
        return JSONResponse(final)
    stream = await service.open(prepared)
    events = service.events(prepared, stream)

    async def counted() -> AsyncGenerator[Event]:
        async for name, data in events:
            if name == "answer":
                await record_usage(recorder, account, data)
            yield name, data

    recorded = counted()

    async def cleanup() -> None:
        await recorded.aclose()
        await events.aclose()
        if stream is not None:
            await stream.aclose()

    return EventStreamResponse(recorded, cleanup)


async def check_token_budget(usage: UsageStore, key: ApiKey, budget: int) -> None:
    """429 ``quota_exceeded`` until midnight UTC once the key's answers used ``budget`` tokens
    today (the answer that crosses it is served whole)."""
    used = await usage.tokens_today(key.id)
    if used >= budget:
        now = datetime.now(UTC)
        midnight = datetime.combine(now.date() + timedelta(days=1), time(), UTC)
        raise QuotaExceeded(
            f"key {key.name!r} used its {budget} answer tokens for today",
            retry_after=max(1.0, (midnight - now).total_seconds()),
            quota="tokens_per_day",
        )


async def record_usage(recorder: UsageRecorder, account: Account, final: dict[str, Any]) -> None:
    """Add the answer's tokens (llama-server's own counts) to the key's usage; a registry
    outage loses this count, never the answer."""
    counts = final.get("usage") or {}
    await recorder.answered(
        account,
        prompt_tokens=int(counts.get("prompt_tokens", 0)),
        completion_tokens=int(counts.get("completion_tokens", 0)),
    )
