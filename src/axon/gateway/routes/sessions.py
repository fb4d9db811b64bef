"""The session API: conversations kept by the server, replies streamed as SSE with event
ids, re-attach from ``Last-Event-ID``, cancellation. Routes only choose JSON or SSE; the
session manager does the rest, scoped by the caller's tenant."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse

from axon.core.errors import AxonError
from axon.core.types import EventKind, FinishReason, Principal
from axon.gateway import sse
from axon.gateway.auth import principal
from axon.gateway.errors import error_body
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
from axon.sessions.relay import Final, Relay

router = APIRouter(prefix="/v1/sessions", tags=["sessions"])
Caller = Annotated[Principal, Depends(principal)]

#: An SSE event id as this API writes them (``<milliseconds>-<sequence>``).
EVENT_ID = r"^([0-9]{1,15}-[0-9]{1,10})?$"
_SSE: dict[int | str, dict[str, Any]] = {200: {"content": {"text/event-stream": {}}}}


def _manager(request: Request) -> SessionManager:
    services: Services = request.app.state.services
    return services.manager


def _final_body(final: Final) -> dict[str, Any]:
    message = final.message
    return {
        "message": MessageOut.of(message).model_dump(mode="json") if message else None,
        "finish_reason": final.event.finish_reason,
        "usage": sse.usage_body(final.event),
    }


def _stream(request: Request, relay: Relay, head: bytes = b"") -> StreamingResponse:
    return StreamingResponse(
        sse.session_events(relay, _final_body, head, request.app.state.drain),
        media_type="text/event-stream",
        headers={**sse.HEADERS, **relay.headers},
    )


@router.post("", status_code=201, response_model=SessionOut)
async def create_session(body: SessionCreate, request: Request, caller: Caller) -> SessionOut:
    record = await _manager(request).create_session(
        caller, title=body.title, model=body.model, system_prompt=body.system_prompt
    )
    return SessionOut.of(record)


@router.get("", response_model=SessionList)
async def list_sessions(
    request: Request,
    caller: Caller,
    limit: int = Query(20, ge=1, le=100),
    after: str | None = Query(
        None, max_length=64, description="`next_cursor` of the previous page."
    ),
) -> SessionList:
    page, more = await _manager(request).list_sessions(caller, limit=limit, after=after)
    return SessionList(
        data=[SessionOut.of(s) for s in page],
        has_more=more,
        next_cursor=page[-1].id if more and page else None,
    )


@router.get("/{session_id}", response_model=SessionWithMessages)
async def get_session(session_id: str, request: Request, caller: Caller) -> SessionWithMessages:
    session, messages = await _manager(request).get_session(caller, session_id)
    return SessionWithMessages(
        **SessionOut.of(session).model_dump(), messages=[MessageOut.of(m) for m in messages]
    )


@router.delete("/{session_id}", response_model=SessionDeleted)
async def delete_session(session_id: str, request: Request, caller: Caller) -> SessionDeleted:
    await _manager(request).delete_session(caller, session_id)
    return SessionDeleted(id=session_id)


@router.post(
    "/{session_id}/messages",
    responses={200: {"model": TurnOut, "content": {"text/event-stream": {}}}},
)
async def send_message(
    session_id: str,
    body: MessageCreate,
    request: Request,
    caller: Caller,
    idempotency_key: str | None = Header(None, max_length=200),
) -> Any:
    """Add a user message and answer it: SSE (``turn``, ``token``…, ``done``|``error``)
    when ``stream`` is true, else the finished turn as JSON."""
    turn, relay = await _manager(request).start_turn(
        caller, session_id, body.content, body.sampling(), idempotency_key=idempotency_key
    )
    user = MessageOut.of(turn.user_message)
    if body.stream:
        # Clients that leave keep the reply going: they can re-attach, and it is stored.
        head = sse.frame(
            {"user_message": user.model_dump(mode="json"), "reply_id": turn.reply_id},
            event="turn",
        )
        return _stream(request, relay, head)
    final = await relay.final()
    if final.event.kind is EventKind.ERROR or final.message is None:
        error: AxonError = sse.error_of(final.event)
        return JSONResponse(error_body(error), status_code=error.status)
    out = TurnOut(
        user_message=user,
        message=MessageOut.of(final.message),
        finish_reason=final.event.finish_reason or FinishReason.STOP,
        usage=UsageOut(**sse.usage_body(final.event)),
    )
    return JSONResponse(out.model_dump(mode="json"), headers=dict(turn.headers))


@router.get("/{session_id}/messages/{message_id}/stream", responses=_SSE)
async def reattach(
    session_id: str,
    message_id: str,
    request: Request,
    caller: Caller,
    # Empty rather than null when absent: a header has no null, and the document says so.
    last_event_id: str = Header("", pattern=EVENT_ID),
    after: str = Query("", pattern=EVENT_ID, description="Same as the `Last-Event-ID` header."),
) -> StreamingResponse:
    """Re-attach to a reply in progress, or replay a finished one, after an event id."""
    relay = await _manager(request).reattach(
        caller, session_id, message_id, last_event_id or after or None
    )
    return _stream(request, relay)


@router.post("/{session_id}/messages/{message_id}/cancel", status_code=202)
async def cancel(
    session_id: str, message_id: str, request: Request, caller: Caller
) -> dict[str, bool]:
    """Stop generating a reply; its stream ends with finish reason ``cancelled``."""
    return {"cancelled": await _manager(request).cancel_reply(caller, session_id, message_id)}
