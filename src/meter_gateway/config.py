"""gateway.yaml -> typed, frozen models; every error names the file, the line and what to change."""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .config_events import BacnetEventsSection, BacnetLimit, events_errors
from .core.catalogue import DEFAULT_INTERVALS, PollClass
from .yamlutil import LineLoader, TextEncodingError, decode_utf8, format_validation_error, line_of

EXIT_CONFIG = 2
INSTANCE_BLOCK = 100  # BACnet instances reserved per meter: base .. base+99


class ConfigError(ValueError):
    """The configuration is invalid; str() is ready to print (file:line: what to change)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GatewaySection(_Strict):
    """Gateway-wide settings."""

    name: str = Field("meter-gateway", min_length=1, max_length=64)
    description: str = ""
    location: str = ""
    profile_dirs: list[str] = Field([], description="extra directories of meter profile YAML files")
    stale_factor: float = Field(3.0, ge=1.5, le=100, description="a value is stale after N x its poll interval")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["text", "json"] = "text"
    timezone: str = Field("UTC", description="site time zone (IANA name), for daily/monthly closings")

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        return check_timezone(v)

    state_dir: str = Field(
        "",
        description="folder of the journal, the audit log and other state files (empty: $STATE_DIRECTORY from "
        "systemd, else /var/lib/meter-gateway when the configuration lives under /etc, else var/ beside it)",
    )


class _BusBase(_Strict):
    id: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", max_length=32)
    timeout: float = Field(1.0, gt=0, le=30, description="seconds to wait for a reply")
    retries: int = Field(1, ge=0, le=5, description="extra attempts after a failed transaction")
    simulated: bool = Field(False, description="start built-in simulated meters for this bus (demo, tests)")
    backoff_max: float = Field(60.0, ge=1, le=3600, description="longest pause between probes of a silent meter")
    fail_after: int = Field(2, ge=1, le=10, description="failed polls in a row before a meter is in comm failure")


class SerialSettings(_Strict):
    """Common serial line parameters."""

    port: str = Field("", description="serial device, e.g. /dev/ttyUSB0 (ignored when simulated)")
    baudrate: int = Field(9600, ge=300, le=921600)
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    bytesize: Literal[7, 8] = 8


class ModbusRtuBus(_BusBase, SerialSettings):
    """An RS485 line polled with Modbus RTU."""

    type: Literal["modbus_rtu"]
    inter_frame_gap: float | None = Field(
        None, ge=0, le=1, description="silence between frames in seconds (default 3.5 characters, at least 1.75 ms)"
    )


class ModbusTcpBus(_BusBase):
    """Meters (or an RTU gateway) reached over Modbus TCP."""

    type: Literal["modbus_tcp"]
    host: str = "127.0.0.1"
    port: int = Field(502, ge=0, le=65535, description="0 only with simulated: a free port is chosen")

    @field_validator("host")
    @classmethod
    def _host(cls, v: str) -> str:
        return check_host(v)


class MbusBus(_BusBase, SerialSettings):
    """An M-Bus line (EN 13757-2)."""

    type: Literal["mbus"]
    baudrate: int = Field(2400, ge=300, le=38400)
    parity: Literal["N", "E", "O"] = "E"
    max_telegrams: int = Field(8, ge=1, le=64, description="multi-telegram reads stop after this many frames")


Bus = Annotated[ModbusRtuBus | ModbusTcpBus | MbusBus, Field(discriminator="type")]


class MeterConfig(_Strict):
    """One submeter."""

    id: str = Field(pattern=r"^[A-Za-z0-9_-]+$", max_length=32, description="used in BACnet names and metrics")
    name: str = ""
    tenant: str = Field("", description="who is billed for this meter (journal, exports, Brick and Haystack models)")
    parent: str = Field("", description="id of the meter upstream of this one (this meter is its submeter)")
    site: str = Field("", description="site name in the Brick and Haystack models (default: the gateway's name)")
    building: str = ""
    floor: str = ""
    zone: str = Field("", description="zone or space the meter serves")
    bus: str
    address: int | str = Field(description="Modbus unit id 1-247, M-Bus primary 0-250 or 8-digit secondary id")
    profile: str
    variant: str | None = Field(None, description="profile variant (ordering option); `profile: auto` finds it")
    mid: bool = Field(False, description="MID-certified meter: energy and metrology writes are never allowed")
    serial_number: str = ""
    poll_intervals: dict[PollClass, float] = Field({}, description="override the default interval per poll class")
    bacnet_instance_base: int | None = Field(
        None, ge=0, le=4194200, description="first BACnet instance of this meter (required when BACnet is enabled)"
    )
    bacnet_device_instance: int | None = Field(
        None,
        ge=0,
        le=4194302,
        description="upstream.bacnet.devices per-meter: this meter's device instance (default: bacnet_instance_base)",
    )
    modbus_unit: int | None = Field(
        None,
        ge=1,
        le=247,
        description="unit id of this meter on the upstream Modbus TCP server (omit: not served there)",
    )
    allow_config_writes: bool = False
    allow_energy_reset: bool = False
    max_power_kw: float | None = Field(None, gt=0, description="overrides the profile's maximum (energy sanity)")
    bacnet_limits: dict[str, BacnetLimit] = Field({}, description="BACnet high/low limits by point (events)")
    enabled: bool = True

    @field_validator("poll_intervals", mode="before")
    @classmethod
    def _intervals(cls, v: Any) -> Any:
        if not isinstance(v, dict):
            return v
        for k, sec in v.items():
            if k not in {str(pc) for pc in DEFAULT_INTERVALS}:
                raise ValueError(f"@{k}: {k!r} is not a poll class; use one of {', '.join(DEFAULT_INTERVALS)}")
            if isinstance(sec, bool) or not isinstance(sec, (int, float)) or not 0.5 <= sec <= 86400:
                raise ValueError(f"@{k}: interval for {k} must be a number of seconds between 0.5 and 86400, got {sec}")
        return v

    def interval(self, pc: PollClass) -> float:
        """The poll interval of a class for this meter."""
        return self.poll_intervals.get(pc, DEFAULT_INTERVALS.get(pc, 0.0))

    def intervals(self) -> dict[PollClass, float]:
        """Every polled class with its interval for this meter."""
        return {pc: self.interval(pc) for pc in DEFAULT_INTERVALS}


def check_timezone(v: str) -> str:
    """An IANA time zone name, or ValueError with the nearest names."""
    import difflib
    import zoneinfo

    try:
        zoneinfo.ZoneInfo(v)
        return v
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        pass
    names = zoneinfo.available_timezones()
    if not names:
        raise ValueError(
            f"time zone {v!r} cannot be checked: this system has no time zone database (install the tzdata package)"
        )
    near = difflib.get_close_matches(v, sorted(names), n=3, cutoff=0.6)
    hint = f"did you mean {' or '.join(near)}?" if near else "use a name such as Europe/Paris or UTC"
    raise ValueError(f"unknown time zone {v!r}: {hint}")


def _is_ip(v: str) -> bool:
    try:
        ipaddress.ip_address(v)
    except ValueError:
        return False
    return True


def check_bind(v: str, ipv6: bool = True) -> str:
    """A local IP address to listen on."""
    what = "an IPv4 address" if not ipv6 else "an IP address"
    if v == "localhost":
        raise ValueError("bind needs an IP address, not a host name: use 127.0.0.1 for this machine only")
    if ":" in v and v.count(":") == 1:
        raise ValueError(f"bind {v!r} holds a port: write the address alone (the port has its own `port:` key)")
    try:
        addr = ipaddress.ip_address(v)
    except ValueError:
        raise ValueError(
            f"bind {v!r} is not {what}: use 0.0.0.0 (every interface), 127.0.0.1 (this machine only) "
            "or one of this machine's addresses"
        ) from None
    if addr.version == 6 and not ipv6:
        raise ValueError(f"bind {v!r}: BACnet/IP needs an IPv4 address (0.0.0.0 for every interface)")
    if addr.is_multicast:
        raise ValueError(f"bind {v!r} is a multicast address: use an address of this machine")
    return v


def check_host(v: str) -> str:
    """A host name or IP address, without a port or a scheme."""
    if not v.strip():
        raise ValueError("host is empty: give the meter's (or RTU gateway's) IP address or name")
    if "://" in v:
        raise ValueError(f"host {v!r} holds a scheme: write the address alone, e.g. host: 192.168.1.50")
    if v.count(":") == 1:
        h, _, port = v.partition(":")
        raise ValueError(f"host {v!r} holds a port: write `host: {h}` and `port: {port}` on their own lines")
    if v.count(":") > 1:
        try:
            ipaddress.IPv6Address(v.strip("[]"))
        except ValueError:
            raise ValueError(f"host {v!r} is not an IP address or host name") from None
        return v.strip("[]")
    if any(c.isspace() or c in "/,;" for c in v):
        raise ValueError(f"host {v!r} is not an IP address or host name")
    return v


def check_host_port(v: str, key: str, default_port: int) -> str:
    """`host:port` with a valid port."""
    host, sep, port = v.rpartition(":")
    if not sep or not host:
        raise ValueError(f"{key} {v!r} needs a port: write {v}:{default_port}")
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"{key} {v!r}: the port must be a number 1-65535, e.g. {host}:{default_port}")
    check_host(host)
    return v


def _check_net(v: list[str]) -> list[str]:
    for i, item in enumerate(v):
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError as exc:
            raise ValueError(f"@{i}: {item!r} is not an IP address or network (e.g. 10.0.0.0/24)") from exc
    return v


class BacnetCovSection(_Strict):
    """Limits on COV subscriptions and on confirmed notifications in flight (docs/bacnet-network.md)."""

    max_subscriptions: int = Field(1000, ge=0, le=100000, description="COV subscriptions in the whole device")
    max_subscriptions_per_client: int = Field(
        500, ge=0, le=100000, description="COV subscriptions from one client address (IP:port)"
    )
    max_outstanding: int = Field(
        8, ge=1, le=255, description="confirmed notifications awaiting an acknowledgement, per subscriber"
    )
    drop_after: int = Field(
        3, ge=1, le=1000, description="unanswered confirmed notifications in a row that cancel a subscriber"
    )


class BacnetTrendSection(_Strict):
    """Trend Log objects per meter (docs/bacnet-trend.md): polled at clock-aligned intervals, ring buffers."""

    enabled: bool = Field(False, description="one Trend Log object per listed point of every meter")
    interval: int = Field(900, ge=1, le=86400, description="log-interval in seconds, aligned to the clock")
    buffer_size: int = Field(2000, ge=1, le=100000, description="records kept per trend log (the oldest go first)")
    points: list[str] = Field(
        ["Active_Energy_Import", "Active_Power_Total"], description="catalogue points logged (analog or energy)"
    )


class BacnetDiscoverySection(_Strict):
    """Who-Is / Who-Has the router forwards to the per-meter devices: limited per source, answers paced
    (docs/bacnet-router.md)."""

    enabled: bool = Field(True, description="false: every meter device answers a routed Who-Is at once, unlimited")
    requests_per_minute: int = Field(
        10,
        ge=1,
        le=10000,
        description="routed Who-Is/Who-Has reaching every meter device accepted from one source address a minute (a "
        "burst of this many, then evenly); a range-restricted one costs its share; further ones are not answered",
    )
    answers_per_second: int = Field(
        100,
        ge=1,
        le=10000,
        description="I-Am/I-Have of all meter devices together a second; more wait their turn (paced, not dropped)",
    )
    max_pending: int = Field(
        2000, ge=1, le=1000000, description="answers waiting at most; a request that would exceed it is not answered"
    )


class BacnetSection(_Strict):
    """The gateway's BACnet/IP device."""

    enabled: bool = True
    bind: str = Field(
        "127.0.0.1",
        description="interface name (eth0) or interface address; 0.0.0.0: the first interface that is not loopback; "
        "loopback when absent (a BMS needs the LAN interface)",
    )
    port: int = Field(47808, ge=0, le=65535)

    @field_validator("bind")
    @classmethod
    def _bind(cls, v: str) -> str:
        if re.fullmatch(r"[A-Za-z][A-Za-z0-9_.@-]{0,14}", v) and v != "localhost":
            return v  # an interface name (eth0, enp1s0, br-lan): resolved at start (and by `check`)
        return check_bind(v, ipv6=False)

    @field_validator("foreign_bbmd")
    @classmethod
    def _bbmd(cls, v: str) -> str:
        return check_host_port(v, "foreign_bbmd", 47808) if v else v

    netmask: int | None = Field(None, ge=0, le=32, description="prefix length; default: the interface's")
    device_instance: int = Field(599, ge=0, le=4194302)
    gateway_alarm_instance: int = Field(
        4194000,
        ge=0,
        le=4194302,
        description="instance of the Binary Input gateway.Journal_Alarm (while the journal is enabled); outside "
        "every meter's instance range",
    )
    device_name: str = ""
    vendor_name: str = "meter-gateway project"
    vendor_id: int = Field(999, ge=0, le=65535)
    location: str = ""
    description: str = ""
    energy_object: Literal["accumulator", "analog-input"] = "accumulator"
    bbmd: bool = Field(False, description="act as a BBMD")
    bdt: list[str] = Field([], description="broadcast distribution table entries, e.g. 10.0.0.2/24:47808")
    foreign_bbmd: str = Field("", description="register as a foreign device with this BBMD (host:port)")
    foreign_ttl: int = Field(300, ge=30, le=65535)
    stale_reliability: Literal["unreliable-other", "no-sensor", "communication-failure"] = "unreliable-other"
    state_file: str = Field(
        "bacnet-state.json",
        description="device state kept across restarts (database-revision), relative to gateway.state_dir",
    )
    cov: BacnetCovSection = BacnetCovSection()
    trend_logs: BacnetTrendSection = BacnetTrendSection()
    events: BacnetEventsSection = BacnetEventsSection()
    bbmd_max_foreign_devices: int = Field(
        128, ge=1, le=10000, description="as BBMD: foreign devices registered at once (more are refused)"
    )
    trusted_bbmds: list[str] = Field(
        [],
        description="BBMDs (host[:port]) whose Forwarded-NPDU carry a trusted original source (BDT peers and "
        "foreign_bbmd are trusted too)",
    )
    devices: Literal["single", "per-meter"] = Field(
        "single",
        description="single: one device with every meter's objects; per-meter: the gateway routes to a virtual "
        "network with one device per meter (docs/bacnet-router.md)",
    )
    virtual_network: int | None = Field(
        None, ge=1, le=65534, description="network number of the meters' virtual network (required for per-meter)"
    )
    network_number: int | None = Field(
        None, ge=1, le=65534, description="network number of the BACnet/IP network the gateway is on, if known"
    )
    discovery: BacnetDiscoverySection = Field(
        BacnetDiscoverySection(), description="per-meter: limits on Who-Is/Who-Has routed to the meter devices"
    )


