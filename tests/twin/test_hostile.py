"""Hostile input (issue 8): no request can take the server down or stall it.

Each case is a request a hostile caller could send to `twin serve` on the demo district: CQL2
filters nested thousands deep in every operator family (text and JSON), LIKE patterns that trap
a backtracking matcher, huge and degenerate shapes posted to `/query/intersects`, bodies over the
size limit (streamed), NaN, infinities and numbers past any range in every parameter, tiles
outside the matrix. Each must be answered with a 4xx JSON `{"code", "description"}` naming the
limit or the problem within 1 s (the issue's contract), while the server keeps answering
`/healthz` in under 50 ms, and the server process must survive it.

A few cases are within every configured limit (a shape of 9,999 vertices, a LIKE pattern with
as many wildcards as allowed, a `limit` the API clamps): their right answer is a fast 200 as
much as a 4xx, so they accept either; the 1 s bound holds for them all the same.

One real `twin serve` process (one worker) over the demo district serves the module. Each case
is sent from a thread over a raw socket, so a body the server refuses part-way, or a server that
freezes, ends the request at a deadline instead of hanging the suite; meanwhile the main thread
probes `/healthz` over one keep-alive connection. A server that died, stopped answering, or may
still be working on an abandoned request is restarted for the next case, and the case fails.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import math
import os
import select
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote, urlencode

import httpx
import pytest

from tests.twin.serve_fixtures import free_port, write_key

# One server for the whole module: its cases run in one xdist worker (`--dist loadgroup`).
pytestmark = pytest.mark.xdist_group("hostile-server")

ANSWER_WITHIN_S = 1.0
"""Issue 8's contract: every hostile request is answered (a 4xx) within this many seconds."""
HEALTHZ_WITHIN_S = 0.050
"""Issue 8's contract: `/healthz` answers in less than this while a hostile request runs."""
HEALTHZ_SHARE = 0.9
"""Share of the `/healthz` probes of a case that must be within the bound (the machine is shared
and noisy: one late probe is tolerated, a median or a 90th percentile over the bound is not)."""
HOSTILE_TIMEOUT_S = 4.0
"""When a hostile request is given up: the server froze (a guard, not the contract)."""
PROBE_TIMEOUT_S = 1.0
MIN_PROBES = 10
PROBE_GAP_S = 0.01
SEND_CHUNK = 64 * 1024
START_TIMEOUT_S = 90.0
HTTP_LINE_LIMIT = 65_536
"""The longest request line the HTTP layer reads (uvicorn's httptools parser refuses a longer one
before the app sees it, today with a plain-text 400 of its own)."""
URL_REACHES_APP = 60_000
"""The cases meant for the app's own checks stay under this."""
TWIN = (sys.executable, "-m", "twin.cli")

ITEMS = "/collections/pipes/items"
STATS = "/query/stats"
INTERSECTS = "/query/intersects"
NORMAL = "/collections/pipes/items?limit=1"
"""A normal request the server must answer right after each case."""

# The demo district (`twin demo --size small`): lon/lat bounds of its assets and its middle.
WEST, SOUTH, EAST, NORTH = 114.3047, 30.3373, 114.3371, 30.3627
LON, LAT = 114.321, 30.350

BAD = frozenset({400})
CLIENT_ERROR = frozenset(range(400, 500))
TOO_LARGE = frozenset({413})
NOT_FOUND = frozenset({404})
URI_TOO_LONG = frozenset({400, 414})
"""A query string of megabytes: refused as a bad parameter or as too long a URI."""
BOUNDED = frozenset({200}) | CLIENT_ERROR
"""Within every configured limit: a fast answer, 200 or a 4xx naming a limit."""

NESTING = ("depth", "nest", "deep", "level")
SIZE = ("term", "node", "long", "character", "size", "large", "maximum", "limit", "too many")
WILDCARDS = ("wildcard", "pattern", "%", "long", "character")
TOO_LONG = ("long", "large", "size", "uri", "url", "byte", "character", "limit", "maximum")
WORK = ("vertices", "vertex", "work", "candidate", "maximum", "limit", "budget", "time")


# -- the server ---------------------------------------------------------------------------------


class Server:
    """One `twin serve --workers 1` process over a store, restartable, stopped by its PID."""

    def __init__(self, store: Path, log: Path) -> None:
        self.store = store
        self.log = log
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start the server on a free port and wait until it answers `/healthz`."""
        self.port = free_port()
        # The server's defaults are under test: no TWIN_* setting of the caller's leaks in;
        # but for the rate limits (their own tests are in test_limits.py): every case here
        # comes from one address, one after another, far over what one caller may send.
        env = {k: v for k, v in os.environ.items() if not k.startswith("TWIN_")}
        env.update(TWIN_RATE_ANONYMOUS="0", TWIN_RATE_ENGINEER="0")
        self._log_file = self.log.open("ab")
        self.proc = subprocess.Popen(
            [
                *TWIN,
                "serve",
                "--store",
                str(self.store),
                "--port",
                str(self.port),
                "--workers",
                "1",
            ],
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            env=env,
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2, verify=False).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"twin serve exited with {self.proc.returncode}:\n{self.tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"twin serve did not come up:\n{self.tail()}")
            time.sleep(0.1)

    def stop(self, graceful: bool = True) -> None:
        """Stop the process: SIGTERM, then SIGKILL (a frozen server may ignore SIGTERM); at once
        with SIGKILL when not `graceful`."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            if graceful:
                proc.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=5)
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def restart(self) -> None:
        """A fresh server in place of one that broke (or may still be busy): no grace for it."""
        self.stop(graceful=False)
        self.start()

    def tail(self, lines: int = 15) -> str:
        """The last lines the server wrote (its log, a crash message)."""
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def trouble(self) -> str | None:
        """What is wrong with the server now (died, does not answer a normal request), if anything."""
        assert self.proc is not None
        if self.proc.poll() is not None:
            return f"the server process died (exit code {self.proc.returncode})"
        try:
            r = httpx.get(self.url + NORMAL, timeout=3, verify=False)
        except httpx.HTTPError as exc:
            return f"the server did not answer GET {NORMAL} ({type(exc).__name__}): it froze"
        if r.status_code != 200:
            return f"the server answered GET {NORMAL} with {r.status_code}"
        return None


