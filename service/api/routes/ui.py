"""The review page: ``GET /ui`` (one HTML page), ``GET /ui/assets/{name}`` (its built script and style sheet) and
``GET /`` redirecting to it. Everything the page needs comes from the package (no CDN): it works offline and behind
firewalls. The page itself carries no secret, so it loads without an API key; it then sends the key the user types
with each API call."""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import RedirectResponse, Response

router = APIRouter(include_in_schema=False)

_STATIC = resources.files("service") / "ui_static"
_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
          ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml", ".png": "image/png", ".map": "application/json"}
# The page talks to this origin only; inline script and foreign hosts are refused, so an injected label or file name
# cannot run code and a forgotten CDN link fails loudly in the browser tests.
_CSP = ("default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; connect-src 'self'; "
        "object-src 'none'; base-uri 'none'; frame-ancestors 'self'; form-action 'none'")
_HEADERS = {"Content-Security-Policy": _CSP, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
            "Cache-Control": "no-cache"}


_PACS_OFF = b'<meta name="xaas-pacs" content="">'
_PACS_ON = b'<meta name="xaas-pacs" content="on">'


def _asset(name: str, replace: tuple[bytes, bytes] | None = None) -> Response:
    # an allow-list of the files shipped, not a path join: no traversal whatever the name
    suffix = name[name.rfind("."):] if "." in name else ""
    entry = _STATIC / name
    if "/" in name or name.startswith(".") or suffix not in _TYPES or not entry.is_file():
        raise HTTPException(404, f"no asset {name[:64]!r}")
    body = entry.read_bytes()
    if replace:
        body = body.replace(*replace)
    return Response(body, media_type=_TYPES[suffix], headers=_HEADERS)


@router.get("/")
async def root() -> RedirectResponse:
    return RedirectResponse("/ui", status_code=307)


@router.get("/ui")
async def page(request: Request) -> Response:
    # the page learns from its own HTML whether a PACS is configured (no probing request that fails with a 503)
    pacs = bool(request.app.state.runtime.settings.dicomweb_url)
    return _asset("index.html", (_PACS_OFF, _PACS_ON) if pacs else None)


@router.get("/ui/assets/{name}")
async def asset(name: str) -> Response:
    return _asset(name)
