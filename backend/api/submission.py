"""Turning a request's message into a turn, for both transports (the HTTP routes and the WebSocket)."""

from __future__ import annotations

from backend.api.chat_schemas import SendMessage
from backend.auth import Principal
from backend.chat.turn_admission import Submitted, TurnAdmission
from backend.config import Settings
from backend.errors import BadRequest, ShuttingDown
from backend.store.models import ChatSession
from backend.streams.user_limits import UserLimits


async def submit_turn(
    body: SendMessage,
    session: ChatSession,
    user: Principal,
    *,
    admission: TurnAdmission,
    settings: Settings,
    limits: UserLimits,
) -> Submitted:
    """Start a turn for `body`; `BadRequest` for an unusable message, `ShuttingDown` while this pod drains (the
    load balancer retries on another pod)."""
    if admission.draining:
        raise ShuttingDown("this server is shutting down; send the message again")
    try:
        message = body.to_user_message(settings.max_message_chars)
    except ValueError as e:
        raise BadRequest(str(e)) from e
    anonymous = settings.dev_auth and user.user_id == settings.dev_user_id
    return await admission.submit(
        session, user.user_id, message, is_authenticated=not anonymous, limited=limits.applies_to(user)
    )
