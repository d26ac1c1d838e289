"""Schema of Modbus meter profiles (profiles/data/*.yaml); unknown keys are rejected."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..core.catalogue import PointKind, load_catalogue
from ..core.codec import CodecError, DataType, WordOrder, na_pattern_bits, register_count

NaPattern = int | str

READ_FUNCTIONS = (1, 2, 3, 4)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Defaults(_Strict):
    """Values every point inherits unless it says otherwise."""

    function: Literal[1, 2, 3, 4] = 3
    type: DataType = DataType.FLOAT32
    word_order: WordOrder = WordOrder.BIG
    scale: float = 1.0
    na: dict[DataType, list[NaPattern]] = Field(
        {}, description="per data type: raw values or named patterns (min, max, ones, nan) that mean 'not available'"
    )
    source: list[str] = Field([], description="keys of `sources` every point is taken from unless it says otherwise")


class Conventions(_Strict):
    """Sign conventions of the meter, normalised by the driver to the catalogue's (docs/conventions.md)."""

    power_factor: Literal["active_power_sign", "lead_lag", "unsigned", "unknown"] = Field(
        description="active_power_sign: sign of P (negative = export), as the catalogue; anything else is "
        "normalised to |PF| with the sign of the same phase's active power"
    )
    reactive_power: Literal["import_positive", "import_negative"] = Field(
        "import_positive", description="import_negative: the meter reports reactive import (Q1+Q2) negative"
    )
    export_counted_as_import: bool = Field(
        False, description="the meter adds exported energy to the import register (e.g. 'easy connection' variants)"
    )


class IdentifyRule(_Strict):
    """One register check that tells this model from others."""

    address: int = Field(ge=0, le=65535)
    function: Literal[3, 4] = 3
    type: Literal["uint16", "uint32", "int16", "string"] = "uint16"
    count: int = Field(1, ge=1, le=32, description="registers read (string: 2 characters per register)")
    equals: list[int | str] = Field(min_length=1, description="accepted values (strings: prefixes, case-insensitive)")
    source: list[str] = []
    note: str = ""


class Variant(_Strict):
    """An ordering option or wiring of the model that changes what the gateway may read."""

    name: str = Field(pattern=r"^[a-z0-9_]+$")
    description: str
    identify: list[IdentifyRule] = Field([], description="registers that recognise this variant")
    points_absent: list[str] = Field([], description="points this variant does not provide")
    phases: Literal[1, 3] | None = None
    export_counted_as_import: bool | None = None
    mid: bool | None = None


class WriteSpec(_Strict):
    """How a configuration point is written to the meter."""

    function: Literal[6, 16] = 16
    address: int | None = Field(None, ge=0, le=65535, description="defaults to the point's read address")


class RegisterPoint(_Strict):
    """Where and how one canonical point is read from the meter."""

    address: int = Field(ge=0, le=65535, description="zero-based address as sent on the wire")
    function: Literal[1, 2, 3, 4] | None = None
    type: DataType | None = None
    word_order: WordOrder | None = None
    scale: float | None = None
    offset: float = 0.0
    na: list[NaPattern] | None = Field(
        None, description="raw values or named patterns (min, max, ones, nan) that mean 'not available'"
    )
    source: list[str] | None = Field(None, description="keys of the profile's `sources` (default: defaults.source)")
    bit: int | None = Field(None, ge=0, le=15, description="for a flag inside a register")
    invert: bool = False
    map: dict[int, int] | None = Field(None, description="raw value -> canonical state (0-based)")
    unconfirmed: bool = Field(False, description="the register is from one source only: verify on a real meter")
    note: str = ""
    write: WriteSpec | None = None


class CommandSpec(_Strict):
    """How a command is carried out on the meter."""

    function: Literal[5, 6, 15, 16]
    address: int = Field(ge=0, le=65535)
    value: int | None = Field(None, description="fixed raw value written (coil: 1 = on)")
    values: list[int] | None = None
    format: Literal["unix32", "unix32_le"] | None = Field(None, description="clock format for Sync_Clock")
    unconfirmed: bool = False
    note: str = ""

    @model_validator(mode="after")
    def _one_payload(self) -> CommandSpec:
        given = sum(x is not None for x in (self.value, self.values, self.format))
        if given != 1:
            raise ValueError("a command declares exactly one of value, values or format")
        if self.function in (5, 15) and self.values is not None:
            raise ValueError("coil commands take `value`, not `values`")
        return self


class ProfileBase(_Strict):
    """What every profile says about its meter model, whatever the protocol."""

    name: str = Field(pattern=r"^[a-z0-9_]+$")
    manufacturer: str
    model: str
    description: str = ""
    version: int = Field(1, ge=1)
    phases: Literal[1, 3] = 3
    mid_capable: bool = False
    max_power_kw: float = Field(1000.0, gt=0, description="largest power the meter can measure (energy sanity)")
    energy_wrap: float | None = Field(None, gt=0, description="value at which energy registers roll over")
    notes: list[str] = []
    sources: dict[str, str] = Field(
        {}, description="key -> document title and version, or an open-source driver's repository and path"
    )


