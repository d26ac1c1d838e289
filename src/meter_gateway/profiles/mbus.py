"""Schema of M-Bus meter profiles: data-record rules mapped to canonical points; unknown keys are rejected."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..core.catalogue import PointKind, load_catalogue
from .schema import ProfileBase

FUNCTIONS = {"instantaneous": 0, "maximum": 1, "minimum": 2, "error": 3}


class RecordRule(BaseModel):
    """Which data record(s) give a point: quantity from the VIF, DIB fields, optional vendor tag."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    quantity: Literal["energy", "power", "voltage", "current"]
    function: Literal["instantaneous", "maximum", "minimum", "error"] = "instantaneous"
    storage: int = Field(0, ge=0)
    tariff: int | list[int] = Field(0, description="tariff number, or a list of tariffs whose values are summed")
    subunit: int = Field(0, ge=0)
    tag: str = Field("", description="hex of the VIFE bytes after the unit (vendor phase tag, e.g. FF01); '' none")
    scale: float = Field(1.0, description="extra factor after the unit conversion (e.g. -1 to flip a sign)")
    unconfirmed: bool = False
    note: str = ""

    @field_validator("tag")
    @classmethod
    def _hex(cls, v: str) -> str:
        try:
            bytes.fromhex(v)
        except ValueError as exc:
            raise ValueError(f"tag must be hex bytes such as FF01, got {v!r}") from exc
        return v.upper()

    @property
    def sum(self) -> bool:
        """True when several tariffs are summed."""
        return isinstance(self.tariff, list)

    def matches(self, record, vif) -> bool:
        """Whether a decoded record is this point."""
        tariffs = self.tariff if isinstance(self.tariff, list) else [self.tariff]
        return (
            vif.quantity == self.quantity
            and record.function == FUNCTIONS[self.function]
            and record.storage == self.storage
            and record.tariff in tariffs
            and record.subunit == self.subunit
            and vif.tag.hex().upper() == self.tag
        )


class MbusProfile(ProfileBase):
    """An M-Bus meter model."""

    protocol: Literal["mbus"]
    manufacturer_id: str | None = Field(None, pattern=r"^[A-Z@]{3}$", description="M-Bus 3-letter manufacturer id")
    points: dict[str, RecordRule]

    @model_validator(mode="after")
    def _check(self) -> MbusProfile:
        cat = load_catalogue()
        for name in self.points:
            if name not in cat:
                raise ValueError(f"@points.{name}: {name!r} is not a catalogue point (see `meter-gateway points`)")
            if cat.get(name).kind is not PointKind.MEASUREMENT:
                raise ValueError(f"@points.{name}: M-Bus profiles map measurement points only")
        return self