class ModbusTcpSection(_Strict):
    """The gateway's Modbus TCP slave (SCADA side)."""

    enabled: bool = True
    bind: str = Field("127.0.0.1", description="local address; loopback unless set (0.0.0.0: every interface)")
    port: int = Field(502, ge=0, le=65535)

    @field_validator("bind")
    @classmethod
    def _bind(cls, v: str) -> str:
        return check_bind(v)

    word_order: Literal["big", "little"] = Field(
        "big", description="word order of 32-bit values; default never changes"
    )
    write_timeout: float = Field(3.0, gt=0, le=30)
    max_connections: int = Field(
        128, ge=1, le=1000, description="clients connected at once; beyond this the longest idle one is closed"
    )
    max_connections_per_address: int = Field(
        16, ge=1, le=1000, description="clients connected at once from one address; beyond this its longest idle"
    )
    idle_timeout: float = Field(
        120.0, ge=1, le=86400, description="seconds without a request after which a connection is closed"
    )


class PrometheusSection(_Strict):
    """The /metrics and /health HTTP endpoint."""

    enabled: bool = True
    bind: str = Field("127.0.0.1", description="local address; loopback unless set (0.0.0.0 in a container)")
    port: int = Field(9105, ge=0, le=65535)
    max_connections: int = Field(
        64, ge=1, le=1000, description="connections at once; beyond this the longest waiting for its request closes"
    )
    max_connections_per_address: int = Field(16, ge=1, le=1000, description="connections at once from one address")
    idle_timeout: float = Field(10.0, gt=0, le=300, description="seconds a client has to send its whole request")

    @field_validator("bind")
    @classmethod
    def _bind(cls, v: str) -> str:
        return check_bind(v)


