"""Reads from a real streaming replica of the test server (`pg_basebackup -R`, a second
PostgreSQL started on a free port): served by the replica when it has caught up, by the primary
after a write it has not replayed yet, when it lags, is paused or is stopped; back on the
replica once it has caught up again. The store contract runs again on a store with a replica.

Needs replication connections from 127.0.0.1 (`host replication all 127.0.0.1/32 trust` in
pg_hba.conf, as `.ci/run` sets) and the right to run commands as the `postgres` OS user."""

from __future__ import annotations

import inspect
import logging
import os
import pwd
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

import tests.layers.test_store_contract as contract
from layers import postgis_replica
from tests.conftest import needs
from tests.layers.conftest import ADMIN_URL, admin
from tests.layers.test_store_contract import ALL, lamps, values

pytestmark = [pytest.mark.postgis, pytest.mark.xdist_group("postgis-replica")]

ADMIN = urlsplit(ADMIN_URL)


def as_postgres(*args: str) -> list[str]:
    """A command run as the `postgres` OS user."""
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *args]
    if pwd.getpwuid(os.geteuid()).pw_name == "postgres":
        return list(args)
    return ["sudo", "-n", "-u", "postgres", "--", *args]


def run(*args: str, text: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        as_postgres(*args), input=text, capture_output=True, text=True, timeout=120
    )


def flush_lsn(url: str) -> int:
    import psycopg

    with psycopg.connect(url, autocommit=True) as db:
        row = db.execute(postgis_replica.FLUSH_LSN).fetchone()
    return int(row[0]) if row else 0


class Standby:
    """A streaming replica of the test server, in a folder of its own, on port `port`."""

    def __init__(self, folder: str, bindir: Path, port: int) -> None:
        self.folder = folder
        self.data = f"{folder}/data"
        self.bindir = bindir
        self.port = port

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        got = run(
            str(self.bindir / "pg_ctl"),
            "-D",
            self.data,
            "-o",
            f"-p {self.port} -k {self.data}",
            "-l",
            f"{self.folder}/log",
            "-w",
            "-t",
            "60",
            "start",
        )
        assert got.returncode == 0, got.stdout + got.stderr
        self.sql("SELECT 1", wait=True)
        assert self.sql("SELECT pg_is_in_recovery()") is True

    def stop(self) -> None:
        run(str(self.bindir / "pg_ctl"), "-D", self.data, "-m", "fast", "-w", "stop")

    def sql(self, query: str, database: str = "postgres", *, wait: bool = False) -> Any:
        """The first value of `query` on the replica (waiting up to 30 s for it to answer)."""
        import psycopg

        end = time.monotonic() + (30 if wait else 0)
        while True:
            try:
                with psycopg.connect(self.url(database), autocommit=True, connect_timeout=3) as db:
                    row = db.execute(query).fetchone()
                return row[0] if row else None
            except psycopg.OperationalError:
                if time.monotonic() > end:
                    raise
                time.sleep(0.1)

    def catch_up(self, database: str) -> None:
        """Wait until the replica has replayed everything the primary has flushed now."""
        target = flush_lsn(ADMIN_URL)
        end = time.monotonic() + 30
        while True:
            got = self.sql(
                "SELECT (pg_last_wal_replay_lsn() - '0/0'::pg_lsn)::bigint", database, wait=True
            )
            if int(got) >= target:
                return
            assert time.monotonic() < end, "the replica did not catch up in 30 s"
            time.sleep(0.02)

    def pause(self) -> None:
        self.sql("SELECT pg_wal_replay_pause()")

    def resume(self) -> None:
        self.sql("SELECT pg_wal_replay_resume()")


