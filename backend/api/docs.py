"""The API docs (`/docs` Swagger UI, `/redoc` ReDoc) and the site icon, working offline.

FastAPI's own docs pages load their scripts and styles from a CDN, so they are blank without network (an air-gapped
host, a developer on a plane). The same pages are served here with the assets that the `fastapi-offline` package ships
(Swagger UI 5, which renders the OpenAPI 3.1 document FastAPI produces, and ReDoc 2), mounted under `/docs-assets`.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

import fastapi_offline
from fastapi import APIRouter
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles

from backend.api.panel import STATIC_DIR

ASSETS_URL = "/docs-assets"
FAVICON = STATIC_DIR / "favicon.svg"
_FAVICON_URL = "/favicon.ico"
_TITLE = "copilot-chat API"

router = APIRouter(include_in_schema=False)


def docs_assets_dir() -> Path:
    """Where the installed `fastapi-offline` distribution keeps Swagger UI's and ReDoc's files."""
    return Path(str(files(fastapi_offline) / "static"))


def docs_assets() -> StaticFiles:
    """Swagger UI's and ReDoc's scripts and styles, mounted at `ASSETS_URL`."""
    return StaticFiles(directory=docs_assets_dir())


@router.get("/docs")
async def swagger_ui() -> HTMLResponse:
    return get_swagger_ui_html(
        openapi_url="/openapi.json",
        title=_TITLE,
        swagger_js_url=f"{ASSETS_URL}/swagger-ui-bundle.js",
        swagger_css_url=f"{ASSETS_URL}/swagger-ui.css",
        swagger_favicon_url=_FAVICON_URL,
    )


@router.get("/redoc")
async def redoc() -> HTMLResponse:
    return get_redoc_html(
        openapi_url="/openapi.json",
        title=_TITLE,
        redoc_js_url=f"{ASSETS_URL}/redoc.standalone.js",
        redoc_favicon_url=_FAVICON_URL,
        with_google_fonts=False,
    )


@router.get(_FAVICON_URL)
async def favicon() -> FileResponse:
    """Browsers ask for `/favicon.ico` whatever a page links; an SVG answers under that name too."""
    return FileResponse(FAVICON, media_type="image/svg+xml", headers={"cache-control": "public, max-age=86400"})