class HttpUser(_Strict):
    """A person who may log in to the HTTP side."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.@-]+$", max_length=64)
    role: Literal["viewer", "operator", "admin"] = Field(
        description="viewer: read; operator: also writes through the write policy; admin: also scan, trace, config"
    )
    password_hash: str = Field(description="argon2 hash made by `meter-gateway hash-password` (never the password)")

    @field_validator("password_hash")
    @classmethod
    def _hash(cls, v: str) -> str:
        from argon2 import extract_parameters
        from argon2.exceptions import InvalidHashError

        try:
            extract_parameters(v)
        except (InvalidHashError, ValueError, TypeError):
            raise ValueError(
                "password_hash is not an argon2 hash ($argon2id$v=19$m=...): make one with "
                "`meter-gateway hash-password` and paste its output"
            ) from None
        return v


class HttpTls(_Strict):
    """HTTPS: certificate chain and private key (PEM files; relative paths from the configuration's folder)."""

    cert: str = Field(min_length=1)
    key: str = Field(min_length=1)


class HttpSection(_Strict):
    """Who may use the HTTP server of upstream.prometheus (pages, API, exports) and how: users, tokens, HTTPS."""

    users: list[HttpUser] = Field([], description="logins; none: only /health, /metrics and the local CLI work")
    metrics_token: str = Field(
        "", description="bearer token /metrics then requires (empty: /metrics stays open); at least 16 characters"
    )
    metrics_token_sha256: str = Field(
        "", pattern=r"^([0-9a-fA-F]{64})?$", description="or its SHA-256 (hex), to keep the token out of the file"
    )
    tls: HttpTls | None = Field(None, description="serve HTTPS with this certificate and key")
    session_timeout: float = Field(1800.0, ge=60, le=86400, description="seconds of inactivity ending a login")
    lockout_after: int = Field(5, ge=1, le=100, description="failed logins in a row (per user, per address) locking")
    lockout_seconds: float = Field(300.0, ge=5, le=86400, description="how long a lock-out lasts")
    max_body: int = Field(65536, ge=1024, le=16 * 1024 * 1024, description="largest request body in bytes")
    control_token: bool = Field(
        True, description="write <state_dir>/control.token (0600): the local CLI's admin access to the running gateway"
    )

    @field_validator("metrics_token")
    @classmethod
    def _token(cls, v: str) -> str:
        if v and len(v) < 16:
            raise ValueError("metrics_token must be at least 16 characters (e.g. `openssl rand -hex 16`)")
        return v


class UpstreamSection(_Strict):
    """Servers the gateway offers to the building's systems."""

    bacnet: BacnetSection = BacnetSection()
    modbus_tcp: ModbusTcpSection = ModbusTcpSection()
    prometheus: PrometheusSection = PrometheusSection()
    http: HttpSection = HttpSection()


class TariffSection(_Strict):
    """Peak / off-peak (heures pleines / heures creuses) schedule, in the site's time zone."""

    off_peak: list[str] = Field([], description='local time ranges such as "22:00-06:00"; the rest is peak')

    @field_validator("off_peak")
    @classmethod
    def _ranges(cls, v: list[str]) -> list[str]:
        for i, item in enumerate(v):
            try:
                a, b = item.split("-")
                for t in (a, b):
                    h, m = t.strip().split(":")
                    if not (0 <= int(h) <= 24 and 0 <= int(m) < 60):
                        raise ValueError
            except ValueError as exc:
                raise ValueError(f"@{i}: {item!r} is not a time range such as 22:00-06:00") from exc
        return v


class AlertRule(_Strict):
    """A consumption threshold (spec: "alertes consommation")."""

    meter: str = ""
    tenant: str = ""
    period: Literal["day", "month"] = "day"
    kwh: float = Field(gt=0)


class JournalSection(_Strict):
    """Billing-grade index journal (SQLite)."""

    enabled: bool = False
    path: str = Field("journal.sqlite", description="SQLite file, relative to gateway.state_dir")
    interval: int = Field(900, ge=1, le=86400, description="seconds between index readings, aligned to the clock")
    retention_days: int = Field(3650, ge=1, description="rows older than this are pruned (the hash chain is kept)")
    tariffs: TariffSection = TariffSection()
    alerts: list[AlertRule] = []


class WritesSection(_Strict):
    """Write policy switches (DESIGN.md section 6)."""

    enabled: bool = Field(False, description="no write reaches any meter unless true")
    allow_bacnet: list[str] = Field(
        [], description="source networks allowed to write over BACnet (empty: none; 0.0.0.0/0 for any)"
    )
    allow_modbus: list[str] = Field(
        [], description="source networks allowed to write over Modbus TCP (empty: none; 0.0.0.0/0 for any)"
    )
    allow_http: list[str] = Field(
        ["0.0.0.0/0", "::/0"],
        description="source networks from which logged-in operators may write over HTTP (default: any)",
    )
    audit_log: str = Field(
        "audit.jsonl", description="JSON-lines audit file of every write attempt, relative to gateway.state_dir"
    )

    _nets = field_validator("allow_bacnet", "allow_modbus", "allow_http")(classmethod(lambda cls, v: _check_net(v)))


class GatewayConfig(_Strict):
    """The whole gateway.yaml."""

    gateway: GatewaySection = GatewaySection()
    buses: list[Bus] = Field(min_length=1)
    meters: list[MeterConfig] = Field([], description="none yet: `meter-gateway scan` finds them")
    upstream: UpstreamSection = UpstreamSection()
    writes: WritesSection = WritesSection()
    journal: JournalSection = JournalSection()

    def bus(self, bus_id: str) -> ModbusRtuBus | ModbusTcpBus | MbusBus:
        """The bus called `bus_id`."""
        return next(b for b in self.buses if b.id == bus_id)

    def meter(self, meter_id: str) -> MeterConfig:
        """The meter called `meter_id`."""
        return next(m for m in self.meters if m.id == meter_id)

    def meters_on(self, bus_id: str) -> list[MeterConfig]:
        """Enabled meters of one bus, in file order."""
        return [m for m in self.meters if m.bus == bus_id and m.enabled]


# ---------------------------------------------------------------------------------------------
# Cross-field checks: each yields (key path for the line, message)
def _cross_checks(cfg: GatewayConfig, profiles: Any | None) -> list[tuple[tuple[Any, ...], str]]:
    errs: list[tuple[tuple[Any, ...], str]] = []
    seen_bus: dict[str, int] = {}
    serial_ports: dict[str, int] = {}
    for i, b in enumerate(cfg.buses):
        if b.id in seen_bus:
            errs.append((("buses", i, "id"), f"bus id {b.id!r} is already used by buses[{seen_bus[b.id]}]: rename it"))
        seen_bus.setdefault(b.id, i)
        if isinstance(b, (ModbusRtuBus, MbusBus)) and not b.simulated and not b.port:
            errs.append((("buses", i), f"bus {b.id!r} needs `port: /dev/ttyUSB0` (or `simulated: true`)"))
        if isinstance(b, ModbusTcpBus) and b.port == 0 and not b.simulated:
            errs.append((("buses", i, "port"), f"bus {b.id!r}: port 0 is only allowed with `simulated: true`"))
        if isinstance(b, (ModbusRtuBus, MbusBus)) and not b.simulated and b.port:
            other = serial_ports.get(b.port)
            if other is not None:
                errs.append(
                    (
                        ("buses", i, "port"),
                        f"bus {b.id!r} uses serial port {b.port} like bus {cfg.buses[other].id!r}: one port carries "
                        "one bus; put the meters of both on one bus (same protocol) or use a second adapter",
                    )
                )
            serial_ports.setdefault(b.port, i)
    errs += _port_clashes(cfg)
    errs += _trend_log_errors(cfg)
    ids: dict[str, int] = {}
    units: dict[int, int] = {}
    addrs: dict[tuple[str, str], int] = {}
    ranges: list[tuple[int, int, int]] = []
    for i, m in enumerate(cfg.meters):
        if m.id in ids:
            errs.append(
                (("meters", i, "id"), f"meter id {m.id!r} is already used by meters[{ids[m.id]}]: ids must be unique")
            )
        ids.setdefault(m.id, i)
        if m.modbus_unit is not None and m.modbus_unit in units:
            errs.append(
                (
                    ("meters", i, "modbus_unit"),
                    f"modbus_unit {m.modbus_unit} is already used by meter {cfg.meters[units[m.modbus_unit]].id!r}",
                )
            )
        if m.modbus_unit is not None:
            units.setdefault(m.modbus_unit, i)
        if m.bus not in seen_bus:
            errs.append((("meters", i, "bus"), f"bus {m.bus!r} is not defined; defined buses: {', '.join(seen_bus)}"))
        else:
            bus = cfg.buses[seen_bus[m.bus]]
            errs += [(("meters", i, "address"), e) for e in _address_errors(bus, m.address)]
            key = (m.bus, str(m.address))
            if key in addrs:
                errs.append(
                    (
                        ("meters", i, "address"),
                        f"address {m.address} on bus {m.bus!r} is already used by meter {cfg.meters[addrs[key]].id!r}",
                    )
                )
            addrs.setdefault(key, i)
        if m.bacnet_instance_base is None:
            if cfg.upstream.bacnet.enabled and m.enabled and not _own_device(cfg, m):
                free = max((r[1] for r in ranges), default=999) + 1
                errs.append(
                    (
                        ("meters", i),
                        f"meter {m.id!r} needs `bacnet_instance_base:` (BACnet is enabled), e.g. "
                        f"bacnet_instance_base: {-(-free // INSTANCE_BLOCK) * INSTANCE_BLOCK}",
                    )
                )
        else:
            lo, hi = m.bacnet_instance_base, m.bacnet_instance_base + INSTANCE_BLOCK - 1
            for olo, ohi, j in ranges:
                if lo <= ohi and olo <= hi:
                    errs.append(
                        (
                            ("meters", i, "bacnet_instance_base"),
                            f"BACnet instances {lo}-{hi} overlap meter {cfg.meters[j].id!r} ({olo}-{ohi}); "
                            f"space bases at least {INSTANCE_BLOCK} apart",
                        )
                    )
                    break
            ranges.append((lo, hi, i))
            dev = cfg.upstream.bacnet.device_instance
            if lo <= dev <= hi:
                errs.append(
                    (("meters", i, "bacnet_instance_base"), f"range {lo}-{hi} contains the device instance {dev}")
                )
            alarm = cfg.upstream.bacnet.gateway_alarm_instance
            if cfg.journal.enabled and lo <= alarm <= hi:
                errs.append(
                    (
                        ("meters", i, "bacnet_instance_base"),
                        f"range {lo}-{hi} contains the journal alarm's instance {alarm} "
                        "(upstream.bacnet.gateway_alarm_instance)",
                    )
                )
        if profiles is not None:
            if m.profile == "auto":  # identified at start from the profiles' identification registers
                if m.bus in seen_bus and cfg.buses[seen_bus[m.bus]].type == "mbus":
                    errs.append((("meters", i, "profile"), "profile auto is for Modbus meters (M-Bus: name one)"))
            elif m.profile not in profiles:
                errs.append(
                    (
                        ("meters", i, "profile"),
                        f"unknown profile {m.profile!r}; available: {', '.join(profiles.names())}",
                    )
                )
            else:
                prof = profiles.get(m.profile)
                proto = getattr(prof, "protocol", "modbus")
                known = [v.name for v in getattr(prof, "variants", [])]
                if m.variant is not None and m.variant not in known:
                    errs.append(
                        (
                            ("meters", i, "variant"),
                            f"profile {m.profile!r} has no variant {m.variant!r}; "
                            f"variants: {', '.join(known) or 'none'}",
                        )
                    )
                if m.bus in seen_bus:
                    btype = cfg.buses[seen_bus[m.bus]].type
                    want = "mbus" if btype == "mbus" else "modbus"
                    if proto != want:
                        errs.append(
                            (
                                ("meters", i, "profile"),
                                f"profile {m.profile!r} is for {proto} meters but bus {m.bus!r} is {btype}",
                            )
                        )
    errs += _router_errors(cfg)
    tenants = {m.tenant for m in cfg.meters if m.tenant}
    for i, rule in enumerate(cfg.journal.alerts):
        where = ("journal", "alerts", i)
        if bool(rule.meter) == bool(rule.tenant):
            errs.append((where, "an alert names either `meter:` or `tenant:` (one of them)"))
        elif rule.meter and rule.meter not in ids:
            errs.append(
                ((*where, "meter"), f"alert for meter {rule.meter!r}, which is not defined; meters: {', '.join(ids)}")
            )
        elif rule.tenant and rule.tenant not in tenants:
            known = ", ".join(sorted(tenants)) or "none (set `tenant:` on meters)"
            errs.append(((*where, "tenant"), f"alert for tenant {rule.tenant!r}, which no meter has; tenants: {known}"))
    errs += _hierarchy_errors(cfg, ids)
    users: dict[str, int] = {}
    for i, u in enumerate(cfg.upstream.http.users):
        if u.name in users:
            errs.append((("upstream", "http", "users", i, "name"), f"user {u.name!r} is already defined: rename one"))
        users.setdefault(u.name, i)
    errs += events_errors(cfg, _catalogue())
    return errs


def _catalogue() -> Any:
    from .core.catalogue import load_catalogue

    return load_catalogue()


def _own_device(cfg: GatewayConfig, m: MeterConfig) -> bool:
    """Whether a meter has a device instance of its own without an instance base (per-meter devices)."""
    return cfg.upstream.bacnet.devices == "per-meter" and m.bacnet_device_instance is not None


def meter_device_instance(m: MeterConfig) -> int | None:
    """A meter's device instance in per-meter mode: bacnet_device_instance, else bacnet_instance_base."""
    return m.bacnet_device_instance if m.bacnet_device_instance is not None else m.bacnet_instance_base


def _router_errors(cfg: GatewayConfig) -> list[tuple[tuple[Any, ...], str]]:
    """Per-meter devices: a virtual network number, unique device instances and device names."""
    bac = cfg.upstream.bacnet
    if not bac.enabled or bac.devices != "per-meter":
        return []
    errs: list[tuple[tuple[Any, ...], str]] = []
    if bac.virtual_network is None:
        errs.append(
            (
                ("upstream", "bacnet", "devices"),
                "devices: per-meter needs `virtual_network:` (a network number 1-65534)",
            )
        )
    elif bac.virtual_network == bac.network_number:
        errs.append(
            (
                ("upstream", "bacnet", "virtual_network"),
                f"virtual network {bac.virtual_network} is the BACnet/IP network's number (network_number): "
                "the two networks need different numbers",
            )
        )
    instances: dict[int, str] = {bac.device_instance: "the gateway's own device (upstream.bacnet.device_instance)"}
    names: dict[str, str] = {bac.device_name or cfg.gateway.name: "the gateway's own device"}
    for i, m in enumerate(cfg.meters):
        if not m.enabled:
            continue
        dev = meter_device_instance(m)
        key = "bacnet_device_instance" if m.bacnet_device_instance is not None else "bacnet_instance_base"
        if dev is not None and dev in instances:
            errs.append(
                (("meters", i, key), f"device instance {dev} of meter {m.id!r} is already used by {instances[dev]}")
            )
        elif dev is not None:
            instances[dev] = f"meter {m.id!r}"
        name = m.name or m.id
        if name in names:
            errs.append(
                (("meters", i, "name"), f"device name {name!r} of meter {m.id!r} is already used by {names[name]}")
            )
        names.setdefault(name, f"meter {m.id!r}")
    return errs


def _hierarchy_errors(cfg: GatewayConfig, ids: dict[str, int]) -> list[tuple[tuple[Any, ...], str]]:
    """Meter `parent` links: the parent exists, is not the meter itself, and no chain of parents loops."""
    errs: list[tuple[tuple[Any, ...], str]] = []
    for i, m in enumerate(cfg.meters):
        if not m.parent:
            continue
        if m.parent == m.id:
            errs.append((("meters", i, "parent"), f"meter {m.id!r} cannot be its own parent: remove `parent`"))
        elif m.parent not in ids:
            errs.append(
                (("meters", i, "parent"), f"parent {m.parent!r} is not a meter id; defined meters: {', '.join(ids)}")
            )
    reported: set[str] = set()
    for i, m in enumerate(cfg.meters):
        chain, cur = [m.id], m.parent
        while cur and cur in ids and cur != m.id and cur not in chain:
            chain.append(cur)
            cur = cfg.meters[ids[cur]].parent
        if cur == m.id and len(chain) > 1 and not reported & set(chain):
            reported |= set(chain)
            errs.append(
                (
                    ("meters", i, "parent"),
                    f"meter parents form a cycle: {' -> '.join([*chain, m.id])}; remove one `parent`",
                )
            )
    return errs


def _port_clashes(cfg: GatewayConfig) -> list[tuple[tuple[Any, ...], str]]:
    """Two listeners of this process on one TCP port (0 picks a free port and never clashes)."""
    up = cfg.upstream
    users: list[tuple[tuple[Any, ...], str, str, int]] = []
    if up.modbus_tcp.enabled:
        users.append(
            (("upstream", "modbus_tcp", "port"), "upstream modbus_tcp", up.modbus_tcp.bind, up.modbus_tcp.port)
        )
    if up.prometheus.enabled:
        users.append(
            (("upstream", "prometheus", "port"), "upstream prometheus", up.prometheus.bind, up.prometheus.port)
        )
    for i, b in enumerate(cfg.buses):
        if isinstance(b, ModbusTcpBus) and b.simulated:
            users.append((("buses", i, "port"), f"simulated bus {b.id!r}", "127.0.0.1", b.port))
    errs = []
    for n, (path, who, bind, port) in enumerate(users):
        for _opath, owho, obind, oport in users[:n]:
            if port and port == oport and (bind == obind or "0.0.0.0" in (bind, obind) or "::" in (bind, obind)):
                errs.append((path, f"{who} and {owho} both use TCP port {port}: give each its own port"))
                break
    return errs


def _trend_log_errors(cfg: GatewayConfig) -> list[tuple[tuple[Any, ...], str]]:
    """upstream.bacnet.trend_logs.points: catalogue points with an analog value (energy or measurement), once each."""
    tl = cfg.upstream.bacnet.trend_logs
    if not tl.enabled:
        return []
    from .core.catalogue import load_catalogue

    cat = {p.name: p for p in load_catalogue()}
    loggable = sorted(n for n, p in cat.items() if p.bacnet_type in ("accumulator", "analog-input", "analog-value"))
    errs: list[tuple[tuple[Any, ...], str]] = []
    seen: set[str] = set()
    for i, name in enumerate(tl.points):
        where = ("upstream", "bacnet", "trend_logs", "points", i)
        if name in seen:
            errs.append((where, f"point {name!r} is listed twice: one trend log per point"))
        elif name not in cat:
            errs.append((where, f"unknown point {name!r}; e.g. Active_Energy_Import, Active_Power_Total"))
        elif name not in loggable:
            kind = cat[name].bacnet_type
            errs.append((where, f"point {name!r} is a {kind}: only analog and energy points are logged"))
        seen.add(name)
    return errs


def _address_errors(bus: Any, address: int | str) -> list[str]:
    if isinstance(bus, MbusBus):
        if isinstance(address, int) and address > 250:
            example = f'"{address}"' if len(str(address)) == 8 else '"01234567"'
            return [
                f"M-Bus primary address must be 0-250, got {address}; a secondary address is 8 digits in quotes, "
                f"exactly as on the meter, e.g. address: {example} (unquoted, YAML reads a number and drops or "
                "reinterprets leading zeros)"
            ]
        if isinstance(address, int):
            return [] if 0 <= address <= 250 else [f"M-Bus primary address must be 0-250, got {address}"]
        s = str(address)
        if len(s) == 8 and all(c in "0123456789" for c in s):
            return []
        return [f"M-Bus secondary address must be 8 digits, got {address!r}"]
    if not isinstance(address, int) or isinstance(address, bool):
        return [f"Modbus address must be a number 1-247, got {address!r}"]
    if not 1 <= address <= 247:
        return [f"Modbus unit address must be 1-247, got {address}"]
    return []


def parse_config(
    text: str, source: str = "gateway.yaml", profiles: Any | None = None, preflight: bool = False
) -> GatewayConfig:
    """Parse and validate a configuration text; raise ConfigError naming source:line.

    With `preflight`, also check what `run` needs from this machine (writable state files, local bind addresses,
    privileged ports): what `check` and a reload verify before anything opens.
    """
    try:
        doc, lines = LineLoader.load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        problem = str(exc.problem or exc)
        hint = "remove or rename one of them" if "duplicate key" in problem else "fix the indentation or quoting"
        raise ConfigError(f"{source}:{line}: YAML syntax error: {problem}; {hint}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}:1: YAML error: {exc}") from exc
    if not isinstance(doc, dict):
        raise ConfigError(f"{source}:1: the file must be a mapping with `buses:` and `meters:` sections")
    try:
        cfg = GatewayConfig.model_validate(doc)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source, lines)) from exc
    if profiles is None:
        from .profiles import load_profiles

        base = Path(source).parent
        try:
            profiles = load_profiles([base / d for d in cfg.gateway.profile_dirs])
        except ValueError as exc:
            raise ConfigError(f"{source}:{line_of(lines, ('gateway', 'profile_dirs'))}: {exc}") from exc
    errs = _cross_checks(cfg, profiles)
    if preflight:
        errs += environment_errors(cfg, source)
    if errs:
        raise ConfigError("\n".join(f"{source}:{line_of(lines, path)}: {msg}" for path, msg in errs))
    return cfg


