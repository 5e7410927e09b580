"""The webhook external services call when a delegated long-running operation finishes."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Request, status
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from backend import webhooks
from backend.api.deps import RuntimeDep
from backend.errors import BadRequest, NotFound, ServiceUnavailable
from backend.streams.completions import Completion, publish

router = APIRouter(prefix="/api/chat/operations", tags=["operations"])


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


class Accepted(BaseModel):
    operation_id: str
    status: str = "accepted"


@router.post("/{operation_id}/complete", status_code=status.HTTP_202_ACCEPTED)
async def complete_operation(
    operation_id: str,
    request: Request,
    runtime: RuntimeDep,
    x_copilot_timestamp: Annotated[str | None, Header()] = None,
    x_copilot_signature: Annotated[str | None, Header()] = None,
) -> Accepted:
    """Report that a delegated operation finished. Signed with HMAC-SHA256 over `<timestamp>.<body>`
    (`X-Copilot-Timestamp`, `X-Copilot-Signature: sha256=<hex>`). Only validates and enqueues: the conversation
    continues on whichever pod consumes the completion."""
    secret = runtime.settings.webhook_secret
    if secret is None:
        raise ServiceUnavailable("webhooks are not configured (COPILOT_WEBHOOK_SECRET)")
    body = await request.body()
    webhooks.verify(
        secret.get_secret_value(),
        x_copilot_timestamp,
        x_copilot_signature,
        body,
        tolerance_seconds=runtime.settings.webhook_tolerance_seconds,
    )
    try:
        parsed = CompletionBody.model_validate_json(body)
    except ValidationError as e:
        # Without `input`: the invalid body may not even be JSON (bytes), and it is not echoed back.
        errors = e.errors(include_url=False, include_context=False, include_input=False)
        raise BadRequest("invalid completion body", errors=errors) from e
    if len(operation_id) > 64 or await runtime.operations.store.get(operation_id) is None:
        raise NotFound("operation not found")
    await publish(runtime.redis, Completion(operation_id, parsed.success, parsed.result, parsed.error))
    return Accepted(operation_id=operation_id)
