"""The session API: conversations kept by the server, replies streamed as SSE with event
ids, re-attach from ``Last-Event-ID``, cancellation."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import StreamingResponse

from axon.core.errors import InvalidRequest
from axon.core.types import Completion, EventKind, FinishReason, StreamEvent, Usage
from axon.gateway import sse
from axon.gateway.schemas import (
    MessageCreate,
    MessageOut,
    SessionCreate,
    SessionDeleted,
    SessionList,
    SessionOut,
    SessionWithMessages,
    TurnOut,
    UsageOut,
)
from axon.gateway.services import Services
from axon.sessions.manager import SessionManager
from axon.sessions.records import MessageRecord
from axon.streaming.base import parse_id

router = APIRouter(prefix="/v1/sessions", tags=["sessions"])

_SSE: dict[int | str, dict[str, Any]] = {200: {"content": {"text/event-stream": {}}}}


def _manager(request: Request) -> SessionManager:
    services: Services = request.app.state.services
    return services.manager


@router.post("", status_code=201, response_model=SessionOut)
async def create_session(body: SessionCreate, request: Request) -> SessionOut:
    record = await _manager(request).create_session(
        title=body.title, model=body.model, system_prompt=body.system_prompt
    )
    return SessionOut.of(record)


@router.get("", response_model=SessionList)
async def list_sessions(
    request: Request,
    limit: int = Query(20, ge=1, le=100),
    after: str | None = Query(None, description="`next_cursor` of the previous page."),
) -> SessionList:
    page, more = await _manager(request).store.list_sessions(limit=limit, after=after)
    return SessionList(
        data=[SessionOut.of(s) for s in page],
        has_more=more,
        next_cursor=page[-1].id if more and page else None,
    )


@router.get("/{session_id}", response_model=SessionWithMessages)
async def get_session(session_id: str, request: Request) -> SessionWithMessages:
    manager = _manager(request)
    session = await manager.store.get_session(session_id)
    messages = await manager.store.recent_messages(session_id, limit=10_000)
    return SessionWithMessages(
        **SessionOut.of(session).model_dump(), messages=[MessageOut.of(m) for m in messages]
    )


@router.delete("/{session_id}", response_model=SessionDeleted)
async def delete_session(session_id: str, request: Request) -> SessionDeleted:
    await _manager(request).delete_session(session_id)
    return SessionDeleted(id=session_id)


def _completion(reply_id: str, session_id: str, model: str, event: StreamEvent) -> Completion:
    return Completion(
        request_id=reply_id,
        session_id=session_id,
        model=model,
        text=event.text,
        finish_reason=event.finish_reason or FinishReason.ERROR,
        usage=event.usage or Usage(),
        error_code=event.error_code,
        error_message=event.error_message,
    )


async def _stored_reply(
    manager: SessionManager, session_id: str, reply_id: str, model: str, event: StreamEvent
) -> MessageRecord | None:
    """Store the reply now (the completion consumer would too: one of them wins) so that
    the history read right after the final event already has it."""
    stored = await manager.record(_completion(reply_id, session_id, model, event))
    return stored or await manager.store.get_message(session_id, reply_id)


def _final_body(message: MessageRecord | None, event: StreamEvent) -> dict[str, Any]:
    return {
        "message": MessageOut.of(message).model_dump(mode="json") if message else None,
        "finish_reason": event.finish_reason,
        "usage": sse.usage_body(event),
    }


def _stream(
    manager: SessionManager,
    session_id: str,
    reply_id: str,
    model: str,
    after: str | None,
    head: bytes = b"",
) -> StreamingResponse:
    async def on_final(event: StreamEvent) -> dict[str, Any]:
        return _final_body(await _stored_reply(manager, session_id, reply_id, model, event), event)

    async def body() -> AsyncIterator[bytes]:
        if head:
            yield head
        async for data in sse.session_events(manager.events(reply_id, after), on_final):
            yield data

    return StreamingResponse(body(), media_type="text/event-stream", headers=sse.HEADERS)


@router.post("/{session_id}/messages", responses={**_SSE, 200: {"model": TurnOut}})
async def send_message(
    session_id: str,
    body: MessageCreate,
    request: Request,
    idempotency_key: str | None = Header(None, max_length=200),
) -> Any:
    """Add a user message and answer it: SSE (``turn``, ``token``…, ``done``|``error``)
    when ``stream`` is true, else the finished turn as JSON."""
    manager = _manager(request)
    turn = await manager.start_turn(
        session_id, body.content, body.sampling(), idempotency_key=idempotency_key
    )
    model = turn.session.model
    user = MessageOut.of(turn.user_message).model_dump(mode="json")
    if body.stream:
        # Clients that leave keep the reply going: they can re-attach, and it is stored.
        head = sse.frame({"user_message": user, "reply_id": turn.reply_id}, event="turn")
        return _stream(manager, session_id, turn.reply_id, model, None, head)
    final: StreamEvent | None = None
    async for entry in manager.events(turn.reply_id):
        if entry is not None and entry[1].final:
            final = entry[1]
    assert final is not None  # events() ends only after the final event
    message = await _stored_reply(manager, session_id, turn.reply_id, model, final)
    if final.kind is EventKind.ERROR or message is None:
        error = sse.error_of(final)
        return Response(
            sse.json_bytes(error.to_body()),
            status_code=error.status,
            media_type="application/json",
        )
    usage = sse.usage_body(final)
    return TurnOut(
        user_message=MessageOut.of(turn.user_message),
        message=MessageOut.of(message),
        finish_reason=final.finish_reason or FinishReason.STOP,
        usage=UsageOut(**usage),
    )


@router.get("/{session_id}/messages/{message_id}/stream", responses=_SSE)
async def reattach(
    session_id: str,
    message_id: str,
    request: Request,
    last_event_id: str | None = Header(None),
    after: str | None = Query(None, description="Same as the `Last-Event-ID` header."),
) -> StreamingResponse:
    """Re-attach to a reply in progress, or replay a finished one, after an event id."""
    manager = _manager(request)
    position = last_event_id or after
    if position is not None:
        try:
            parse_id(position)
        except ValueError:
            raise InvalidRequest(
                f"Last-Event-ID {position!r} is not an event id of this stream",
                param="Last-Event-ID",
            ) from None
    stored = await manager.find_reply(session_id, message_id)
    session = await manager.store.get_session(session_id)
    if stored is not None and not await manager.streams.read(message_id):
        # Finished long ago: the stream expired, the store still has the whole reply.
        event = StreamEvent(
            kind=EventKind.DONE if stored.status != "failed" else EventKind.ERROR,
            text=stored.content,
            finish_reason=stored.finish_reason,
            usage=Usage(
                prompt_tokens=stored.prompt_tokens or 0,
                completion_tokens=stored.completion_tokens or 0,
            ),
            error_code=stored.error_code,
        )

        async def replay() -> AsyncIterator[bytes]:
            if event.kind is EventKind.DONE:
                yield sse.frame(_final_body(stored, event), event="done")
            else:
                yield sse.frame(sse.error_of(event).to_body(), event="error")

        return StreamingResponse(replay(), media_type="text/event-stream", headers=sse.HEADERS)
    return _stream(manager, session_id, message_id, session.model, position)


@router.post("/{session_id}/messages/{message_id}/cancel", status_code=202)
async def cancel(session_id: str, message_id: str, request: Request) -> dict[str, bool]:
    """Stop generating a reply; its stream ends with finish reason ``cancelled``."""
    manager = _manager(request)
    stored = await manager.find_reply(session_id, message_id)
    if stored is None:
        await manager.cancel(message_id)
    return {"cancelled": stored is None}
