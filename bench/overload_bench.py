"""Overload benchmark: 500 concurrent connections of mixed tile and query traffic against
`twin serve --workers 2` on the demo city, then the same load with hostile requests mixed in
(issue 8). Run by hand, never in the tests, one benchmark at a time:

    flock /tmp/twin-bench.lock .venv/bin/python bench/overload_bench.py --label run1
    .venv/bin/python bench/overload_bench.py --quick          # 5 s, 50 connections: a check

What it does, in order:

1. Builds the demo district once (`twin demo --no-serve --size small --seed 1`) into
   `$TMPDIR/twin-overload-demo/small-seed1` and reuses it afterwards (`--store` names another).
2. For each run (`baseline`, then `hostile`) starts a fresh `twin serve --store DIR --port P
   --workers 2` in its own session (its access log to /dev/null, its stderr kept in the work
   directory), waits for `/healthz`, reads `/collections` for the district's extent, warms
   the cached tiles and the query paths (untimed), runs the load, and always stops the server
   by its PID (SIGTERM, then SIGKILL of its process group after 15 s; how it ended is
   reported). Both runs start from the same state: same warmed tiles, same URL lists.
3. The load: one `wrk` process per traffic class (`-t1`, keep-alive, `--timeout 10s`,
   `Accept-Encoding: gzip` as browsers send), the connections split between the classes
   (`MIX`): 40 % cached tiles (z12-16 over the district: the all-layer composite, pipes,
   roads and lights, all requested twice before the run), 10 % uncached tiles (composite
   tiles of a subset of the layers, z12-16, each (subset, tile) requested once and never
   before: a fresh server and a list longer than the run), and 12.5 % each of
   `/query/near` (radius 50/100/250 m), `/query/at`, `/collections/pipes/items?bbox=` (250/
   500/1000 m squares, limit 100) and `/collections/pipes/items?filter=` (CQL2 text,
   limit 100); points placed by hash inside the district. A Lua script per wrk counts the
   statuses (2xx, 4xx, 503 with and without Retry-After, other 5xx) and the answers per
   second; wrk gives latency percentiles (HdrHistogram, of answers within the timeout) and
   connection errors.
4. Meanwhile this process probes `GET /healthz` once a second on a new connection, watches
   the server's processes (parent alive, workers gone or new, RSS: the server is killed if
   it passes `--max-rss-gb`, the hostile POST was seen to grow to 14.5 GB), and in the
   hostile run sends `--hostile-rate` requests per second, each on its own connection with
   the same timeout, rotating among: a CQL2 filter of 5,000 nested parentheses on
   /collections/pipes/items; `filter=network LIKE '%%%...%b'` with 300 `%`; a POST
   /query/intersects of a MultiPoint of 9,999 points 1e-6 deg apart with buffer_m 5000; a
   filter of 1,500 NOTs. Each one's status, time and first bytes of its answer are reported.
   If the server process exits, the run stops there and says when.

Printed per run: per class connections, answers/s, mean latency and the mean that
Little's law gives (connections / answers per second: far above wrk's mean when requests
hung), p50/p95/p99, statuses, connection
errors, wrk's timeout count and the requests still open when the run ended; /healthz times;
the hostile requests; events (worker deaths, server exit, how it stopped); client, server
and other processes' CPU; then the aims of the issue (p99 of cached tiles < 100 ms, p99 of
every query class < 1 s, which bounds the p99 of all queries together, and no 5xx but 503)
and the hostile run against the baseline measured in the same invocation (ratios). The
JSON goes to `bench/results/overload_<label>.json`.

Why wrk: on this 2-core VM the client takes CPU from the server. Measured here against a
cached 23 KB tile, c=50, 5 s: wrk spent 20 us of CPU per request (5 400 req/s), a minimal
asyncio client with raw HTTP/1.1 over asyncio streams 69 us (3 700 req/s: the server got
less CPU). One wrk per class keeps wrk's cost and still gives latency per class.

Caveats: closed loop (each connection waits for its answer), so a slower server is offered
fewer requests; wrk records no latency for an answer later than the timeout (it counts it
in `timeout`), and counts every 2 s each connection still waiting past the timeout, so its
`timeout` is "connection-checks stuck", not requests; `open at end` is requests sent with no
answer when the run stopped (wrk stops at its first answer past the duration, so up to one
per connection is normal: in flight, or hung; read/write errors not included). Client, server and any
other process share the 2 cores: the CPU of other processes is reported per run.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import asdict, dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any
from urllib.parse import quote

ROOT = Path(__file__).resolve().parents[1]
M_PER_DEG = 111_320.0
ZOOMS = range(12, 17)
CACHED_LAYERS = ("pipes", "roads", "lights")  # plus the all-layer composite
# (class, share of the connections, tile or query)
MIX: tuple[tuple[str, float, str], ...] = (
    ("tiles_cached", 0.40, "tile"),
    ("tiles_uncached", 0.10, "tile"),
    ("query_near", 0.125, "query"),
    ("query_at", 0.125, "query"),
    ("items_bbox", 0.125, "query"),
    ("items_cql2", 0.125, "query"),
)
QUERIES_PER_CLASS = 2000
AIM_CACHED_P99_MS = 100.0
AIM_QUERY_P99_MS = 1000.0
NOISY_CORES = 0.25  # CPU of other processes during a run above which it is marked noisy
HOSTILE_KINDS = ("parens", "like", "multipoint", "nots")

LUA = r"""-- overload_bench.lua: cycle through a list of paths, count statuses and answers per second.
-- wrk -t1 -cN -dDs --timeout Ts -s overload_bench.lua http://127.0.0.1:P -- paths.txt
local ffi = require("ffi")
ffi.cdef [[
  typedef struct { long tv_sec; long tv_nsec; } ovl_timespec;
  int clock_gettime(int clk, ovl_timespec *ts);
]]
local ts = ffi.new("ovl_timespec")
local function now_s()
  ffi.C.clock_gettime(1, ts) -- CLOCK_MONOTONIC
  return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) / 1e9