def load_config(path: str | Path, profiles: Any | None = None, preflight: bool = False) -> GatewayConfig:
    """Read and validate a configuration file (with `preflight`, also what the machine must offer to `run`)."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read the configuration: {exc.strerror}") from exc
    try:
        text = decode_utf8(data, str(p))
    except TextEncodingError as exc:
        raise ConfigError(str(exc)) from None
    return parse_config(text, str(p), profiles, preflight=preflight)


SYSTEM_STATE_DIR = Path("/var/lib/meter-gateway")


def config_dir(config_path: str | Path | None) -> Path:
    """The folder relative paths of a configuration start from: the configuration's own, else the working folder."""
    return Path(config_path).parent if config_path is not None else Path.cwd()


def state_dir(cfg: GatewayConfig, config_path: str | Path | None, environ: Mapping[str, str] | None = None) -> Path:
    """Where state files live: gateway.state_dir, else systemd's $STATE_DIRECTORY, else the installed or demo place."""
    env = os.environ if environ is None else environ
    base = config_dir(config_path)
    if cfg.gateway.state_dir:
        return base / cfg.gateway.state_dir  # an absolute state_dir stays as it is
    if env.get("STATE_DIRECTORY"):
        return Path(env["STATE_DIRECTORY"].split(":")[0])
    if config_path is not None and Path(os.path.abspath(config_path)).is_relative_to("/etc"):
        return SYSTEM_STATE_DIR
    return base / "var"


