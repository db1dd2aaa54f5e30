"""SIGKILL of the server during a stream of edits and readings, at several moments: after a
restart every acknowledged change is there, no batch is half-written, the store is sound, and
the event sequence continues where it stopped."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import shapely

from layers.gpkg import GPKG_FILE
from layers.schemas import LIGHTS
from tests.twin.serve_fixtures import fill_store, free_port, make_layer, wait_healthy, write_key

N = 40
BATCH = 25


def start(store: Path, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    cmd = [sys.executable, "-m", "twin.cli", "serve", "--store", str(store), "--port", str(port)]
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=out)
    wait_healthy(proc, port, "twin serve")
    return proc, f"http://127.0.0.1:{port}"


class Stream:
    """Readings batches and PATCH edits sent one after another until stopped; what was
    acknowledged is recorded."""

    def __init__(self, url: str, headers: dict[str, str]) -> None:
        self.url = url
        self.headers = headers
        self.batches: list[tuple[int, list[dict]]] = []  # (index, readings) acknowledged
        self.sent: list[list[dict]] = []
        self.patches: list[tuple[str, float]] = []  # (id, wattage) acknowledged
        self.unanswered: tuple[str, float] | None = None
        """The PATCH sent when the server died, if one was (it may or may not have landed)."""
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        client = httpx.Client(timeout=10, headers=self.headers)
        k = 0
        while not self.stop.is_set():
            batch = [
                {
                    "collection": "lights",
                    "id": f"L{(k * BATCH + i) % N}",
                    "time": f"2026-12-07T10:{k // 60 % 60:02d}:{k % 60:02d}.{i:03d}Z",
                    "property": "status",
                    "value": ["on", "off", "fault"][(k + i) % 3],
                }
                for i in range(BATCH)
            ]
            self.sent.append(batch)
            try:
                r = client.post(f"{self.url}/twin/observations", json=batch)
                if r.status_code == 200:
                    self.batches.append((k, batch))
                fid = f"L{k % N}"
                watts = float(k % 500)
                self.unanswered = (fid, watts)
                r = client.patch(
                    f"{self.url}/collections/lights/items/{fid}",
                    json={"properties": {"wattage_w": watts}},
                )
                self.unanswered = None
                if r.status_code == 200:
                    self.patches.append((fid, r.json()["properties"]["wattage_w"]))
            except httpx.HTTPError:
                return
            k += 1


@pytest.mark.parametrize("kill_after_s", [0.3, 0.9, 1.7])
def test_sigkill_during_edits_and_readings(tmp_path: Path, kill_after_s: float) -> None:
    xs = np.array([114.30 + i * 0.0005 for i in range(N)])
    lights = make_layer(
        LIGHTS,
        shapely.points(xs, np.full(N, 30.35)),
        [f"L{i}" for i in range(N)],
        status=["on"] * N,
        wattage_w=[60.0] * N,
    )
    store = fill_store(tmp_path / "store", [lights])
    log = tmp_path / "serve.log"
    proc, url = start(store, log)
    key = write_key(store)
    stream = Stream(url, key)
    stream.thread.start()
    # The moments count from the first acknowledged edit and batch (a loaded machine may take
    # a while to answer the first ones).
    deadline = time.monotonic() + 60
    while not (stream.patches and stream.batches) and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(kill_after_s)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    stream.stop.set()
    stream.thread.join(timeout=15)
    assert stream.batches, "nothing was acknowledged before the kill"

    db = sqlite3.connect(store / GPKG_FILE)
    try:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        # Readings are appended to twin_readings_new and folded into twin_readings later.
        kept = {
            (fid, t, json.loads(v))
            for table in ("twin_readings", "twin_readings_new")
            for fid, t, v in db.execute(f"SELECT id, time, value FROM {table}")
        }
        # Every acknowledged batch whole; any other batch whole or absent.
        for batch in stream.sent:
            there = [(r["id"], r["time"], r["value"]) in kept for r in batch]
            assert all(there) or not any(there)
        for _, batch in stream.batches:
            assert all((r["id"], r["time"], r["value"]) in kept for r in batch)
        # Every acknowledged edit is there: each lamp holds its last acknowledged value, or
        # the value of the PATCH the kill left unanswered (which may have landed).
        watts = dict(db.execute('SELECT id, wattage_w FROM "lights"'))
        last: dict[str, float] = dict(stream.patches)
        assert last, "no edit was acknowledged before the kill"
        for fid, w in last.items():
            allowed = {w}
            if stream.unanswered is not None and stream.unanswered[0] == fid:
                allowed.add(stream.unanswered[1])
            assert watts[fid] in allowed, (fid, watts[fid], allowed)
        # A batch of readings is one row of n entries.
        seqs = [
            s + k
            for s, n in db.execute("SELECT seq, n FROM twin_changes ORDER BY seq")
            for k in range(n)
        ]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # no gap, nothing torn
        top = seqs[-1]
    finally:
        db.close()

    proc, url = start(store, log)
    try:
        # The restarted server serves what was acknowledged...
        for fid in last:
            got = httpx.get(f"{url}/collections/lights/items/{fid}").json()
            assert got["properties"]["wattage_w"] == watts[fid]
        # ... and its event sequence continues from the store's log.
        with httpx.stream(
            "GET", f"{url}/events", headers={"Last-Event-ID": str(top - 1)}, timeout=10
        ) as events:
            ids = []
            for line in events.iter_lines():
                if line.startswith("id:"):
                    ids.append(int(line[3:]))
                    if len(ids) == 1:
                        r = httpx.post(
                            f"{url}/twin/observations",
                            headers=key,
                            json=[
                                {
                                    "collection": "lights",
                                    "id": "L0",
                                    "property": "status",
                                    "time": "2026-12-07T11:00:00Z",
                                    "value": "fault",
                                }
                            ],
                        )
                        assert r.json()["revision"] == top + 1
                if len(ids) == 2:
                    break
        assert ids == [top, top + 1]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
