"""`GET /api/chat/sessions/{id}/transcript`: a session's whole conversation, streamed as JSON or Markdown."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Literal

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse

from backend.api.deps import OwnedSession, Sessions
from backend.api.transcript_render import json_transcript, markdown_transcript
from backend.store.models import ChatMessage

router = APIRouter(prefix="/api/chat/sessions", tags=["sessions"])

TRANSCRIPT_PAGE_SIZE = 500
"""Messages read from Postgres per query while the transcript streams."""


@router.get(
    "/{session_id}/transcript",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/json": {}, "text/markdown": {}}}},
)
async def get_transcript(
    session: OwnedSession,
    sessions: Sessions,
    format: Annotated[Literal["json", "markdown"], Query()] = "json",
) -> StreamingResponse:
    """The whole conversation of a session the caller owns, oldest message first, not paged."""
    reader = sessions.stored_messages(session.id, page_size=TRANSCRIPT_PAGE_SIZE)
    # The first page is read before the answer starts, so a database that does not answer is a 503, not a 200 cut
    # short; only a failure later in a long transcript can cut it.
    pages = _pages(await anext(reader, None), reader)
    if format == "markdown":
        disposition = f'attachment; filename="transcript-{session.id}.md"'
        return StreamingResponse(
            markdown_transcript(session, pages),
            media_type="text/markdown; charset=utf-8",
            headers={"content-disposition": disposition},
        )
    return StreamingResponse(json_transcript(session, pages), media_type="application/json")


async def _pages(
    first: list[ChatMessage] | None, rest: AsyncIterator[list[ChatMessage]]
) -> AsyncIterator[list[ChatMessage]]:
    if first is None:
        return
    yield first
    async for page in rest:
        yield page
