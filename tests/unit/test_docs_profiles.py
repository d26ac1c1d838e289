"""docs/profiles.md documents every profile key, and its worked examples load as they are written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import BaseModel

from meter_gateway.profiles.loader import parse_profile
from meter_gateway.profiles.mbus import MbusProfile, RecordRule
from meter_gateway.profiles.schema import CommandSpec, Defaults, ModbusProfile, RegisterPoint, WriteSpec

DOC = Path(__file__).resolve().parents[2] / "docs" / "profiles.md"


def _keys(model: type[BaseModel]) -> set[str]:
    return set(model.model_fields)


@pytest.mark.parametrize(
    "model", [ModbusProfile, MbusProfile, Defaults, RegisterPoint, WriteSpec, CommandSpec, RecordRule]
)
def test_every_profile_key_is_documented(model):
    text = DOC.read_text()
    missing = sorted(k for k in _keys(model) if f"`{k}`" not in text)
    assert not missing, f"{model.__name__}: {missing} not in docs/profiles.md"


def test_worked_examples_are_valid_profiles():
    blocks = re.findall(r"```yaml\n(.*?)```", DOC.read_text(), re.S)
    profiles = [b for b in blocks if re.search(r"^name: ", b, re.M)]
    assert len(profiles) >= 3
    for text in profiles:
        prof = parse_profile(text, "docs/profiles.md")
        assert prof.points


def test_the_single_phase_example_refuses_an_l2_point():
    text = next(b for b in re.findall(r"```yaml\n(.*?)```", DOC.read_text(), re.S) if "phases: 1" in b)
    with pytest.raises(ValueError, match="single-phase profile declares phase L2/L3 points"):
        parse_profile(text + "  Active_Power_L2: {address: 0x0010}\n", "docs/profiles.md")