end

local reqs, verified = {}, false
list_n, sent, answered, t0 = 0, 0, 0, 0
s2xx, s3xx, s4xx, s503, s503_retry, s5xx = 0, 0, 0, 0, 0, 0
per_s = {}

function init(args)
  for path in io.lines(args[1]) do
    list_n = list_n + 1
    reqs[list_n] = wrk.format("GET", path, { ["Accept-Encoding"] = "gzip" })
  end
end

function request()
  if not verified then -- wrk asks once before the run to verify the script: not sent
    verified = true
    return reqs[1]
  end
  sent = sent + 1
  if sent == 1 then t0 = now_s() end
  return reqs[(sent - 1) % list_n + 1]
end

function response(status, headers, body)
  answered = answered + 1
  if status < 300 then s2xx = s2xx + 1
  elseif status < 400 then s3xx = s3xx + 1
  elseif status < 500 then s4xx = s4xx + 1
  elseif status == 503 then
    s503 = s503 + 1
    if headers["retry-after"] or headers["Retry-After"] then s503_retry = s503_retry + 1 end
  else s5xx = s5xx + 1 end
  local k = math.floor(now_s() - t0) + 1
  per_s[k] = (per_s[k] or 0) + 1
end

local threads = {}
function setup(thread) table.insert(threads, thread) end

function done(summary, latency, requests)
  local t = threads[1]
  local function g(k) return t:get(k) end
  local ps, maxk, series = g("per_s") or {}, 0, {}
  for k, _ in pairs(ps) do if k > maxk then maxk = k end end
  for k = 1, maxk do series[k] = tostring(ps[k] or 0) end
  local e = summary.errors
  local function lat(p) -- nothing in the histogram: zeros, not its sentinels
    if summary.requests == 0 then return 0 end
    if type(p) == "string" then return latency[p] end
    return latency:percentile(p)
  end
  io.write(string.format(
    'OVLJSON {"duration_us":%d,"completed":%d,"bytes":%d,"list":%d,"sent":%d,"answered":%d,' ..
    '"status":{"2xx":%d,"3xx":%d,"4xx":%d,"503":%d,"503_retry_after":%d,"5xx_other":%d},' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"timeout":%d},' ..
    '"lat_us":{"min":%d,"mean":%.1f,"max":%d,"p50":%d,"p90":%d,"p95":%d,"p99":%d,"p99.9":%d},' ..
    '"per_s":[%s]}\n',
    summary.duration, summary.requests, summary.bytes, g("list_n"), g("sent"), g("answered"),
    g("s2xx"), g("s3xx"), g("s4xx"), g("s503"), g("s503_retry"), g("s5xx"),
    e.connect, e.read, e.write, e.timeout,
    lat("min"), lat("mean"), lat("max"), lat(50), lat(90), lat(95), lat(99), lat(99.9),
    table.concat(series, ",")))
