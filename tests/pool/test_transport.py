"""The pools' upstream transport over real sockets: a scripted HTTP/1.1 server on loopback answers,
stalls, breaks off or hangs up, and the client must see httpx's exceptions (the pool acts on
them), stream as data arrives, reuse connections, and close an unfinished one. Then a pool whose
first upstream hangs up before the first byte streams from the other (a real llama-server), and
many streamed requests in a row to one real llama-server all succeed although it sometimes
closes a kept-alive connection after a streamed answer."""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import AsyncIterator

import httpx
import pytest

from rag.balancer import balancer_settings, create_balancer_app
from rag.core.pool import Pool
from rag.core.pool.client import PoolClient, pool_client
from rag.core.pool.transport import UpstreamTransport
from rag.core.runtime.supervisor import free_port
from tests.conftest import wait_for
from tests.pool.conftest import answers_health, serving


class ScriptedServer:
    """HTTP/1.1 on 127.0.0.1 with one behaviour per path; counts connections and requests."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.connections = 0
        self.closed_by_client = 0
        self.requests: list[str] = []
        self.next_chunk = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def __aenter__(self) -> ScriptedServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        drop_next = False  # "/once" answered on this connection: hang up on the next request
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                path = lines[0].split(" ")[1]
                length = next(
                    (int(v) for k, _, v in (x.partition(":") for x in lines) if k.lower() ==
                     "content-length"), 0,
                )  # fmt: skip
                await reader.readexactly(length)
                self.requests.append(path)
                if drop_next:
                    return
                drop_next = path == "/once"
                if not await self._answer(path, reader, writer):
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            self.closed_by_client += 1
        finally:
            writer.close()

    async def _answer(
        self, path: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        """Answer one request; ``False`` ends the connection."""
        if path == "/hang-up" or path == "/completion":
            return False
        if path == "/short":
            writer.write(_head(200, length=100) + b"only ten b")
            await writer.drain()
            return False
        if path == "/stall":
            writer.write(_head(200, length=5))
            await writer.drain()
            await reader.read()  # until the client gives up and closes
            raise ConnectionResetError
        if path == "/sse":
            writer.write(_head(200, chunked=True, content_type="text/event-stream"))
            writer.write(_chunk(b"data: 1\n\n"))
            await writer.drain()
            await self.next_chunk.wait()
            writer.write(_chunk(b"data: 2\n\n") + b"0\r\n\r\n")
            await writer.drain()
            return True
        if path == "/endless":
            writer.write(_head(200, chunked=True, content_type="text/event-stream"))
            while True:  # until the client closes the connection
                writer.write(_chunk(b"data: more\n\n"))
                await writer.drain()
                await asyncio.sleep(0.01)  # a paced endless stream is what this path serves
        if path == "/detokenize":  # compressed, as a proxy in front of a server might send it
            body = _GZIPPED
            head = _head(200, length=len(body)).replace(b"\r\n\r\n", b"\r\n")
            writer.write(head + b"Content-Encoding: gzip\r\n\r\n" + body)
            await writer.drain()
            return True
        body = _LLAMA.get(path, b"hello")
        writer.write(_head(200, length=len(body)) + body)
        await writer.drain()
        return True


_GZIPPED = gzip.compress(b'{"content": "hello"}', mtime=0)
_LLAMA = {  # what the pool's poller reads: healthy, four free slots (more than a real server's two)
    "/health": json.dumps({"status": "ok"}).encode(),
    "/props": json.dumps({"total_slots": 4, "model_path": "fake.gguf"}).encode(),
    "/slots": json.dumps([{"id": i, "is_processing": False} for i in range(4)]).encode(),
}


def _head(
    status: int, *, length: int | None = None, chunked: bool = False, content_type: str = ""
) -> bytes:
    lines = [f"HTTP/1.1 {status} OK", "Content-Type: " + (content_type or "application/json")]
    lines.append("Transfer-Encoding: chunked" if chunked else f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


@pytest.fixture
async def server() -> AsyncIterator[ScriptedServer]:
    async with ScriptedServer() as running:
        yield running


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with pool_client(connect=1.0, read=0.5) as client:
        yield client


async def test_answers_and_reuses_the_connection(
    server: ScriptedServer, http: httpx.AsyncClient
) -> None:
    for _ in range(3):
        response = await http.post(f"{server.url}/ok", json={"a": 1})
        assert (response.status_code, response.content) == (200, b"hello")
    assert server.connections == 1
    assert server.requests == ["/ok"] * 3


async def test_refused_is_a_connect_error(http: httpx.AsyncClient) -> None:
    with pytest.raises(httpx.ConnectError):
        await http.get(f"http://127.0.0.1:{free_port()}/health")


async def test_hang_up_before_answering_is_a_protocol_error(
    server: ScriptedServer, http: httpx.AsyncClient
) -> None:
    with pytest.raises(httpx.RemoteProtocolError):
        await http.post(f"{server.url}/hang-up", content=b"{}")
    # not sent again: a new connection that breaks is the upstream's fault (the pool fails over)
    assert server.requests == ["/hang-up"]


async def test_a_kept_alive_connection_closed_before_answering_is_resent_on_a_new_one(
    server: ScriptedServer, http: httpx.AsyncClient
) -> None:
    """A server that closes a kept-alive connection as the next request arrives (an idle
    timeout racing the request): that request was never handled, so it goes again once, on a
    connection opened for it, and succeeds."""
    transport = http._transport
    assert isinstance(transport, UpstreamTransport)
    assert (await http.post(f"{server.url}/once", content=b"{}")).content == b"hello"
    response = await http.post(f"{server.url}/ok", content=b"{}")
    assert (response.status_code, response.content) == (200, b"hello")
    assert server.requests == ["/once", "/ok", "/ok"] and server.connections == 2
    assert transport.resent == 1


async def test_body_cut_short_is_a_read_error(
    server: ScriptedServer, http: httpx.AsyncClient
) -> None:
    with pytest.raises(httpx.ReadError):
        await http.get(f"{server.url}/short")


async def test_silence_beyond_the_read_timeout(
    server: ScriptedServer, http: httpx.AsyncClient
) -> None:
    with pytest.raises(httpx.ReadTimeout):
        await http.get(f"{server.url}/stall")


async def test_streams_each_chunk_as_it_arrives(
    server: ScriptedServer, http: httpx.AsyncClient
) -> None:
    async with http.stream("GET", f"{server.url}/sse") as response:
        assert response.headers["content-type"] == "text/event-stream"
        chunks = response.aiter_raw()
        first = await asyncio.wait_for(anext(chunks), 5)  # the server waits for us to say so
        assert first == b"data: 1\n\n"
        server.next_chunk.set()
        assert b"".join([chunk async for chunk in chunks]) == b"data: 2\n\n"


async def test_a_chunked_answer_read_to_its_end_does_not_leave_its_connection_pooled(
    server: ScriptedServer, http: httpx.AsyncClient
) -> None:
    """llama-server closes the connection after every chunked answer (while its headers promise
    ``Keep-Alive``): reusing it sent the next request into a closed socket. The scripted server
    would keep it open, so a second connection shows that the client did not reuse it."""
    server.next_chunk.set()
    async with http.stream("GET", f"{server.url}/sse") as response:
        assert (
            b"".join([chunk async for chunk in response.aiter_raw()]) == b"data: 1\n\ndata: 2\n\n"
        )
    response = await http.get(f"{server.url}/ok")
    assert response.content == b"hello" and server.connections == 2
    response = await http.get(f"{server.url}/ok")  # an answer with a length: reused
    assert server.connections == 2 and server.requests == ["/sse", "/ok", "/ok"]


async def test_a_resend_goes_on_a_new_connection_not_another_pooled_one(
    server: ScriptedServer, http: httpx.AsyncClient
) -> None:
    """Three kept-alive connections in the pool, then a request whose connection the server
    hangs up: its resend opens a fourth connection instead of taking a pooled one."""
    await asyncio.gather(*(http.get(f"{server.url}/ok") for _ in range(3)))
    opened = server.connections
    with pytest.raises(httpx.RemoteProtocolError):
        await http.post(f"{server.url}/hang-up", content=b"{}")
    assert server.connections == opened + 1  # the first try took a pooled connection
    assert server.requests[-2:] == ["/hang-up", "/hang-up"]  # sent once more, then given up


async def test_closing_an_unfinished_response_closes_its_connection(
    server: ScriptedServer, http: httpx.AsyncClient
) -> None:
    async with http.stream("GET", f"{server.url}/endless") as response:
        async for _ in response.aiter_raw():
            break
    assert await wait_for(lambda: server.closed_by_client == 1, within=10)  # endless otherwise
    response = await http.get(f"{server.url}/ok")  # a new connection, not the cut one
    assert response.content == b"hello" and server.connections == 2


@pytest.mark.integration
@pytest.mark.slow
async def test_stream_fails_over_when_the_upstream_hangs_up_before_the_first_byte(
    server: ScriptedServer, upstreams: list[str], pool_http: PoolClient
) -> None:
    pool = Pool("t", pool_http, poll_interval=0.2)
    pool.add_upstream(server.url)  # four free slots: the first choice
    pool.add_upstream(upstreams[0])
    await pool.start()
    try:
        assert await wait_for(lambda: _all_healthy(pool), within=30)
        body = {"prompt": "Hello", "n_predict": 4, "stream": True}
        async with pool.stream("POST", "/completion", json=body) as response:
            events = [line async for line in response.aiter_lines() if line.startswith("data:")]
        # tried first, hung up twice (the transport sends once more on a new connection first)
        assert server.requests.count("/completion") == 2
        assert json.loads(events[-1][5:])["stop"] is True
        assert pool.metrics.failovers.labels("t")._value.get() == 1
    finally:
        await pool.stop()


def _all_healthy(pool: Pool) -> bool:
    return all(u["state"] == "healthy" for u in pool.status()["upstreams"])


@pytest.mark.integration
@pytest.mark.slow
async def test_streamed_requests_in_a_row_survive_the_servers_hang_ups(
    upstreams: list[str], pool_http: PoolClient
) -> None:
    """llama-server closes a kept-alive connection after a streamed answer now and then (seen
    after 5 to 50 such requests); the transport sends the next request again instead of
    failing, so the pool never fails over."""
    pool = Pool("t", pool_http, poll_interval=0.2)
    pool.add_upstream(upstreams[0])
    await pool.start()
    try:
        assert await wait_for(lambda: _all_healthy(pool), within=30)
        body = {"prompt": "Hi", "n_predict": 1, "stream": True, "cache_prompt": True}
        for _ in range(120):
            async with pool.stream("POST", "/completion", json=body) as response:
                assert response.status_code == 200
                lines = [line async for line in response.aiter_lines() if line]
            assert json.loads(lines[-1][5:])["stop"] is True
        assert pool.metrics.failovers.labels("t")._value.get() == 0
    finally:
        await pool.stop()


async def test_the_balancer_passes_a_compressed_answer_on_byte_for_byte(
    server: ScriptedServer,
) -> None:
    app = create_balancer_app(balancer_settings(upstreams=[server.url], poll_interval=0.1))
    async with serving(app) as url, httpx.AsyncClient(timeout=5.0) as http:
        assert await wait_for(lambda: answers_health(http, url), within=10), (
            "the scripted upstream never became healthy"
        )
        raw = b""
        async with http.stream("POST", f"{url}/detokenize", json={"tokens": [1]}) as response:
            assert response.headers["content-encoding"] == "gzip"
            async for chunk in response.aiter_raw():
                raw += chunk
        assert raw == _GZIPPED
        decoded = await http.post(f"{url}/detokenize", json={"tokens": [1]})
        assert decoded.json() == {"content": "hello"}
