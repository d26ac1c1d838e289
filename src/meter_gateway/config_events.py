"""Configuration of BACnet intrinsic reporting (upstream.bacnet.events, meters[].bacnet_limits): typed, frozen models
and the cross-checks `check` runs (each names the key whose line is reported)."""

from __future__ import annotations

import ipaddress
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Transition = Literal["offnormal", "fault", "normal"]
Day = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
DAYS: tuple[str, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
TRANSITIONS: tuple[str, ...] = ("offnormal", "fault", "normal")
_TIME = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)(?::([0-5]\d))?$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def parse_time(v: str) -> tuple[int, int, int]:
    """'HH:MM' or 'HH:MM:SS' -> (hour, minute, second); ValueError otherwise."""
    m = _TIME.match(v.strip())
    if not m:
        raise ValueError(f"{v!r} is not a time of day such as 07:30 or 23:59:59")
    return int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)


def parse_address(v: str) -> tuple[str, int]:
    """'192.168.1.20' or '192.168.1.20:47808' -> (host, port); ValueError otherwise (IPv4 only, as BACnet/IP)."""
    host, _, port = v.strip().partition(":")
    try:
        ipaddress.IPv4Address(host)
    except ValueError as exc:
        raise ValueError(f"{v!r}: recipient address must be an IPv4 address with an optional :port") from exc
    if port and (not port.isdigit() or not 1 <= int(port) <= 65535):
        raise ValueError(f"{v!r}: port must be 1-65535")
    return host, int(port or 47808)


class EventRecipient(_Strict):
    """One entry of a Notification Class recipient list."""

    device: int | None = Field(None, ge=0, le=4194302, description="recipient device instance (found with Who-Is)")
    address: str = Field("", description="recipient BACnet/IP address host[:port] (default port 47808)")
    process_id: int = Field(0, ge=0, le=0xFFFFFFFF, description="process identifier in the recipient")
    confirmed: bool = Field(False, description="ConfirmedEventNotification (else unconfirmed)")
    transitions: list[Transition] = Field(list(TRANSITIONS), description="transitions sent to this recipient")
    days: list[Day] = Field(list(DAYS), description="days of the week this recipient is notified")
    from_time: str = Field("00:00", alias="from", description="notified from this time of day (gateway's zone)")
    to_time: str = Field("23:59:59", alias="to", description="until this time of day")

    @field_validator("address")
    @classmethod
    def _address(cls, v: str) -> str:
        if v:
            parse_address(v)
        return v

    @field_validator("from_time", "to_time")
    @classmethod
    def _time(cls, v: str) -> str:
        parse_time(v)
        return v

    @model_validator(mode="after")
    def _one_recipient(self) -> EventRecipient:
        if (self.device is None) == (not self.address):
            raise ValueError("a recipient needs exactly one of `device: <instance>` or `address: <host:port>`")
        return self


class EventPriorities(_Strict):
    """Priorities (0 highest .. 255) of the three kinds of transition."""

    offnormal: int = Field(100, ge=0, le=255)
    fault: int = Field(100, ge=0, le=255)
    normal: int = Field(200, ge=0, le=255)


class NotificationClassConfig(_Strict):
    """One Notification Class object: priorities, which transitions need an acknowledgement, recipients."""

    number: int = Field(ge=0, le=4194302, description="notification-class number (= its object instance)")
    name: str = Field("", description="object name (default: NotificationClass-<number>)")
    priority: EventPriorities = EventPriorities()
    ack_required: list[Transition] = Field(["offnormal", "fault"], description="transitions a head-end must ack")
    recipients: list[EventRecipient] = []


