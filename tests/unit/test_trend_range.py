"""ReadRange item selection (ASHRAE 135 clause 15.8.1.1.4) and the trend records' journal table."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from bacpypes3.basetypes import DateTime
from bacpypes3.primitivedata import Date, Time

from meter_gateway.core import trend_range as tr
from meter_gateway.core.quality import PointValue, Quality
from meter_gateway.journal import trend as trend_store
from meter_gateway.journal.store import event, open_journal
from meter_gateway.journal.verify import verify
from meter_gateway.servers.bacnet_trend import Record, TrendBuffer, bacnet_datetime, sample, unix_time

# a log buffer of 10 records: sequence numbers 41..50 (30 records were overwritten), one every 15 minutes
SEQS = list(range(41, 51))
T0 = 1_790_000_000.0
TIMES = [T0 + 900 * i for i in range(10)]


def items(sel: tr.Selection, values: list) -> list:
    return values[sel.start : sel.stop]


@pytest.mark.parametrize(
    ("index", "count", "expected"),
    [
        (1, 3, [41, 42, 43]),  # from the first (oldest) item onwards
        (3, -3, [41, 42, 43]),  # back to the first: items reference-|count|+1 .. reference
        (9, 5, [49, 50]),  # clipped at the end of the list
        (2, -5, [41, 42]),  # clipped at the start
        (10, 1, [50]),
        (11, 1, []),  # an index past the end names no item
        (0, 5, []),  # index 0 names no item
    ],
)
def test_by_position(index, count, expected):
    assert items(tr.by_position(10, index, count), SEQS) == expected


@pytest.mark.parametrize(
    ("ref", "count", "expected"),
    [
        (45, 3, [45, 46, 47]),  # starts at the record of that sequence number
        (45, -3, [43, 44, 45]),  # ends at it
        (48, 10, [48, 49, 50]),
        (42, -10, [41, 42]),
        (40, 5, [41, 42, 43, 44]),  # the range 40..44, as far as the buffer holds it (40 was overwritten)
        (52, -5, [48, 49, 50]),  # 48..52: 51 and 52 are not recorded yet
        (30, 5, []),  # 30..34: all overwritten
        (60, -5, []),  # 56..60: none recorded yet
    ],
)
def test_by_sequence_number(ref, count, expected):
    assert items(tr.by_sequence_number(SEQS, ref, count), SEQS) == expected


def test_sequence_numbers_wrap_after_2_to_the_32_minus_1():
    seqs = [tr.SEQUENCE_MAX - 2, tr.SEQUENCE_MAX - 1, tr.SEQUENCE_MAX, 1, 2]
    assert items(tr.by_sequence_number(seqs, tr.SEQUENCE_MAX, 3), seqs) == [tr.SEQUENCE_MAX, 1, 2]
    assert items(tr.by_sequence_number(seqs, 1, -2), seqs) == [tr.SEQUENCE_MAX, 1]
    assert items(tr.by_sequence_number(seqs, tr.SEQUENCE_MAX - 3, 2), seqs) == [tr.SEQUENCE_MAX - 2]
    assert items(tr.by_sequence_number(seqs, 3, -2), seqs) == [2]
    assert tr.next_sequence(tr.SEQUENCE_MAX) == 1
    buf = TrendBuffer(3)
    buf.last_n = tr.SEQUENCE_MAX - 1
    buf.add(T0, "real", 1.0, (0, 0, 0, 0))
    buf.add(T0 + 1, "real", 2.0, (0, 0, 0, 0))
    assert [r.seq for r in buf.records] == [tr.SEQUENCE_MAX, 1] and buf.total == 1


@pytest.mark.parametrize(
    ("ref", "count", "expected"),
    [
        (TIMES[2], 2, [44, 45]),  # count > 0: the first record strictly newer than the reference time
        (TIMES[2] + 1, 2, [44, 45]),
        (TIMES[2] - 1, 2, [43, 44]),
        (TIMES[2], -2, [41, 42]),  # count < 0: the last record strictly older than the reference time
        (TIMES[2] + 1, -2, [42, 43]),
        (TIMES[9], 1, []),  # nothing newer than the last record
        (TIMES[0], -1, []),  # nothing older than the first
        (TIMES[0] - 86400, 100, SEQS),
    ],
)
def test_by_time(ref, count, expected):
    assert items(tr.by_time(TIMES, ref, count), SEQS) == expected


def test_count_zero_is_refused():
    for call in (
        lambda: tr.by_position(10, 1, 0),
        lambda: tr.by_sequence_number(SEQS, 45, 0),
        lambda: tr.by_time(TIMES, T0, 0),
    ):
        with pytest.raises(ValueError):
            call()


@pytest.mark.parametrize(
    ("sel", "length", "room", "expected"),
    [
        (tr.by_position(10, 1, 10), 10, 100, (0, 10, True, True, False)),  # the whole list
        (tr.by_position(10, 1, 10), 10, 4, (0, 4, True, False, True)),  # cut: more-items, the first ones kept
        (tr.by_position(10, 10, -10), 10, 4, (6, 10, False, True, True)),  # backwards: those nearest the reference
        (tr.by_position(10, 4, 3), 10, 100, (3, 6, False, False, False)),
        (tr.by_position(10, 11, 3), 10, 100, (0, 0, False, False, False)),  # no item: no flag
        (tr.whole(0), 0, 100, (0, 0, False, False, False)),
        (tr.whole(10), 10, 100, (0, 10, True, True, False)),
    ],
)
def test_result_flags(sel, length, room, expected):
    r = tr.fit(sel, length, room)
    assert (r.start, r.stop, r.first_item, r.last_item, r.more_items) == expected
    assert r.count == expected[1] - expected[0]


def test_record_kinds_and_status_flags():
    from meter_gateway.bacnet_model import ObjectSpec
    from meter_gateway.core.catalogue import load_catalogue

    cat = {p.name: p for p in load_catalogue()}
    energy = ObjectSpec("m", cat["Active_Energy_Import"], "accumulator", 1001, "m.Active_Energy_Import", "")
    power = ObjectSpec("m", cat["Active_Power_Total"], "analog-input", 1005, "m.Active_Power_Total", "")
    assert sample(energy, PointValue(1234.56, Quality.GOOD), T0) == ("unsigned", 123456, (0, 0, 0, 0))
    assert sample(power, PointValue(2.5, Quality.GOOD), T0) == ("real", 2.5, (0, 0, 0, 0))
    # a value that is not good is logged as the object shows it, with the fault flag
    assert sample(power, PointValue(2.5, Quality.COMM_FAILURE), T0) == ("real", 2.5, (0, 1, 0, 0))
    assert sample(power, PointValue(2.5, Quality.STALE), T0) == ("real", 2.5, (0, 1, 0, 0))
    # no value at all: a failure datum
    assert sample(power, PointValue(None, Quality.COMM_FAILURE), T0)[:2] == ("failure", ("communication", "timeout"))
    assert sample(power, PointValue(None, Quality.UNKNOWN), T0)[:2] == ("failure", ("property", "valueNotInitialized"))
    for r in (
        Record(1, T0, "unsigned", 123456, (0, 0, 0, 0)),
        Record(2, T0 + 1.5, "real", -2.5, (0, 1, 0, 0)),
        Record(3, T0 + 2, "failure", ("communication", "timeout"), (0, 1, 0, 0)),
        Record(4, T0 + 3, "status", (0, 0, 1), None),
    ):
        assert Record.from_stored(r.stored()) == r


def test_local_time_round_trip_in_the_gateway_zone():
    zone = ZoneInfo("Europe/Paris")
    dt = bacnet_datetime(T0, zone)
    assert unix_time(dt, zone) == T0
    with pytest.raises(ValueError):
        unix_time(DateTime(date=Date((255, 1, 1, 255)), time=Time((0, 0, 0, 0))), zone)  # any year


def test_journal_table_is_added_to_an_existing_journal_and_verify_still_passes(tmp_path: Path):
    path = tmp_path / "journal.sqlite"
    store, _, problem = open_journal(path)
    assert not problem
    store.append([event("test", int(T0), "a journal written before trend logs existed")])
    store.checkpoint()
    store.close()
    con = sqlite3.connect(path)
    assert "trend_records" not in {n for (n,) in con.execute("SELECT name FROM sqlite_master")}
    con.close()

    store, _, problem = open_journal(path)
    assert not problem
    rows = [("m/Active_Power_Total", Record(n, T0 + n, "real", float(n), (0, 0, 0, 0)).stored()) for n in range(1, 8)]
    trend_store.append(store, rows, {"m/Active_Power_Total": 5})  # buffer of 5: records 1 and 2 go
    loaded = trend_store.load(store, [("m/Active_Power_Total", 5), ("m/other", 5)])
    assert [r.n for r in loaded["m/Active_Power_Total"]] == [3, 4, 5, 6, 7] and loaded["m/other"] == []
    assert [r.n for r in trend_store.load(store, [("m/Active_Power_Total", 2)])["m/Active_Power_Total"]] == [6, 7]
    store.checkpoint()
    store.close()
    report = verify(path)
    assert report.exit_code == 0, str(report)


TREND_CONFIG = """\
buses:
  - {id: rtu, type: modbus_rtu, simulated: true}
