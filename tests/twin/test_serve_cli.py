"""`twin serve`: a real uvicorn process over a store, and a clear refusal without one."""

from __future__ import annotations

import subprocess
import sys

import httpx
from typer.testing import CliRunner

from tests.twin.serve_fixtures import fill_store, free_port, sites_layer, wait_healthy, wuhan_pipes
from twin.cli import app


def test_serve_without_a_store_says_so(tmp_path):
    r = CliRunner().invoke(app, ["serve", "--store", str(tmp_path / "nothing")])
    assert r.exit_code != 0
    assert "no store" in r.output


def test_serve_answers_over_http(tmp_path):
    store = fill_store(tmp_path / "store", [wuhan_pipes(40), sites_layer()])
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "twin.cli", "serve", "--store", str(store), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_healthy(proc, port, "twin serve")
        body = httpx.get(f"{base}/collections/pipes/items", params={"limit": 5}).json()
        assert body["numberMatched"] == 40 and body["numberReturned"] == 5
        links = httpx.get(f"{base}/").json()["links"]
        assert any(lk["href"] == f"{base}/collections" for lk in links)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_serve_refuses_an_unknown_caller_scope(tmp_path):
    store = fill_store(tmp_path / "store", [sites_layer()])
    r = CliRunner().invoke(
        app, ["serve", "--store", str(store)], env={"TWIN_ANONYMOUS_ACCESS": "superuser"}
    )
    assert r.exit_code != 0
    assert "superuser" in r.output and "public, internal or restricted" in r.output