@pytest.fixture(scope="module")
def demo_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo district (`twin demo --no-serve --size small`), where issue 8 was found."""
    store = tmp_path_factory.mktemp("hostile") / "store"
    built = subprocess.run(
        [*TWIN, "demo", "--no-serve", "--size", "small", "--store", str(store)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    return store


@pytest.fixture(scope="module")
def server(demo_store: Path) -> Iterator[Server]:
    """One real server process for the module (restarted by a case that broke it)."""
    srv = Server(demo_store, demo_store.parent / "serve.log")
    WRITER[:] = list(write_key(demo_store).items())
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


# -- one raw HTTP exchange, bounded in time -----------------------------------------------------


@dataclass(frozen=True)
class Hostile:
    """One request as sent on the wire."""

    method: str
    target: str
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    stream_bytes: int = 0
    """A body of this many bytes, generated while it is sent (instead of `body`)."""
    chunked: bool = False
    """Send the streamed body with `Transfer-Encoding: chunked` (no length declared)."""

    @property
    def size(self) -> int:
        return self.stream_bytes or len(self.body)


@dataclass
class Answer:
    """What came back: the status (None when nothing did), the time it took, how much was sent."""

    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    elapsed_s: float = 0.0
    sent: int = 0
    error: str = ""


def _streamed_body(size: int, chunked: bool) -> Iterator[bytes]:
    """`size` bytes of a MultiPoint that never ends, in pieces (chunk-framed when `chunked`)."""
    head = b'{"geometry": {"type": "MultiPoint", "coordinates": ['
    filler = b"[114.321,30.35]," * (SEND_CHUNK // 16)
    left = size
    piece = head
    while left > 0:
        piece = piece[:left]
        left -= len(piece)
        yield b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece
        piece = filler
    if chunked:
        yield b"0\r\n\r\n"


WRITER: list[tuple[str, str]] = []
"""The header of an engineer's key, sent with every change (POST, PATCH, PUT, DELETE) so that
the hostile body, not the missing key, is what is refused."""


def _wire(req: Hostile, port: int) -> Iterator[bytes]:
    """The request's bytes, head first."""
    writes = req.method in ("POST", "PATCH", "PUT", "DELETE")
    lines = [
        f"{req.method} {req.target} HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "Connection: close",
        *(f"{k}: {v}" for k, v in req.headers),
        *(f"{k}: {v}" for k, v in (WRITER if writes else [])),
    ]
    if req.stream_bytes and req.chunked:
        lines.append("Transfer-Encoding: chunked")
    elif req.stream_bytes or req.body or req.method == "POST":
        lines.append(f"Content-Length: {req.size}")
    yield ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    if req.stream_bytes:
        yield from _streamed_body(req.stream_bytes, req.chunked)
    elif req.body:
        yield req.body


def _read_answer(sock: socket.socket, answer: Answer, left: float) -> None:
    sock.setblocking(True)
    sock.settimeout(max(left, 0.01))
    response = http.client.HTTPResponse(sock)
    try:
        response.begin()
        answer.status = response.status
        answer.headers = {k.lower(): v for k, v in response.getheaders()}
        answer.body = response.read()
    except TimeoutError:
        answer.error = "the answer did not come in time"
    except (OSError, http.client.HTTPException) as exc:
        answer.error = f"no answer: {type(exc).__name__}: {exc}"
    finally:
        response.close()


def exchange(port: int, req: Hostile, timeout_s: float) -> Answer:
    """Send `req` and read its answer within `timeout_s`, whatever the server does: the body is
    sent only while the server has not answered (a server that refuses it part-way is heard),
    and a server that never answers ends the exchange at the deadline."""
    answer = Answer()
    start = time.monotonic()
    deadline = start + timeout_s
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=timeout_s)
    except OSError as exc:
        answer.error = f"could not connect: {exc}"
        return answer
    with sock:
        sock.setblocking(False)
        pieces = _wire(req, port)
        pending = memoryview(b"")
        sending = True
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                answer.error = f"no answer within {timeout_s:g} s: the server froze"
                break
            if sending and not pending:
                pending = memoryview(next(pieces, b""))
                sending = bool(pending)
            readable, writable, _ = select.select([sock], [sock] if sending else [], [], left)
            if readable:
                _read_answer(sock, answer, deadline - time.monotonic())
                break
            if writable:
                try:
                    n = sock.send(pending[:SEND_CHUNK])
                except BlockingIOError:
                    continue
                except OSError:  # the server closed the connection: hear what it said
                    sending, pending = False, memoryview(b"")
                    continue
                answer.sent += n
                pending = pending[n:]
    answer.elapsed_s = time.monotonic() - start
    return answer


# -- probing /healthz while a request runs ------------------------------------------------------


def probe(client: httpx.Client, path: str) -> float:
    """Seconds `path` took to answer 200 (infinite when it failed or timed out)."""
    start = time.monotonic()
    try:
        ok = client.get(path).status_code == 200
    except httpx.HTTPError:
        ok = False
    return time.monotonic() - start if ok else math.inf


