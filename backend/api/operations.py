"""The webhook external services call when a delegated long-running operation finishes."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Request, Response, status
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator
from redis.exceptions import RedisError

from backend import webhooks
from backend.api.deps import Operations, RedisDep, SettingsDep
from backend.errors import BadRequest, NotFound, ServiceUnavailable
from backend.streams.completions import Completion, publish_delivery

router = APIRouter(prefix="/api/chat/operations", tags=["operations"])

_CLOCK_SKEW_SECONDS = 60.0
"""Added to the time a delivery id is remembered, for pods whose clocks disagree a little."""


class CompletionBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    success: bool
    result: Any = None
    """The operation's result (any JSON) when `success`."""
    error: str | None = None
    """What went wrong when not `success`."""

    @model_validator(mode="after")
    def _error_when_failed(self) -> CompletionBody:
        if not self.success and not self.error:
            raise ValueError("a failed operation needs an 'error'")
        return self


class Delivered(BaseModel):
    operation_id: str
    status: Literal["accepted", "duplicate"]
    """`accepted` (202): enqueued. `duplicate` (200): this delivery id was received before; nothing was enqueued."""


@router.post(
    "/{operation_id}/complete",
    status_code=status.HTTP_202_ACCEPTED,
    responses={200: {"model": Delivered, "description": "A delivery received before: nothing was enqueued."}},
)
async def complete_operation(
    operation_id: str,
    request: Request,
    response: Response,
    operations: Operations,
    redis: RedisDep,
    settings: SettingsDep,
    x_copilot_timestamp: Annotated[str | None, Header()] = None,
    x_copilot_delivery: Annotated[str | None, Header()] = None,
    x_copilot_signature: Annotated[str | None, Header()] = None,
) -> Delivered:
    """Report that a delegated operation finished (webhook v2, see docs/api.md): `X-Copilot-Signature` is the
    HMAC-SHA256 of `<timestamp>.<delivery>.<operation_id>.<body>`. Only validates and enqueues: the conversation
    continues on whichever pod consumes the completion. Nothing of a refused request is stored."""
    if settings.webhook_secret is None:
        raise ServiceUnavailable("webhooks are not configured (COPILOT_WEBHOOK_SECRET)")
    if len(operation_id) > 64 or not webhooks.ID_PATTERN.fullmatch(operation_id):
        raise NotFound("operation not found")  # no operation has such an id (this says nothing of any that exists)
    body = await request.body()
    delivery_id = webhooks.verify(
        settings.webhook_secret.get_secret_value(),
        timestamp=x_copilot_timestamp,
        delivery_id=x_copilot_delivery,
        signature=x_copilot_signature,
        operation_id=operation_id,
        body=body,
        tolerance_seconds=settings.webhook_tolerance_seconds,
    )
    try:
        parsed = CompletionBody.model_validate_json(body)
    except ValidationError as e:
        # Without `input`: the invalid body may not even be JSON (bytes), and it is not echoed back.
        errors = e.errors(include_url=False, include_context=False, include_input=False)
        raise BadRequest("invalid completion body", errors=errors) from e
    try:
        if await operations.store.get(operation_id) is None:
            raise NotFound("operation not found")
        entry_id = await publish_delivery(
            redis,
            Completion(operation_id, parsed.success, parsed.result, parsed.error),
            delivery_id=delivery_id,
            # A delivery is refused once its timestamp leaves the window, at most 2 windows after it was first seen.
            remember_seconds=2 * settings.webhook_tolerance_seconds + _CLOCK_SKEW_SECONDS,
            max_len=settings.completion_stream_max_len,
        )
    except (RedisError, OSError) as e:
        raise ServiceUnavailable("the completion could not be recorded (Redis unavailable); retry later") from e
    if entry_id is None:
        response.status_code = status.HTTP_200_OK
        return Delivered(operation_id=operation_id, status="duplicate")
    return Delivered(operation_id=operation_id, status="accepted")