end
"""


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _h(*key: object) -> float:
    """A stable pseudo-random float in [0, 1) from the key (no RNG-version drift)."""
    d = hashlib.sha256(":".join(map(str, key)).encode()).digest()
    return int.from_bytes(d[:8], "big") / 2.0**64


# -- raw HTTP/1.1 with a deadline ------------------------------------------------------------


@dataclass
class Answer:
    """One request of this process: status (None: no full answer) and wall time."""

    status: int | None
    seconds: float
    error: str | None = None
    retry_after: str | None = None
    excerpt: str = ""


def fetch(
    port: int,
    path: str,
    *,
    method: str = "GET",
    body: bytes | None = None,
    timeout: float = 10.0,
    gzip: bool = False,
    max_bytes: int = 64 << 20,
) -> Answer:
    """`method path` on a new connection (`Connection: close`), read to the end; the whole
    exchange, connect included, is bounded by `timeout` seconds and `max_bytes`."""
    t0 = time.monotonic()
    deadline = t0 + timeout
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n"
    if gzip:
        head += "Accept-Encoding: gzip\r\n"
    if body is not None:
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    buf = bytearray()
    error: str | None = None
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.settimeout(max(deadline - time.monotonic(), 0.001))
            # the server may answer (413, 400) before reading the whole body
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                s.sendall(head.encode() + b"\r\n" + (body or b""))
            while len(buf) < max_bytes:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError
                s.settimeout(left)
                chunk = s.recv(1 << 16)
                if not chunk:
                    break
                buf += chunk
    except TimeoutError:
        error = "timeout"
    except ConnectionRefusedError:
        error = "refused"
    except (ConnectionResetError, BrokenPipeError):
        error = "reset"
    except OSError as exc:
        error = type(exc).__name__
    seconds = time.monotonic() - t0
    head_bytes, _, rest = bytes(buf).partition(b"\r\n\r\n")
    lines = head_bytes.decode("latin-1").split("\r\n")
    status: int | None = None
    if error is None and lines[0].startswith("HTTP/"):
        try:
            status = int(lines[0].split()[1])
        except (IndexError, ValueError):
            error = "bad status line"
    elif error is None:
        error = "no answer" if not buf else "bad status line"
    retry = next((ln.split(":", 1)[1].strip() for ln in lines if ln.lower().startswith("retry-after:")), None)  # fmt: skip
    excerpt = rest[:160].decode("utf-8", "replace") if not gzip else ""
    return Answer(status, seconds, error, retry, excerpt)


# -- the server --------------------------------------------------------------------------------


def _stat(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, IndexError, ValueError):
        return 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """`twin serve --workers N` in its own session, watched and stopped by its PID."""

    def __init__(self, store: Path, workers: int, log_path: Path) -> None:
        self.store, self.workers, self.log_path = store, workers, log_path
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.seen_workers: set[int] = set()

    def start(self, timeout: float = 300.0) -> None:
        cmd = [sys.executable, "-m", "twin.cli", "serve", "--store", str(self.store),
               "--port", str(self.port), "--workers", str(self.workers)]  # fmt: skip
        # Every client of a benchmark is one address: the rate limits (per caller) would
        # measure themselves, not the server. Off.
        env = {**os.environ, **{f"TWIN_RATE_{r}": "0" for r in ("ANONYMOUS", "VIEWER", "ENGINEER")}}
        with open(self.log_path, "wb") as err:
            self.proc = subprocess.Popen(
                cmd,
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
                stderr=err,
                start_new_session=True,
                env=env,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"twin serve exited ({self.proc.returncode}):\n{self.tail()}")
            if fetch(self.port, "/healthz", timeout=2).status == 200:
                self.seen_workers |= self.children()
                return
            time.sleep(0.2)
        raise RuntimeError(f"twin serve did not answer /healthz within {timeout:.0f} s")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def children(self) -> set[int]:
        try:
            with open(f"/proc/{self.pid}/task/{self.pid}/children") as f:
                return {int(p) for p in f.read().split()}
        except OSError:
            return set()

    def cpu_seconds(self) -> float:
        """CPU of the parent, its live workers and the workers it has reaped."""
        tick = os.sysconf("SC_CLK_TCK")
        total = 0.0
        st = _stat(self.pid)
        if st is not None:
            total += sum(int(v) for v in st[11:15]) / tick  # utime stime cutime cstime
        for p in self.children():
            st = _stat(p)
            if st is not None:
                total += (int(st[11]) + int(st[12])) / tick
        return total

    def rss_bytes(self) -> int:
        """RSS of the parent and its workers, summed (shared pages counted in each)."""
        return sum(_rss(p) for p in {self.pid, *self.children()})

    def exit_text(self) -> str:
        assert self.proc is not None
        rc = self.proc.returncode
        if rc is None:
            return "running"
        if rc < 0:
            return f"killed by {signal.Signals(-rc).name}"
        return f"exit code {rc}"

    def stop(self, grace: float = 15.0) -> dict[str, Any]:
        """SIGTERM, then SIGKILL to its process group after `grace` seconds; then any worker
        left behind by a parent that died first (by PID, if still in the server's group)."""
        if self.proc is None:
            return {"how": "never started"}
        t0 = time.monotonic()
        out: dict[str, Any] = {}
        if self.proc.poll() is not None:
            out["how"] = f"had already stopped ({self.exit_text()})"
        else:
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=grace)
                out["how"] = f"SIGTERM ({self.exit_text()})"
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)
                out["how"] = f"SIGTERM did not stop it within {grace:.0f} s: SIGKILL"
        leftover = []
        for p in sorted(self.seen_workers):
            st = _stat(p)
            if st is not None and int(st[2]) == self.pid and st[0] != "Z":  # pgid
                os.kill(p, signal.SIGKILL)
                leftover.append(p)
        if leftover:
            out["killed_leftover_workers"] = leftover
        out["seconds"] = round(time.monotonic() - t0, 2)
        return out

    def tail(self, n: int = 15) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])