def while_running(
    server: Server, work: Callable[[], None], paths: tuple[str, ...] = ("/healthz",)
) -> dict[str, list[float]]:
    """Run `work` in a thread and probe `paths` in turn over one keep-alive connection until it
    ends (at least `MIN_PROBES` times each, unless a probe failed): the latencies of each path."""
    latencies: dict[str, list[float]] = {p: [] for p in paths}
    with httpx.Client(base_url=server.url, timeout=PROBE_TIMEOUT_S, verify=False) as client:
        probe(client, "/healthz")  # the connection is open before the work starts
        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        answering = True
        while thread.is_alive() or (
            answering and min(len(v) for v in latencies.values()) < MIN_PROBES
        ):
            for path in paths:
                latencies[path].append(probe(client, path))
                answering = answering and not math.isinf(latencies[path][-1])
            time.sleep(PROBE_GAP_S)
        thread.join()
    return latencies


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


def latency_text(values: list[float]) -> str:
    def ms(v: float) -> str:
        return "timeout" if math.isinf(v) else f"{v * 1000:.1f} ms"

    return (
        f"median {ms(statistics.median(values))}, p90 {ms(percentile(values, 0.9))}, "
        f"max {ms(max(values))} over {len(values)} probes"
    )


def latency_problems(path: str, values: list[float]) -> list[str]:
    """What is wrong with the latencies of `path` against the issue's 50 ms."""
    median, p90 = statistics.median(values), percentile(values, HEALTHZ_SHARE)
    if median < HEALTHZ_WITHIN_S and p90 < HEALTHZ_WITHIN_S:
        return []
    return [
        f"{path} must answer in < {HEALTHZ_WITHIN_S * 1000:.0f} ms (median, and "
        f"{HEALTHZ_SHARE:.0%} of probes) while the request runs: {latency_text(values)}"
    ]


# -- the hostile requests -----------------------------------------------------------------------


def get(path: str, params: dict[str, str] | None = None, raw_query: str = "") -> Hostile:
    """A GET of `path` with `params` percent-encoded (or a query string as is)."""
    query = urlencode(params, quote_via=quote) if params else raw_query
    return Hostile("GET", f"{path}?{query}" if query else path)


def post(
    path: str, body: bytes | str | dict[str, Any], content_type: str = "application/json"
) -> Hostile:
    """A POST of `body` (a dict is sent as JSON) to `path`."""
    if isinstance(body, dict):
        body = json.dumps(body)
    data = body.encode() if isinstance(body, str) else body
    return Hostile("POST", path, (("Content-Type", content_type),), data)


def items(cql: str, lang: str = "cql2-text") -> Hostile:
    return get(ITEMS, {"filter": cql, "filter-lang": lang})


def stats(cql: str) -> Hostile:
    return get(STATS, {"level": "cell", "collections": "pipes", "filter": cql})


def intersects(geometry: dict[str, Any], buffer_m: float = 0.0, **more: Any) -> Hostile:
    return post(INTERSECTS, {"geometry": geometry, "buffer_m": buffer_m, **more})


def intersects_raw(coordinates: str, extra: str = "") -> Hostile:
    """A POST of a Point whose coordinates are written as given (NaN, 1e999, 10**400...)."""
    return post(
        INTERSECTS,
        '{"geometry": {"type": "Point", "coordinates": ['
        + coordinates
        + ']}, "buffer_m": 10'
        + extra
        + "}",
    )


WATER = "network = 'water'"
EQ_JSON = '{"op":"=","args":[{"property":"network"},"water"]}'
RING = f"{WEST} {SOUTH}, {EAST} {SOUTH}, {EAST} {NORTH}, {WEST} {SOUTH}"


def parens(n: int, inner: str = WATER) -> str:
    return "(" * n + inner + ")" * n


def and_or_nested(n: int) -> str:
    """`diameter_mm > 0 AND (diameter_mm > 1 OR (... network = 'water'))`, `n` deep."""
    ops = ("AND", "OR")
    return "".join(f"diameter_mm > {i} {ops[i % 2]} (" for i in range(n)) + WATER + ")" * n


def not_and_or_nested(n: int) -> str:
    """`NOT (a AND NOT (b OR NOT (c ...)))`, `n` deep."""
    ops = ("AND", "OR")
    return "".join(f"NOT (diameter_mm > {i} {ops[i % 2]} " for i in range(n)) + WATER + ")" * n


def like(prop: str, pattern: str, casei: bool = False) -> str:
    if casei:
        return f"CASEI({prop}) LIKE CASEI('{pattern}')"
    return f"{prop} LIKE '{pattern}'"


def json_not(n: int) -> str:
    return '{"op":"not","args":[' * n + EQ_JSON + "]}" * n


def json_arrays(n: int) -> str:
    return '{"op":"in","args":[{"property":"network"},' + "[" * n + '"water"' + "]" * n + "]}"


def json_and(n: int, arg: str = "true") -> str:
    return '{"op":"and","args":[' + ",".join([arg] * n) + "]}"


def json_geometry(points: int) -> str:
    coords = ",".join([f"[{LON},{LAT}]"] * points)
    return (
        '{"op":"s_intersects","args":[{"property":"geometry"},'
        '{"type":"MultiPoint","coordinates":[' + coords + "]}]}"
    )


def json_deep_coordinates(n: int) -> str:
    return (
        '{"op":"s_intersects","args":[{"property":"geometry"},'
        '{"type":"Polygon","coordinates":' + "[" * n + "]" * n + "}]}"
    )


