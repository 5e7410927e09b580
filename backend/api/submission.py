"""Turning a request into a turn, for both transports (the HTTP routes and the WebSocket): a user message starts
one; useChat's assistant message sent back with tool outputs or approvals answers the calls that wait, and the
message's continuation is the turn to follow."""

from __future__ import annotations

from dataclasses import replace

from backend.api.chat_schemas import SendMessage
from backend.auth import Principal
from backend.chat.human_input import Answerer, HumanInput
from backend.chat.turn_admission import Submitted, TurnAdmission, turn_id_for
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
    human_input: HumanInput,
    settings: Settings,
    limits: UserLimits,
) -> Submitted:
    """Start a turn for `body`; `BadRequest` for an unusable message, `ShuttingDown` while this pod drains and
    `Overloaded` while it runs its cap of turns (the load balancer retries on another pod; nothing is stored). For
    useChat's answers: the continuation, or `Conflict` while calls of the message still wait."""
    if admission.draining:
        raise ShuttingDown("this server is shutting down; send the message again")
    declared = body.declared_tools()
    tools = None if declared is None else human_input.check_frontend_tools(declared)
    answerer = answerer_of(user, settings, limits)
    if body.answers_calls:
        try:
            answers = body.answers()
        except ValueError as e:
            raise BadRequest(str(e)) from e
        task_id = await human_input.answer_message(session, answerer, answers, tools=tools)
        return Submitted(task_id, None, repeated=True)
    try:
        message = body.to_user_message(settings.max_message_chars)
    except ValueError as e:
        raise BadRequest(str(e)) from e
    await admission.refuse_if_full(turn_id_for(session.id, message.client_message_id))
    if tools is not None:
        await human_input.declare_tools(session.id, tools)
        message = replace(message, frontend_tools=tools)
    return await admission.submit(
        session, user.user_id, message, is_authenticated=answerer.is_authenticated, limited=answerer.limited
    )


def answerer_of(user: Principal, settings: Settings, limits: UserLimits) -> Answerer:
    """The caller as the one who answers (and pays for) a turn: the development user counts as not signed in."""
    anonymous = settings.dev_auth and user.user_id == settings.dev_user_id
    return Answerer(user.user_id, is_authenticated=not anonymous, limited=limits.applies_to(user))