def build_demo(size: str, seed: int) -> Path:
    store = Path(tempfile.gettempdir()) / "twin-overload-demo" / f"{size}-seed{seed}"
    if (store / "twin.gpkg").exists():
        log(f"demo store: {store} (built before)")
        return store
    building = store.with_name(store.name + ".building")
    if building.exists():
        shutil.rmtree(building)
    building.parent.mkdir(parents=True, exist_ok=True)
    log(f"building the demo district ({size}, seed {seed}) into {store} ...")
    t0 = time.monotonic()
    subprocess.run(
        [sys.executable, "-m", "twin.cli", "demo", "--no-serve", "--store", str(building),
         "--size", size, "--seed", str(seed)],
        cwd=ROOT, check=True, timeout=900, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    building.rename(store)
    log(f"built in {time.monotonic() - t0:.1f} s")
    return store


# -- what is requested -----------------------------------------------------------------------

Bbox = tuple[float, float, float, float]


def district(port: int) -> tuple[Bbox, list[str]]:
    """The pipes' extent (the district) and the vector collections, from /collections."""
    raw = fetch_json(port, "/collections")
    vector, box = [], None
    for c in raw["collections"]:
        if c.get("itemType", "feature") != "feature":
            continue
        vector.append(c["id"])
        if c["id"] == "pipes":
            box = tuple(c["extent"]["spatial"]["bbox"][0][:4])
    if box is None:
        raise RuntimeError("no pipes collection: is this the demo store?")
    return box, sorted(vector)


def fetch_json(port: int, path: str) -> Any:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        buf = bytearray()
        while chunk := s.recv(1 << 16):
            buf += chunk
    head, _, body = bytes(buf).partition(b"\r\n\r\n")
    if b"chunked" in head.lower():
        out, rest = bytearray(), body
        while rest:
            size_line, _, rest = rest.partition(b"\r\n")
            n = int(size_line.split(b";")[0], 16)
            if n == 0:
                break
            out += rest[:n]
            rest = rest[n + 2 :]
        body = bytes(out)
    return json.loads(body)


def tiles_covering(box: Bbox, z: int) -> list[tuple[int, int, int]]:
    def xy(lon: float, lat: float) -> tuple[int, int]:
        n = 2**z
        x = int((lon + 180.0) / 360.0 * n)
        y = int((1.0 - math.asinh(math.tan(math.radians(lat))) / math.pi) / 2.0 * n)
        return x, y

    x0, y0 = xy(box[0], box[3])
    x1, y1 = xy(box[2], box[1])
    return [(z, x, y) for x in range(x0, x1 + 1) for y in range(y0, y1 + 1)]


def url_lists(box: Bbox, vector: list[str]) -> dict[str, list[str]]:
    tiles = [t for z in ZOOMS for t in tiles_covering(box, z)]
    cached = [f"/tiles/WebMercatorQuad/{z}/{y}/{x}" for z, x, y in tiles]
    for name in CACHED_LAYERS:
        if name in vector:
            cached += [
                f"/collections/{name}/tiles/WebMercatorQuad/{z}/{y}/{x}" for z, x, y in tiles
            ]
    cached.sort(key=lambda u: _h("cached", u))
    subsets = [s for k in range(2, len(vector)) for s in combinations(vector, k)]
    uncached = [
        f"/tiles/WebMercatorQuad/{z}/{y}/{x}?collections={','.join(s)}"
        for s in subsets
        for z, x, y in tiles
    ]
    uncached.sort(key=lambda u: _h("uncached", u))

    minx, miny, maxx, maxy = box
    mx, my = (maxx - minx) * 0.05, (maxy - miny) * 0.05

    def point(kind: str, i: int) -> tuple[float, float]:
        return (
            round(minx + mx + _h(kind, i, "x") * (maxx - minx - 2 * mx), 6),
            round(miny + my + _h(kind, i, "y") * (maxy - miny - 2 * my), 6),
        )

    near, at, bbox, cql2 = [], [], [], []
    networks = ("water", "sewer", "storm", "gas", "heat")
    materials = ("PE", "DI", "CI", "PVC", "STEEL", "CONC")
    for i in range(QUERIES_PER_CLASS):
        lon, lat = point("near", i)
        near.append(f"/query/near?lon={lon}&lat={lat}&radius={(50, 100, 250)[i % 3]}")
        lon, lat = point("at", i)
        at.append(f"/query/at?lon={lon}&lat={lat}")
        lon, lat = point("bbox", i)
        half = (250, 500, 1000)[i % 3] / 2
        dy, dx = half / M_PER_DEG, half / (M_PER_DEG * math.cos(math.radians(lat)))
        b = f"{lon - dx:.6f},{lat - dy:.6f},{lon + dx:.6f},{lat + dy:.6f}"
        bbox.append(f"/collections/pipes/items?bbox={b}&limit=100")
        u = _h("cql2", i)
        flt = (
            f"diameter_mm >= {100 + 50 * int(u * 10)} AND network = '{networks[i % 5]}'",
            f"install_year > {1960 + int(u * 60)} AND material = '{materials[i % 6]}'",
            f"status = 'in_service' AND depth_m < {0.8 + 2.5 * u:.2f}",
        )[i % 3]
        cql2.append(f"/collections/pipes/items?filter={quote(flt, safe='')}&limit=100")
    return {
        "tiles_cached": cached,
        "tiles_uncached": uncached,
        "query_near": near,
        "query_at": at,
        "items_bbox": bbox,
        "items_cql2": cql2,
    }


@dataclass(frozen=True)
class Hostile:
    kind: str
    method: str
    path: str
    body: bytes | None = None


def hostile_requests(box: Bbox) -> dict[str, Hostile]:
    lon0, lat0 = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    items = "/collections/pipes/items?filter="
    points = [[round(lon0 + i * 1e-6, 7), round(lat0, 7)] for i in range(9_999)]
    body = json.dumps(
        {"geometry": {"type": "MultiPoint", "coordinates": points}, "buffer_m": 5000},
        separators=(",", ":"),
    ).encode()
    return {
        "parens": Hostile(
            "parens",
            "GET",
            items + quote("(" * 5000 + "network = 'water'" + ")" * 5000, safe="()'"),
        ),
        "like": Hostile("like", "GET", items + quote("network LIKE '" + "%" * 300 + "b'", safe="")),
        "multipoint": Hostile("multipoint", "POST", "/query/intersects", body),
        "nots": Hostile("nots", "GET", items + quote("NOT " * 1500 + "network = 'water'", safe="")),
    }


def split_connections(total: int) -> dict[str, int]:
    """`total` over the classes by their shares (largest remainder, at least 1 each)."""
    raw = {name: share * total for name, share, _ in MIX}
    out = {name: max(1, int(v)) for name, v in raw.items()}
    for name in sorted(raw, key=lambda n: raw[n] - int(raw[n]), reverse=True):
        if sum(out.values()) >= total:
            break
        out[name] += 1
    return out


def warm(port: int, lists: dict[str, list[str]], timeout: float) -> dict[str, Any]:
    """Every cached tile twice (new connections: both workers), and a few of each other
    class (from the end of the uncached list, which the run never reaches), untimed."""
    t0 = time.monotonic()
    statuses: dict[str, int] = {}
    for url in lists["tiles_cached"] * 2:
        a = fetch(port, url, gzip=True, timeout=timeout)
        key = str(a.status or a.error)
        statuses[key] = statuses.get(key, 0) + 1
    bad = {k: v for k, v in statuses.items() if k not in ("200", "204")}
    if bad:
        raise RuntimeError(f"warming the cached tiles: {bad}")
    for name, urls in lists.items():
        if name == "tiles_cached":
            continue
        sample = urls[-4:] if name == "tiles_uncached" else urls[:8]
        for url in sample:
            a = fetch(port, url, gzip=True, timeout=timeout)
            if a.status not in (200, 204):
                raise RuntimeError(f"{name}: {url[:120]} answered {a.status or a.error}")
    return {"seconds": round(time.monotonic() - t0, 1), "cached_tiles": statuses}


# -- one run -----------------------------------------------------------------------------------


def host_busy_seconds() -> float:
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")  # minus idle and iowait


@dataclass
class Run:
    name: str
    connections: dict[str, int]
    classes: dict[str, dict[str, Any]] = field(default_factory=dict)
    healthz: list[dict[str, Any]] = field(default_factory=list)
    hostile: list[dict[str, Any]] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    seconds: float = 0.0
    cpu: dict[str, float] = field(default_factory=dict)
    peak_rss_mb: float = 0.0
    server_stop: dict[str, Any] = field(default_factory=dict)
    warm: dict[str, Any] = field(default_factory=dict)
    server_log_tail: str = ""
    answers_per_second: list[int] = field(default_factory=list)


def run_load(
    server: Server,
    run: Run,
    work: Path,
    duration: int,
    timeout: float,
    hostile: list[Hostile],
    hostile_rate: float,
    max_rss: float,
) -> None:
    paths = work / "paths"
    lua = work / "overload_bench.lua"
    procs: dict[str, subprocess.Popen[bytes]] = {}
    outs: dict[str, Path] = {}
    usage0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    self0 = resource.getrusage(resource.RUSAGE_SELF)
    srv0, host0 = server.cpu_seconds(), host_busy_seconds()
    pool = ThreadPoolExecutor(max_workers=64)
    health: list[tuple[float, Future[Answer]]] = []
    sent: list[tuple[float, Hostile, Future[Answer]]] = []
    t0 = time.monotonic()

    def at() -> float:
        return time.monotonic() - t0

    try:
        for name, n in run.connections.items():
            outs[name] = work / f"{run.name}_{name}.out"
            with open(outs[name], "wb") as fh:
                procs[name] = subprocess.Popen(
                    ["wrk", "-t1", f"-c{n}", f"-d{duration}s", "--timeout", f"{timeout:g}s",
                     "-s", str(lua), f"http://127.0.0.1:{server.port}", "--",
                     str(paths / f"{name}.txt")],
                    stdout=fh, stderr=subprocess.STDOUT,
                )  # fmt: skip
        end = t0 + duration
        next_health, next_hostile, k = t0 + 0.5, t0 + 1.0, 0
        workers = server.children()
        while time.monotonic() < end:
            if not server.alive():
                run.events.append(
                    f"t={at():.1f} s: the server process ended ({server.exit_text()})"
                )
                break
            now_workers = server.children()
            for p in sorted(workers - now_workers):
                run.events.append(f"t={at():.1f} s: worker {p} gone")
            for p in sorted(now_workers - workers):
                run.events.append(f"t={at():.1f} s: new worker {p}")
            server.seen_workers |= now_workers
            workers = now_workers
            rss = server.rss_bytes()
            run.peak_rss_mb = max(run.peak_rss_mb, rss / 2**20)
            if rss > max_rss:
                run.events.append(
                    f"t={at():.1f} s: server RSS {rss / 2**30:.1f} GB over --max-rss-gb: "
                    "killed by the bench"
                )
                os.killpg(server.pid, signal.SIGKILL)
                break
            if all(w.poll() is not None for w in procs.values()):
                run.events.append(f"t={at():.1f} s: every wrk ended early")
                break
            now = time.monotonic()
            if now >= next_health:
                health.append((at(), pool.submit(fetch, server.port, "/healthz", timeout=timeout)))
                next_health += 1.0
            if hostile and hostile_rate > 0 and now >= next_hostile:
                h = hostile[k % len(hostile)]
                k += 1
                f = pool.submit(
                    fetch, server.port, h.path, method=h.method, body=h.body, timeout=timeout
                )
                sent.append((at(), h, f))
                next_hostile += 1.0 / hostile_rate
            time.sleep(0.05)
    finally:
        stopped_at = time.monotonic()
        for w in procs.values():  # early stop: SIGINT makes wrk print its report
            if w.poll() is None and stopped_at < t0 + duration - 0.5:
                w.send_signal(signal.SIGINT)
        for w in procs.values():
            try:
                w.wait(timeout=max(t0 + duration + 15 - time.monotonic(), 5))
            except subprocess.TimeoutExpired:
                w.kill()
                w.wait(timeout=10)
        run.seconds = round(min(stopped_at, t0 + duration) - t0, 2)
        for t, f in health:
            run.healthz.append({"t": round(t, 1), **_answer(f, timeout)})
        for t, h, f in sent:
            run.hostile.append({"t": round(t, 1), "kind": h.kind, **_answer(f, timeout)})
        pool.shutdown(wait=True, cancel_futures=True)
    usage1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    self1 = resource.getrusage(resource.RUSAGE_SELF)
    elapsed = time.monotonic() - t0
    client = (usage1.ru_utime + usage1.ru_stime) - (usage0.ru_utime + usage0.ru_stime)
    bench = (self1.ru_utime + self1.ru_stime) - (self0.ru_utime + self0.ru_stime)
    host = host_busy_seconds() - host0
    run.cpu = {
        "wrk_cores": round(client / elapsed, 2),
        "bench_process_cores": round(bench / elapsed, 2),
    }
    if server.alive():  # a dead server's CPU is unknown
        srv = server.cpu_seconds() - srv0
        run.cpu["server_cores"] = round(srv / elapsed, 2)
        run.cpu["other_processes_cores"] = round((host - client - bench - srv) / elapsed, 2)
    for name, out in outs.items():
        text = out.read_text(errors="replace")
        line = next((ln for ln in text.splitlines() if ln.startswith("OVLJSON ")), None)
        if line is None:
            run.classes[name] = {"error": text.strip()[-300:] or "wrk printed nothing"}
            continue
        r = json.loads(line[len("OVLJSON ") :])
        secs = r["duration_us"] / 1e6 or 1.0
        lat = {k: v / 1000 for k, v in r["lat_us"].items()} if r["completed"] else {}
        e = r["errors"]
        run.classes[name] = {
            "connections": run.connections[name],
            "answered": r["answered"],
            "per_s": round(r["answered"] / secs, 1),
            # Little's law: the mean time per request the connections' count implies; far
            # above wrk's mean when time went into requests the histogram lacks (hung ones)
            "little_mean_ms": round(run.connections[name] * secs / r["answered"] * 1000, 1)
            if r["answered"]
            else None,
            "latency_ms": {k: round(v, 2) for k, v in lat.items()},
            "status": r["status"],
            "connect_errors": e["connect"],
            "read_write_errors": e["read"] + e["write"],
            "wrk_timeouts": e["timeout"],
            "open_at_end": max(r["sent"] - r["answered"] - e["read"] - e["write"], 0),
            "sent": r["sent"],
            "list_length": r["list"],
            "list_wrapped": r["sent"] > r["list"],
            "mb_per_s": round(r["bytes"] / secs / 1e6, 1),
            "answers_per_second": r["per_s"],
        }
    # Answers per second of all classes over the whole run (wrk's series end at its last
    # answer), and the stretches of 2 s or more without any.
    series = [r.get("answers_per_second", []) for r in run.classes.values()]
    n = max(math.ceil(run.seconds), *map(len, series), 0)
    run.answers_per_second = [sum(x[i] for x in series if i < len(x)) for i in range(n)]
    for a, b in stalls(run.answers_per_second):
        run.events.append(f"t={a}-{b} s: no answers at all (frozen?)")


def stalls(per_s: list[int], least: int = 2) -> list[tuple[int, int]]:
    """The stretches [a, b) of at least `least` seconds with no answer."""
    out, start = [], None
    for i, v in enumerate([*per_s, 1]):
        if v == 0 and start is None:
            start = i
        elif v != 0 and start is not None:
            if i - start >= least:
                out.append((start, i))
            start = None
    return out


def _answer(f: Future[Answer], timeout: float) -> dict[str, Any]:
    try:
        a = f.result(timeout=timeout + 10)
    except FutureTimeout:
        return {"status": None, "seconds": None, "error": "not finished"}
    d = asdict(a)
    d["seconds"] = round(a.seconds, 3)
    return {k: v for k, v in d.items() if v not in (None, "") or k in ("status", "seconds")}


# -- report ------------------------------------------------------------------------------------


def aims(run: Run) -> dict[str, Any]:
    c = run.classes
    cached = c.get("tiles_cached", {}).get("latency_ms", {}).get("p99")
    qs = {n: c.get(n, {}).get("latency_ms", {}).get("p99") for n, _, k in MIX if k == "query"}
    worst = None if None in qs.values() else max(qs.values())
    other5xx = sum(v.get("status", {}).get("5xx_other", 0) for v in c.values())
    other5xx += sum(1 for h in run.hostile if (h["status"] or 0) >= 500 and h["status"] != 503)
    return {
        "cached_tiles_p99_ms": cached,
        "cached_tiles_ok": cached is not None and cached < AIM_CACHED_P99_MS,
        "queries_worst_p99_ms": worst,
        "queries_ok": worst is not None and worst < AIM_QUERY_P99_MS,
        "other_5xx": other5xx,
        "other_5xx_ok": other5xx == 0,
        "healthz_failed": sum(1 for h in run.healthz if h["status"] != 200),
        "frozen_or_dead": any("no answers" in e for e in run.events),
        "server_alive_at_end": not any(
            "server process ended" in e or "killed" in e for e in run.events
        ),
        "noisy": run.cpu.get("other_processes_cores", 0) > NOISY_CORES,
    }


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:,.1f}"


