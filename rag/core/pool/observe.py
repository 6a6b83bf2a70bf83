"""Passing an upstream answer through unchanged, and watching it go by.

``ObservedStream`` wraps the byte stream of an upstream response: it records the time to the first
chunk, the events streamed (for the scheduler's early handoff) and, from the tail of the answer,
the generation speed that llama.cpp reports in its ``timings`` object, without changing a byte.
(Which headers cross the balancer is decided in one place, ``rag/balancer/proxy.py``.)
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator, Callable

import httpx

from rag.core.pool.budget import stream_events
from rag.core.pool.transport import Answer

_TAIL_BYTES = 4096
_PREDICTED_PER_SECOND = re.compile(rb'"predicted_per_second"\s*:\s*([0-9.eE+-]+)')
_PREDICTED_N = re.compile(rb'"predicted_n"\s*:\s*([0-9]+)')


def generation_timings(tail: bytes) -> tuple[float, int] | None:
    """(tokens per second, tokens generated) from the last ``timings`` in ``tail``, if any."""
    speeds = _PREDICTED_PER_SECOND.findall(tail)
    counts = _PREDICTED_N.findall(tail)
    if not speeds or not counts:
        return None
    try:
        return float(speeds[-1]), int(counts[-1])
    except ValueError:
        return None


class ObservedStream(httpx.AsyncByteStream):
    """A response byte stream that reports its first chunk (time to first token of a
    stream) and its final timings."""

    def __init__(
        self,
        inner: httpx.AsyncByteStream,
        *,
        started: float,
        on_first_chunk: Callable[[float], None] | None,
        on_timings: Callable[[float, int], None],
        on_events: Callable[[int], None] | None = None,
    ) -> None:
        self._inner = inner
        self._on_events = on_events
        self._started = started
        self._on_first_chunk = on_first_chunk
        self._on_timings = on_timings

    async def __aiter__(self) -> AsyncIterator[bytes]:
        # the per-chunk work is kept small: it runs once per streamed token
        on_events = self._on_events
        previous = last = b""  # the final event (with its timings) may span two chunks
        async for chunk in self._inner:
            if not last and chunk and self._on_first_chunk is not None:
                self._on_first_chunk(time.perf_counter() - self._started)
            if chunk:
                previous, last = last, chunk
            if on_events is not None:
                on_events(stream_events(chunk))
            yield chunk
        timings = generation_timings((previous + last)[-_TAIL_BYTES:])
        if timings is not None:
            self._on_timings(*timings)

    async def aclose(self) -> None:
        await self._inner.aclose()


def raw_chunks(response: httpx.Response | Answer) -> AsyncIterator[bytes]:
    """The bytes of an opened answer as they arrive, straight from its stream: httpx's
    ``aiter_raw`` adds per-chunk layers (re-chunking, byte counts) that a proxy does without,
    and it runs once per streamed token. The caller closes the response."""
    stream = response.stream
    if isinstance(stream, httpx.AsyncByteStream):
        return stream.__aiter__()
    assert isinstance(response, httpx.Response)  # an Answer's stream is always one
    return response.aiter_raw()


def observe(
    response: httpx.Response | Answer,
    *,
    started: float,
    on_first_chunk: Callable[[float], None] | None,
    on_timings: Callable[[float, int], None],
    on_events: Callable[[int], None] | None = None,
) -> None:
    """Make ``response`` report its first chunk, its events and timings as it is read."""
    inner = response.stream
    if isinstance(inner, httpx.AsyncByteStream):
        response.stream = ObservedStream(
            inner, started=started, on_first_chunk=on_first_chunk, on_timings=on_timings,
            on_events=on_events,
        )  # fmt: skip
