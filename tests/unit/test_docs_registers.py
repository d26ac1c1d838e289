"""docs/modbus-tcp.md shows the register map that `meter-gateway registers` prints, diagnostics block included."""

from __future__ import annotations

import re
from pathlib import Path

from meter_gateway.core.catalogue import load_catalogue
from meter_gateway.core.upstream_map import DIAG_BASE, DIAG_END, DIAGNOSTICS, UpstreamMap, journal_state_code

DOC = Path(__file__).resolve().parents[2] / "docs" / "modbus-tcp.md"
COLUMNS = ("table", "modicon", "address", "registers", "point", "type", "access", "description")


def _md_rows() -> list[str]:
    return ["| " + " | ".join(r[c] for c in COLUMNS) + " |" for r in UpstreamMap(load_catalogue()).rows()]


def _section(text: str, heading: str) -> list[str]:
    body = text.split(heading, 1)[1].split("\n## ", 1)[0]
    return [ln for ln in body.splitlines() if ln.startswith("| ") and not ln.startswith("| table |")]


def test_whole_map_in_the_docs_is_the_registers_output():
    assert _section(DOC.read_text(encoding="utf-8"), "## The whole map") == _md_rows()


def test_diagnostics_table_and_heading_match_the_block():
    text = DOC.read_text(encoding="utf-8")
    m = re.search(r"## Diagnostics block \(input registers (\d+)-(\d+), per unit\)", text)
    assert m and (int(m[1]), int(m[2])) == (30001 + DIAG_BASE, 30001 + DIAG_END - 1)
    diag = [r for r in _md_rows() if "| diag." in r]
    assert len(diag) == len(DIAGNOSTICS)
    assert _section(text, m[0]) == diag
    assert f"input 0-7 and {DIAG_BASE}-{DIAG_END - 1}" in text


def test_journal_state_and_profile_mismatch_end_the_block():
    journal, last = DIAGNOSTICS[-2:]
    assert (journal.key, journal.address, journal.count) == ("journal_state", 124, 1)
    assert (last.key, last.address, last.count) == ("profile_mismatch", 125, 1)
    assert [journal_state_code(s) for s in (None, "ok", "degraded", "unavailable")] == [0, 1, 2, 3]
    assert journal_state_code("degraded", disk_full=True) == 258
