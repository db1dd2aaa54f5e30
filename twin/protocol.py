"""The HTTP/1.1 protocol the server speaks: uvicorn's httptools protocol, answering a request
it cannot read with the API's error JSON like every other error, not plain text: 414 for a URL
over `MAX_URL_BYTES` (refused as soon as that much has come, not after gathering all of it)
and 400 for anything else the parser refuses."""

from __future__ import annotations

import json

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

MAX_URL_BYTES = 64 * 1024
"""Longest URL (path and query string) read; a longer one is answered 414 at once."""


def _error(code: str, description: str) -> bytes:
    return json.dumps({"code": code, "description": description}).encode()


class JsonErrorsProtocol(HttpToolsProtocol):
    """httptools' protocol answering an unreadable request with the error JSON."""

    def on_url(self, url: bytes) -> None:
        """Gather the URL, up to `MAX_URL_BYTES`."""
        if len(self.url) + len(url) > MAX_URL_BYTES:
            self.url_too_long = True
            raise httptools.HttpParserError("URL too long")
        self.url += url

    def send_400_response(self, msg: str) -> None:
        """Answer 414 (URL too long) or 400 with the error JSON, and close the connection."""
        if getattr(self, "url_too_long", False):
            status = b"414 URI Too Long"
            body = _error(
                "URITooLong",
                f"the URL is longer than {MAX_URL_BYTES // 1024} KB; shorten the filter or "
                "query (send shapes to POST /query/intersects)",
            )
        else:
            status = b"400 Bad Request"
            body = _error(
                "InvalidRequest",
                "the request cannot be read as HTTP/1.1: its request line or headers are "
                "malformed or too long",
            )
        head = [b"HTTP/1.1 ", status, b"\r\n"]
        for name, value in self.server_state.default_headers:
            head.extend([name, b": ", value, b"\r\n"])
        head.extend(
            [
                b"content-type: application/json\r\n",
                b"content-length: " + str(len(body)).encode("ascii") + b"\r\n",
                b"connection: close\r\n\r\n",
            ]
        )
        self.transport.write(b"".join(head) + body)
        self.transport.close()
