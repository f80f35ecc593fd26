"""``GET /ui`` and its assets, without a browser: served by a real facade with
authentication on, without a token, with the right content types and headers; and shipped
in the package, so an installed facade (the image is a regular wheel install) has them."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable
from fnmatch import fnmatch
from html.parser import HTMLParser

import httpx

from agent_registry.localcluster.launcher import FacadeProcess
from facade_harness import assert_error
from repo import REPO_ROOT

UI_DIR = REPO_ROOT / "operator" / "agent_registry" / "facade" / "ui"
ASSET_TYPES = {
    "ui/dashboard.js": "text/javascript; charset=utf-8",
    "ui/dashboard.css": "text/css; charset=utf-8",
    "ui/favicon.svg": "image/svg+xml",
}


class _References(HTMLParser):
    """The URLs the page loads (scripts, style sheets, its icon)."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "script" and values.get("src"):
            self.found.append(str(values["src"]))
        if tag == "link" and values.get("rel") in ("stylesheet", "icon") and values.get("href"):
            self.found.append(str(values["href"]))


def references(html: str) -> list[str]:
    parser = _References()
    parser.feed(html)
    return parser.found


def test_the_page_and_its_assets_are_served_without_a_token(make_facade: Callable[..., FacadeProcess]) -> None:
    facade = make_facade(auth=True)
    with facade.client() as anonymous:
        # The API itself wants a token; the page, which holds no data, does not.
        assert_error(anonymous.get("/agents"), 401)
        page = anonymous.get("/ui")
        assert page.status_code == 200, page.text
        assert page.headers["content-type"] == "text/html; charset=utf-8"
        assert "<title>Agent Registry</title>" in page.text
        policy = page.headers["content-security-policy"]
        assert "script-src 'self'" in policy and "connect-src 'self'" in policy and "default-src 'none'" in policy
        assert page.headers["x-content-type-options"] == "nosniff"
        assert page.headers["referrer-policy"] == "no-referrer"

        # What the page loads is what is served, relative to /ui (so a path prefix keeps working).
        assert sorted(references(page.text)) == sorted(ASSET_TYPES)
        for path, media_type in ASSET_TYPES.items():
            asset = anonymous.get(f"/{path}")
            assert asset.status_code == 200, (path, asset.text)
            assert asset.headers["content-type"] == media_type
            assert asset.headers["x-content-type-options"] == "nosniff"
            assert asset.content == (UI_DIR / path.removeprefix("ui/")).read_bytes()

        # Revalidated cheaply: the ETag gives a 304 without a body while the file is unchanged.
        again = anonymous.get("/ui/dashboard.js", headers={"If-None-Match": asset_etag(anonymous, "/ui/dashboard.js")})
        assert again.status_code == 304 and again.content == b""

        assert_error(anonymous.get("/ui/secrets.txt"), 404, "no file 'secrets.txt'")
        assert_error(anonymous.get("/ui/dashboard.html"), 404)  # the page is /ui, nowhere else
        slash = anonymous.get("/ui/")
        assert slash.status_code == 308 and slash.headers["location"] == "../ui"
        # Not an API route: absent from the OpenAPI document.
        assert not [path for path in anonymous.get("/openapi.json").json()["paths"] if path.startswith("/ui")]


def asset_etag(http: httpx.Client, path: str) -> str:
    return http.get(path).headers["etag"]


def test_the_script_inserts_no_html_and_keeps_the_token_out_of_urls() -> None:
    script = (UI_DIR / "dashboard.js").read_text()
    # Agents write their names, metadata and cards: nothing from the API may become markup.
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in script, sink
    # The token goes in the Authorization header and, at most, sessionStorage; never localStorage or a URL.
    assert "localStorage" not in script
    assert re.search(r"searchParams\.set\(\s*[\"']token", script) is None
    assert "Authorization = `Bearer ${state.token}`" in script


def test_the_package_data_ships_every_dashboard_file() -> None:
    """The image installs a wheel, which carries only the files pyproject.toml names."""
    config = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["agent_registry.facade"]
    files = sorted(path.relative_to(UI_DIR.parent).as_posix() for path in UI_DIR.iterdir() if path.is_file())
    assert files == ["ui/dashboard.css", "ui/dashboard.html", "ui/dashboard.js", "ui/favicon.svg"]
    for name in files:
        assert any(fnmatch(name, pattern) for pattern in patterns), name
