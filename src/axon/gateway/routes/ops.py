"""Operations endpoints (liveness, readiness, metrics) and the web chat page."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from fastapi import APIRouter, Request, Response
from fastapi.responses import FileResponse, JSONResponse

from axon.gateway.services import Check
from axon.observability import metrics

log = logging.getLogger(__name__)
router = APIRouter()
#: The web chat page, served by the processes clients talk to.
web = APIRouter()
STATIC = Path(__file__).resolve().parent.parent / "static"

#: A readiness check slower than this counts as failed: a probe must answer promptly.
CHECK_TIMEOUT_S = 2.0


@router.get("/healthz", tags=["ops"])
async def healthz() -> dict[str, str]:
    """Liveness: the process serves HTTP."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    tags=["ops"],
    responses={503: {"description": "Not ready: the failing checks are named in the body."}},
)
async def readyz(request: Request) -> JSONResponse:
    """Readiness: every dependency this process needs answers (model loaded, store...)."""
    checks: dict[str, Check] = request.app.state.checks
    results: dict[str, str] = {}
    if request.app.state.drain.draining:
        # Told to stop: out of the load balancer at once, whatever else still answers.
        results["serving"] = "failing: shutting down"
    for name, check in checks.items():
        try:
            await asyncio.wait_for(check(), CHECK_TIMEOUT_S)
            results[name] = "ok"
        except Exception as exc:
            results[name] = f"failing: {type(exc).__name__}"
    ready = all(v == "ok" for v in results.values())
    return JSONResponse(
        {"status": "ready" if ready else "not ready", "checks": results},
        status_code=200 if ready else 503,
    )


@router.get(
    "/metrics",
    tags=["ops"],
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format."}},
)
async def prometheus() -> Response:
    body, content_type = metrics.render()
    return Response(body, media_type=content_type)


@web.get("/", include_in_schema=False)
async def index() -> FileResponse:
    return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})