class ModbusProfile(ProfileBase):
    """A Modbus meter model: how each canonical point is read and which writes it accepts."""

    protocol: Literal["modbus"] = "modbus"
    max_registers_per_read: int = Field(125, ge=1, le=125)
    max_bits_per_read: int = Field(2000, ge=1, le=2000)
    max_gap: int = Field(8, ge=0, le=100, description="unused registers that may be read over to merge two reads")
    defaults: Defaults = Defaults()
    points: dict[str, RegisterPoint]
    commands: dict[str, CommandSpec] = {}
    energy_reset: CommandSpec | None = Field(None, description="resets energy registers (non-MID meters only)")
    conventions: Conventions | None = Field(None, description="sign conventions; required when a PF is mapped")
    identify: list[IdentifyRule] = Field([], description="all must match for the meter to be this model")
    variants: list[Variant] = []

    @model_validator(mode="after")
    def _check_points(self) -> ModbusProfile:
        cat = load_catalogue()
        for name, p in self.points.items():
            if name not in cat:
                raise ValueError(f"@points.{name}: {name!r} is not a catalogue point (see `meter-gateway points`)")
            pdef = cat.get(name)
            if pdef.kind is PointKind.COMMAND or name == "Communication_Status":
                raise ValueError(f"@points.{name}: {name!r} cannot be read from a meter")
            if p.write is not None and pdef.kind is not PointKind.CONFIG:
                raise ValueError(f"@points.{name}.write: only configuration points are writable")
            fn = self.function_of(name)
            if fn in (1, 2) and (p.bit is not None or p.type is not None):
                raise ValueError(f"@points.{name}: coils and discrete inputs take neither type nor bit")
            for pat in self.na_of(name):
                if isinstance(pat, str):
                    try:
                        na_pattern_bits(pat, self.type_of(name))
                    except CodecError as exc:
                        raise ValueError(f"@points.{name}.na: {exc}") from None
            for key in self.sources_of(name):
                if key not in self.sources:
                    raise ValueError(f"@points.{name}.source: {key!r} is not a key of `sources`")
        used = {
            (3 if self.function_of(n) == 3 else self.function_of(n), p.address + k)
            for n, p in self.points.items()
            for k in range(self.count_of(n))
        }
        for rule in [*self.identify, *(r for v in self.variants for r in v.identify)]:
            n = 2 if rule.type == "uint32" else (rule.count if rule.type == "string" else 1)
            clash = [a for a in range(rule.address, rule.address + n) if (rule.function, a) in used]
            if clash:
                raise ValueError(f"@identify: register {rule.address} overlaps a mapped point")
            if rule.type != "string" and any(isinstance(v, str) for v in rule.equals):
                raise ValueError(f"@identify: register {rule.address} of type {rule.type} takes numbers")
            for key in rule.source:
                if key not in self.sources:
                    raise ValueError(f"@identify: source {key!r} is not a key of `sources`")
        for v in self.variants:
            for n in v.points_absent:
                if n not in self.points:
                    raise ValueError(f"@variants.{v.name}.points_absent: {n!r} is not a point of this profile")
        if self.conventions is None and any(n.startswith("Power_Factor") for n in self.points):
            raise ValueError("@conventions: a profile mapping a power factor declares conventions.power_factor")
        for name in self.commands:
            if name not in cat or cat.get(name).kind is not PointKind.COMMAND:
                raise ValueError(f"@commands.{name}: {name!r} is not a catalogue command")
        if self.phases == 1:
            three = [n for n in self.points if any(t in n for t in ("L2", "L3"))]
            if three:
                raise ValueError(f"@points.{three[0]}: single-phase profile declares phase L2/L3 points {three}")
        return self

    # -- resolved accessors ----------------------------------------------------------------------
    def function_of(self, name: str) -> int:
        """Read function code of a point."""
        p = self.points[name]
        return p.function if p.function is not None else self.defaults.function

    def type_of(self, name: str) -> DataType:
        """Data type of a register point (uint16 for bit flags)."""
        p = self.points[name]
        if p.bit is not None:
            return DataType.UINT16
        return p.type or self.defaults.type

    def word_order_of(self, name: str) -> WordOrder:
        """Word order of a point."""
        return self.points[name].word_order or self.defaults.word_order

    def scale_of(self, name: str) -> float:
        """Scale factor of a point."""
        s = self.points[name].scale
        return self.defaults.scale if s is None else s

    def na_of(self, name: str) -> list[NaPattern]:
        """The 'not available' patterns of a point (its own, else the defaults for its type)."""
        p = self.points[name]
        if p.na is not None:
            return list(p.na)
        if p.bit is not None or self.function_of(name) in (1, 2):
            return []
        return list(self.defaults.na.get(self.type_of(name), []))

    def sources_of(self, name: str) -> list[str]:
        """Source keys of a point (its own, else the defaults')."""
        p = self.points[name]
        return list(p.source) if p.source is not None else list(self.defaults.source)

    def count_of(self, name: str) -> int:
        """Registers (or bits) a point occupies."""
        if self.function_of(name) in (1, 2):
            return 1
        return register_count(self.type_of(name))