def multipoint_dense(n: int = 9_999) -> dict[str, Any]:
    """Issue 8's MultiPoint: `n` points 1e-6° apart."""
    return {"type": "MultiPoint", "coordinates": [[LON + i * 1e-6, LAT] for i in range(n)]}


def zigzag_polygon(n: int = 9_999) -> dict[str, Any]:
    """A comb of `n` coordinates (ring closed): its top edge zig-zags across the district."""
    teeth = n - 3
    top = [
        [WEST + (EAST - WEST) * i / (teeth - 1), NORTH if i % 2 == 0 else SOUTH + 0.001]
        for i in range(teeth)
    ]
    ring = [*top, [EAST, SOUTH], [WEST, SOUTH], top[0]]
    return {"type": "Polygon", "coordinates": [ring]}


def back_and_forth(n: int = 9_999) -> dict[str, Any]:
    """A LineString of `n` vertices crossing the district from side to side, creeping north."""
    return {
        "type": "LineString",
        "coordinates": [
            [WEST if i % 2 == 0 else EAST, SOUTH + (NORTH - SOUTH) * i / (n - 1)] for i in range(n)
        ],
    }


def many_squares(vertices: int) -> dict[str, Any]:
    """A MultiPolygon of small squares holding `vertices` coordinates in all."""
    polys = []
    for i in range(vertices // 5):
        x, y = WEST + (i % 100) * 3e-4, SOUTH + (i // 100) * 3e-4
        polys.append([[[x, y], [x + 1e-4, y], [x + 1e-4, y + 1e-4], [x, y + 1e-4], [x, y]]])
    return {"type": "MultiPolygon", "coordinates": polys}


def padded_body(size: int) -> bytes:
    """A valid intersects body of exactly `size` bytes: a MultiPoint, padded with blanks."""
    points = b"[114.321,30.35]," * ((size - 100) // 16)
    body = b'{"geometry": {"type": "MultiPoint", "coordinates": [' + points[:-1] + b"]}}"
    return body[:-1] + b" " * (size - len(body)) + b"}"


def multipart() -> Hostile:
    boundary = "hostileboundary"
    body = (
        f"--{boundary}\r\n"
        'Content-Disposition: form-data; name="geometry"; filename="shape.json"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n" + "A" * 10_000 + f"\r\n--{boundary}--\r\n"
    )
    return post(INTERSECTS, body, f"multipart/form-data; boundary={boundary}")


def tile(z: object, y: object, x: object, prefix: str = "/collections/pipes") -> Hostile:
    return get(f"{prefix}/tiles/WebMercatorQuad/{z}/{y}/{x}")


NEAR = {"lon": str(LON), "lat": str(LAT)}
BUFFER = {"collection": "pipes", "id": "jiangxia_pipes:W0000001", "distance": "10"}


@dataclass(frozen=True)
class Case:
    """A hostile request (built when the case runs), the statuses it may be answered with and
    words of which the error's description must hold one (any, when empty)."""

    build: Callable[[], Hostile]
    statuses: frozenset[int]
    needles: tuple[str, ...] = ()
    huge_url: bool = False
    """The request line is longer than the HTTP layer reads (the others must reach the app)."""


def case(
    name: str, build: Callable[[], Hostile], statuses: frozenset[int], needles: tuple[str, ...] = ()
) -> Any:
    return pytest.param(Case(build, statuses, needles), id=name)


def url_case(name: str, build: Callable[[], Hostile]) -> Any:
    """A request line longer than the HTTP layer reads."""
    return pytest.param(Case(build, URI_TOO_LONG, TOO_LONG, huge_url=True), id=name)


# Every filter below reaches the app: its request line stays under what the HTTP layer reads
# (`URL_REACHES_APP`); the longer ones are in HUGE_URLS.
CQL2_TEXT = [
    case("text-parens-5000-items", lambda: items(parens(5000)), BAD, NESTING),
    case("text-parens-5000-stats", lambda: stats(parens(5000)), BAD, NESTING),
    case("text-not-5000-items", lambda: items("NOT " * 5000 + WATER), BAD, NESTING),
    case("text-not-5000-stats", lambda: stats("NOT " * 5000 + WATER), BAD, NESTING),
    case("text-not-1500", lambda: items("NOT " * 1500 + WATER), BAD, NESTING),
    case("text-not-paren-900", lambda: items("NOT (" * 900 + WATER + ")" * 900), BAD, NESTING),
    case("text-and-or-1000-deep", lambda: items(and_or_nested(1000)), BAD, NESTING),
    case("text-and-or-1000-deep-stats", lambda: stats(and_or_nested(1000)), BAD, NESTING),
    case("text-not-and-or-1000-deep", lambda: items(not_and_or_nested(1000)), BAD, NESTING),
    case(
        "text-casei-3000-deep",
        lambda: items("CASEI(" * 3000 + "network" + ")" * 3000 + " = CASEI('water')"),
        BAD,
        NESTING,
    ),
    case(
        "text-arithmetic-3000-deep",
        lambda: items("diameter_mm > " + "(" * 3000 + "1" + " + 1)" * 3000),
        BAD,
        NESTING,
    ),
    case(
        "text-in-list-parens-5000-deep",
        lambda: items("network IN (" + parens(5000, "'water'") + ")"),
        BAD,
        NESTING,
    ),
    case(
        "text-wkt-polygon-parens-5000-deep",
        lambda: items(f"S_INTERSECTS(geometry, POLYGON({parens(5000, RING)}))"),
        BAD,
        NESTING,
    ),
    case(
        "text-between-3000-deep",
        lambda: items(parens(3000, "diameter_mm BETWEEN 100 AND 300")),
        BAD,
        NESTING,
    ),
    case(
        "text-in-list-6000-terms",
        lambda: items("diameter_mm IN (" + ",".join(["1"] * 6000) + ")"),
        BAD,
        SIZE,
    ),
    case(
        "text-or-chain-1500-clauses",
        lambda: items(" OR ".join(["diameter_mm=1"] * 1500)),
        BAD,
        SIZE,
    ),
]

CQL2_JSON = [
    case("json-not-1000-deep", lambda: items(json_not(1000), "cql2-json"), BAD, NESTING),
    case("json-arrays-9000-deep", lambda: items(json_arrays(9000), "cql2-json"), BAD, NESTING),
    case("json-and-6000-args", lambda: items(json_and(6000), "cql2-json"), BAD, SIZE),
    case(
        "json-geometry-coordinates-5000-deep",
        lambda: items(json_deep_coordinates(5000), "cql2-json"),
        BAD,
        NESTING,
    ),
]

LIKE = [
    # Runs of % are one wildcard: within the limits, a fast answer of any kind.
    case(
        "like-300-percent-runs", lambda: items(like("network", "%" * 300 + "b")), BOUNDED, WILDCARDS
    ),
    case("like-a-percent-300-trap", lambda: items(like("id", "%a" * 300 + "%b")), BAD, WILDCARDS),
    case(
        "like-a-percent-300-trap-stats",
        lambda: stats(like("id", "%a" * 300 + "%b")),
        BAD,
        WILDCARDS,
    ),
    case("like-underscore-percent-300", lambda: items(like("id", "_%" * 300)), BAD, WILDCARDS),
    case(
        "like-casei-a-percent-300-trap",
        lambda: items(like("id", "%a" * 300 + "%b", casei=True)),
        BAD,
        WILDCARDS,
    ),
    # A long pattern with one wildcard is within the limits.
    case(
        "like-pattern-50000-chars",
        lambda: items(like("id", "a" * 49_998 + "%b")),
        BOUNDED,
        WILDCARDS,
    ),
    # Backtracking traps with as many wildcards as allowed: matched in linear time, fast.
    case("like-a-percent-15-trap", lambda: items(like("id", "%a" * 15 + "%b")), BOUNDED, WILDCARDS),
    case(
        "like-percent-underscore-16", lambda: items(like("id", "%_" * 16 + "b")), BOUNDED, WILDCARDS
    ),
    case(
        "like-casei-a-percent-15-trap",
        lambda: items(like("id", "%a" * 15 + "%b", casei=True)),
        BOUNDED,
        WILDCARDS,
    ),
]

# Request lines longer than the HTTP layer reads (about 64 KB): refused before the app sees them,
# still as a JSON error, fast, without stalling the others.
HUGE_URLS = [
    url_case("url-text-and-or-2000-deep-77KB", lambda: items(and_or_nested(2000))),
    url_case("url-json-not-5000-deep-240KB", lambda: items(json_not(5000), "cql2-json")),
    url_case("url-json-arrays-100000-deep-600KB", lambda: items(json_arrays(100_000), "cql2-json")),
    url_case("url-json-and-100000-args-700KB", lambda: items(json_and(100_000), "cql2-json")),
    url_case(
        "url-json-geometry-1e6-coordinates-24MB",
        lambda: items(json_geometry(1_000_000), "cql2-json"),
    ),
    url_case("url-like-pattern-100000-chars", lambda: items(like("id", "a" * 99_998 + "%b"))),
    url_case("url-buffer-id-100KB", lambda: get("/query/buffer", {**BUFFER, "id": "x" * 100_000})),
    url_case(
        "url-items-12000-parameters-100KB",
        lambda: get(ITEMS, raw_query="limit=1&" + "&".join(f"p{i}=1" for i in range(12_000))),
    ),
]

POSTS = [
    case(
        "post-multipoint-9999-dense-buffer-5000",
        lambda: intersects(multipoint_dense(), 5000),
        BOUNDED,
        WORK,
    ),
    case(
        "post-polygon-9999-zigzag-buffer-5000",
        lambda: intersects(zigzag_polygon(), 5000),
        BOUNDED,
        WORK,
    ),
    case(
        "post-linestring-9999-back-and-forth-buffer-5000",
        lambda: intersects(back_and_forth(), 5000),
        BOUNDED,
        WORK,
    ),
    case(
        "post-multipolygon-20000-vertices",
        lambda: intersects(many_squares(20_000), 100),
        BAD,
        ("vertices", "vertex"),
    ),
    case(
        "post-geometrycollection",
        lambda: intersects(
            {
                "type": "GeometryCollection",
                "geometries": [
                    {"type": "Point", "coordinates": [LON, LAT]},
                    multipoint_dense(100),
                ],
            },
            100,
        ),
        BAD,
        ("geometrycollection", "type"),
    ),
    case(
        "post-self-intersecting-polygon",
        lambda: intersects(
            {
                "type": "Polygon",
                "coordinates": [
                    [[WEST, SOUTH], [EAST, NORTH], [EAST, SOUTH], [WEST, NORTH], [WEST, SOUTH]]
                ],
            },
            100,
        ),
        BAD,
        ("valid", "self", "intersect"),
    ),
    case(
        "post-coordinates-1e308",
        lambda: intersects({"type": "Point", "coordinates": [1e308, -1e308]}, 10),
        BAD,
        ("longitude", "latitude", "coordinate", "range"),
    ),
    case(
        "post-coordinates-NaN",
        lambda: intersects_raw("NaN, NaN"),
        BAD,
        ("finite", "nan", "json", "number"),
    ),
    case(
        "post-coordinates-Infinity",
        lambda: intersects_raw("Infinity, -Infinity"),
        BAD,
        ("finite", "infinity", "json", "number"),
    ),
    case(
        "post-coordinates-1e999",
        lambda: intersects_raw(f"1e999, {LAT}"),
        BAD,
        ("finite", "number", "range", "longitude", "coordinate"),
    ),
    case(
        "post-coordinates-10e400-integer",
        lambda: intersects_raw("1" + "0" * 400 + f", {LAT}"),
        BAD,
        ("finite", "number", "range", "longitude", "coordinate", "large", "integer"),
    ),
    case(
        "post-buffer-1e400",
        lambda: post(
            INTERSECTS,
            '{"geometry": {"type": "Point", "coordinates": ['
            + f"{LON}, {LAT}"
            + ']}, "buffer_m": 1e400}',
        ),
        BAD,
        ("buffer", "finite", "number"),
    ),
    case(
        "post-limit-10e30",
        lambda: intersects({"type": "Point", "coordinates": [LON, LAT]}, 10, limit=10**30),
        BAD,
        ("limit",),
    ),
    case("post-empty-body", lambda: post(INTERSECTS, b""), BAD, ("empty", "body")),
    case(
        "post-body-2MB",
        lambda: post(INTERSECTS, padded_body(2_000_000)),
        TOO_LARGE,
        ("body", "bytes", "large"),
    ),
    case(
        "post-body-50MB-streamed",
        lambda: Hostile(
            "POST", INTERSECTS, (("Content-Type", "application/json"),), stream_bytes=50_000_000
        ),
        TOO_LARGE,
        ("body", "bytes", "large"),
    ),
    case(
        "post-body-50MB-chunked",
        lambda: Hostile(
            "POST",
            INTERSECTS,
            (("Content-Type", "application/json"),),
            stream_bytes=50_000_000,
            chunked=True,
        ),
        TOO_LARGE,
        ("body", "bytes", "large"),
    ),
    case(
        "post-nested-arrays-100000-deep",
        lambda: post(INTERSECTS, '{"geometry": ' + "[" * 100_000 + "]" * 100_000 + "}"),
        BAD,
        ("geometry", "nest", "depth", "deep", "json", "body"),
    ),
    case(
        "post-geometry-coordinates-100000-deep",
        lambda: post(
            INTERSECTS,
            '{"geometry": {"type": "Polygon", "coordinates": '
            + "[" * 100_000
            + "]" * 100_000
            + "}}",
        ),
        BAD,
        ("geometry", "nest", "depth", "deep", "json", "polygon", "coordinates"),
    ),
    case(
        "post-content-type-multipart", multipart, frozenset({400, 415}), ("json", "body", "content")
    ),
    case(
        "post-content-type-form",
        lambda: post(
            INTERSECTS,
            "geometry=POINT(114.3 30.3)&buffer_m=10",
            "application/x-www-form-urlencoded",
        ),
        frozenset({400, 415}),
        ("json", "body", "content"),
    ),
    case(
        "post-content-type-xml",
        lambda: post(INTERSECTS, "<geometry><point/></geometry>", "application/xml"),
        frozenset({400, 415}),
        ("json", "body", "content"),
    ),
    case(
        "post-invalid-utf8",
        lambda: post(
            INTERSECTS,
            b'{"geometry": {"type": "Point", "coordinates": [114.32, 30.35]}, "collections": ["\xff\xfe\xc0\x80"]}',
        ),
        BAD,
        ("utf", "json", "body", "unicode", "invalid"),
    ),
]

OBSERVATIONS = "/twin/observations"
LAMP = "/collections/lights/items/jiangxia_lights:L0000001"


def patch(path: str, body: bytes | str | dict[str, Any]) -> Hostile:
    """A PATCH of `body` (a dict is sent as JSON) to `path`."""
    sent = post(path, body, "application/merge-patch+json")
    return Hostile("PATCH", sent.target, sent.headers, sent.body)


def reading(**more: Any) -> dict[str, Any]:
    return {
        "collection": "lights",
        "id": "jiangxia_lights:L0000001",
        "time": "2026-12-07T10:00:00Z",
        "property": "status",
        "value": "on",
        **more,
    }


# The live routes (issue 10): none of these may change anything.
LIVE = [
    case("observations-nested-100000", lambda: post(OBSERVATIONS, "[" * 100_000), BAD, ("json",)),
    case(
        "observations-20000-readings",
        lambda: post(OBSERVATIONS, json.dumps([{"id": "x"}] * 20_000)),
        BAD,
        ("twin_max_readings",),
    ),
    case(
        "observations-streamed-50mb",
        lambda: Hostile(
            "POST", OBSERVATIONS, (("Content-Type", "application/json"),), stream_bytes=50_000_000
        ),
        TOO_LARGE,
    ),
    case(
        "observations-year-1-at-plus-14",
        lambda: post(OBSERVATIONS, json.dumps([reading(time="0001-01-01T00:00:00+14:00")])),
        frozenset({200}),
    ),
    case(
        "observations-value-1e999",
        lambda: post(
            OBSERVATIONS, json.dumps([reading(property="wattage_w")]).replace('"on"', "1e999")
        ),
        frozenset({200}),
    ),
    case("patch-nested-100000", lambda: patch(LAMP, "{" * 1 + '"a":' + "[" * 100_000), BAD),
    case(
        "patch-multipoint-200000",
        lambda: patch(
            LAMP,
            {"geometry": {"type": "MultiPoint", "coordinates": [[LON, LAT]] * 200_000}},
        ),
        TOO_LARGE,
    ),
    case(
        "patch-multipoint-30000",
        lambda: patch(
            LAMP,
            {"geometry": {"type": "MultiPoint", "coordinates": [[LON, LAT]] * 30_000}},
        ),
        BAD,
        ("vertices",),
    ),
    case(
        "patch-unknown-property",
        lambda: patch(LAMP, {"properties": {"colour": "red"}}),
        BAD,
        ("no property",),
    ),
    case(
        "post-feature-id-100000-chars",
        lambda: post(
            "/collections/lights/items",
            {
                "type": "Feature",
                "id": "x" * 100_000,
                "geometry": {"type": "Point", "coordinates": [LON, LAT]},
                "properties": {},
            },
        ),
        BAD,
        ("256",),
    ),
    case(
        "events-last-event-id-not-a-number",
        lambda: Hostile("GET", "/events", (("Last-Event-ID", "soon"),)),
        BAD,
    ),
    case(
        "items-asof-year-1-at-plus-14", lambda: get(ITEMS, {"asof": "0001-01-01T00:00+14:00"}), BAD
    ),
]


PARAMETERS = [
    case("near-lon-1e308", lambda: get("/query/near", {**NEAR, "lon": "1e308"}), BAD, ("lon",)),
    case(
        "near-radius-1e400",
        lambda: get("/query/near", {**NEAR, "radius": "1e400"}),
        BAD,
        ("radius",),
    ),
    case(
        "near-radius-negative",
        lambda: get("/query/near", {**NEAR, "radius": "-5"}),
        BAD,
        ("radius",),
    ),
    case(
        "near-limit-10e30",
        lambda: get("/query/near", {**NEAR, "limit": str(10**30)}),
        BAD,
        ("limit",),
    ),
    case(
        "near-lon-nan-lat-inf",
        lambda: get("/query/near", {"lon": "nan", "lat": "inf"}),
        BAD,
        ("lon", "lat"),
    ),
    case(
        "near-empty-values",
        lambda: get("/query/near", {"lon": "", "lat": "", "radius": ""}),
        BAD,
        ("lon", "lat", "radius"),
    ),
    case("at-lon-inf", lambda: get("/query/at", {**NEAR, "lon": "-inf"}), BAD, ("lon",)),
    case(
        "at-tolerance-1e308",
        lambda: get("/query/at", {**NEAR, "tolerance": "1e308"}),
        BAD,
        ("tolerance",),
    ),
    case(
        "at-tolerance-nan",
        lambda: get("/query/at", {**NEAR, "tolerance": "NaN"}),
        BAD,
        ("tolerance",),
    ),
    case(
        "buffer-distance-1e400",
        lambda: get("/query/buffer", {**BUFFER, "distance": "1e400"}),
        BAD,
        ("distance",),
    ),
    case(
        "buffer-distance-nan",
        lambda: get("/query/buffer", {**BUFFER, "distance": "nan"}),
        BAD,
        ("distance",),
    ),
    case(
        "buffer-distance-negative",
        lambda: get("/query/buffer", {**BUFFER, "distance": "-1"}),
        BAD,
        ("distance",),
    ),
    case(
        "stats-level-garbage", lambda: get(STATS, {"level": "\u0000" + "x" * 1000}), BAD, ("level",)
    ),
    case("stats-level-empty", lambda: get(STATS, {"level": ""}), BAD, ("level",)),
    case(
        "trace-lon-nan", lambda: get("/query/trace", {"lon": "nan", "lat": str(LAT)}), BAD, ("lon",)
    ),
    # The API clamps an items `limit` to the maximum: not an error (API.md).
    case("items-limit-10e30", lambda: get(ITEMS, {"limit": str(10**30)}), frozenset({200})),
    case("items-limit-minus-10e30", lambda: get(ITEMS, {"limit": str(-(10**30))}), BAD, ("limit",)),
    case("items-offset-10e30", lambda: get(ITEMS, {"offset": str(10**30)}), BOUNDED, ("offset",)),
    case("items-offset-negative", lambda: get(ITEMS, {"offset": "-1"}), BAD, ("offset",)),
    case("items-limit-empty", lambda: get(ITEMS, {"limit": ""}), BAD, ("limit",)),
    case("items-bbox-nan", lambda: get(ITEMS, {"bbox": "nan,nan,nan,nan"}), BAD, ("bbox",)),
    case(
        "items-bbox-1e308",
        lambda: get(ITEMS, {"bbox": "-1e308,-1e308,1e308,1e308"}),
        BAD,
        ("bbox",),
    ),
    case("items-bbox-1e400", lambda: get(ITEMS, {"bbox": "-1e400,-90,1e400,90"}), BAD, ("bbox",)),
    case(
        "items-datetime-garbage",
        lambda: get(ITEMS, {"datetime": "2024-13-45T99:99:99Z/" + "9" * 1000}),
        BAD,
        ("datetime",),
    ),
    case("tile-z-99", lambda: tile(99, 0, 0), NOT_FOUND),
    case("tile-z-minus-1", lambda: tile(-1, 0, 0), NOT_FOUND),
    case("tile-z-10e30", lambda: tile(10**30, 0, 0), NOT_FOUND),
    case("tile-x-out-of-range", lambda: tile(14, 0, 2**14), NOT_FOUND),
    case("tile-y-out-of-range", lambda: tile(14, 2**14, 0), NOT_FOUND),
    case("tile-x-10e30", lambda: tile(14, 0, 10**30), NOT_FOUND),
    case("tile-x-non-numeric", lambda: tile(14, 0, "east"), frozenset({400, 404})),
    case("tile-composite-z-99", lambda: tile(99, 0, 0, prefix=""), NOT_FOUND),
    case("tile-raster-z-99", lambda: tile(99, 0, 0, prefix="/collections/dem/map"), NOT_FOUND),
]


# -- the cases ----------------------------------------------------------------------------------


def answer_problems(c: Case, req: Hostile, answer: Answer) -> list[str]:
    """What is wrong with the answer to a hostile request."""
    if answer.status is None:
        return [f"no answer (not a 4xx): {answer.error}"]
    problems = []
    if answer.status not in c.statuses:
        wanted = "4xx" if c.statuses >= CLIENT_ERROR else "/".join(map(str, sorted(c.statuses)))
        problems.append(f"answered {answer.status}, expected {wanted}: {answer.body[:300]!r}")
    if answer.elapsed_s >= ANSWER_WITHIN_S:
        problems.append(
            f"answered after {answer.elapsed_s:.2f} s: issue 8 asks for an answer within "
            f"{ANSWER_WITHIN_S:g} s"
        )
    if req.stream_bytes and answer.sent >= req.size:
        problems.append(f"the server read all {req.size} bytes of the body before refusing it")
    if 400 <= answer.status < 500:
        try:
            body = json.loads(answer.body)
        except ValueError:
            body = None
        if not (
            answer.headers.get("content-type", "").startswith("application/json")
            and isinstance(body, dict)
            and set(body) == {"code", "description"}
            and isinstance(body["description"], str)
            and body["description"].strip()
        ):
            problems.append(
                f'the error is not JSON {{"code", "description"}}: {answer.body[:300]!r}'
            )
        else:
            text = body["description"].lower()
            if c.needles and not any(n.lower() in text for n in c.needles):
                problems.append(
                    f"the description names none of {c.needles}: {body['description'][:300]!r}"
                )
            if "traceback" in text or 'file "' in text:
                problems.append("the description holds a stack trace")
    return problems


@pytest.mark.parametrize("c", CQL2_TEXT + CQL2_JSON + LIKE + HUGE_URLS + POSTS + PARAMETERS + LIVE)
def test_hostile_request_is_refused_fast_and_harms_nothing(server: Server, c: Case) -> None:
    req = c.build()
    if c.huge_url:
        assert len(req.target) > HTTP_LINE_LIMIT, "the case's request line is not huge"
    else:
        assert len(req.target) < URL_REACHES_APP, "the case's request line would not reach the app"
    answers: list[Answer] = []
    latencies = while_running(
        server, lambda: answers.append(exchange(server.port, req, HOSTILE_TIMEOUT_S))
    )["/healthz"]
    answer = answers[0]
    trouble = server.trouble()
    if trouble:
        trouble += f"; its last words:\n{server.tail()}"
        state = f"restarted ({trouble.splitlines()[0]})"
    elif answer.status is None:
        state = "alive, restarted (it may still be working on the request given up)"
    else:
        state = "alive"
    if trouble or answer.status is None:
        server.restart()
    problems = ([trouble] if trouble else []) + answer_problems(c, req, answer)
    problems += latency_problems("/healthz", latencies)
    sent = f", {answer.sent} of {req.size + len(req.target)} bytes sent" if req.stream_bytes else ""
    print(
        f"HOSTILE {answer.status or 'no answer'} in {answer.elapsed_s:.3f} s{sent}; "
        f"/healthz {latency_text(latencies)}; server {state}"
    )
    if problems:
        pytest.fail(
            f"{req.method} {req.target[:200]} ({req.size} bytes of body):\n- "
            + "\n- ".join(problems)
        )


def demo_tile(z: int) -> str:
    """The pipes tile at zoom `z` over the middle of the district."""
    n = 2**z
    x = int((LON + 180) / 360 * n)
    y = int((1 - math.asinh(math.tan(math.radians(LAT))) / math.pi) / 2 * n)
    return f"/collections/pipes/tiles/WebMercatorQuad/{z}/{y}/{x}"


HEAVY = post(
    INTERSECTS,
    {
        "geometry": {
            "type": "Polygon",
            "coordinates": [
                [[WEST, SOUTH], [EAST, SOUTH], [EAST, NORTH], [WEST, NORTH], [WEST, SOUTH]]
            ],
        },
        "buffer_m": 5000,
        "limit": 10_000,
    },
)
"""A slow but legitimate request: every asset within 5 km of the district (all of them)."""
HEAVY_FOR_S = 1.5


def test_healthz_and_cached_tiles_answer_while_a_heavy_query_runs(server: Server) -> None:
    """Issue 8: CPU-heavy work does not block the event loop: while a slow but legitimate
    request runs (again and again for a while), `/healthz` and a cached tile answer in < 50 ms."""
    cached = demo_tile(15)
    with httpx.Client(base_url=server.url, timeout=10, verify=False) as client:
        first = client.get(cached)
    assert first.status_code == 200 and first.content, (first.status_code, first.text[:200])
    answers: list[Answer] = []

    def heavy() -> None:
        start = time.monotonic()
        while not answers or time.monotonic() - start < HEAVY_FOR_S:
            answers.append(exchange(server.port, HEAVY, 20.0))
            if answers[-1].status != 200:
                return

    latencies = while_running(server, heavy, ("/healthz", cached))
    trouble = server.trouble()
    if trouble:
        server.restart()
    print(
        f"HEAVY {[a.status for a in answers]} in {[round(a.elapsed_s, 2) for a in answers]} s; "
        + "; ".join(f"{p} {latency_text(v)}" for p, v in latencies.items())
    )
    problems = [trouble] if trouble else []
    problems += [
        f"the heavy request was answered {a.status} ({a.error or a.body[:200]!r})"
        for a in answers
        if a.status != 200
    ]
    for path, values in latencies.items():
        problems += latency_problems(path, values)
    if problems:
        pytest.fail("\n- ".join(["", *problems]))
