"""The audit writer: accepted writes always written and synced; refusals rate-limited and coalesced, counts kept."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from meter_gateway.writes import COALESCE_WINDOW, REFUSAL_BURST, REFUSAL_RATE, AuditLog, AuditRecorder


class Clock:
    """A settable monotonic clock, so the windows are tested without sleeping."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def rec(decision: str = "denied", point: str = "Demand_Interval", value: object = 30, source: str = "10.0.0.9"):
    return {
        "time": "2026-12-01T00:00:00Z",
        "protocol": "modbus",
        "source": source,
        "meter": "m1",
        "point": point,
        "value": value,
        "decision": decision,
        "reason": "writes are disabled",
        "meter_reply": "ok" if decision == "accepted" else "",
    }


def lines(path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_repeated_refusals_are_coalesced_and_accepted_writes_never_dropped(tmp_path):
    path = tmp_path / "audit.jsonl"
    clock = Clock()
    r = AuditRecorder(AuditLog(path), clock)
    for i in range(1000):
        assert r.refusal(rec()) is (i == 0)  # the first is written at once, the repeats counted
        if i % 100 == 0:
            r.write(rec("accepted", "Sync_Clock", 1))  # in between: always written at once
        clock.t += 0.001
    got = lines(path)
    assert [x["decision"] for x in got] == ["denied"] + ["accepted"] * 10
    clock.t += COALESCE_WINDOW
    r.flush()
    got = lines(path)
    assert got[-1]["count"] == 999 and got[-1]["point"] == "Demand_Interval" and "first_time" in got[-1]
    assert sum(x.get("count", 1) for x in got if x["decision"] == "denied") == 1000
    # after the window a new identical refusal opens a new record
    assert r.refusal(rec()) is True


def test_a_flood_of_distinct_refusals_is_rate_limited_and_summed(tmp_path):
    path = tmp_path / "audit.jsonl"
    clock = Clock()
    r = AuditRecorder(AuditLog(path), clock)
    n = REFUSAL_BURST + 300
    for i in range(n):
        r.refusal(rec(value=i, decision="out-of-range" if i % 2 else "denied"))
    r.write(rec("accepted", "Sync_Clock", 1))
    assert len(lines(path)) == REFUSAL_BURST + 1  # the burst, then the accepted write
    clock.t += 1.0  # the bucket refills at REFUSAL_RATE per second
    for i in range(int(REFUSAL_RATE)):
        assert r.refusal(rec(value=10_000 + i)) is True
    assert r.refusal(rec(value=20_000)) is False
    r.flush(force=True)
    got = lines(path)
    summary = [x for x in got if x["point"] == "*"]
    assert len(summary) == 1 and summary[0]["count"] == 301 and summary[0]["source"] == "10.0.0.9"
    assert sum(summary[0]["decisions"].values()) == 301
    assert sum(x.get("count", 1) for x in got if x["decision"] != "accepted") == n + int(REFUSAL_RATE) + 1


def test_audit_file_created_0640_and_a_world_readable_one_tightened(tmp_path):
    path = tmp_path / "var" / "audit.jsonl"
    AuditLog(path).close()
    assert stat.S_IMODE(path.stat().st_mode) & 0o037 == 0
    old = tmp_path / "old.jsonl"
    old.write_text("")
    os.chmod(old, 0o666)
    AuditLog(old).close()
    assert stat.S_IMODE(old.stat().st_mode) == 0o640


def test_an_audit_log_on_a_device_is_neither_chmodded_nor_synced():
    before = os.stat("/dev/null").st_mode
    log = AuditLog(Path("/dev/null"))
    AuditRecorder(log).write(rec("accepted"))
    log.close()
    assert os.stat("/dev/null").st_mode == before


def test_a_record_torn_by_a_crash_is_cut_before_the_next_one(tmp_path: Path):
    """A fragment left by kill -9 would merge with the next record into one unreadable line."""
    path = tmp_path / "audit.jsonl"
    path.write_bytes(b'{"decision": "accepted", "point": "A"}\n{"decision": "inte')
    log = AuditLog(path)
    log.append({"decision": "denied", "point": "B"})
    log.close()
    lines = path.read_bytes().splitlines()
    assert [json.loads(line)["point"] for line in lines] == ["A", "B"]
