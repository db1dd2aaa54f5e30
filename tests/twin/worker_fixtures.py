"""Helpers of the `twin serve --workers N` tests: start a real server process, find its worker
processes, tell which worker holds a connection, read a worker's metrics."""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.twin.serve_fixtures import free_port, wait_healthy


def children(pid: int) -> list[int]:
    """The child processes of `pid`."""
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(p) for p in f.read().split()]


def serving_pid(conn: http.client.HTTPConnection, port: int, pids: list[int]) -> int:
    """The process holding the server end of `conn` (from /proc/net/tcp and fd links)."""
    assert conn.sock is not None
    mine = conn.sock.getsockname()[1]
    inode = None
    with open("/proc/net/tcp") as f:
        for line in f.read().splitlines()[1:]:
            parts = line.split()
            local, remote = int(parts[1].split(":")[1], 16), int(parts[2].split(":")[1], 16)
            if local == port and remote == mine:
                inode = parts[9]
    assert inode is not None
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    if os.readlink(f"/proc/{pid}/fd/{fd}") == f"socket:[{inode}]":
                        return pid
                except OSError:
                    continue
    raise AssertionError("no worker holds the connection")


def get(conn: http.client.HTTPConnection, path: str) -> tuple[int, bytes]:
    """Status and body of GET `path` on `conn` (identity encoding)."""
    conn.request("GET", path, headers={"Accept-Encoding": "identity"})
    r = conn.getresponse()
    return r.status, r.read()


def metric(conn: http.client.HTTPConnection, name: str) -> dict[str, float]:
    """The samples of metric `name` in the /metrics of the worker behind `conn`, by their
    labels' text ("" without labels)."""
    _, text = get(conn, "/metrics")
    found = re.findall(rb"^" + name.encode() + rb"(\{[^}]*\})? ([0-9.e+-]+)$", text, re.M)
    return {labels.decode(): float(v) for labels, v in found}


def lookups(conn: http.client.HTTPConnection) -> dict[str, float]:
    """The tile cache lookups of the worker behind `conn`, by result (hit, miss)."""
    samples = metric(conn, "twin_tile_cache_lookups_total")
    return {re.sub(r'\{result="(\w+)"\}', r"\1", k): v for k, v in samples.items()}


def connect_to(
    port: int, pid: int, pids: list[int], timeout_s: float = 10
) -> http.client.HTTPConnection:
    """A keep-alive connection that worker `pid` (one of `pids`) accepted."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            if get(conn, "/healthz")[0] == 200 and serving_pid(conn, port, pids) == pid:
                return conn
        except (OSError, http.client.HTTPException):
            pass
        conn.close()
    raise AssertionError(f"worker {pid} accepted no connection in {timeout_s} s")


@dataclass
class Served:
    """A running `twin serve --workers N` process and where its output goes."""

    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    def output(self) -> str:
        """Everything the server and its workers printed so far."""
        return self.log.read_text(errors="replace")


@contextlib.contextmanager
def serving(store: Path, workers: int, log: Path) -> Iterator[Served]:
    """`twin serve --workers N` over `store` on a free port, its output in the file `log`
    (a pipe left unread would fill and stall the workers); killed on the way out."""
    port = free_port()
    cmd = [sys.executable, "-m", "twin.cli", "serve", "--store", str(store), "--port", str(port)]
    with open(log, "wb") as out:
        # One address sends every request of these tests: no rate limit (test_limits.py).
        env = {"TWIN_RATE_ANONYMOUS": "0", "TWIN_RATE_ENGINEER": "0", **os.environ}
        proc = subprocess.Popen([*cmd, "--workers", str(workers)], stdout=out, stderr=out, env=env)
    try:
        wait_healthy(proc, port, f"twin serve --workers {workers}")
        yield Served(proc, port, log)
    finally:
        if proc.poll() is None:
            left = {pid: _started(pid) for pid in children(proc.pid)}
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
            for pid, started in left.items():
                if started is not None and _started(pid) == started:  # the same process
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)


def running(pid: int) -> bool:
    """Whether process `pid` exists and has not exited (an orphan's zombie waits for init)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _started(pid: int) -> str | None:
    """When process `pid` started (clock ticks since boot), None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except OSError:
        return None