meters:
  - {id: m1, bus: rtu, address: 1, profile: generic, bacnet_instance_base: 1000}
upstream:
  bacnet:
    trend_logs:
      enabled: true
      interval: INTERVAL
      points:
        - Active_Energy_Import
        - POINT
"""


@pytest.mark.parametrize(
    ("interval", "point", "line", "words"),
    [
        ("900", "Active_Power_Totl", 12, "unknown point 'Active_Power_Totl'"),
        ("900", "Phase_Loss_L1", 12, "point 'Phase_Loss_L1' is a binary-input: only analog and energy points"),
        ("900", "Active_Energy_Import", 12, "listed twice"),
        ("0", "Active_Power_Total", 9, "interval"),
    ],
)
def test_check_refuses_bad_trend_log_settings_with_the_line(interval, point, line, words):
    from meter_gateway.config import ConfigError, parse_config

    text = TREND_CONFIG.replace("INTERVAL", interval).replace("POINT", point)
    with pytest.raises(ConfigError) as exc:
        parse_config(text, "site/gateway.yaml")
    assert f"site/gateway.yaml:{line}:" in str(exc.value) and words in str(exc.value), str(exc.value)
    ok = parse_config(TREND_CONFIG.replace("INTERVAL", "1").replace("POINT", "Voltage_L1_N"), "site/gateway.yaml")
    assert ok.upstream.bacnet.trend_logs.points == ["Active_Energy_Import", "Voltage_L1_N"]


def test_trend_logs_per_meter_and_in_the_ede(profiles):
    from meter_gateway.commands.ede import ede_rows
    from meter_gateway.config import parse_config

    text = TREND_CONFIG.replace("INTERVAL", "60").replace("POINT", "Active_Power_Total")
    cfg = parse_config(text, profiles=profiles)
    rows, _ = ede_rows(cfg, profiles)
    trends = [r for r in rows if r[3] == "20"]
    # the same instance as the logged object (base 1000 + fixed index), read-only, no COV
    assert [(r[2], r[4], r[9], r[10], r[15]) for r in trends] == [
        ("m1.Active_Energy_Import.Trend", "1001", "N", "N", "m1/Active_Energy_Import/trend"),
        ("m1.Active_Power_Total.Trend", "1005", "N", "N", "m1/Active_Power_Total/trend"),
    ]
    assert {r[4] for r in rows if r[2] in ("m1.Active_Energy_Import", "m1.Active_Power_Total")} == {"1001", "1005"}
    off = parse_config(text.replace("enabled: true", "enabled: false"), profiles=profiles)
    assert not [r for r in ede_rows(off, profiles)[0] if r[3] == "20"]


@pytest.mark.parametrize(
    "record",
    [
        Record(1, T0, "real", 2.5, (0, 0, 0, 0)),
        Record(2, T0, "unsigned", 0, (0, 1, 0, 0)),
        Record(3, T0, "unsigned", 255, (0, 0, 0, 0)),
        Record(4, T0, "unsigned", 256, (0, 0, 0, 0)),
        Record(5, T0, "unsigned", 0xFFFFFFFF, (0, 0, 0, 0)),
        Record(6, T0, "failure", ("communication", "timeout"), (0, 1, 0, 0)),
        Record(7, T0, "failure", ("property", "valueNotInitialized"), (0, 1, 0, 0)),
        Record(8, T0, "status", (0, 0, 1), None),
        Record(9, T0 + 0.57, "real", -1e-3, (1, 1, 1, 1)),
        Record(10, T0, "failure", ("device", "operationalProblem"), None),
    ],
)
def test_direct_encoding_and_length_are_what_bacpypes3_encodes(record):
    """ReadRange sizes and encodes an answer without building bacpypes3 objects for the records."""
    from meter_gateway.servers.bacnet_trend import encode_record, encoded_length, log_record

    zone = ZoneInfo("Europe/Paris")
    item = log_record(record, zone).encode().encode().pduData
    assert encode_record(record, zone) == bytes(item) and encoded_length(record) == len(item)
