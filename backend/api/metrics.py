"""`GET /metrics`: the Prometheus exposition, outside the OpenAPI schema, behind a bearer token when one is set."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import APIRouter, Header
from fastapi.responses import Response

from backend.api.deps import InstrumentsDep, SettingsDep
from backend.errors import NotFound, Unauthorized

router = APIRouter(include_in_schema=False)


@router.get("/metrics")
async def metrics(
    settings: SettingsDep, instruments: InstrumentsDep, authorization: Annotated[str | None, Header()] = None
) -> Response:
    """Every metric of this process (of all workers, in multi-process mode). 404 when metrics are off or served on
    their own port; 401 without the configured `COPILOT_METRICS_TOKEN`."""
    collected = instruments.metrics
    if collected is None or settings.metrics_port is not None:
        raise NotFound("metrics are not served here")
    if settings.metrics_token is not None:
        expected = f"Bearer {settings.metrics_token.get_secret_value()}".encode()
        if not hmac.compare_digest((authorization or "").encode(), expected):
            raise Unauthorized("a valid metrics token is required")
    body, content_type = collected.exposition()
    return Response(body, media_type=content_type)
