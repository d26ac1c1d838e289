"""Schema of M-Bus meter profiles: data-record rules on named EN 13757-3 fields mapped to canonical points.

Unknown keys are rejected. A rule names the record by quantity, unit, direction, phase, function, storage, tariff,
sub-unit and (for vendor layouts) the raw manufacturer-specific VIFE tag or the whole raw VIB.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..core.catalogue import PointKind, load_catalogue
from .schema import ProfileBase

FUNCTIONS = {"instantaneous": 0, "maximum": 1, "minimum": 2, "error": 3}
Direction = Literal["none", "import", "export", "net"]
Phase = Literal["none", "L1", "L2", "L3", "N", "L1-L2", "L2-L3", "L3-L1"]
#: the SI unit each quantity must carry (a J energy VIF is not an electricity register) and its factor to the
#: catalogue's unit
QUANTITY_UNITS: dict[str, tuple[str, str]] = {
    "energy": ("Wh", "0.001"),
    "reactive_energy": ("varh", "0.001"),
    "apparent_energy": ("VAh", "0.001"),
    "power": ("W", "0.001"),
    "reactive_power": ("var", "0.001"),
    "apparent_power": ("VA", "0.001"),
    "voltage": ("V", "1"),
    "current": ("A", "1"),
    "frequency": ("Hz", "1"),
    "dimensionless": ("", "1"),
    "manufacturer": ("", "1"),
}
CODINGS = {1: "integer", 2: "integer", 3: "integer", 4: "integer", 6: "integer", 7: "integer", 5: "real"}
CODINGS |= {9: "bcd", 10: "bcd", 11: "bcd", 12: "bcd", 14: "bcd"}
#: named media a profile may accept (EN 13757-7 medium codes)
MEDIUM_CODES = {"electricity": 0x02, "other": 0x00, "breaker": 0x20, "bus_system": 0x0E}


class RecordRule(BaseModel):
    """Which data record(s) give a point."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    quantity: Literal[
        "energy",
        "reactive_energy",
        "apparent_energy",
        "power",
        "reactive_power",
        "apparent_power",
        "voltage",
        "current",
        "frequency",
        "dimensionless",
        "manufacturer",
    ]
    function: Literal["instantaneous", "maximum", "minimum", "error"] = "instantaneous"
    storage: int = Field(0, ge=0)
    tariff: int | list[int] = Field(0, description="tariff number, or a list of tariffs whose values are summed")
    subunit: int = Field(0, ge=0)
    direction: Direction | list[Direction] = Field(
        "none", description="VIFE 0x3B import, 0x3C export, 0xFC 0x0C net; none: no direction stated"
    )
    phase: Phase = Field("none", description="0xFC extension phase (L1-L3, N, between phases); none: not stated")
    tag: str = Field("", description="hex of the manufacturer-specific VIFE bytes from 0xFF on (e.g. FF01); '' none")
    vib: str = Field("", description="hex of the whole raw VIB, for manufacturer-specific VIFs (VIF 0xFF)")
    coding: Literal["any", "exact", "integer", "bcd", "real"] = Field(
        "any", description="DIF data coding the record must use; exact: integer or BCD (a float32 is not exact)"
    )
    scale: float = Field(1.0, description="extra factor after the unit conversion (e.g. -1 to flip a sign)")
    unconfirmed: bool = False
    source: str = Field("", description="public source of this mapping (manual URL or independent driver)")
    note: str = ""

    @field_validator("tag", "vib")
    @classmethod
    def _hex(cls, v: str) -> str:
        try:
            bytes.fromhex(v)
        except ValueError as exc:
            raise ValueError(f"must be hex bytes such as FF01, got {v!r}") from exc
        return v.upper().replace(" ", "")

    @property
    def sum(self) -> bool:
        """True when several tariffs are summed."""
        return isinstance(self.tariff, list)

    @property
    def tariffs(self) -> list[int]:
        """The tariff numbers this rule reads."""
        return self.tariff if isinstance(self.tariff, list) else [self.tariff]

    def matches(self, record, vib) -> bool:
        """Whether a decoded record (its Record and its Vib) is this point."""
        if self.vib:
            if vib.raw.hex().upper() != self.vib:
                return False
        else:
            if vib.quantity != self.quantity or vib.unit != QUANTITY_UNITS[self.quantity][0]:
                return False
            directions = self.direction if isinstance(self.direction, list) else [self.direction]
            if (vib.direction or "none") not in directions or (vib.phase or "none") != self.phase:
                return False
            if vib.tag.hex().upper() != self.tag:
                return False
            if vib.extra or vib.offset is not None:
                return False  # "per hour", limits, durations, offsets: another value than the point
        coding = CODINGS.get(record.data_field)
        if self.coding == "exact" and coding not in ("integer", "bcd"):
            return False
        if self.coding not in ("any", "exact") and coding != self.coding:
            return False
        return (
            record.function == FUNCTIONS[self.function]
            and record.storage == self.storage
            and record.tariff in self.tariffs
            and record.subunit == self.subunit
        )


