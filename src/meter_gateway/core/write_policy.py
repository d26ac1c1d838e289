"""The MID write policy (DESIGN.md section 6): the single place that decides every write, from any upstream."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from .catalogue import PointDef, PointKind


class Verdict(StrEnum):
    """Outcome of the policy (the write service adds "failed" when an accepted write fails at the meter)."""

    ACCEPTED = "accepted"
    DENIED = "denied"
    OUT_OF_RANGE = "out-of-range"


@dataclass(frozen=True, slots=True)
class MeterRights:
    """What the configuration and the meter's profile allow for one meter."""

    meter_id: str
    mid: bool
    allow_config_writes: bool
    allow_energy_reset: bool
    supported_points: frozenset[str]
    declared_commands: frozenset[str]  # commands the profile can carry out
    writable_config: frozenset[str]  # configuration points the profile declares a write for
    energy_reset_declared: bool


@dataclass(frozen=True, slots=True)
class PolicyDecision:
    """The verdict and the reason, as written to the audit log."""

    verdict: Verdict
    reason: str

    @property
    def accepted(self) -> bool:
        """True when the write may go to the meter."""
        return self.verdict is Verdict.ACCEPTED


def source_allowed(source: str, allowlist: Sequence[str]) -> bool:
    """True when the allowlist contains the source address (an empty allowlist allows no source)."""
    if not allowlist:
        return False
    try:
        addr = ipaddress.ip_address(source.split("%")[0])
    except ValueError:
        return False
    return any(addr in ipaddress.ip_network(net, strict=False) for net in allowlist)


def decide(
    point: PointDef,
    value: float | int | bool,
    rights: MeterRights,
    *,
    writes_enabled: bool,
    source: str,
    allowlist: Sequence[str],
) -> PolicyDecision:
    """Decide one write attempt; every refusal says why."""
    deny = lambda why: PolicyDecision(Verdict.DENIED, why)  # noqa: E731
    if not writes_enabled:
        return deny("writes are disabled (writes.enabled: false)")
    if not allowlist:
        return deny("the write allowlist of this protocol is empty: no source may write")
    if not source_allowed(source, allowlist):
        return deny(f"source {source} is not in the write allowlist")
    if point.name not in rights.supported_points:
        return deny(f"meter {rights.meter_id} has no {point.name} (not in its profile)")
    if point.is_energy:
        if rights.mid:
            return deny("MID meter: energy registers are never written or reset")
        if not rights.energy_reset_declared:
            return deny("the meter's profile declares no energy reset")
        if not rights.allow_energy_reset:
            return deny("energy reset not allowed for this meter (allow_energy_reset: false)")
        if value != 0:
            return PolicyDecision(Verdict.OUT_OF_RANGE, "an energy register can only be reset to 0")
        return PolicyDecision(Verdict.ACCEPTED, "non-MID energy reset allowed by profile and configuration")
    if point.kind is PointKind.COMMAND:
        if point.name not in rights.declared_commands:
            return deny(f"the meter's profile declares no {point.name} command")
        if value not in (0, 1, True, False):
            return PolicyDecision(Verdict.OUT_OF_RANGE, "a command takes 0 (inactive) or 1 (execute)")
        return PolicyDecision(Verdict.ACCEPTED, f"{point.name} declared by the profile")
    if point.kind is not PointKind.CONFIG:
        return deny(f"{point.name} is a read-only {point.kind} point")
    if point.config_class == "comm":
        return deny("communication settings are never written through the gateway (it would cut the link)")
    if point.config_class == "metrology" and rights.mid:
        return deny("MID meter: metrology settings (CT ratios, pulse constant) are never written")
    if not rights.allow_config_writes:
        return deny("configuration writes not allowed for this meter (allow_config_writes: false)")
    if point.name not in rights.writable_config:
        return deny(f"the meter's profile declares no write for {point.name}")
    if isinstance(value, bool) or not point.in_range(float(value)):
        allowed = point.allowed_values or point.range
        return PolicyDecision(Verdict.OUT_OF_RANGE, f"{value} is outside the allowed values {allowed}")
    return PolicyDecision(Verdict.ACCEPTED, f"{point.config_class} configuration write allowed")
