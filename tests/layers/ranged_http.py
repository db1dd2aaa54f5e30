"""A file server answering byte ranges, as an object store serves a COG, run as a process of
its own (`python -m tests.layers.ranged_http ROOT LOG`): rasterio holds the interpreter lock
while GDAL reads over HTTP, so a server thread in the test's own process would never answer.
Prints its port, then appends one line per request to LOG."""

from __future__ import annotations

import re
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class Files(BaseHTTPRequestHandler):
    """Serves the files of `root` with byte ranges; writes each request to `log`."""

    root: Path
    log: Path

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_GET(self) -> None:
        self._serve(body=True)

    def _serve(self, body: bool) -> None:
        with self.log.open("a") as out:
            out.write(f"{self.command} {self.path} {self.headers.get('Range', '')}\n")
        path = self.root / self.path.lstrip("/")
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        wanted = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if wanted:
            start = int(wanted[1])
            end = min(int(wanted[2]) if wanted[2] else len(data) - 1, len(data) - 1)
            part = data[start : end + 1]
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        else:
            part = data
            self.send_response(200)
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(len(part)))
        self.end_headers()
        if body:
            self.wfile.write(part)

    def log_message(self, *args: object) -> None:
        pass


def main() -> None:
    root, log = Path(sys.argv[1]), Path(sys.argv[2])
    handler = type("Served", (Files,), {"root": root, "log": log})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
