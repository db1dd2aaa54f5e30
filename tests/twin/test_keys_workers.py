"""Keys across worker processes: a key revoked by `twin keys revoke` (another process) is
refused on the very next request by every worker of `twin serve --workers 2`, and a key made
while they run is taken at once."""

from __future__ import annotations

import http.client

from typer.testing import CliRunner

from tests.twin.serve_fixtures import fill_store, sites_layer, wuhan_pipes
from tests.twin.worker_fixtures import children, connect_to, serving
from twin.cli import app


def _get(conn: http.client.HTTPConnection, path: str, key: str | None) -> int:
    headers = {"Accept-Encoding": "identity"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    conn.request("GET", path, headers=headers)
    r = conn.getresponse()
    r.read()
    return r.status


def test_a_revoked_key_is_refused_by_every_worker_on_the_next_request(tmp_path) -> None:
    store = fill_store(tmp_path / "store", [wuhan_pipes(), sites_layer()])
    runner = CliRunner()
    with serving(store, 2, tmp_path / "serve.log") as served:
        added = runner.invoke(
            app, ["keys", "add", "crew", "--role", "engineer", "--store", str(store)]
        )
        assert added.exit_code == 0, added.output
        key = added.stdout.strip().splitlines()[-1]
        pids = children(served.proc.pid)
        assert len(pids) == 2
        conns = [connect_to(served.port, pid, pids) for pid in pids]
        for conn in conns:  # each worker takes the key made after it started
            assert _get(conn, "/collections/pipes/items?limit=1", key) == 200
            assert _get(conn, "/collections/pipes/items?limit=1", "twin_not-a-key") == 401
        revoked = runner.invoke(app, ["keys", "revoke", "crew", "--store", str(store)])
        assert revoked.exit_code == 0, revoked.output
        for conn in conns:  # the next request on each worker, at once
            assert _get(conn, "/collections/pipes/items?limit=1", key) == 401
            assert _get(conn, "/collections/pipes/tiles/WebMercatorQuad/10/0/0", key) == 401
            assert _get(conn, "/collections/pipes/items?limit=1", None) == 200
        for conn in conns:
            conn.close()
