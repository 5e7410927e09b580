"""`GET /api/info`: the service's version, model, tools, limits and features, for clients and operators."""

from __future__ import annotations

from fastapi import APIRouter, Request

from backend.api.deps import CurrentUser, Mcp, Model, SettingsDep, Tools
from backend.api.info_schemas import Features, Limits, McpServerInfo, ServiceInfo
from backend.config import context_window_of

router = APIRouter(prefix="/api", tags=["info"])


@router.get("/info")
async def get_info(
    request: Request, _: CurrentUser, settings: SettingsDep, llm: Model, tools: Tools, mcp: Mcp
) -> ServiceInfo:
    """What this deployment runs and allows. Says whether integrations are on, never their keys or URLs."""
    model = llm.model
    return ServiceInfo(
        service=request.app.title,
        version=request.app.version,
        model=model,
        api="chat_completions",
        tools=tools.schemas(),
        mcp_servers=[McpServerInfo.model_validate(status, from_attributes=True) for status in mcp.statuses()],
        limits=Limits(
            max_body_bytes=settings.max_body_bytes,
            max_header_bytes=settings.max_header_bytes,
            max_message_chars=settings.max_message_chars,
            requests_per_minute=settings.rate_limit_requests_per_minute,
            concurrent_turns=settings.rate_limit_concurrent_turns,
            tokens_per_day=settings.rate_limit_tokens_per_day,
            context_window_tokens=context_window_of(settings, model),
            max_tool_rounds=settings.max_tool_rounds,
        ),
        features=Features(
            langfuse=bool(settings.langfuse_public_key and settings.langfuse_secret_key),
            posthog=bool(settings.posthog_api_key),
            webhooks=settings.webhook_secret is not None,
            double_texting=settings.double_texting,
            development_auth=settings.dev_auth,
        ),
    )