class MbusProfile(ProfileBase):
    """An M-Bus meter model."""

    protocol: Literal["mbus"]
    manufacturer_id: str | None = Field(None, pattern=r"^[A-Z@]{3}$", description="M-Bus 3-letter manufacturer id")
    media: list[str] = Field(["electricity"], description="media accepted from the telegram header (wrong device)")
    versions: list[int] | None = Field(None, description="header version bytes this profile is for (scan)")
    points: dict[str, RecordRule]

    @field_validator("media")
    @classmethod
    def _media(cls, v: list[str]) -> list[str]:
        for m in v:
            if m not in MEDIUM_CODES:
                raise ValueError(f"unknown medium {m!r}; one of {', '.join(MEDIUM_CODES)}")
        return v

    @property
    def medium_codes(self) -> set[int]:
        """Header medium codes this profile accepts."""
        return {MEDIUM_CODES[m] for m in self.media}

    @model_validator(mode="after")
    def _check(self) -> MbusProfile:
        cat = load_catalogue()
        for name in self.points:
            if name not in cat:
                raise ValueError(f"@points.{name}: {name!r} is not a catalogue point (see `meter-gateway points`)")
            if cat.get(name).kind is not PointKind.MEASUREMENT:
                raise ValueError(f"@points.{name}: M-Bus profiles map measurement points only")
        return self


def propose_profile(registry, manufacturer: str, medium: int, version: int) -> tuple[str | None, str]:
    """The M-Bus profile for a meter's header (manufacturer, medium, version), or None, with the reason."""
    from ..drivers.mbus_records import medium_name

    candidates = [registry.get(n) for n in registry.names()]
    mbus = [p for p in candidates if getattr(p, "protocol", "") == "mbus"]
    accepting = [p for p in mbus if medium in p.medium_codes]
    if not accepting:
        named = f"{medium_name(medium)} (0x{medium:02X})"
        return None, f"none matches: {manufacturer} reports medium {named}, not electricity"
    make = [p for p in accepting if p.manufacturer_id == manufacturer]
    exact = [p for p in make if p.versions is not None and version in p.versions]
    open_version = [p for p in make if p.versions is None]
    if exact or open_version:
        best = (exact or open_version)[0]
        return best.name, f"{manufacturer} version {version}: {best.model}"
    generic = [p for p in accepting if p.manufacturer_id is None]
    if make:
        versions = ", ".join(f"{p.name} ({p.versions})" for p in make)
        why = f"none matches {manufacturer} version {version} (per-make: {versions})"
    else:
        why = f"no per-make profile for {manufacturer} version {version}"
    if generic:
        return generic[0].name, f"{why}; the generic profile reads only unambiguous records: check `read --records`"
    return None, why
