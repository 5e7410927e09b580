"""Development auth is explicit and refused in production; admin is decided by claims or configuration."""

import httpx
import pytest
from pydantic import ValidationError

from backend.auth import Authenticator
from backend.config import Settings
from backend.errors import Unauthorized
from tests.conftest import JWT_SECRET, LiveServer, make_token


async def test_dev_mode_serves_requests_without_a_token(settings: Settings) -> None:
    dev = settings.model_copy(update={"dev_auth": True})
    async with LiveServer(dev) as live, httpx.AsyncClient(base_url=live.url) as client:
        r = await client.post("/api/chat/sessions", json={"title": "demo"})
        assert r.status_code == 201
        listed = (await client.get("/api/chat/sessions")).json()["sessions"]
        assert [s["title"] for s in listed] == ["demo"]


async def test_without_dev_mode_a_token_is_required(client: httpx.AsyncClient) -> None:
    assert (await client.get("/api/chat/sessions")).status_code == 401


def test_production_refuses_dev_mode_and_missing_keys() -> None:
    with pytest.raises(ValidationError, match="DEV_AUTH must be off"):
        Settings(environment="production", dev_auth=True, jwt_secret=JWT_SECRET, _env_file=None)  # type: ignore[call-arg]
    with pytest.raises(ValidationError, match="needs COPILOT_JWT_SECRET"):
        Settings(environment="production", _env_file=None)  # type: ignore[call-arg]
    with pytest.raises(ValidationError, match="at least 32"):
        Settings(jwt_secret="short", _env_file=None)  # type: ignore[call-arg]


async def test_admin_from_roles_claim_or_configured_ids() -> None:
    authn = Authenticator(Settings(jwt_secret=JWT_SECRET, admin_user_ids=["root"], _env_file=None))  # type: ignore[call-arg]
    assert (await authn.authenticate("Bearer " + make_token("root"))).is_admin
    assert (await authn.authenticate("Bearer " + make_token("ann", roles=["admin"]))).is_admin
    assert not (await authn.authenticate("Bearer " + make_token("joe"))).is_admin
    with pytest.raises(Unauthorized):
        await authn.authenticate("Bearer " + make_token(""))
