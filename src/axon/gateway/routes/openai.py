"""The OpenAI-compatible API: ``/v1/chat/completions`` (stateless) and ``/v1/models``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from axon.core.types import EventKind
from axon.gateway import sse
from axon.gateway.schemas import ChatCompletionRequest, ModelList, ModelOut
from axon.gateway.services import Services
from axon.streaming.base import Entry

router = APIRouter(tags=["openai"])


def _services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


@router.get("/v1/models", response_model=ModelList)
async def list_models(request: Request) -> ModelList:
    manager = _services(request).manager
    created = int(time.time())
    return ModelList(
        data=[
            ModelOut(
                id=info.name,
                created=created,
                owned_by=info.owned_by,
                context_window=info.context_window,
            )
            for info in manager.models.values()
        ]
    )


@router.post(
    "/v1/chat/completions",
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Any:
    services = _services(request)
    manager = services.manager
    if body.max_completion_tokens is not None and body.max_tokens is None:
        body.max_tokens = body.max_completion_tokens
    info = manager.model(body.model)
    request_id = await manager.start_completion(
        info.name, [m.to_message() for m in body.messages], body.sampling()
    )
    entries = manager.events(request_id, measure=True)
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(
            _relay(services, request_id, info.name, entries, include_usage),
            media_type="text/event-stream",
            headers=sse.HEADERS,
        )
    final = None
    try:
        async for entry in entries:
            if entry is not None and entry[1].final:
                final = entry[1]
    finally:
        if final is None:
            await manager.cancel(request_id)
    assert final is not None  # events() ends only after the final event
    if final.kind is not EventKind.DONE:
        error = sse.error_of(final)
        return JSONResponse(error.to_body(), status_code=error.status)
    return {
        "id": request_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": info.name,
        "system_fingerprint": None,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": final.text},
                "logprobs": None,
                "finish_reason": sse.openai_finish_reason(final),
            }
        ],
        "usage": sse.usage_body(final),
    }


async def _relay(
    services: Services,
    request_id: str,
    model: str,
    entries: AsyncIterator[Entry | None],
    include_usage: bool,
) -> AsyncIterator[bytes]:
    finished = False
    try:
        async for data in sse.openai_chunks(
            request_id, model, entries, include_usage=include_usage
        ):
            yield data
        finished = True
    finally:
        if not finished:
            # The client went away: stop spending engine steps on an answer nobody reads.
            asyncio.get_running_loop().create_task(services.manager.cancel(request_id))