def state_path(
    cfg: GatewayConfig, config_path: str | Path | None, value: str, environ: Mapping[str, str] | None = None
) -> Path:
    """A state file's path: absolute as written, relative ones inside the state directory.

    Configurations written before state_dir existed said `var/journal.sqlite` beside the configuration; when the
    state directory is that same `var/`, such a path keeps naming the same file.
    """
    p = Path(value)
    if p.is_absolute():
        return p
    sd = state_dir(cfg, config_path, environ)
    base = config_dir(config_path)
    if p.parts[:1] == ("var",) and sd == base / "var":
        return base / p
    return sd / p


def _dir_problem(d: Path, user: str) -> str:
    """Why this process could not keep files in folder `d` ('' when it can)."""
    if d.exists():
        if not d.is_dir():
            return f"{d} is not a folder"
        return "" if os.access(d, os.W_OK | os.X_OK) else f"{d} is not writable by user {user!r}"
    parent = d.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        return f"{d} cannot be created: {parent} is not a folder"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"{d} does not exist and user {user!r} cannot create it ({parent} is not writable)"
    return ""


def _file_problem(f: Path, user: str) -> str:
    if f.exists():
        if f.is_dir():
            return f"{f} is a folder, not a file"
        return "" if os.access(f, os.W_OK) else f"{f} is not writable by user {user!r}"
    return _dir_problem(f.parent, user)


