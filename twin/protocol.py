"""The HTTP/1.1 protocol the server speaks: uvicorn's httptools protocol, whose answer to a
request it cannot parse (a request line or headers past the parser's limits, 64 KB, or not
HTTP at all) is the API's error JSON like every other error, not plain text."""

from __future__ import annotations

import json

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


def unreadable_request() -> bytes:
    """The body of the answer to a request that cannot be read as HTTP."""
    return json.dumps(
        {
            "code": "InvalidRequest",
            "description": "the request cannot be read as HTTP/1.1: its request line or headers "
            "are malformed or longer than 64 KB (a filter or query that long is refused; "
            "shorten it)",
        }
    ).encode()


class JsonErrorsProtocol(HttpToolsProtocol):
    """httptools' protocol answering an unreadable request 400 with the error JSON."""

    def send_400_response(self, msg: str) -> None:
        """Answer 400 with the error JSON and close the connection."""
        body = unreadable_request()
        head = [b"HTTP/1.1 400 Bad Request\r\n"]
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
