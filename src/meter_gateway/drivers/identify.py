"""Identify the meter model behind a Modbus unit from the registers its profile declares (`identify:`)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from ..config import MeterConfig
from ..profiles import ModbusProfile, ProfileRegistry
from ..profiles.schema import IdentifyRule
from .base import DriverError, MeterException, NoResponse

log = logging.getLogger(__name__)

AUTO = "auto"
"""`profile: auto` in gateway.yaml: the gateway identifies the model at start."""


@dataclass(frozen=True, slots=True)
class Identification:
    """What a unit was identified as, and on which evidence."""

    profile: str | None
    variant: str | None = None
    evidence: str = ""
    by_registers: bool = True  # False: a guess from plausible readings (no identification register matched)
    answered: bool = True  # False: the unit did not answer at all (offline at start: nothing can be concluded)


def rule_value(rule: IdentifyRule, regs: Sequence[int]) -> int | str:
    """Decode the registers of an identification rule."""
    if rule.type == "string":
        raw = b"".join(int(w).to_bytes(2, "big") for w in regs)
        return raw.decode("latin-1").replace("\x00", " ").strip()
    if rule.type in ("uint16", "int16"):
        v = int(regs[0])
        return v - 0x10000 if rule.type == "int16" and v >= 0x8000 else v
    return (int(regs[0]) << 16) | int(regs[1])


def rule_words(rule: IdentifyRule) -> list[int]:
    """Registers a meter answers to satisfy the rule with its first accepted value (simulated meters)."""
    want = rule.equals[0]
    if rule.type == "string":
        raw = str(want).encode("latin-1").ljust(2 * rule.count, b" ")[: 2 * rule.count]
        return [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2)]
    v = int(want)
    if rule.type == "uint32":
        return [(v >> 16) & 0xFFFF, v & 0xFFFF]
    return [v & 0xFFFF]


def rule_count(rule: IdentifyRule) -> int:
    """Registers the rule reads."""
    return 2 if rule.type == "uint32" else (rule.count if rule.type == "string" else 1)


def rule_matches(rule: IdentifyRule, value: int | str) -> bool:
    """Whether a decoded value is one the rule accepts (strings: case-insensitive prefix)."""
    for want in rule.equals:
        if isinstance(want, str) and isinstance(value, str):
            if value.upper().startswith(want.upper()):
                return True
        elif not isinstance(want, str) and not isinstance(value, str) and value == want:
            return True
    return False


class _Reader:
    """Reads identification registers once per unit (a register shared by several profiles is read once)."""

    def __init__(self, driver, unit: int) -> None:
        self.driver = driver
        self.unit = unit
        self.cache: dict[tuple[int, int, int], list[int] | None] = {}
        self.silent = False  # the unit did not answer: no more bus time spent on it

    async def value(self, rule: IdentifyRule) -> int | str | None:
        key = (rule.function, rule.address, rule_count(rule))
        if key not in self.cache:
            if self.silent:
                return None
            try:
                rsp = await self.driver._call(self.unit, rule.function, rule.address, key[2])
                self.cache[key] = list(rsp.registers)[: key[2]]
            except NoResponse:
                self.silent = True
                self.cache[key] = None
            except (MeterException, DriverError):
                self.cache[key] = None  # the meter refuses the register: this rule does not match
        regs = self.cache[key]
        if regs is None or len(regs) < key[2]:
            return None
        return rule_value(rule, regs)

    async def all_match(self, rules: Sequence[IdentifyRule]) -> str | None:
        """Evidence text when every rule matches, else None."""
        seen = []
        for rule in rules:
            v = await self.value(rule)
            if v is None or not rule_matches(rule, v):
                return None
            shown = f"{v!r}" if isinstance(v, str) else f"{v} (0x{v & 0xFFFFFFFF:04X})"
            seen.append(f"fc{rule.function} {rule.address} (0x{rule.address:04X}) = {shown}")
        return "; ".join(seen)


def identifiable(profiles: ProfileRegistry) -> list[ModbusProfile]:
    """Modbus profiles that declare identification registers, most specific (most rules) first."""
    profs = [p for n in profiles.names() if isinstance(p := profiles.get(n), ModbusProfile) and p.identify]
    return sorted(profs, key=lambda p: (-len(p.identify), p.name))


async def identify_unit(driver, unit: int, profiles: ProfileRegistry, reader: _Reader | None = None) -> Identification:
    """Identify the model at a unit id from identification registers; Identification(None) when none matches."""
    reader = reader or _Reader(driver, unit)
    for prof in identifiable(profiles):
        evidence = await reader.all_match(prof.identify)
        if evidence is None:
            continue
        variant = None
        for v in prof.variants:
            if v.identify:
                ev = await reader.all_match(v.identify)
                if ev is not None:
                    variant, evidence = v.name, evidence if ev in evidence else f"{evidence}; {ev}"
                    break
        return Identification(prof.name, variant, evidence)
    return Identification(None, answered=any(v is not None for v in reader.cache.values()) or not reader.silent)


async def guess_by_values(driver, unit: int, profiles: ProfileRegistry) -> Identification:
    """Last resort for models without identification registers: the first profile whose voltage and frequency
    read plausibly (a guess: several makes share a register layout)."""
    names = sorted(
        (n for n in profiles.names() if isinstance(profiles.get(n), ModbusProfile) and not profiles.get(n).identify),
        key=lambda n: (n == "generic", n),
    )
    probe = MeterConfig(
        id="probe", bus=driver.bus.id, address=unit, profile="generic", bacnet_instance_base=0, modbus_unit=1
    )
    checks = {"Voltage_L1_N": (150.0, 300.0), "Frequency": (45.0, 65.0)}
    for name in names:
        prof = profiles.get(name)
        pts = [p for p in checks if p in prof.points]
        if "Voltage_L1_N" not in pts:
            continue
        meter = probe.model_copy(update={"profile": name, "id": f"probe-{name}"})
        try:
            readings = await driver.read(meter, pts)
        except DriverError:
            continue
        if all(
            r.error is None and isinstance(r.value, float) and checks[r.point][0] <= r.value <= checks[r.point][1]
            for r in readings
            if r.point in checks
        ):
            return Identification(name, None, "plausible voltage and frequency", by_registers=False)
    return Identification(None, by_registers=False)


async def identify_or_guess(driver, unit: int, profiles: ProfileRegistry) -> Identification:
    """Identification registers first, then the plausibility guess."""
    ident = await identify_unit(driver, unit, profiles)
    if ident.profile is not None:
        return ident
    return await guess_by_values(driver, unit, profiles)


def check_configured(meter: MeterConfig, configured: ModbusProfile, ident: Identification) -> str:
    """A mismatch message when the identified model is not the configured profile ("" when it agrees or when
    the meter could not be identified by its registers)."""
    if ident.profile is None or not ident.by_registers or ident.profile == configured.name:
        return ""
    return (
        f"meter {meter.id}: configured profile {configured.name!r} ({configured.manufacturer} {configured.model}) "
        f"but the meter identifies as {ident.profile!r} ({ident.evidence}): its values may be wrong"
    )


def mismatch(meter: MeterConfig, configured: ModbusProfile, ident: Identification, contradicted: str = "") -> str:
    """Why the configured profile does not fit the identified meter ("" when it fits or nothing is known).

    `contradicted`: evidence that the configured profile's own identification registers answered other values
    (a register the meter refuses proves nothing: some firmware lacks it).
    """
    if not ident.by_registers or not ident.answered or ident.profile == configured.name:
        return ""
    if ident.profile is None:
        if not contradicted:
            return ""  # nothing recognised and nothing contradicted: nothing to say
        return (
            f"meter {meter.id}: configured profile {configured.name!r} but the meter answers {contradicted} "
            f"to {configured.manufacturer} {configured.model}'s identification registers: its values may be wrong"
        )
    return check_configured(meter, configured, ident)


async def _contradictions(reader: _Reader, prof: ModbusProfile) -> str:
    out = []
    for rule in prof.identify:
        v = await reader.value(rule)
        if v is not None and not rule_matches(rule, v):
            out.append(f"{rule.address} (0x{rule.address:04X}) = {v!r}")
    return "; ".join(out)


async def check_bus(driver, meters: Sequence[MeterConfig], profiles: ProfileRegistry, table=None) -> list[MeterConfig]:
    """At start: identify `profile: auto` meters and check configured ones; returns the meters to poll.

    The driver must be open. An auto meter that cannot be identified by its registers is left out (error logged,
    flagged in the table if it is there); a configured profile that does not match is a warning and a meter flag.
    """
    out: list[MeterConfig] = []
    for m in meters:
        if not isinstance(m.address, int):
            out.append(m)
            continue
        auto = m.profile == AUTO
        configured = None if auto else profiles.get(m.profile)
        if not auto and (not isinstance(configured, ModbusProfile)):
            out.append(m)
            continue
        reader = _Reader(driver, m.address)
        contradicted = ""
        try:
            ident = await identify_unit(driver, m.address, profiles, reader)
            if not auto and ident.profile is None and configured.identify:  # type: ignore[union-attr]
                contradicted = await _contradictions(reader, configured)  # type: ignore[arg-type]
        except Exception as exc:  # identification must never stop the gateway
            log.warning("meter %s: identification failed: %s", m.id, exc)
            ident = Identification(None, by_registers=False)

        if auto:
            if ident.profile is None:
                why = "answers no known identification register" if ident.answered else "did not answer"
                log.error(
                    "meter %s: profile auto: the meter at unit %s %s; not polled (set its profile in gateway.yaml "
                    "or restart the gateway once it answers)",
                    m.id,
                    m.address,
                    why,
                )
                continue
            log.warning(
                "meter %s: profile auto identified %s%s (%s)",
                m.id,
                ident.profile,
                f" variant {ident.variant}" if ident.variant else "",
                ident.evidence,
            )
            out.append(m.model_copy(update={"profile": ident.profile, "variant": ident.variant or m.variant}))
            continue
        msg = mismatch(m, configured, ident, contradicted)  # type: ignore[arg-type]
        if not msg and ident.variant and m.variant and ident.variant != m.variant:
            msg = f"meter {m.id}: configured variant {m.variant!r} but the meter identifies as {ident.variant!r}"
        elif not msg and ident.variant and m.variant is None:
            log.info(
                "meter %s: identified variant %s (%s); `variant: %s` in gateway.yaml makes it explicit",
                m.id,
                ident.variant,
                ident.evidence,
                ident.variant,
            )
            m = m.model_copy(update={"variant": ident.variant})
        if msg:
            log.warning("PROFILE MISMATCH: %s", msg)
            if table is not None and m.id in table.meter_ids:
                table.flag_meter(m.id, msg)
        elif ident.profile is not None:
            log.info("meter %s: identified as %s (%s)", m.id, ident.profile, ident.evidence)
        out.append(m)
    return out
