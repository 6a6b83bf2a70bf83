"""One grammar-constrained completion on the generation pool, streamed or not.

The request goes to llama.cpp's ``/completion`` with the answer grammar, a token limit
(``n_predict``), repetition penalties and ``cache_prompt`` (the numbered sources are a long shared
prefix between questions on the same topic; the pool routes by prefix to the server that has it
cached). What comes back is checked here: an upstream error, a stream that ends early, or an object
cut off by the token limit is an ``UpstreamFailed``, never a partial answer.

``CompletionStream`` is opened before the client's response starts (the pool fails over until an
upstream answers), and closed by its owner: closing it closes the upstream response and frees the
slot, which also stops the generation on the server.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx

from rag.core.errors import UpstreamFailed
from rag.core.pool import Pool
from rag.core.pool.prefix import prefix_chain

COMPLETION_PATH = "/completion"


@dataclass(frozen=True)
class Sampling:
    max_tokens: int
    temperature: float = 0.2
    repeat_penalty: float = 1.15
    repeat_last_n: int = 64


@dataclass(frozen=True)
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    stop_type: str


def completion_body(
    prompt: str, grammar: str, sampling: Sampling, *, stream: bool
) -> dict[str, Any]:
    return {
        "prompt": prompt,
        "grammar": grammar,
        "n_predict": sampling.max_tokens,
        "temperature": sampling.temperature,
        "repeat_penalty": sampling.repeat_penalty,
        "repeat_last_n": sampling.repeat_last_n,
        "cache_prompt": True,
        "stream": stream,
    }


def finished(text: str, final: dict[str, Any]) -> Completion:
    """The completion described by the upstream's final object; a cut-off one is an error."""
    stop_type = str(final.get("stop_type", "none"))
    completion = Completion(
        text=text,
        prompt_tokens=_int(final.get("tokens_evaluated")),
        completion_tokens=_int(final.get("tokens_predicted")),
        stop_type=stop_type,
    )
    if stop_type == "limit" or final.get("truncated") is True:
        raise UpstreamFailed(
            f"the answer was cut off by the token limit after {completion.completion_tokens} "
            "tokens; raise answer_max_tokens or lower answer_max_chars",
            reason="length",
        )
    if stop_type not in ("eos", "word"):
        raise UpstreamFailed(f"the generation stopped unexpectedly ({stop_type})")
    return completion


async def complete(pool: Pool, body: dict[str, Any]) -> Completion:
    """Run a non-streaming completion."""
    response = await pool.request(
        "POST", COMPLETION_PATH, json={**body, "stream": False}, prefix_key=_prefix(body)
    )
    data = _object(response.content)
    _raise_upstream_error(data)
    content = data.get("content")
    if not isinstance(content, str):
        raise UpstreamFailed("the generation server's answer has no content")
    return finished(content, data)


class CompletionStream:
    """An opened streaming completion: iterate ``chunks()``, then read ``result``."""

    def __init__(self, stack: contextlib.AsyncExitStack, response: httpx.Response) -> None:
        self._stack = stack
        self._response = response
        self.result: Completion | None = None

    @classmethod
    async def open(cls, pool: Pool, body: dict[str, Any]) -> CompletionStream:
        stack = contextlib.AsyncExitStack()
        try:
            response = await stack.enter_async_context(
                pool.stream(
                    "POST", COMPLETION_PATH, json={**body, "stream": True},
                    prefix_key=_prefix(body),
                )
            )  # fmt: skip
        except BaseException:
            await stack.aclose()
            raise
        return cls(stack, response)

    async def chunks(self) -> AsyncIterator[str]:
        """The generated text as it arrives; sets ``result`` after the last piece."""
        parts: list[str] = []
        lines = self._response.aiter_lines()
        while True:
            try:
                line = await anext(lines)
            except StopAsyncIteration:
                break
            except httpx.HTTPError as exc:
                raise UpstreamFailed(
                    f"the generation stream broke off: {type(exc).__name__}"
                ) from exc
            if not line.startswith("data:"):
                continue  # blank separators, SSE comments and pings
            payload = line[5:].strip()
            if payload == "[DONE]":
                break
            data = _object(payload.encode())
            _raise_upstream_error(data)
            content = data.get("content")
            if isinstance(content, str) and content:
                parts.append(content)
                yield content
            if data.get("stop") is True:
                self.result = finished("".join(parts), data)
                return
        raise UpstreamFailed("the generation stream ended before the answer was complete")

    async def aclose(self) -> None:
        """Close the upstream response and free its slot (stops the generation)."""
        await self._stack.aclose()


def _prefix(body: dict[str, Any]) -> tuple[str, ...]:
    prompt = body.get("prompt")
    return prefix_chain(prompt) if isinstance(prompt, str) else ()


def _object(content: bytes) -> dict[str, Any]:
    try:
        value = json.loads(content)
    except ValueError as exc:
        raise UpstreamFailed("the generation server sent something that is not JSON") from exc
    if not isinstance(value, dict):
        raise UpstreamFailed("the generation server sent JSON that is not an object")
    return value


def _raise_upstream_error(data: dict[str, Any]) -> None:
    error = data.get("error")
    if error is None:
        return
    message = error.get("message") if isinstance(error, dict) else error
    raise UpstreamFailed(f"the generation server reported an error: {str(message)[:200]}")


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