@pytest.fixture(scope="module")
def standby() -> Iterator[Standby]:
    """A streaming replica of the test server for this module, stopped and removed after it."""
    with admin() as db:
        row = db.execute("SELECT current_setting('server_version_num')::int / 10000").fetchone()
        settings = dict(
            db.execute(
                "SELECT name, setting FROM pg_settings WHERE name IN ('max_connections', "
                "'max_worker_processes', 'max_wal_senders', 'max_prepared_transactions', "
                "'max_locks_per_transaction')"
            ).fetchall()
        )
    bindir = Path(f"/usr/lib/postgresql/{row[0] if row else 15}/bin")
    needs((bindir / "pg_basebackup").exists(), f"PostgreSQL server binaries in {bindir}")
    if shutil.which(as_postgres("true")[0]) is None or run("true").returncode != 0:
        needs(False, "running commands as the postgres OS user (root, or sudo -n)")
    folder = f"/tmp/twin-replica-{uuid.uuid4().hex[:10]}"
    made = run("mkdir", "-m", "700", folder)
    assert made.returncode == 0, made.stderr
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = Standby(folder, bindir, port)
    # A replication slot keeps on the primary the WAL the replica has not had yet: a replica
    # stopped a while (a test) would otherwise find it gone after the checkpoints of other
    # tests' CREATE DATABASE, and never stream again. Slots a killed run left are dropped.
    with admin() as db:
        db.execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
            "WHERE slot_name LIKE 'twin_test_%' AND NOT active"
        )
    slot = ""
    try:
        for _ in range(3):  # a concurrent checkpoint may end a backup's stream: again
            slot = f"twin_test_{uuid.uuid4().hex[:12]}"
            base = run(
                str(bindir / "pg_basebackup"),
                "-h",
                ADMIN.hostname or "127.0.0.1",
                "-p",
                str(ADMIN.port or 5432),
                "-U",
                ADMIN.username or "postgres",
                "-D",
                server.data,
                "-R",
                "-X",
                "stream",
                "-c",
                "fast",
                "-C",
                "-S",
                slot,
            )
            if base.returncode == 0 or "pg_hba.conf" in base.stderr:
                break
            run("rm", "-rf", server.data)
            _drop_slot(slot)
        needs(
            "pg_hba.conf" not in base.stderr,
            "replication connections from 127.0.0.1 (pg_hba.conf: host replication all "
            f"127.0.0.1/32 trust): {base.stderr.strip()}",
        )
        assert base.returncode == 0, base.stderr
        conf = "".join(f"{k} = {v}\n" for k, v in settings.items())
        conf += "listen_addresses = '127.0.0.1'\nhot_standby = on\nfsync = off\n"
        # Streaming again soon after the primary ends its connection (default 5 s).
        conf += "wal_retrieve_retry_interval = '200ms'\n"
        run("tee", f"{server.data}/postgresql.conf", text=conf)
        run(
            "tee",
            f"{server.data}/pg_hba.conf",
            text="local all all trust\nhost all all 127.0.0.1/32 trust\n",
        )
        server.start()
        yield server
    finally:
        server.stop()
        run("rm", "-rf", folder)
        _drop_slot(slot)


def _drop_slot(slot: str) -> None:
    """Drop the replication slot `slot` when it exists (its replica is gone)."""
    if not slot:
        return
    end = time.monotonic() + 10  # its sender may take a moment to go after the replica
    with admin() as db:
        while True:
            row = db.execute(
                "SELECT active FROM pg_replication_slots WHERE slot_name = %s", (slot,)
            ).fetchone()
            if row is None:
                return
            if not row[0] or time.monotonic() > end:
                db.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
                return
            time.sleep(0.1)


@pytest.fixture
def pair(pg_url: str, standby: Standby, tmp_path: Path) -> Iterator[tuple[Any, str]]:
    """A store on a fresh database with the standby as its replica (caught up), and the
    replica's URL of that database."""
    from layers.postgis import PostGISStore

    database = pg_url.rsplit("/", 1)[1]
    standby.catch_up(database)
    store = PostGISStore(
        pg_url, raster_dir=tmp_path / "rasters", replica=standby.url(database), replica_max_lag_s=30
    )
    yield store, standby.url(database)
    store.close()


def until(check: Any, seconds: float = 10.0) -> None:
    end = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.02)


def status(store: Any) -> list[Any]:
    return values(store.load("lamps", ALL), "status")


def test_reads_come_from_the_replica_once_it_has_caught_up(
    pair: tuple[Any, str], pg_url: str, standby: Standby, tmp_path: Path
) -> None:
    from layers.postgis import PostGISStore

    store, replica = pair
    store.write(lamps(["a"], [114.3], ["on"]), source="f", user="u")
    standby.catch_up(replica.rsplit("/", 1)[1])
    time.sleep(postgis_replica.CHECK_S)
    before = store._replica.served
    assert status(store) == ["on"] and store.revision() == 1
    assert store._replica.served == before + 2
    # Only the replica can still answer "on": replay is paused, another process wrote "off"
    # (this store has not heard of it: it does not listen).
    standby.pause()
    try:
        other = PostGISStore(pg_url, raster_dir=tmp_path / "other")
        other.write(lamps(["a"], [114.3], ["off"]), source="f", user="u")
        assert status(store) == ["on"] and store.revision() == 1
        assert status(other) == ["off"] and other.revision() == 2
        other.close()
    finally:
        standby.resume()


def test_a_process_reads_its_own_writes_and_never_an_older_revision(
    pair: tuple[Any, str],
) -> None:
    store, _ = pair
    seen = 0
    for k in range(30):
        store.write(lamps(["a"], [114.3], [f"s{k}"]), source="f", user="u")
        assert status(store) == [f"s{k}"]
        revision = store.revision()
        assert revision == k + 1 and revision >= seen
        seen = revision
        assert [c.seq for c in store.changes(k)] == [k + 1]
    until(lambda: status(store) == ["s29"] and store._replica.served > 0)


