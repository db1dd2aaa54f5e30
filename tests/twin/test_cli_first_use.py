"""The first hour with `twin`: a user's mistake (a missing file, an unknown layer, a store URL)
gets one clear line and a non-zero exit, never the bug-report text; `--store` goes before or
after the command; the help shows flags as flags."""

from __future__ import annotations

import json
import re
from pathlib import Path

import geopandas as gpd
import pytest
import shapely
from typer.testing import CliRunner

from layers.schemas import BUILTIN
from twin.cli import app, suggest_layer

runner = CliRunner()


def twin(*args: str | Path, env: dict[str, str] | None = None):
    return runner.invoke(app, [str(a) for a in args], env=env)


def one_line(result, *, code: int = 1) -> str:
    """The single `twin: ...` line a refused command prints, checked to be alone."""
    assert result.exit_code == code, result.output
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("twin: "), result.stderr
    assert "report it" not in result.output and "Traceback" not in result.output
    return lines[0]


@pytest.fixture
def lamps_file(tmp_path: Path) -> Path:
    path = tmp_path / "lamps.geojson"
    gpd.GeoDataFrame(
        {"POLEID": ["P1", "P2", "P3"], "WATTS": [70, 100, 150]},
        geometry=[shapely.Point(114.32 + i * 0.001, 30.35) for i in range(3)],
        crs="EPSG:4326",
    ).to_file(path, driver="GeoJSON")
    return path


def layer_names(store: Path) -> list[str]:
    result = twin("layers", "--store", store, "--json")
    assert result.exit_code == 0, result.output
    return [row["name"] for row in json.loads(result.stdout)]


def test_a_missing_file_is_one_line_not_a_bug_report(tmp_path):
    store = tmp_path / "store"
    line = one_line(twin("import", "lights", tmp_path / "missing.geojson", "--store", store))
    assert line == f"twin: no such file: {tmp_path / 'missing.geojson'}"
    assert not store.exists()


def test_a_real_bug_still_asks_for_a_report(tmp_path, lamps_file, monkeypatch):
    import importers.pipeline

    def broken(*args: object, **kwargs: object) -> None:
        raise KeyError("oops")

    monkeypatch.setattr(importers.pipeline, "import_file", broken)
    result = twin("import", "lights", lamps_file, "--store", tmp_path / "store")
    assert result.exit_code == 2 and "please report it" in result.stderr


def test_an_unknown_layer_is_refused_with_a_guess(tmp_path, lamps_file):
    store = tmp_path / "store"
    line = one_line(twin("import", "lamps", lamps_file, "--store", store))
    assert "no layer 'lamps': did you mean lights?" in line and "--new-layer" in line
    assert not store.exists()  # nothing made for a refused import
    assert twin("import", "lamps", lamps_file, "--store", store, "--new-layer").exit_code == 0
    assert layer_names(store) == ["lamps"]
    again = twin("import", "lamps", lamps_file, "--store", store)  # now it is in the store
    assert again.exit_code == 0 and "3 unchanged" in again.stdout
    line = one_line(twin("import", "lampz", lamps_file, "--store", store))
    assert "did you mean lamps?" in line  # the stored layer's name is the nearer one


def test_a_schema_file_makes_a_new_layer(tmp_path, lamps_file):
    toml = tmp_path / "poles.toml"
    toml.write_text('title = "Poles"\ngeometry = "point"\n[fields]\nwatts = "float"\n')
    store = tmp_path / "store"
    result = twin("import", "poles", lamps_file, "--store", store, "--schema", toml)
    assert result.exit_code == 0, result.output
    assert layer_names(store) == ["poles"]


@pytest.mark.parametrize(
    "name, guess",
    [
        ("lamps", "lights"),
        ("light", "lights"),
        ("streetlights", "lights"),
        ("hydrants", "valves"),
        ("pipe", "pipes"),
        ("park", "parks"),
        ("qqqq", None),
    ],
)
def test_suggest_layer(name, guess):
    assert suggest_layer(name, BUILTIN.values()) == guess


def test_store_before_the_command(tmp_path, lamps_file):
    first, second = tmp_path / "first", tmp_path / "second"
    result = twin("--store", first, "import", "lights", lamps_file)
    assert result.exit_code == 0, result.output
    assert layer_names(first) == ["lights"]
    listed = twin("--store", first, "layers", "--json")
    assert [r["name"] for r in json.loads(listed.stdout)] == ["lights"]
    # The command's own --store wins; the one before the command wins over TWIN_STORE.
    own = twin("--store", first, "layers", "--store", second)
    assert "no store at" in one_line(own) and str(second) in own.stderr
    env = twin("--store", first, "layers", "--json", env={"TWIN_STORE": str(second)})
    assert [r["name"] for r in json.loads(env.stdout)] == ["lights"]
    assert "no store at" in one_line(twin("layers", env={"TWIN_STORE": str(second)}))


@pytest.mark.parametrize(
    "where", ["before", "after", "env"], ids=["twin --store", "COMMAND --store", "TWIN_STORE"]
)
def test_a_store_url_is_a_database_and_an_unreachable_one_is_one_line(
    tmp_path, lamps_file, monkeypatch, where
):
    monkeypatch.chdir(tmp_path)
    url = "postgresql://twin:secret@127.0.0.1:1/city"  # nothing listens on port 1
    args = {
        "before": ["--store", url, "import", "lights", lamps_file],
        "after": ["import", "lights", lamps_file, "--store", url],
        "env": ["import", "lights", lamps_file],
    }[where]
    result = twin(*args, env={"TWIN_STORE": url} if where == "env" else None)
    line = one_line(result)
    assert "postgresql://twin@127.0.0.1:1/city" in line  # the store named, its password not
    assert "secret" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lamps.geojson"]  # no `postgresql:`


@pytest.mark.parametrize("command", [[], ["import"], ["serve"], ["tiles", "export"]])
def test_help_shows_flags_as_flags(command):
    result = twin(*command, "--help")
    assert result.exit_code == 0
    assert re.search(r"^  --help +Show this message and exit\.$", result.stdout, re.M)
    assert "<bool>" not in result.stdout
    if command == ["import"]:
        assert re.search(r"^  --new-layer +COLLECTION may be", result.stdout, re.M)


def test_help_lists_each_command_whole():
    out = twin("--help").stdout
    commands = out.split("Commands:")[1]
    assert "..." not in commands
    assert "print what landed, was repaired or rejected." in " ".join(commands.split())


def test_demo_without_serving_on_a_store_with_data_does_not_say_serving(tmp_path, lamps_file):
    store = tmp_path / "store"
    assert twin("import", "lights", lamps_file, "--store", store).exit_code == 0
    result = twin("demo", "--no-serve", "--store", store)
    assert result.exit_code == 0, result.output
    assert "serving it" not in result.output
    assert result.output.strip() == f"{store} already holds data: left as it is"
    assert layer_names(store) == ["lights"]