def _user() -> str:
    try:
        import pwd

        return pwd.getpwuid(os.geteuid()).pw_name
    except (ImportError, KeyError):
        return str(os.geteuid())


def _can_bind(port: int) -> bool:
    """Whether this process may listen on a TCP port (below the unprivileged start it needs root or the capability)."""
    try:
        start = int(Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text())
    except (OSError, ValueError):
        start = 1024
    if port >= start or os.geteuid() == 0:
        return True
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) & (1 << 10))  # CAP_NET_BIND_SERVICE
    except (OSError, ValueError):
        pass
    return True  # unknown: let the server report it


def environment_errors(cfg: GatewayConfig, config_path: str | Path | None) -> list[tuple[tuple[Any, ...], str]]:
    """What `run` needs from this machine: writable state files, local bind addresses, rights on low ports."""
    import socket

    errs: list[tuple[tuple[Any, ...], str]] = []
    up = cfg.upstream
    servers = {k: getattr(up, k) for k in ("bacnet", "modbus_tcp", "prometheus") if getattr(up, k).enabled}
    user = _user()
    fix = f"set gateway.state_dir to a folder that user {user!r} may write (systemd: StateDirectory=)"
    files = []
    if cfg.journal.enabled:
        files.append((("journal", "path"), "journal", cfg.journal.path))
    if servers:
        files.append((("writes", "audit_log"), "audit log", cfg.writes.audit_log))
    if files:
        sd = state_dir(cfg, config_path)
        problem = _dir_problem(sd, user)
        if problem:
            errs.append((("gateway", "state_dir"), f"state directory: {problem}; {fix}"))
        for key, what, value in files:
            f = state_path(cfg, config_path, value)
            if f.parent == sd and problem:
                continue
            problem_f = _file_problem(f, user)
            if problem_f:
                errs.append((key, f"{what}: {problem_f}; {fix}, or give a path in a writable folder"))
    tls = up.http.tls
    if "prometheus" in servers and tls is not None:
        errs += _tls_errors(tls, config_path)
    for key, sec in servers.items():
        if key == "bacnet":
            from .servers.bacnet_net import resolve_bind

            try:
                resolve_bind(sec.bind, sec.netmask)
            except ValueError as exc:
                errs.append((("upstream", key, "bind"), f"{exc}: use an interface name or one of its addresses"))
                continue
        if sec.bind not in ("0.0.0.0", "::") and not (key == "bacnet" and not _is_ip(sec.bind)):
            fam = socket.AF_INET6 if ":" in sec.bind else socket.AF_INET
            with socket.socket(fam, socket.SOCK_DGRAM) as s:
                try:
                    s.bind((sec.bind, 0))
                except OSError:
                    errs.append(
                        (
                            ("upstream", key, "bind"),
                            f"bind {sec.bind} is not an address of this machine: use 0.0.0.0 (every interface), "
                            "127.0.0.1, or an address shown by `ip -brief address`",
                        )
                    )
        if sec.port and not _can_bind(sec.port):
            errs.append(
                (
                    ("upstream", key, "port"),
                    f"port {sec.port} is privileged: user {user!r} needs CAP_NET_BIND_SERVICE (the systemd unit "
                    "grants it) or root; or use a port above 1023 such as 5020",
                )
            )
    return errs


def _tls_errors(tls: HttpTls, config_path: str | Path | None) -> list[tuple[tuple[Any, ...], str]]:
    """The HTTPS certificate and key exist, are readable and belong together."""
    import ssl

    base = config_dir(config_path)
    errs: list[tuple[tuple[Any, ...], str]] = []
    for key in ("cert", "key"):
        f = base / getattr(tls, key)
        if not f.is_file():
            errs.append((("upstream", "http", "tls", key), f"{key} file {f} does not exist"))
        elif not os.access(f, os.R_OK):
            errs.append((("upstream", "http", "tls", key), f"{key} file {f} is not readable by user {_user()!r}"))
    if not errs:
        try:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(base / tls.cert, base / tls.key)
        except (ssl.SSLError, OSError, ValueError) as exc:
            errs.append((("upstream", "http", "tls"), f"cannot use the certificate and key: {exc}"))
    return errs


def json_schema() -> dict[str, Any]:
    """JSON Schema of gateway.yaml, generated from the models."""
    schema = GatewayConfig.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "meter-gateway configuration (gateway.yaml)"
    return schema