def test_a_paused_replica_leaves_reads_to_the_primary_until_it_resumes(
    pair: tuple[Any, str], standby: Standby
) -> None:
    store, replica = pair
    store.write(lamps(["a"], [114.3], ["on"]), source="f", user="u")
    standby.pause()
    try:
        time.sleep(postgis_replica.CHECK_S)
        served = store._replica.served
        for k in range(5):
            store.write(lamps(["a"], [114.3], [f"s{k}"]), source="f", user="u")
            assert status(store) == [f"s{k}"] and store.revision() == k + 2
            assert len(store.log(0)) == k + 2
        assert store._replica.served == served  # every read after a write: the primary
    finally:
        standby.resume()
    standby.catch_up(replica.rsplit("/", 1)[1])
    until(lambda: status(store) == ["s4"] and store._replica.served > served)


def test_a_replica_lagging_past_the_bound_is_skipped_and_logged_once(
    pg_url: str, standby: Standby, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from layers.postgis import PostGISStore

    database = pg_url.rsplit("/", 1)[1]
    standby.catch_up(database)
    store = PostGISStore(
        pg_url, raster_dir=tmp_path, replica=standby.url(database), replica_max_lag_s=1
    )
    other = PostGISStore(pg_url, raster_dir=tmp_path)
    try:
        other.write(lamps(["a"], [114.3], ["on"]), source="f", user="u")
        standby.catch_up(database)
        time.sleep(postgis_replica.CHECK_S)
        assert status(store) == ["on"]
        standby.pause()
        other.write(lamps(["a"], [114.3], ["off"]), source="f", user="u")
        time.sleep(1.5)  # the replica's last replayed commit is now older than the bound
        with caplog.at_level(logging.WARNING, logger="layers.postgis_replica"):
            for _ in range(3):
                assert status(store) == ["off"] and store.revision() == 2
                time.sleep(postgis_replica.CHECK_S)
        lagging = [r.getMessage() for r in caplog.records if "lags" in r.getMessage()]
        assert len(lagging) == 1 and "reads go to the primary" in lagging[0]
    finally:
        standby.resume()
        store.close()
        other.close()


def test_a_stopped_replica_leaves_reads_to_the_primary_without_error(
    pair: tuple[Any, str], standby: Standby, caplog: pytest.LogCaptureFixture
) -> None:
    store, replica = pair
    store.write(lamps(["a"], [114.3], ["on"]), source="f", user="u")
    standby.catch_up(replica.rsplit("/", 1)[1])
    until(lambda: status(store) == ["on"] and store._replica.served > 0)
    standby.stop()
    try:
        with caplog.at_level(logging.WARNING, logger="layers.postgis_replica"):
            assert status(store) == ["on"] and store.revision() == 1
            for k in range(5):
                store.write(lamps(["a"], [114.3], [f"s{k}"]), source="f", user="u")
                assert status(store) == [f"s{k}"] and store.revision() == k + 2
                time.sleep(postgis_replica.CHECK_S)
        down = [r.getMessage() for r in caplog.records if "reads go to the primary" in r.message]
        assert len(down) == 1
    finally:
        standby.start()
    standby.catch_up(replica.rsplit("/", 1)[1])
    served = store._replica.served
    until(lambda: status(store) == ["s4"] and store._replica.served > served)


def test_a_follower_on_the_replica_never_misses_an_announced_change(
    pair: tuple[Any, str], pg_url: str, tmp_path: Path
) -> None:
    from layers.postgis import PostGISStore

    store, _ = pair
    woke = threading.Event()
    store.listen(woke.set)
    until(woke.is_set)
    writer = PostGISStore(pg_url, raster_dir=tmp_path / "writer")
    try:
        for k in range(10):
            woke.clear()
            writer.write(lamps([f"k{k}"], [114.3], ["on"]), source="f", user="u")
            until(woke.is_set)
            # Straight after the announcement: the follower's log has the entry.
            assert [c.seq for c in store.log(k)] == [k + 1]
    finally:
        writer.close()


# -- the store contract on a store with a replica --------------------------------------------


@pytest.fixture
def store(pair: tuple[Any, str]) -> Any:
    """The contract's store: PostGIS with a caught-up replica."""
    return pair[0]


for _name, _test in vars(contract).items():
    if _name.startswith("test_") and "store" in inspect.signature(_test).parameters:
        globals()[_name] = _test


def test_the_settings_name_the_replica(
    pg_url: str, standby: Standby, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from layers.settings import StoreSettings, open_store

    replica = standby.url(pg_url.rsplit("/", 1)[1])
    monkeypatch.setenv("TWIN_STORE", pg_url)
    monkeypatch.setenv("TWIN_STORE_REPLICA", replica)
    monkeypatch.setenv("TWIN_REPLICA_MAX_LAG_S", "2.5")
    monkeypatch.setenv("TWIN_RASTER_DIR", str(tmp_path))
    settings = StoreSettings(_env_file=None)
    assert (settings.replica, settings.replica_max_lag_s) == (replica, 2.5)
    store: Any = open_store(settings)
    assert store._replica.location == replica and store._replica.max_lag_s == 2.5
    store.close()
    monkeypatch.setenv("TWIN_STORE_REPLICA", str(tmp_path))
    with pytest.raises(ValueError, match="postgresql://"):
        StoreSettings(_env_file=None)
