"""Value cleaning and column mapping, against values computed independently with pandas."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from importers.cleaning import clean
from importers.errors import InvalidOption
from importers.mapping import build_attrs, plan_mapping
from layers.schemas import BRIDGES, LIGHTS, PIPES, ROADS, VALVES


def notes_of(notes) -> dict[str, int]:
    return {n.message: n.count for n in notes}


def test_epoch_milliseconds_negative_before_1970_become_years():
    ms = pd.Series([-2524503600000, -1230750000000, 220942800000, np.nan, 0])
    out, notes = clean(ms, PIPES.field("install_year"))
    want = pd.to_datetime(ms[:3], unit="ms").dt.year.tolist()
    assert out.tolist()[:3] == want == [1890, 1931, 1977]
    assert out.isna().tolist() == [False, False, False, True, True]
    assert notes_of(notes) == {
        "epoch milliseconds read as dates": 3,
        "read as unknown (0 is no year)": 1,
    }


def test_year_strings_dates_and_sentinels():
    raw = pd.Series(["1950", " 2019 ", "20180719", "1985-06-01", "UNK", "?", "", None, "soon"])
    out, notes = clean(raw, PIPES.field("install_year"))
    assert out.tolist()[:4] == [1950, 2019, 2018, 1985]
    assert out[4:].isna().all()
    counts = notes_of(notes)
    assert counts["read as unknown"] == 3
    assert counts["is neither a year nor a date; read as unknown"] == 1


def test_out_of_range_values_become_unknown_with_a_note():
    out, notes = clean(pd.Series([1890, 911, 2400, 1700]), PIPES.field("install_year"))
    assert out.tolist()[0] == 1890 and out.tolist()[3] == 1700
    assert out[1:3].isna().all()
    assert notes_of(notes) == {"outside 1700–2100; read as unknown": 2}
    d, notes = clean(
        pd.Series(["300 mm", "DN200", "-5", "12000", "abc"]), PIPES.field("diameter_mm")
    )
    assert d.tolist()[:2] == [300.0, 200.0] and d[2:].isna().all()
    assert notes_of(notes) == {
        "outside 0–10000; read as unknown": 2,
        "is not a number; read as unknown": 1,
    }


@pytest.mark.parametrize(
    "raw, want",
    [
        ("Sanitary", "sewer"),
        ("COMBINED", "sewer"),
        ("domestic", "sewer"),
        ("SAN", "sewer"),
        ("Storm Sewer", "storm"),
        ("STMP", "storm"),
        ("stormwater", "storm"),
        ("Wastewater", "sewer"),
        ("Potable Water", "water"),
        ("natural gas", "gas"),
        ("Steam", "heat"),
        ("Reclaimed Water", "reclaimed"),
        ("污水", "sewer"),
        ("雨水", "storm"),
        ("LOCAL", None),
    ],
)
def test_network_vocabulary(raw, want):
    out, _ = clean(pd.Series([raw]), PIPES.field("network"))
    assert (None if pd.isna(out[0]) else out[0]) == want


def test_status_and_kind_vocabularies_fold_case_and_codes():
    status, notes = clean(
        pd.Series(["ACT", "In Service", "ABN", "proposed", "MITFL"]), VALVES.field("status")
    )
    assert status.tolist()[:4] == ["in_service", "in_service", "abandoned", "planned"]
    assert pd.isna(status[4]) and notes[0].examples == ["'MITFL'"]
    kind, _ = clean(pd.Series(["Fire Hydrant", "GATE VALVE", "消火栓"]), VALVES.field("kind"))
    assert kind.tolist() == ["hydrant", "valve", "hydrant"]


def test_text_is_trimmed_and_codes_upper_cased():
    m, _ = clean(pd.Series(["pvc ", "Conc", "  ", "`"]), PIPES.field("material"))
    assert m.tolist()[:2] == ["PVC", "CONC"] and m[2:].isna().all()
    n, _ = clean(pd.Series([" Mass Ave  ", 12.0]), ROADS.field("name"))
    assert n.tolist() == ["Mass Ave", "12"]


def test_booleans_and_dates():
    b, _ = clean(pd.Series(["Yes", "N", "open", "CLOSED", "-1", "maybe"]), ROADS.field("oneway"))
    assert b.tolist()[:5] == [True, False, True, False, True] and pd.isna(b[5])
    d, _ = clean(
        pd.Series([1261008000000.0, np.nan, -86400000.0]), BRIDGES.field("last_inspection")
    )
    assert d.tolist()[0] == pd.Timestamp("2009-12-17") and pd.isna(d[1])
    assert d[2] == pd.Timestamp("1969-12-31")
    s, _ = clean(pd.Series(["2014-05-01", "05/02/2014", "junk"]), BRIDGES.field("last_inspection"))
    assert s.tolist()[:2] == [pd.Timestamp("2014-05-01"), pd.Timestamp("2014-05-02")]
    assert pd.isna(s[2])


def test_mapping_by_alias_case_insensitive_with_map_and_set():
    frame = pd.DataFrame(
        {
            "Pipe Size": [300, 450],
            "matl": ["PE", "DI"],
            "FUNCTION": ["LOCAL", "COLLECTOR"],
            "FlowType": ["STM", "SAN"],
            "Zone Code": ["Z1", "Z2"],
            "junk": [1, 2],
        }
    )
    plan = plan_mapping(frame, PIPES, {"Zone Code": "pressure_zone", "junk": ""}, {"status": "ACT"})
    assert plan.columns == {
        "network": "FlowType",  # recognised values beat the earlier alias FUNCTION
        "material": "matl",
        "diameter_mm": "Pipe Size",
        "pressure_zone": "Zone Code",
    }
    attrs, _ = build_attrs(frame, PIPES, plan)
    assert attrs["network"].tolist() == ["storm", "sewer"]
    assert attrs["status"].tolist() == ["in_service", "in_service"]
    assert plan.unmapped(list(frame.columns)) == ["FUNCTION"]
    assert plan.dropped == ["junk"]


def test_bad_map_and_set_options_name_what_exists():
    frame = pd.DataFrame({"a": [1]})
    with pytest.raises(InvalidOption, match="no column 'nope'"):
        plan_mapping(frame, PIPES, {"nope": "material"}, {})
    with pytest.raises(InvalidOption, match=r"no field 'colour'.*network, material"):
        plan_mapping(frame, PIPES, {"a": "colour"}, {})
    with pytest.raises(InvalidOption, match="not one of on, off, fault"):
        plan_mapping(frame, LIGHTS, {}, {"status": "blinking"})
    with pytest.raises(InvalidOption, match="within 0–10000"):
        plan_mapping(frame, PIPES, {}, {"diameter_mm": "-3"})


def test_units_written_after_numbers_are_converted_to_the_fields_unit():
    d, notes = clean(pd.Series(["12 in", "0.3 m", "450mm", "5 kW"]), PIPES.field("diameter_mm"))
    assert d.tolist()[:3] == [pytest.approx(12 * 25.4), pytest.approx(300.0), 450.0]
    assert pd.isna(d[3])
    assert notes_of(notes) == {
        "converted to mm": 2,
        "has a unit that is not mm; read as unknown": 1,
    }
    w, _ = clean(pd.Series(["0.25 kW", "150W"]), LIGHTS.field("wattage_w"))
    assert w.tolist() == [250.0, 150.0]
