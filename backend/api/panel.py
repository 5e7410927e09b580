"""The copilot panel: the page at `/` and its assets under `/static`, shipped in the package (no build step)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"

# The panel renders model and tool text as text nodes; this policy also refuses any script that is not one of its
# own files, should something slip through. No `frame-ancestors`: host apps embed the panel in an iframe.
_HEADERS = {
    "content-security-policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "object-src 'none'; base-uri 'none'; form-action 'none'"
    ),
    "referrer-policy": "no-referrer",
    "x-content-type-options": "nosniff",
    "cache-control": "no-cache",
}

router = APIRouter(include_in_schema=False)


@router.get("/")
async def panel_page() -> FileResponse:
    """The copilot panel."""
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html", headers=_HEADERS)


def static_assets() -> StaticFiles:
    """The panel's scripts and styles, mounted at `/static` after the API routes."""
    return StaticFiles(directory=STATIC_DIR)