class BacnetLimit(_Strict):
    """High/low limits of an analog point (OUT_OF_RANGE events)."""

    high: float | None = Field(None, description="high limit (omit: no high-limit alarm)")
    low: float | None = Field(None, description="low limit (omit: no low-limit alarm)")
    deadband: float = Field(0.0, ge=0, description="the value must come back this far inside a limit to be normal")
    time_delay: int = Field(0, ge=0, le=86400, description="seconds a limit must stay exceeded before the alarm")
    time_delay_normal: int | None = Field(
        None, ge=0, le=86400, description="seconds back in range (default: time_delay)"
    )
    notification_class: int | None = Field(None, ge=0, le=4194302, description="default: events.limit_class")

    @model_validator(mode="after")
    def _limits(self) -> BacnetLimit:
        if self.high is None and self.low is None:
            raise ValueError("a limit needs `high:` or `low:` (or both)")
        if self.high is not None and self.low is not None and self.high - self.deadband <= self.low:
            raise ValueError(f"high ({self.high}) minus deadband ({self.deadband}) must be above low ({self.low})")
        return self


class BacnetEventsSection(_Strict):
    """Intrinsic reporting: alarm points report CHANGE_OF_STATE, analog limits OUT_OF_RANGE, faults."""

    enabled: bool = Field(False, description="intrinsic reporting on the alarm/status points and configured limits")
    notification_classes: list[NotificationClassConfig] = Field(
        [NotificationClassConfig(number=1)], description="Notification Class objects (instance = number)"
    )
    alarm_class: int = Field(1, ge=0, le=4194302, description="notification class of the alarm/status points")
    limit_class: int = Field(1, ge=0, le=4194302, description="notification class of analog limits by default")
    time_delay: int = Field(0, ge=0, le=86400, description="seconds an alarm state must hold before it is reported")
    notify_type: Literal["alarm", "event"] = "alarm"
    limits: dict[str, BacnetLimit] = Field({}, description="limits for every meter, by point name")


def limit_for(cfg: Any, meter_id: str, point: str) -> BacnetLimit | None:
    """The limits of a meter's analog point while events are enabled: its own, else the defaults (None: none)."""
    ev: BacnetEventsSection = cfg.upstream.bacnet.events
    if not ev.enabled:
        return None
    meter = next((m for m in cfg.meters if m.id == meter_id), None)
    own = meter.bacnet_limits.get(point) if meter is not None else None
    return own or ev.limits.get(point)


def events_errors(cfg: Any, catalogue: Any) -> list[tuple[tuple[Any, ...], str]]:
    """Cross-checks of the events configuration: classes exist and are unique, limits name analog points."""
    errs: list[tuple[tuple[Any, ...], str]] = []
    ev: BacnetEventsSection = cfg.upstream.bacnet.events
    base = ("upstream", "bacnet", "events")
    numbers: dict[int, int] = {}
    for i, nc in enumerate(ev.notification_classes):
        if nc.number in numbers:
            errs.append(
                ((*base, "notification_classes", i, "number"), f"notification class {nc.number} is defined twice")
            )
        numbers.setdefault(nc.number, i)
    known = ", ".join(str(n) for n in numbers) or "none"
    for key in ("alarm_class", "limit_class"):
        n = getattr(ev, key)
        if ev.enabled and n not in numbers:
            errs.append(((*base, key), f"{key} {n} is not one of the notification_classes ({known})"))
    analog = {p.name for p in catalogue if p.bacnet_type in ("analog-input", "analog-value")}

    def check_limits(limits: dict[str, BacnetLimit], where: tuple[Any, ...]) -> None:
        for name, lim in limits.items():
            if name not in analog:
                errs.append(
                    (
                        (*where, name),
                        f"{name!r} is not an analog point; limits apply to e.g. Active_Power_Total, "
                        "Voltage_L1_N, Current_L1",
                    )
                )
            if lim.notification_class is not None and lim.notification_class not in numbers:
                errs.append(
                    (
                        (*where, name, "notification_class"),
                        f"notification class {lim.notification_class} is not one of the notification_classes ({known})",
                    )
                )

    check_limits(ev.limits, (*base, "limits"))
    for i, m in enumerate(cfg.meters):
        check_limits(m.bacnet_limits, ("meters", i, "bacnet_limits"))
    return errs
