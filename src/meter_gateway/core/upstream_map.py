"""The canonical upstream Modbus register map (DESIGN.md section 3), built from the catalogue: pure logic."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

from .catalogue import Catalogue, PointDef, PointKind, PollClass
from .codec import DataType, WordOrder, encode

#: Diagnostics block: input registers from this address (Modicon 30101), one block per unit.
DIAG_BASE = 100
DIAG_CLASSES = (
    PollClass.POWER,
    PollClass.VOLTAGE,
    PollClass.ENERGY,
    PollClass.ALARM,
    PollClass.STATUS,
    PollClass.CONFIG,
)
NEVER = 0xFFFFFFFF  # "never read" / "not available" for uint32
FLOAT_NAN = [0x7FC0, 0x0000]


@dataclass(frozen=True, slots=True)
class DiagRegister:
    """One field of the per-unit diagnostics block."""

    key: str
    address: int
    count: int
    description: str


def _diag_layout() -> tuple[DiagRegister, ...]:
    out = [DiagRegister("comm_state", DIAG_BASE, 1, "communication state: 1 ok, 0 comm failure, 2 not polled yet")]
    addr = DIAG_BASE + 1
    for pc in DIAG_CLASSES:
        out.append(
            DiagRegister(
                f"age_{pc}", addr, 2, f"uint32 seconds since the last good read of the {pc} class (0xFFFFFFFF: never)"
            )
        )
        addr += 2
    for key, text in (
        ("comm_losses", "uint32 count of communication losses of this meter"),
        ("bad_data", "uint32 count of rejected readings (bad data) of this meter"),
        ("bus_transactions", "uint32 transactions on this meter's bus"),
        ("bus_timeouts", "uint32 timeouts on this meter's bus"),
        ("bus_crc_errors", "uint32 CRC / frame errors on this meter's bus"),
    ):
        out.append(DiagRegister(key, addr, 2, text))
        addr += 2
    out.append(DiagRegister("points_not_good", addr, 1, "uint16 supported points whose quality is not good"))
    out.append(
        DiagRegister(
            "journal_state",
            addr + 1,
            1,
            "gateway billing journal (same in every unit): 0 disabled, 1 ok, 2 degraded, 3 unavailable; "
            "+256 (bit 8) while the disk is full",
        )
    )
    out.append(
        DiagRegister(
            "profile_mismatch",
            addr + 2,
            1,
            "1 while the meter contradicts its configured profile or variant (PROFILE MISMATCH), else 0",
        )
    )
    return tuple(out)


#: journal_state register: Recorder.state -> code (None: the journal is disabled)
JOURNAL_STATE_CODE = {None: 0, "ok": 1, "degraded": 2, "unavailable": 3}
JOURNAL_DISK_FULL = 0x100


def journal_state_code(state: str | None, disk_full: bool = False) -> int:
    """The journal_state register for a journal state (None when disabled) and its disk-full flag."""
    return JOURNAL_STATE_CODE.get(state, 3) | (JOURNAL_DISK_FULL if disk_full else 0)


DIAGNOSTICS: tuple[DiagRegister, ...] = _diag_layout()
DIAG_END = DIAGNOSTICS[-1].address + DIAGNOSTICS[-1].count

TABLE_FC = {"coil": (1, 5, 15), "discrete_input": (2,), "holding": (3, 6, 16), "input": (4,)}


class UpstreamMap:
    """Which point sits at which upstream address, and how table values become registers."""

    def __init__(self, catalogue: Catalogue, word_order: WordOrder = WordOrder.BIG) -> None:
        self.catalogue = catalogue
        self.word_order = word_order
        self._at: dict[tuple[str, int], tuple[PointDef, int]] = {}
        self._touched: dict[tuple[str, int, int], list[PointDef]] = {}
        for p in catalogue:
            for k in range(p.modbus.count):
                self._at[(p.modbus.table, p.modbus.address + k)] = (p, k)
        self.regions: dict[str, list[tuple[int, int]]] = {t: [] for t in TABLE_FC}
        for table in TABLE_FC:
            addrs = sorted(a for (t, a) in self._at if t == table)
            if table == "input":
                addrs += list(range(DIAG_BASE, DIAG_END))
            self.regions[table] = _regions(addrs)

    def point_at(self, table: str, address: int) -> tuple[PointDef, int] | None:
        """The point (and word index inside it) at an upstream address, or None."""
        return self._at.get((table, address))

    def in_map(self, table: str, address: int, count: int) -> bool:
        """True when [address, address+count) lies inside one mapped region of the table (holes allowed)."""
        return any(lo <= address and address + count <= hi for lo, hi in self.regions[table])

    def points_in(self, table: str, address: int, count: int) -> list[PointDef]:
        """Distinct points touched by a request, in address order (memoized: clients repeat their requests)."""
        key = (table, address, count)
        found = self._touched.get(key)
        if found is None:
            seen: dict[str, PointDef] = {}
            for a in range(address, address + count):
                hit = self._at.get((table, a))
                if hit:
                    seen.setdefault(hit[0].name, hit[0])
            found = self._touched[key] = list(seen.values())
        return found

    def touches_diagnostics(self, table: str, address: int, count: int) -> bool:
        """True when an input-register request overlaps the diagnostics block."""
        return table == "input" and address < DIAG_END and address + count > DIAG_BASE

    # -- encoding ---------------------------------------------------------------------------------
    def encode_value(self, p: PointDef, value: float | int | bool | None) -> list[int]:
        """Registers of one analog point: energies uint32 in 0.01 units (exact), others float32."""
        if p.modbus.type == "uint32":
            if value is None:
                return encode(NEVER, DataType.UINT32, self.word_order)
            raw = round(float(value) / p.resolution) if p.resolution else int(value)
            raw = min(max(raw, 0), NEVER - 1)  # NEVER is reserved for "not available"
            return encode(raw, DataType.UINT32, self.word_order)
        if value is None or (isinstance(value, float) and not math.isfinite(value)):
            return FLOAT_NAN[::-1] if self.word_order is WordOrder.LITTLE else list(FLOAT_NAN)
        return encode(float(value), DataType.FLOAT32, self.word_order)

    def decode_value(self, p: PointDef, regs: list[int]) -> float:
        """Value written by a client into a point's registers."""
        from .codec import decode

        if p.modbus.type == "uint32":
            raw = decode(regs, DataType.UINT32, self.word_order)
            return raw * p.resolution if p.resolution else float(raw)
        return float(decode(regs, DataType.FLOAT32, self.word_order))

    # -- documentation ----------------------------------------------------------------------------
    def rows(self) -> Iterator[dict[str, str]]:
        """Every upstream register of one unit, for `meter-gateway registers`."""
        names = {"coil": "Coil", "discrete_input": "DI", "holding": "HR", "input": "IR"}
        for p in sorted(self.catalogue, key=lambda q: (list(TABLE_FC).index(q.modbus.table), q.modbus.address)):
            m = p.modbus
            if m.type == "uint32" and p.resolution:
                dtype = f"uint32, {p.resolution:g} {p.unit}"
            elif m.type == "uint32":
                dtype = "uint32, Unix seconds"
            elif m.type == "bit":
                dtype = "bit" + (f" (0={p.states[0]}, 1={p.states[1]})" if p.states and len(p.states) == 2 else "")
            else:
                dtype = f"float32{', ' + p.unit if p.unit else ''}"
            writable = "R/W (policy)" if p.kind in (PointKind.COMMAND, PointKind.CONFIG) else "R"
            yield {
                "table": names[m.table],
                "modicon": _modicon(m.table, m.address),
                "address": str(m.address),
                "registers": str(m.count),
                "point": p.name,
                "type": dtype,
                "access": writable,
                "description": p.description,
            }
        for d in DIAGNOSTICS:
            yield {
                "table": "IR",
                "modicon": _modicon("input", d.address),
                "address": str(d.address),
                "registers": str(d.count),
                "point": f"diag.{d.key}",
                "type": "uint16" if d.count == 1 else "uint32",
                "access": "R",
                "description": d.description,
            }


def _modicon(table: str, address: int) -> str:
    return {
        "coil": f"Coil {address + 1}",
        "discrete_input": f"DI {address + 1}",
        "input": str(30001 + address),
        "holding": str(40001 + address) if address < 1000 else f"HR {address + 1}",
    }[table]


def _regions(addrs: list[int], hole: int = 16) -> list[tuple[int, int]]:
    """Merge sorted addresses into [lo, hi) regions, bridging holes up to `hole` registers."""
    out: list[tuple[int, int]] = []
    for a in sorted(set(addrs)):
        if out and a - out[-1][1] <= hole:
            out[-1] = (out[-1][0], a + 1)
        else:
            out.append((a, a + 1))
    return out
