"""The OpenAI-compatible API: ``/v1/chat/completions`` (stateless) and ``/v1/models``."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, StreamingResponse

from axon.core.types import EventKind, Principal
from axon.gateway import sse
from axon.gateway.auth import principal
from axon.gateway.errors import error_body
from axon.gateway.schemas import ChatCompletionRequest, ModelList, ModelOut
from axon.gateway.services import Services
from axon.sessions.manager import SessionManager

router = APIRouter(tags=["openai"])
Caller = Annotated[Principal, Depends(principal)]


def _manager(request: Request) -> SessionManager:
    services: Services = request.app.state.services
    return services.manager


@router.get("/v1/models", response_model=ModelList)
async def list_models(request: Request, _: Caller) -> ModelList:
    manager = _manager(request)
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
async def chat_completions(body: ChatCompletionRequest, request: Request, caller: Caller) -> Any:
    manager = _manager(request)
    params = body.sampling()
    relay = await manager.start_completion(
        caller, body.model, [m.to_message() for m in body.messages], params
    )
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(
            sse.openai_chunks(relay, include_usage=include_usage),
            media_type="text/event-stream",
            headers={**sse.HEADERS, **relay.headers},
        )
    final = await relay.final()
    if final.event.kind is not EventKind.DONE:
        error = sse.error_of(final.event)
        return JSONResponse(error_body(error), status_code=error.status, headers=relay.headers)
    content = {
        "id": relay.request_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": relay.model,
        "system_fingerprint": None,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": final.event.text},
                "logprobs": None,
                "finish_reason": sse.openai_finish_reason(final.event),
            }
        ],
        "usage": sse.usage_body(final.event),
    }
    return JSONResponse(content, headers=dict(relay.headers))
