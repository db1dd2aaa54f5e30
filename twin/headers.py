"""Headers of the server's answers: what other sites' pages may do with them (CORS), and what
browsers may do on the server's own pages (security headers).

`SecurityHeaders` is ASGI middleware: every answer says `X-Content-Type-Options: nosniff` and
`Referrer-Policy: no-referrer`; every document a browser renders (the web map under `/web/`,
the `f=html` pages, SVG) also carries a `Content-Security-Policy` that runs no inline script
(scripts only from files the server serves; MapLibre's workers from `blob:`), and may not be
framed. FastAPI's OpenAPI page (`/api.html`) is left without the policy: it loads Swagger UI
from a CDN with an inline script.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

CORS_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")
"""Methods other sites' pages may use (reads, readings, queries and Part 4 edits)."""
CORS_HEADERS = ("Authorization", "Content-Type", "If-Match", "If-None-Match", "Last-Event-ID")
"""Request headers other sites' pages may send: a key, a JSON body, ETags, an event stream's
resume point."""
CORS_EXPOSED = ("ETag", "Location", "Retry-After")
"""Answer headers other sites' pages may read besides the CORS-safelisted ones."""

UNGUARDED_PAGES = frozenset({"/api.html"})
"""Pages answered without the content security policy (see the module)."""
_DOCUMENTS = (b"text/html", b"image/svg+xml")
"""Content types a browser renders as a document, with scripts of its own."""


def content_security_policy(public_url: str = "") -> str:
    """The policy of the server's own pages: everything from the server itself (and from
    `public_url`'s origin, which the pages' links name), no inline script, no plugins, no
    framing."""
    own = "'self'"
    parts = urlsplit(public_url)
    if parts.scheme and parts.netloc:
        own += f" {parts.scheme}://{parts.netloc}"
    return "; ".join(
        (
            f"default-src {own}",
            f"script-src {own}",
            # MapLibre runs its workers from a blob: URL.
            f"worker-src {own} blob:",
            f"child-src {own} blob:",
            f"img-src {own} data: blob:",
            # MapLibre sets element styles; the pages carry a <style> of their own.
            f"style-src {own} 'unsafe-inline'",
            f"font-src {own}",
            f"connect-src {own}",
            "object-src 'none'",
            "base-uri 'self'",
            "form-action 'self'",
            "frame-ancestors 'none'",
        )
    )


class SecurityHeaders:
    """ASGI middleware adding the security headers to every HTTP answer (see the module)."""

    def __init__(self, app: Any, public_url: str = "") -> None:
        self.app = app
        self.every: list[tuple[bytes, bytes]] = [
            (b"x-content-type-options", b"nosniff"),
            (b"referrer-policy", b"no-referrer"),
        ]
        self.document = [
            *self.every,
            (b"content-security-policy", content_security_policy(public_url).encode()),
            (b"x-frame-options", b"DENY"),
        ]

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        guarded = scope["path"] not in UNGUARDED_PAGES

        async def with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                extra = self.every
                if guarded and _is_document(headers):
                    extra = self.document
                message = {**message, "headers": headers + extra}
            await send(message)

        await self.app(scope, receive, with_headers)


def _is_document(headers: list[tuple[bytes, bytes]]) -> bool:
    for name, value in headers:
        if name.lower() == b"content-type":
            return value.lower().startswith(_DOCUMENTS)
    return False
