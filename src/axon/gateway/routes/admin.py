"""Key management over HTTP for holders of the admin key (``/admin/v1/keys``), so a
platform can automate what ``axon keys`` does. The middleware has checked the admin key."""

from __future__ import annotations

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from axon.auth.keys import KeyStore
from axon.gateway.services import Services

router = APIRouter(prefix="/admin/v1/keys", tags=["admin"])


#: Limits are stored as 32-bit integers.
_INT32 = 2**31 - 1


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    tenant: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    requests_per_minute: int | None = Field(None, ge=0, le=_INT32)
    tokens_per_minute: int | None = Field(None, ge=0, le=_INT32)
    max_streams: int | None = Field(None, ge=0, le=_INT32)
    expires_in_days: float | None = Field(None, gt=0, le=36_500)


class KeyOut(BaseModel):
    id: str
    object: str = "api_key"
    tenant: str
    prefix: str
    requests_per_minute: int | None
    tokens_per_minute: int | None
    max_streams: int | None
    created_at: str
    last_used_at: str | None
    expires_at: str | None
    revoked_at: str | None


class KeyCreated(KeyOut):
    #: The key itself: shown this once, never retrievable again.
    key: str


class KeyList(BaseModel):
    object: str = "list"
    data: list[KeyOut]


def _keys(request: Request) -> KeyStore:
    services: Services = request.app.state.services
    return services.keys


@router.post("", status_code=201, response_model=KeyCreated)
async def create_key(body: KeyCreate, request: Request) -> KeyCreated:
    record, key = await _keys(request).create(
        body.tenant,
        requests_per_minute=body.requests_per_minute,
        tokens_per_minute=body.tokens_per_minute,
        max_streams=body.max_streams,
        expires_in_days=body.expires_in_days,
    )
    return KeyCreated.model_validate({**record.public(), "key": key})


@router.get("", response_model=KeyList)
async def list_keys(request: Request, tenant: str | None = Query(None, max_length=64)) -> KeyList:
    records = await _keys(request).list(tenant)
    return KeyList(data=[KeyOut.model_validate(r.public()) for r in records])


@router.delete("/{key_id}", response_model=KeyOut)
async def revoke_key(key_id: str, request: Request) -> KeyOut:
    record = await _keys(request).revoke(key_id)
    return KeyOut.model_validate(record.public())
