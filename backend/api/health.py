"""Liveness and readiness probes. Neither writes anything."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from backend.api.deps import Admission, Mcp, RedisDep, Sessions, SettingsDep
from backend.config import startup_warnings

router = APIRouter(prefix="/health", tags=["health"])

_PROBE_TIMEOUT_S = 2.0


@router.get("/live")
async def live() -> dict[str, str]:
    """The process is up (no I/O)."""
    return {"status": "ok"}


@router.get("/ready", responses={503: {"description": "Postgres or Redis unreachable, or the pod is draining"}})
async def ready(
    admission: Admission, sessions: Sessions, redis: RedisDep, settings: SettingsDep, mcp: Mcp
) -> JSONResponse:
    """Postgres and Redis answer and the pod takes new turns; 503 otherwise (at once, without I/O, once it drains).
    `warnings` lists what a development start lacks (no JWT key, the demo model) and `mcp` the state of each MCP
    server: readiness is about the stores, so neither makes it fail (a down MCP server only fails its own tools)."""
    if admission.draining:
        return JSONResponse({"status": "draining", "checks": {}}, status_code=503)
    checks = {"postgres": sessions.ping(), "redis": redis.ping()}
    results = await asyncio.gather(
        *(asyncio.wait_for(c, _PROBE_TIMEOUT_S) for c in checks.values()), return_exceptions=True
    )
    status = {
        name: "ok" if not isinstance(r, BaseException) else f"error: {type(r).__name__}"
        for name, r in zip(checks, results, strict=True)
    }
    ok = all(v == "ok" for v in status.values())
    body = {
        "status": "ok" if ok else "unavailable",
        "checks": status,
        "warnings": startup_warnings(settings),
        "mcp": {s.name: {"state": s.state, "tools": s.tools, "error": s.error} for s in mcp.statuses()},
    }
    return JSONResponse(body, status_code=200 if ok else 503)
