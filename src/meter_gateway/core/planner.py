"""Poll planning: coalesce a meter's points into the fewest reads its limits allow (pure logic)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ..profiles.schema import ModbusProfile

BIT_FUNCTIONS = (1, 2)


@dataclass(frozen=True, slots=True)
class ReadBlock:
    """One Modbus read: function, start address, count, and the points it carries (name, offset)."""

    function: int
    address: int
    count: int
    points: tuple[tuple[str, int], ...]

    @property
    def is_bits(self) -> bool:
        """True for coil / discrete-input reads."""
        return self.function in BIT_FUNCTIONS


def plan_reads(
    profile: ModbusProfile, points: Iterable[str], split: frozenset[tuple[int, int]] = frozenset()
) -> list[ReadBlock]:
    """Group `points` into reads: same function code, sorted by address, merged across gaps up to the profile's limits.

    `split` lists (function, address) of points that must be read alone (a meter refused a merged read over them).
    """
    by_fn: dict[int, list[tuple[int, int, str]]] = {}
    for name in points:
        if name not in profile.points:
            continue
        p = profile.points[name]
        by_fn.setdefault(profile.function_of(name), []).append((p.address, profile.count_of(name), name))
    blocks: list[ReadBlock] = []
    for fn in sorted(by_fn):
        items = sorted(by_fn[fn])
        limit = profile.max_bits_per_read if fn in BIT_FUNCTIONS else profile.max_registers_per_read
        gap = profile.max_gap * 16 if fn in BIT_FUNCTIONS else profile.max_gap
        cur: list[tuple[int, int, str]] = []
        start = end = 0
        cur_alone = False
        for addr, count, name in items:
            alone = (fn, addr) in split
            if cur and not alone and not cur_alone and addr - end <= gap and max(end, addr + count) - start <= limit:
                cur.append((addr, count, name))
                end = max(end, addr + count)
                continue
            if cur:
                blocks.append(_block(fn, start, end, cur))
            cur, start, end, cur_alone = [(addr, count, name)], addr, addr + count, alone
        if cur:
            blocks.append(_block(fn, start, end, cur))
    return blocks


def _block(fn: int, start: int, end: int, items: list[tuple[int, int, str]]) -> ReadBlock:
    return ReadBlock(fn, start, end - start, tuple((name, addr - start) for addr, _c, name in items))


def one_read_per_point(profile: ModbusProfile, points: Iterable[str]) -> int:
    """The naive transaction count: one read per point (the baseline planning is measured against)."""
    return sum(1 for n in points if n in profile.points)
