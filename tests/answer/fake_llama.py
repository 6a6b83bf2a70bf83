"""A tiny stand-in for a generation llama-server whose /completion misbehaves on purpose.

Used only where the thing under test is the service's handling of bad upstream output (malformed
JSON, an object outside the schema, a cut-off object, a stream that breaks off), which a real
llama-server under a grammar does not produce. Everything else it answers like llama-server.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

PIECES = {
    "malformed": ['{"answer": "Half an ', 'answer", "citations": [1', ""],
    "outside_schema": ['{"answer": "Cites a source', ' it was not given", "citations": [7]}'],
    "cut_off": ['{"answer": "This goes on and on', " and on"],
    "broken": ['{"answer": "The stream', " breaks"],
    "valid": ['{"answer": "Twenty-two', ' nautical miles.", "citations": [1]}'],
}
STOP_TYPE = {"cut_off": "limit"}


def fake_llama_server() -> FastAPI:
    app = FastAPI()
    app.state.mode = "malformed"

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/slots")
    async def slots() -> list[dict[str, Any]]:
        return [{"id": 0, "is_processing": False}]

    @app.get("/props")
    async def props() -> dict[str, Any]:
        return {"default_generation_settings": {"n_ctx": 2048}, "total_slots": 1}

    @app.post("/apply-template")
    async def apply_template(request: Request) -> dict[str, str]:
        messages = (await request.json())["messages"]
        return {"prompt": "".join(f"<{m['role']}>{m['content']}\n" for m in messages)}

    @app.post("/tokenize")
    async def tokenize(request: Request) -> dict[str, list[int]]:
        content = (await request.json())["content"]
        return {"tokens": list(range(len(content) // 4 + 1))}

    @app.post("/completion")
    async def completion(request: Request) -> Response:
        body = await request.json()
        mode: str = app.state.mode
        pieces = PIECES[mode]
        final = {
            "content": "" if body.get("stream") else "".join(pieces),
            "stop": True,
            "stop_type": STOP_TYPE.get(mode, "eos"),
            "tokens_predicted": 12,
            "tokens_evaluated": 40,
        }
        if not body.get("stream"):
            return JSONResponse(final)

        async def stream() -> AsyncIterator[bytes]:
            for piece in pieces:
                yield f"data: {json.dumps({'content': piece, 'stop': False})}\n\n".encode()
                await asyncio.sleep(0.01)  # paced like a real server: the stream is the test
            if mode == "broken":
                raise RuntimeError("the fake upstream breaks the connection off")
            yield f"data: {json.dumps(final)}\n\n".encode()

        return StreamingResponse(stream(), media_type="text/event-stream")

    return app
