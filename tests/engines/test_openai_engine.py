"""The openai engine against a real OpenAI-compatible server (llama-cpp-python's, serving the
bundled model), and against tiny scripted servers for the failures a real one will not
produce on demand (503 once, a stream that drops after two chunks)."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio

from axon.cli import build
from axon.config import EngineSettings, OpenAIEngineSettings, Settings
from axon.core.errors import ConfigError, ContextWindowExceeded, EngineError, InvalidRequest
from axon.core.types import ChatMessage, FinishReason, SamplingParams
from axon.models.estimate import EstimateTokenizer
from axon.models.gguf import GgufTokenizer
from axon.worker.engines.base import Chunk
from axon.worker.engines.openai import OpenAIEngine
from support.server import free_port
from support.services import missing

pytestmark = pytest.mark.asyncio(loop_scope="module")

SERVER_START_TIMEOUT_S = 180.0
COUNT = [ChatMessage(role="user", content="Count from 1 to 10, separated by commas.")]
STORY = [ChatMessage(role="user", content="Write a long story about a dragon and a knight.")]
GREEDY = SamplingParams(temperature=0.0, max_tokens=40)
SERVER = (sys.executable, "-m", "llama_cpp.server", "--n_ctx", "2048", "--host", "127.0.0.1")


def unavailable(reason: str) -> None:
    """Skip locally; in CI a server that does not start is a failure."""
    missing(reason)


@dataclass
class LlamaServer:
    url: str
    log_path: Path


@pytest.fixture(scope="module")
def llama_server(
    model_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LlamaServer]:
    """llama-cpp-python's OpenAI-compatible server on a free port, logging to a file."""
    for module in ("sse_starlette", "starlette_context"):
        if importlib.util.find_spec(module) is None:
            unavailable(f"{module} is missing: pip install 'llama-cpp-python[server]'")
    port = free_port()
    log_path = tmp_path_factory.mktemp("llama-server") / "server.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [*SERVER, "--model", str(model_path), "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            # Unbuffered, so that the cancellation test sees the server's disconnect line.
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    server = LlamaServer(f"http://127.0.0.1:{port}/v1", log_path)
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                unavailable(f"llama_cpp.server did not start:\n{log_path.read_text()[-2000:]}")
            try:
                if httpx.get(f"{server.url}/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        yield server
    finally:
        proc.kill()  # nothing of it needs to outlive the tests
        proc.wait()


MakeEngine = Callable[..., OpenAIEngine]


@pytest_asyncio.fixture(loop_scope="module")
async def make_engine() -> AsyncIterator[MakeEngine]:
    """Builds engines with fast retries, and closes them after the test."""
    made: list[OpenAIEngine] = []

    def make(
        url: str, tokenizer: Any = None, *, read_timeout_s: float = 60.0, **kwargs: Any
    ) -> OpenAIEngine:
        timeout = httpx.Timeout(read_timeout_s, connect=2.0)
        client = httpx.AsyncClient(base_url=url, timeout=timeout)
        kwargs = {"default_max_tokens": 64, "retry_backoff_s": 0.01, **kwargs}
        made.append(
            OpenAIEngine("smollm2", client, tokenizer=tokenizer or EstimateTokenizer(), **kwargs)
        )
        return made[-1]

    yield make
    for engine in made:
        await engine.close()


@pytest_asyncio.fixture(loop_scope="module")
async def remote(
    llama_server: LlamaServer, model_path: Path, make_engine: MakeEngine
) -> OpenAIEngine:
    engine = make_engine(llama_server.url, GgufTokenizer(model_path))
    await engine.start()
    return engine


async def collect(engine: OpenAIEngine, *args: Any, **kwargs: Any) -> list[Chunk]:
    return [chunk async for chunk in engine.generate(*args, **kwargs)]


def text_of(chunks: list[Chunk]) -> str:
    return "".join(c.text for c in chunks)


async def test_streams_a_reply_in_chunks(remote: OpenAIEngine) -> None:
    chunks = await collect(remote, COUNT, GREEDY)
    assert remote.ready
    assert len(chunks) > 3
    assert chunks[-1].finish_reason in (FinishReason.STOP, FinishReason.LENGTH)
    assert all(c.finish_reason is None for c in chunks[:-1])
    assert text_of(chunks).startswith("1, 2, 3")
    # This server reports no usage: one token a delta, and the prompt counted locally.
    assert sum(c.tokens for c in chunks) == sum(1 for c in chunks if c.text)
    assert chunks[-1].prompt_tokens == remote.tokenizer.count_prompt(COUNT)
    assert remote.running == 0


async def test_max_tokens_ends_with_length(remote: OpenAIEngine) -> None:
    chunks = await collect(remote, STORY, SamplingParams(temperature=0.0, max_tokens=10))
    assert chunks[-1].finish_reason is FinishReason.LENGTH
    assert sum(c.tokens for c in chunks) == 10


async def test_stop_sequence_ends_the_reply(remote: OpenAIEngine) -> None:
    params = SamplingParams(temperature=0.0, max_tokens=40, stop=("4",))
    chunks = await collect(remote, COUNT, params)
    assert chunks[-1].finish_reason is FinishReason.STOP
    assert text_of(chunks).startswith("1, 2, 3")
    assert "4" not in text_of(chunks)


async def test_closing_the_stream_cancels_and_the_next_request_works(
    remote: OpenAIEngine, llama_server: LlamaServer
) -> None:
    stream = remote.generate(STORY, SamplingParams(temperature=0.0, max_tokens=500))
    assert all([(await anext(stream)).text for _ in range(3)])
    assert remote.running == 1
    await stream.aclose()
    assert remote.running == 0
    # The server noticed the closed connection and stopped decoding the reply.
    for _ in range(50):  # it logs so within a decode step or two
        if "Disconnected from client" in llama_server.log_path.read_text(errors="replace"):
            break
        await asyncio.sleep(0.1)
    else:
        pytest.fail("the server kept decoding after the client had gone")
    chunks = await collect(remote, COUNT, SamplingParams(temperature=0.0, max_tokens=5))
    assert chunks[-1].finish_reason is FinishReason.LENGTH


async def test_prompt_beyond_the_context_fails_on_this_server(remote: OpenAIEngine) -> None:
    # A documented limitation: llama-cpp-python's server answers a streaming request whose
    # prompt does not fit with an empty 200 instead of a 400, so it looks like a failure.
    long = [ChatMessage(role="user", content="word " * 2100)]
    with pytest.raises(EngineError, match="before the first token"):
        await collect(remote, long, GREEDY)


async def test_from_settings_builds_a_working_engine(
    llama_server: LlamaServer, model_path: Path
) -> None:
    openai = OpenAIEngineSettings(base_url=llama_server.url)
    e = EngineSettings(kind="openai", model="smollm2", model_path=model_path, openai=openai)
    engine = build.engine(Settings(engine=e.model_copy(update={"default_max_tokens": 5})))
    assert isinstance(engine, OpenAIEngine)
    assert isinstance(engine.tokenizer, GgufTokenizer)
    assert (engine.model, engine.remote_model) == ("smollm2", "smollm2")
    assert not engine.ready
    await engine.start()
    assert engine.ready
    chunks = await collect(engine, COUNT, SamplingParams(temperature=0.0))
    assert chunks[-1].finish_reason is FinishReason.LENGTH
    await engine.close()


#: What a scripted server writes, piece by piece (a chunked stream sends events apart).
Reply = list[bytes]


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: Any


class ScriptedServer:
    """HTTP/1.1 on a free local port: each request gets the next scripted reply (the last
    one repeats), one request a connection, and every request is recorded."""

    def __init__(self, *replies: Reply) -> None:
        self.replies = replies
        self.received: list[Received] = []

    async def __aenter__(self) -> ScriptedServer:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/v1"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode().split("\r\n")
        pairs = (line.split(": ", 1) for line in head[1:] if line)
        headers = {name.lower(): value for name, value in pairs}
        body = await reader.readexactly(int(headers.get("content-length", 0)))
        self.received.append(Received(head[0].split()[1], headers, json.loads(body or b"null")))
        try:
            for piece in self.replies[min(len(self.received), len(self.replies)) - 1]:
                writer.write(piece)
                await writer.drain()
                await asyncio.sleep(0.005)
        finally:
            writer.close()


class SilentServer:
    """Accepts connections and reads what is sent, but never answers: a hung server."""

    async def __aenter__(self) -> SilentServer:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/v1"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.read()  # until the client gives up and hangs up
        finally:
            writer.close()


def status(code: int, body: dict[str, Any], extra: str = "") -> Reply:
    data = json.dumps(body).encode()
    head = f"HTTP/1.1 {code} Scripted\r\ncontent-type: application/json\r\n{extra}"
    return [f"{head}content-length: {len(data)}\r\nconnection: close\r\n\r\n".encode() + data]


def stream(*events: dict[str, Any] | str, drop: bool = False) -> Reply:
    """An SSE reply in chunked encoding; ``drop`` closes the connection mid-body."""
    reply = [b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"]
    reply.append(b"transfer-encoding: chunked\r\nconnection: close\r\n\r\n")
    for event in [": ping", *events]:
        data = event if isinstance(event, str) else json.dumps(event)
        line = (data if data.startswith(":") else f"data: {data}").encode() + b"\n\n"
        reply.append(b"%x\r\n%s\r\n" % (len(line), line))
    return reply if drop else [*reply, b"0\r\n\r\n"]


def delta(text: str, finish: str | None = None) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": finish}]}


def usage(prompt: int, completion: int) -> dict[str, Any]:
    return {"choices": [], "usage": {"prompt_tokens": prompt, "completion_tokens": completion}}


HELLO = stream({"choices": [{"delta": {"role": "assistant"}}]}, delta("Hel"), delta("lo", "stop"))
OVERLOADED = status(503, {"error": {"message": "overloaded"}})
VLLM_CONTEXT = {"object": "error", "message": "This model's maximum context length is 2048"}
FASTAPI_422 = {"detail": [{"loc": ["body", "n"], "msg": "bad", "input": "the prompt"}]}


@pytest.mark.parametrize(
    ("events", "expected", "finish"),
    [
        # vLLM: the finish reason rides on the last text; usage follows with no choices.
        ([delta("a"), delta("b"), delta("c", "stop"), usage(11, 5)], ["a", "b", "c"], "stop"),
        # llama.cpp: the finish reason comes on an empty delta of its own.
        ([delta("a"), delta("b"), delta("", "length"), usage(11, 4)], ["a", "b"], "length"),
    ],
)
async def test_usage_sets_prompt_tokens_and_the_token_total_on_the_last_text(
    events: list[dict[str, Any]], expected: list[str], finish: str, make_engine: MakeEngine
) -> None:
    async with ScriptedServer(stream(*events, "[DONE]")) as server:
        chunks = await collect(make_engine(server.url), COUNT, GREEDY)
    assert [c.text for c in chunks] == expected
    assert sum(c.tokens for c in chunks) == events[-1]["usage"]["completion_tokens"]
    assert [c.tokens for c in chunks[:-1]] == [1] * (len(chunks) - 1)
    assert (chunks[-1].finish_reason, chunks[-1].prompt_tokens) == (FinishReason(finish), 11)


async def test_request_carries_the_sampling_params_and_the_prefix_to_continue(
    make_engine: MakeEngine,
) -> None:
    params = SamplingParams(max_tokens=50, temperature=0.2, top_p=0.9, stop=("x",), seed=7)
    async with ScriptedServer(HELLO) as server:
        engine = make_engine(server.url, remote_model="remote-name")
        await collect(engine, COUNT, params, prefix="Once upon a time")
        await collect(engine, COUNT, SamplingParams())

    continued, plain = (r.body for r in server.received)
    assert server.received[0].path == "/v1/chat/completions"
    sent = [continued[k] for k in ("model", "stream", "stream_options", "temperature", "top_p")]
    assert sent == ["remote-name", True, {"include_usage": True}, 0.2, 0.9]
    sent = [continued[k] for k in ("stop", "seed", "continue_final_message")]
    assert [*sent, continued["add_generation_prompt"]] == [["x"], 7, True, False]
    prefix = {"role": "assistant", "content": "Once upon a time"}
    assert continued["messages"] == [*(m.model_dump() for m in COUNT), prefix]
    assert 40 < continued["max_tokens"] < 50  # the prefix counts against max_tokens
    assert plain["max_tokens"] == 64
    assert not {"continue_final_message", "seed", "stop"} & plain.keys()


@pytest.mark.parametrize(
    "failures",
    [
        [OVERLOADED],
        [status(429, {"error": {"message": "slow down"}}, "retry-after: 0\r\n"), OVERLOADED],
        [stream(drop=True)],  # the connection drops before any token
    ],
)
async def test_failures_before_the_first_token_are_retried(
    failures: list[Reply], make_engine: MakeEngine
) -> None:
    async with ScriptedServer(*failures, HELLO) as server:
        chunks = await collect(make_engine(server.url, max_retries=2), COUNT, GREEDY)
    assert text_of(chunks) == "Hello"
    assert len(server.received) == len(failures) + 1


async def test_gives_up_after_max_retries(make_engine: MakeEngine) -> None:
    async with ScriptedServer(OVERLOADED) as server:
        with pytest.raises(EngineError, match=r"failed 3 times.*failed \(HTTP 503\)\.$"):
            await collect(make_engine(server.url, max_retries=2), COUNT, GREEDY)
    assert len(server.received) == 3


async def test_a_closed_port_fails_at_start_and_after_the_retries(make_engine: MakeEngine) -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    engine = make_engine(url, max_retries=1)

    with pytest.raises(ConfigError, match=f"{url} is not reachable.*BASE_URL"):
        await engine.start()
    with pytest.raises(EngineError, match=r"failed 2 times before the first token.*not be reached"):
        await collect(engine, COUNT, GREEDY)
    assert not engine.ready
    assert engine.running == 0


async def test_a_failure_after_the_first_token_is_an_error_not_a_retry(
    make_engine: MakeEngine,
) -> None:
    async with ScriptedServer(stream(delta("one "), delta("two "), drop=True)) as server:
        replies = make_engine(server.url).generate(COUNT, GREEDY)
        seen = [await anext(replies), await anext(replies)]
        with pytest.raises(EngineError, match="failed mid-reply"):
            await anext(replies)
    assert text_of(seen) == "one two "
    assert len(server.received) == 1


@pytest.mark.parametrize(
    ("reply", "error", "message"),
    [
        (status(400, VLLM_CONTEXT), ContextWindowExceeded, "context window"),
        (status(400, {"error": {"message": "bad temperature"}}), InvalidRequest, r"HTTP 400"),
        # FastAPI's validation errors quote the input: none of it reaches the client.
        (status(422, FASTAPI_422), InvalidRequest, r"HTTP 422"),
        (status(401, {"error": "no key"}), ConfigError, "API_KEY"),
        (status(404, {"message": "The model `x` does not exist."}), ConfigError, "REMOTE_MODEL"),
    ],
)
async def test_client_errors_are_mapped_and_never_retried(
    reply: Reply, error: type[Exception], message: str, make_engine: MakeEngine
) -> None:
    async with ScriptedServer(reply) as server:
        with pytest.raises(error, match=message) as raised:
            await collect(make_engine(server.url), COUNT, GREEDY)
    assert type(raised.value) is error
    assert len(server.received) == 1
    # What the server said is the operator's to read in the log, not the client's.
    said = ("2048", "temperature", "the prompt", "body.n", "no key", "`x`")
    assert not [word for word in said if word in str(raised.value)]


#: A distinctive path under the API root, so that a leak of it is easy to see.
MOUNT = "/private-mount"


@contextlib.asynccontextmanager
async def refusing() -> AsyncIterator[str]:
    yield f"http://127.0.0.1:{free_port()}/v1{MOUNT}"


@contextlib.asynccontextmanager
async def failing() -> AsyncIterator[str]:
    async with ScriptedServer() as server:
        # Servers and proxies in front of them echo their own address in error bodies.
        echo = {"error": {"message": f"upstream {server.url}{MOUNT} crashed: Traceback"}}
        server.replies = (status(500, echo),)
        yield f"{server.url}{MOUNT}"


@contextlib.asynccontextmanager
async def hanging() -> AsyncIterator[str]:
    async with SilentServer() as server:
        yield f"{server.url}{MOUNT}"


@pytest.mark.parametrize(
    ("upstream", "reason"),
    [
        (refusing, "could not be reached"),
        (failing, r"failed \(HTTP 500\)"),
        (hanging, "timed out"),
    ],
    ids=["refused", "http-500", "timeout"],
)
async def test_errors_name_no_upstream_address_and_quote_nothing_it_said(
    upstream: Callable[[], contextlib.AbstractAsyncContextManager[str]],
    reason: str,
    make_engine: MakeEngine,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A client sees the engine's error message (in an SSE error event or the stored
    # turn): the upstream's address and words are the operator's, in the log.
    async with upstream() as url:
        engine = make_engine(url, max_retries=1, read_timeout_s=0.3)
        with caplog.at_level(logging.WARNING), pytest.raises(EngineError, match=reason) as raised:
            await collect(engine, COUNT, GREEDY)

    address = httpx.URL(url)
    message = json.dumps(raised.value.to_body())
    assert "upstream model server" in message
    leaks = [address.host, f":{address.port}", str(address.port), "/v1", MOUNT, "Traceback"]
    assert [leak for leak in leaks if leak in message] == []
    logged = [r for r in caplog.records if r.name == "axon.worker.engines.openai"]
    assert logged
    assert all(r.levelno == logging.WARNING and getattr(r, "url", None) == url for r in logged)


async def test_from_settings_sends_the_key_and_the_remote_model() -> None:
    with pytest.raises(ConfigError, match="AXON_ENGINE__OPENAI__BASE_URL"):
        OpenAIEngine.from_settings(EngineSettings(kind="openai"))
    async with ScriptedServer(status(200, {"data": [{"id": "remote"}]}), HELLO) as server:
        openai = OpenAIEngineSettings(base_url=server.url, api_key="sk-test", remote_model="remote")
        engine = OpenAIEngine.from_settings(EngineSettings(kind="openai", openai=openai))
        await engine.start()
        await collect(engine, COUNT, GREEDY)
        await engine.close()

    models, chat = server.received
    assert (models.path, chat.path) == ("/v1/models", "/v1/chat/completions")
    assert chat.headers["authorization"] == "Bearer sk-test"
    assert chat.body["model"] == "remote"
    assert isinstance(engine.tokenizer, EstimateTokenizer)
