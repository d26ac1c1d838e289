"""Poll planning: coalesced reads within the meter's limits."""

from __future__ import annotations

import pytest

from meter_gateway.core.planner import one_read_per_point, plan_reads


def test_generic_profile_plan_is_a_fraction_of_one_read_per_point(profiles):
    prof = profiles.get("generic")
    blocks = plan_reads(prof, prof.points)
    assert len(blocks) == 4
    assert one_read_per_point(prof, prof.points) == 50
    covered = {name for b in blocks for name, _ in b.points}
    assert covered == set(prof.points)


@pytest.mark.parametrize(
    "name",
    ["generic", "eastron_sdm630", "eastron_sdm120", "carlo_gavazzi_em340", "schneider_iem3000", "socomec_countis_e23"],
)
def test_blocks_respect_limits_and_cover_points(profiles, name):
    if name not in profiles:
        pytest.skip(f"profile {name} not shipped yet")
    prof = profiles.get(name)
    blocks = plan_reads(prof, prof.points)
    for b in blocks:
        limit = prof.max_bits_per_read if b.is_bits else prof.max_registers_per_read
        assert 1 <= b.count <= limit
        for pname, off in b.points:
            assert prof.points[pname].address == b.address + off
            assert off + prof.count_of(pname) <= b.count
            assert prof.function_of(pname) == b.function
    assert sorted(n for b in blocks for n, _ in b.points) == sorted(prof.points)
    assert len(blocks) <= one_read_per_point(prof, prof.points)


def test_split_points_are_read_alone(profiles):
    prof = profiles.get("generic")
    pts = ["Active_Power_Total", "Active_Power_L1", "Active_Power_L2"]
    assert len(plan_reads(prof, pts)) == 1
    split = frozenset((3, prof.points[p].address) for p in pts)
    assert len(plan_reads(prof, pts, split)) == 3


def test_small_register_limit_splits_blocks(profiles):
    prof = profiles.get("generic").model_copy(update={"max_registers_per_read": 4})
    blocks = plan_reads(prof, ["Active_Power_Total", "Active_Power_L1", "Active_Power_L2", "Active_Power_L3"])
    assert [b.count for b in blocks] == [4, 4]


def test_gap_limit(profiles):
    prof = profiles.get("generic").model_copy(update={"max_gap": 0})
    blocks = plan_reads(prof, ["Active_Power_Total", "Voltage_L1_N"])
    assert len(blocks) == 2
