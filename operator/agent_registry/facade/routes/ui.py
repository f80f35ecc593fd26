"""``/ui``: the live dashboard, a page and its two assets shipped inside the package
(``agent_registry/facade/ui/``), with no build step.

The page holds no data: it asks the API for everything with the token the user types in, so
serving it needs no token (as ``/docs`` does not). Its Content-Security-Policy lets it load
only its own script and style and talk only to this origin, so even a name an agent chose
that slipped past the script's escaping could not run code or send anything elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from agent_registry.facade import etags
from agent_registry.facade.errors import not_found

router = APIRouter(tags=["ui"], include_in_schema=False)

PAGE = "dashboard.html"
_TYPES = {
    PAGE: "text/html; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}
_SECURITY = {
    "content-security-policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    # Revalidated on every load (a 304 while unchanged), so an upgraded facade serves its own page.
    "cache-control": "no-cache",
}


@dataclass(frozen=True)
class Asset:
    body: bytes
    media_type: str
    etag: str


def _load() -> dict[str, Asset]:
    folder = resources.files("agent_registry.facade") / "ui"
    loaded = {}
    for name, media_type in _TYPES.items():
        body = (folder / name).read_bytes()
        loaded[name] = Asset(body, media_type, etags.tag(body))
    return loaded


# Read once: four small files, and a missing one (a broken install) fails at import, not per request.
_ASSETS = _load()


def _answer(request: Request, asset: Asset) -> Response:
    headers = {"etag": asset.etag, **_SECURITY}
    if etags.matches(request.headers.get("if-none-match"), asset.etag):
        return Response(status_code=304, headers=headers)
    return Response(asset.body, media_type=asset.media_type, headers=headers)


@router.get("/ui")
async def dashboard(request: Request) -> Response:
    return _answer(request, _ASSETS[PAGE])


@router.get("/ui/")
async def dashboard_slash() -> Response:
    # The page's URLs are relative to /ui (so it works behind a path prefix); from /ui/ they would not resolve.
    return RedirectResponse("../ui", status_code=308)


@router.get("/ui/{name}")
async def asset(request: Request, name: str) -> Response:
    found = _ASSETS.get(name) if name != PAGE else None
    if found is None:
        raise not_found(f"the dashboard has no file {name!r}")
    return _answer(request, found)