def print_run(run: Run) -> None:
    print(f"\n== {run.name}: {sum(run.connections.values())} connections, {run.seconds} s ==")
    hdr = ("class", "conns", "answered", "ans/s", "mean ms", "Little", "p50 ms", "p95 ms",
           "p99 ms", "2xx", "4xx", "503", "5xx", "conn err", "rd/wr err", "wrk tmo",
           "open at end")  # fmt: skip
    print(
        "{:<15}{:>6}{:>9}{:>8}{:>9}{:>9}{:>9}{:>9}{:>9}{:>8}{:>6}{:>7}{:>6}{:>9}{:>10}{:>8}{:>12}".format(
            *hdr
        )
    )
    for name, r in run.classes.items():
        if "error" in r:
            print(f"{name:<15} wrk: {r['error']}")
            continue
        lat, st = r["latency_ms"], r["status"]
        wrapped = name == "tiles_uncached" and r["list_wrapped"]
        print(
            f"{name:<15}{r['connections']:>6}{r['answered']:>9}{r['per_s']:>8.0f}"
            f"{_ms(lat.get('mean')):>9}{_ms(r['little_mean_ms']):>9}"
            f"{_ms(lat.get('p50')):>9}{_ms(lat.get('p95')):>9}{_ms(lat.get('p99')):>9}"
            f"{st['2xx']:>8}{st['4xx']:>6}{st['503']:>7}{st['5xx_other']:>6}"
            f"{r['connect_errors']:>9}{r['read_write_errors']:>10}{r['wrk_timeouts']:>8}"
            f"{r['open_at_end']:>12}" + ("  (list ran out: later ones cached)" if wrapped else "")
        )
    total = sum(r.get("per_s", 0) for r in run.classes.values())
    print(f"throughput: {total:,.0f} answers/s; CPU (cores): {run.cpu}; "
          f"server peak RSS {run.peak_rss_mb:,.0f} MB")  # fmt: skip
    if run.cpu.get("other_processes_cores", 0) > NOISY_CORES:
        print(f"NOISY: other processes used {run.cpu['other_processes_cores']} cores meanwhile")
    print("answers per second, all classes:", " ".join(map(str, run.answers_per_second)))
    ok = [h["seconds"] * 1000 for h in run.healthz if h["status"] == 200]
    bad = [h for h in run.healthz if h["status"] != 200]
    ok.sort()
    line = f"/healthz: {len(run.healthz)} probes, {len(ok)} answered 200"
    if ok:
        line += f" (p50 {ok[len(ok) // 2]:.0f} ms, max {ok[-1]:.0f} ms)"
    if bad:
        line += "; not: " + ", ".join(
            f"t={h['t']} {h['status'] or h.get('error')}" for h in bad[:10]
        )
    print(line)
    for h in run.hostile:
        what = h["status"] if h["status"] is not None else h.get("error")
        print(f"  hostile t={h['t']:>5} {h['kind']:<11} -> {what} in {h['seconds']} s "
              f"{h.get('excerpt', '')[:90]!r}")  # fmt: skip
    for e in run.events:
        print(f"  event: {e}")
    if run.server_log_tail:
        print("  server log, last lines:\n    " + run.server_log_tail.replace("\n", "\n    "))
    print(f"  server stop: {run.server_stop}")
    a = aims(run)
    print(
        f"aims: cached tiles p99 {_ms(a['cached_tiles_p99_ms'])} ms "
        f"({'OK' if a['cached_tiles_ok'] else 'MISSED'}, < {AIM_CACHED_P99_MS:.0f}); "
        f"queries worst p99 {_ms(a['queries_worst_p99_ms'])} ms "
        f"({'OK' if a['queries_ok'] else 'MISSED'}, < {AIM_QUERY_P99_MS:.0f}); "
        f"5xx other than 503: {a['other_5xx']} ({'OK' if a['other_5xx_ok'] else 'MISSED'})"
    )
    print(
        f"also: /healthz failed {a['healthz_failed']} of {len(run.healthz)}; "
        f"{'STALLED (seconds without any answer)' if a['frozen_or_dead'] else 'answered every second'}; "
        f"server process {'alive at the end' if a['server_alive_at_end'] else 'DIED OR WAS KILLED'}"
    )


