"""Fixtures of the store tests: fresh PostGIS databases on the PostgreSQL at
`TWIN_TEST_POSTGRES` (default: the local server `.ci/run` starts)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import needs

ADMIN_URL = os.environ.get("TWIN_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")


def admin() -> Any:
    """A connection to the server's maintenance database (skips, or fails under `.ci/run`,
    when no PostgreSQL answers)."""
    psycopg = pytest.importorskip("psycopg")
    try:
        return psycopg.connect(ADMIN_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        needs(False, f"PostgreSQL at {ADMIN_URL} ({str(exc).strip().splitlines()[0]})")


def database_url(database: str) -> str:
    return ADMIN_URL.rsplit("/", 1)[0] + "/" + database


@pytest.fixture(scope="session")
def template_db() -> Iterator[str]:
    """A database with PostGIS, copied for each test (a copy is much faster than making the
    extension anew each time); dropped at the end."""
    name = f"twin_contract_tpl_{uuid.uuid4().hex[:10]}"
    with admin() as db:
        db.execute(f'CREATE DATABASE "{name}"')
    try:
        import psycopg

        with psycopg.connect(database_url(name), autocommit=True) as db:
            db.execute("CREATE EXTENSION IF NOT EXISTS postgis")
        yield name
    finally:
        with admin() as db:
            db.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh PostGIS database `twin_contract_<random>`, dropped after the test."""
    template = request.getfixturevalue("template_db")
    name = f"twin_contract_{uuid.uuid4().hex[:12]}"
    with admin() as db:
        db.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    try:
        yield database_url(name)
    finally:
        with admin() as db:
            db.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
