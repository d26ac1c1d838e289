"""What both semantic models describe: the site layout and every served point, from configuration and catalogue."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..bacnet_model import ObjectSpec, object_specs
from ..config import GatewayConfig, MeterConfig
from ..core.catalogue import Catalogue

#: canonical unit -> (QUDT unit local name, Haystack unit name); points without a physical unit have none
UNITS: dict[str, tuple[str, str]] = {
    "kWh": ("KiloW-HR", "kWh"),
    "kVArh": ("KiloV-A_Reactive-HR", "kVARh"),
    "kW": ("KiloW", "kW"),
    "kVAr": ("KiloV-A_Reactive", "kVAR"),
    "kVA": ("KiloV-A", "kVA"),
    "V": ("V", "V"),
    "A": ("A", "A"),
    "Hz": ("HZ", "Hz"),
    "%": ("PERCENT", "%"),
    "s": ("SEC", "s"),
    "min": ("MIN", "min"),
}


@dataclass(frozen=True, slots=True)
class ServedMeter:
    """One enabled meter with the objects the gateway serves for it."""

    config: MeterConfig
    objects: tuple[ObjectSpec, ...]

    @property
    def site(self) -> str:
        """The meter's site name."""
        return self.config.site


def served_meters(
    config: GatewayConfig, catalogue: Catalogue, meter_points: dict[str, frozenset[str]]
) -> list[ServedMeter]:
    """Every enabled meter in file order with its served objects (the BACnet model's, so every export agrees)."""
    specs = object_specs(config, catalogue, meter_points)
    out = []
    for m in config.meters:
        if not m.enabled:
            continue
        site = m.site or config.gateway.name
        mc = m if m.site else m.model_copy(update={"site": site})
        out.append(ServedMeter(mc, tuple(s for s in specs if s.meter_id == m.id)))
    return out


def slug(text: str) -> str:
    """An identifier-safe form of a name (letters, digits, '-', '_')."""
    s = re.sub(r"[^A-Za-z0-9_-]+", "_", text.strip()).strip("_")
    return s or "x"


def gateway_meter_points(config: GatewayConfig, profiles) -> tuple[Catalogue, dict[str, frozenset[str]]]:
    """Catalogue and served point names per enabled meter, as the running gateway computes them."""
    from ..app import Gateway

    gw = Gateway(config, profiles)
    return gw.catalogue, {m.id: gw.meter_points(m.id) for m in config.meters if m.enabled}