def compare(base: Run, hostile: Run) -> dict[str, Any]:
    def ratio(a: float | None, b: float | None) -> float | None:
        return round(a / b, 2) if a is not None and b else None

    out: dict[str, Any] = {}
    print("\n== hostile run / baseline (same invocation) ==")
    print(f"{'class':<15}{'p50':>8}{'p95':>8}{'p99':>8}{'ans/s':>8}   503 (base -> hostile)")
    for name in base.classes:
        b, h = base.classes[name], hostile.classes.get(name, {})
        if "error" in b or "error" in h or not h:
            continue
        bl, hl = b["latency_ms"], h["latency_ms"]
        row = {p: ratio(hl.get(p), bl.get(p)) for p in ("p50", "p95", "p99")}
        row["per_s"] = ratio(h["per_s"], b["per_s"])
        out[name] = row
        cells = "".join(f"{'-' if row[k] is None else f'{row[k]:.2f}x':>8}" for k in row)
        print(f"{name:<15}{cells}   {b['status']['503']} -> {h['status']['503']}")
    return out


# -- main --------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--duration", type=int, help="seconds of load per run (default 60; quick 5)")
    ap.add_argument(
        "--connections", type=int, help="concurrent connections (default 500; quick 50)"
    )
    ap.add_argument("--workers", type=int, default=2, help="twin serve --workers (default 2)")
    ap.add_argument("--hostile-rate", type=float, default=1.0,
                    help="hostile requests per second in the second run (0: no second run)")  # fmt: skip
    ap.add_argument("--hostile", default=",".join(HOSTILE_KINDS),
                    help=f"hostile kinds to rotate, in order (default {','.join(HOSTILE_KINDS)})")  # fmt: skip
    ap.add_argument("--timeout", type=float, default=10.0, help="per request, seconds")
    ap.add_argument("--store", type=Path, help="a demo store built before (default: build one)")
    ap.add_argument("--size", default="small", choices=["small", "city", "large"])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--max-rss-gb", type=float, default=6.0,
                    help="kill the server past this RSS (all its processes summed)")  # fmt: skip
    ap.add_argument("--label", help="result file bench/results/overload_<label>.json")
    ap.add_argument("--quick", action="store_true", help="5 s, 50 connections: a check")
    a = ap.parse_args()
    duration = a.duration or (5 if a.quick else 60)
    total = a.connections or (50 if a.quick else 500)
    label = a.label or ("quick" if a.quick else "run")
    kinds = [k for k in a.hostile.split(",") if k]
    if unknown := set(kinds) - set(HOSTILE_KINDS):
        sys.exit(f"--hostile: unknown {sorted(unknown)}; use {','.join(HOSTILE_KINDS)}")
    if shutil.which("wrk") is None:
        sys.exit("wrk not found: apt-get install -y wrk")
    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < total + 100:
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, total * 2 + 1000), hard))

    store = a.store or build_demo(a.size, a.seed)
    work = Path(tempfile.mkdtemp(prefix="twin-overload-"))
    (work / "overload_bench.lua").write_text(LUA)
    log(f"work directory (URL lists, wrk output, server logs): {work}")
    plan = [("baseline", 0.0)] + ([("hostile", a.hostile_rate)] if a.hostile_rate > 0 else [])
    conns = split_connections(total)
    result: dict[str, Any] = {
        "label": label,
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "store": str(store),
        "duration_s": duration,
        "connections": conns,
        "workers": a.workers,
        "timeout_s": a.timeout,
        "hostile_rate": a.hostile_rate,
        "hostile_kinds": kinds,
        "client": "wrk -t1 per class, Lua status counts (bench/overload_bench.py LUA)",
        "cpus": os.cpu_count(),
        "loadavg_before": os.getloadavg(),
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip(),
        "runs": {},
    }
    runs: dict[str, Run] = {}
    lists: dict[str, list[str]] | None = None
    hostile: list[Hostile] = []
    for name, rate in plan:
        run = Run(name, conns)
        server = Server(store, a.workers, work / f"server_{name}.log")
        try:
            log(f"{name}: starting twin serve --workers {a.workers} on port {server.port} ...")
            server.start()
            if lists is None:
                box, vector = district(server.port)
                lists = url_lists(box, vector)
                (work / "paths").mkdir()
                for cls, urls in lists.items():
                    (work / "paths" / f"{cls}.txt").write_text("\n".join(urls) + "\n")
                by_kind = hostile_requests(box)
                hostile = [by_kind[k] for k in kinds]
                result["district_bbox"] = box
                result["list_lengths"] = {k: len(v) for k, v in lists.items()}
                log(f"district {box}; lists: {result['list_lengths']}")
            run.warm = warm(server.port, lists, a.timeout)
            log(f"{name}: warmed in {run.warm['seconds']} s; load for {duration} s, "
                f"{total} connections {conns}" + (f", {rate:g} hostile/s {kinds}" if rate else ""))  # fmt: skip
            run_load(server, run, work, duration, a.timeout, hostile if rate else [], rate,
                     a.max_rss_gb * 2**30)  # fmt: skip
        except RuntimeError as exc:
            run.events.append(f"aborted: {exc}")
            log(f"{name}: {exc}")
        finally:
            run.server_stop = server.stop()
            if any("server process ended" in e or "worker" in e for e in run.events):
                run.server_log_tail = server.tail()
        runs[name] = run
        print_run(run)
        result["runs"][name] = {**asdict(run), "aims": aims(run)}
    if "hostile" in runs:
        result["hostile_vs_baseline"] = compare(runs["baseline"], runs["hostile"])
    out = ROOT / "bench" / "results" / f"overload_{label}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=1, ensure_ascii=False))
    log(f"wrote {out}")


if __name__ == "__main__":
    main()
