"""EN 13757-3:2018 data records as named fields: DIF/DIFE, the primary VIF table, the 0xFB and 0xFD extension
tables, the combinable (orthogonal) VIFEs with the 0xFC extension (phases), vendor habits (VIFE 0x00), and
manufacturer-specific VIF/VIFE bytes kept raw. Pure functions, no I/O.

Tables follow EN 13757-3:2018 (tables 10, 12, 14, 15 and 16); cross-checked against the independent open decoders
wmbusmeters (src/dvparser.h) and m-bus-parser (value_information.rs), not copied from them.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from decimal import Decimal

from ..mbus_frame import MbusFrameError, Payload, Record, parse_frame, parse_payload

#: medium codes of the fixed header (EN 13757-7 table 12), the ones a gateway user meets
MEDIA = {
    0x00: "other",
    0x01: "oil",
    0x02: "electricity",
    0x03: "gas",
    0x04: "heat (outlet)",
    0x05: "steam",
    0x06: "warm water",
    0x07: "water",
    0x08: "heat cost allocator",
    0x09: "compressed air",
    0x0A: "cooling (outlet)",
    0x0B: "cooling (inlet)",
    0x0C: "heat (inlet)",
    0x0D: "heat/cooling",
    0x0E: "bus/system component",
    0x0F: "unknown",
    0x15: "hot water",
    0x16: "cold water",
    0x17: "dual water",
    0x18: "pressure",
    0x19: "A/D converter",
    0x1A: "smoke detector",
    0x1B: "room sensor",
    0x1C: "gas detector",
    0x20: "breaker (electricity)",
    0x21: "valve",
    0x25: "customer unit",
    0x28: "waste water",
    0x29: "garbage",
    0x31: "communication controller",
    0x32: "unidirectional repeater",
    0x33: "bidirectional repeater",
    0x36: "radio converter (system side)",
    0x37: "radio converter (meter side)",
}
FUNCTION_NAMES = ("instantaneous", "maximum", "minimum", "error")


def medium_name(code: int) -> str:
    """Human name of a medium code."""
    return MEDIA.get(code, f"medium 0x{code:02X}")


@dataclass(frozen=True, slots=True)
class Vib:
    """What a value information block says, as named fields."""

    quantity: str  # energy, reactive_energy, apparent_energy, power, reactive_power, apparent_power, voltage,
    # current, frequency, power_factor, volume, temperature, ..., manufacturer (VIF 0x7F/0xFF), other
    unit: str  # SI unit of the value once multiplied by 10**exponent: Wh, W, varh, var, VAh, VA, V, A, Hz, ...
    exponent: int  # power of ten (VIF range, combined with multiplicative correction VIFEs)
    direction: str = ""  # "" none stated, "import" (VIFE 0x3B), "export" (VIFE 0x3C), "net" (0xFC 0x0C)
    phase: str = ""  # "" none stated, "L1".."L3", "N", "L1-L2", "L2-L3", "L3-L1" (0xFC extension)
    tag: bytes = b""  # manufacturer-specific VIFE bytes, from the 0xFF VIFE on (kept raw)
    extra: tuple[str, ...] = ()  # other combinable VIFEs, described (per hour, limit, duration ...)
    offset: int | None = None  # additive correction constant exponent (VIFE 0x78-0x7B)
    raw: bytes = b""  # the whole VIB
    factor: int = 1  # durations: seconds per step (1, 60, 3600, 86400)

    @property
    def description(self) -> str:
        """One line: quantity, unit, direction, phase, vendor tag and extras."""
        parts = [self.quantity]
        if self.unit:
            parts.append(f"[1e{self.exponent} {self.unit}]")
        if self.direction:
            parts.append(self.direction)
        if self.phase:
            parts.append(f"phase {self.phase}")
        if self.tag:
            parts.append(f"vendor tag {self.tag.hex().upper()}")
        parts += list(self.extra)
        return " ".join(parts)


# primary VIF table (EN 13757-3 table 10): first code, last code, quantity, unit, exponent of the first code
_PRIMARY: tuple[tuple[int, int, str, str, int], ...] = (
    (0x00, 0x07, "energy", "Wh", -3),
    (0x08, 0x0F, "energy", "J", 0),
    (0x10, 0x17, "volume", "m3", -6),
    (0x18, 0x1F, "mass", "kg", -3),
    (0x20, 0x23, "on_time", "s", 0),
    (0x24, 0x27, "operating_time", "s", 0),
    (0x28, 0x2F, "power", "W", -3),
    (0x30, 0x37, "power", "J/h", 0),
    (0x38, 0x3F, "volume_flow", "m3/h", -6),
    (0x40, 0x47, "volume_flow", "m3/min", -7),
    (0x48, 0x4F, "volume_flow", "m3/s", -9),
    (0x50, 0x57, "mass_flow", "kg/h", -3),
    (0x58, 0x5B, "flow_temperature", "C", -3),
    (0x5C, 0x5F, "return_temperature", "C", -3),
    (0x60, 0x63, "temperature_difference", "K", -3),
    (0x64, 0x67, "external_temperature", "C", -3),
    (0x68, 0x6B, "pressure", "bar", -3),
    (0x6C, 0x6C, "date", "", 0),
    (0x6D, 0x6D, "datetime", "", 0),
    (0x6E, 0x6E, "hca_units", "", 0),
    (0x70, 0x73, "averaging_duration", "s", 0),
    (0x74, 0x77, "actuality_duration", "s", 0),
    (0x78, 0x78, "fabrication_number", "", 0),
    (0x79, 0x79, "enhanced_identification", "", 0),
    (0x7A, 0x7A, "bus_address", "", 0),
    (0x7E, 0x7E, "any_vif", "", 0),
)
# 0xFB extension table (EN 13757-3:2018 table 14)
_FB: tuple[tuple[int, int, str, str, int], ...] = (
    (0x00, 0x01, "energy", "Wh", 5),
    (0x02, 0x03, "reactive_energy", "varh", 3),
    (0x04, 0x05, "apparent_energy", "VAh", 3),
    (0x08, 0x09, "energy", "J", 8),
    (0x0C, 0x0F, "energy", "cal", 5),
    (0x10, 0x11, "volume", "m3", 2),
    (0x14, 0x17, "reactive_power", "var", 0),
    (0x18, 0x19, "mass", "kg", 5),
    (0x1A, 0x1B, "relative_humidity", "%", -1),
    (0x28, 0x29, "power", "W", 5),
    (0x2C, 0x2F, "frequency", "Hz", -3),
    (0x30, 0x31, "power", "J/h", 8),
    (0x34, 0x37, "apparent_power", "VA", 0),
    (0x74, 0x77, "temperature_limit", "C", -3),
    (0x78, 0x7F, "cumulative_max_power", "W", -3),
)
_FB_SINGLE = {0x06: ("coefficient_of_performance", "", -1), 0x23: ("phase_angle_i_u", "deg", -1)}
_FB_SINGLE |= {0x2A: ("phase_angle_u_u", "deg", -1), 0x2B: ("phase_angle_u_i", "deg", -1)}
# 0xFD extension table (EN 13757-3:2018 table 12), ranges with a unit
_FD: tuple[tuple[int, int, str, str, int], ...] = (
    (0x00, 0x03, "credit", "", -3),
    (0x04, 0x07, "debit", "", -3),
    (0x24, 0x27, "storage_interval", "", 0),
    (0x2C, 0x2F, "duration_since_readout", "", 0),
    (0x31, 0x33, "duration_of_tariff", "", 0),
    (0x40, 0x4F, "voltage", "V", -9),
    (0x50, 0x5F, "current", "A", -12),
)
_FD_SINGLE = {
    0x08: "access_number",
    0x09: "medium",
    0x0A: "manufacturer_name",
    0x0B: "parameter_set",
    0x0C: "model_version",
    0x0D: "hardware_version",
    0x0E: "firmware_version",
    0x0F: "software_version",
    0x10: "customer_location",
    0x11: "customer",
    0x12: "access_code_user",
    0x13: "access_code_operator",
    0x16: "password",
    0x17: "error_flags",
    0x18: "error_mask",
    0x1A: "digital_output",
    0x1B: "digital_input",
    0x1C: "baud_rate",
    0x1D: "response_delay",
    0x1E: "retry",
    0x20: "first_storage_number",
    0x21: "last_storage_number",
    0x22: "storage_block_size",
    0x28: "storage_interval_months",
    0x29: "storage_interval_years",
    0x30: "duration_of_tariff_minutes",
    0x3A: "dimensionless",
    0x60: "reset_counter",
    0x61: "cumulation_counter",
    0x62: "control_signal",
    0x63: "day_of_week",
    0x64: "week_number",
    0x65: "time_point_day_change",
    0x66: "state_of_parameter_activation",
    0x67: "special_supplier_information",
    0x68: "duration_since_cumulation",
    0x69: "operating_time_battery",
    0x6A: "datetime_battery_change",
    0x6B: "rf_level",
    0x6C: "daylight_saving",
    0x6D: "listening_window",
    0x6E: "remaining_battery_days",
    0x6F: "meter_displaced",
    0x74: "remaining_battery_days",
}
# 0xFC extension of the combinable VIFEs (EN 13757-3:2018 table 16)
_FC_PHASE = {0x01: "L1", 0x02: "L2", 0x03: "L3", 0x04: "N", 0x05: "L1-L2", 0x06: "L2-L3", 0x07: "L3-L1"}
_FC_OTHER = {
    0x08: "quadrant Q1",
    0x09: "quadrant Q2",
    0x0A: "quadrant Q3",
    0x0B: "quadrant Q4",
    0x10: "absolute value of both contributions",
    0x11: "type C",
    0x12: "type D",
    0x13: "direction communication partner to meter",
    0x14: "direction meter to communication partner",
}
# combinable VIFEs (EN 13757-3:2018 table 15) that only describe the value further
_COMBINABLE = {
    0x20: "per second",
    0x21: "per minute",
    0x22: "per hour",
    0x23: "per day",
    0x24: "per week",
    0x25: "per month",
    0x26: "per year",
    0x27: "per revolution/measurement",
    0x28: "increment per input pulse channel 0",
    0x29: "increment per input pulse channel 1",
    0x2A: "increment per output pulse channel 0",
    0x2B: "increment per output pulse channel 1",
    0x2C: "per litre",
    0x2D: "per m3",
    0x2E: "per kg",
    0x2F: "per K",
    0x30: "per kWh",
    0x31: "per GJ",
    0x32: "per kW",
    0x33: "per K*l",
    0x34: "per V",
    0x35: "per A",
    0x36: "multiplied by s",
    0x37: "multiplied by s/V",
    0x38: "multiplied by s/A",
    0x39: "start date/time of",
    0x3A: "uncorrected unit",
    0x3D: "reserved 0x3D",
    0x3E: "value at base conditions",
    0x3F: "OBIS declaration",
    0x7E: "future value",
}


#: duration VIFs: the range selects seconds, minutes, hours or days, not a power of ten
_TIME_FACTOR = (1, 60, 3600, 86400)


def _lookup(table, code: int) -> tuple[str, str, int] | None:
    for lo, hi, quantity, unit, exp in table:
        if lo <= code <= hi:
            if unit == "s":
                return quantity, unit, exp
            return quantity, unit, exp + (code - lo)
    return None


def decode_vib(vib: bytes) -> Vib:
    """Name the fields of a VIB (VIF and its VIFEs); never raises on a code it does not know."""
    if not vib:
        return Vib("other", "", 0, raw=b"")
    vif = vib[0] & 0x7F
    rest = list(vib[1:])
    quantity, unit, exponent = "other", "", 0
    factor = 1
    if vif == 0x7C:  # plain-text unit: length, ASCII (reversed), then VIFEs
        ln = rest[0] if rest else 0
        text = bytes(rest[1 : 1 + ln])[::-1].decode("ascii", "replace")
        quantity, unit = "plain_text_unit", text
        rest = rest[1 + ln :]
    elif vif == 0x7F:  # manufacturer-specific VIF: everything raw
        return Vib("manufacturer", "", 0, tag=bytes(vib), raw=bytes(vib))
    elif vif == 0x7B:
        code = rest.pop(0) & 0x7F if rest else -1
        found = _lookup(_FB, code) or (_FB_SINGLE.get(code))
        if found:
            quantity, unit, exponent = found
        else:
            quantity = f"fb-0x{code:02X}"
    elif vif == 0x7D:
        code = rest.pop(0) & 0x7F if rest else -1
        found = _lookup(_FD, code)
        if found:
            quantity, unit, exponent = found
        else:
            quantity = _FD_SINGLE.get(code, f"fd-0x{code:02X}")
    else:
        found = _lookup(_PRIMARY, vif)
        if found:
            quantity, unit, exponent = found
            if unit == "s":
                factor = _TIME_FACTOR[vif & 0x03]
        else:
            quantity = f"vif-0x{vif:02X}"
    direction = phase = ""
    extra: list[str] = []
    offset = None
    tag = b""
    i = 0
    while i < len(rest):
        e = rest[i] & 0x7F
        if e == 0x7F:  # the rest of the VIB (and of the record's meaning) is manufacturer specific
            tag = bytes(rest[i:])
            break
        if e == 0x7C:  # extension of the combinable VIFEs
            i += 1
            code = rest[i] & 0x7F if i < len(rest) else -1
            if code in _FC_PHASE:
                phase = _FC_PHASE[code]
            elif code == 0x0C:
                direction = "net"
            else:
                extra.append(_FC_OTHER.get(code, f"fc-0x{code:02X}"))
        elif e == 0x00:
            pass  # "no error" / reserved: a vendor habit (ABB) that changes nothing
        elif e <= 0x1F:
            extra.append(f"error/action VIFE 0x{e:02X}")
        elif e == 0x3B:
            direction = "import"
        elif e == 0x3C:
            direction = "export"
        elif 0x70 <= e <= 0x77:
            exponent += (e & 0x07) - 6
        elif 0x78 <= e <= 0x7B:
            offset = (e & 0x03) - 3
        elif e == 0x7D:
            exponent += 3
        elif e in _COMBINABLE:
            extra.append(_COMBINABLE[e])
        elif 0x40 <= e <= 0x6F:
            extra.append(f"limit/duration VIFE 0x{e:02X}")
        else:
            extra.append(f"VIFE 0x{e:02X}")
        i += 1
    return Vib(quantity, unit, exponent, direction, phase, tag, tuple(extra), offset, bytes(vib), factor)


def _bcd(data: bytes) -> int:
    digits = data[::-1].hex().upper()
    negative = digits[0] == "F"
    if negative:
        digits = digits[1:]
    if not digits.isdigit():
        raise ValueError(f"BCD with non-decimal digits {data[::-1].hex().upper()}")
    value = int(digits) if digits else 0
    return -value if negative else value


def _float32(data: bytes) -> Decimal | None:
    """A float32 as the shortest decimal that reads back as the same float32 (no float64 noise)."""
    x = struct.unpack("<f", data)[0]
    if not math.isfinite(x):
        return None
    for digits in range(1, 10):
        text = f"{x:.{digits}g}"
        if struct.pack("<f", float(text)) == data:
            return Decimal(text)
    return Decimal(repr(x))


def _date_g(v: int) -> str:
    day, month = v & 0x1F, (v >> 8) & 0x0F
    year = ((v >> 5) & 0x07) | ((v >> 9) & 0x78)
    return f"{2000 + year:04d}-{month:02d}-{day:02d}"


def _datetime_f(v: int) -> str:
    minute, hour = v & 0x3F, (v >> 8) & 0x1F
    day, month = (v >> 16) & 0x1F, (v >> 24) & 0x0F
    year = ((v >> 21) & 0x07) | ((v >> 25) & 0x78)
    return f"{2000 + year:04d}-{month:02d}-{day:02d} {hour:02d}:{minute:02d}"


def decode_data(record: Record, vib: Vib) -> Decimal | str | None:
    """The record's data as an exact Decimal scaled to its unit, a string (text, date, raw hex) or None."""
    code = record.data_field
    data = record.data
    if code in (0x0, 0x8) or not data:
        return None
    if vib.quantity == "date" and code == 0x2:
        return _date_g(int.from_bytes(data, "little"))
    if vib.quantity == "datetime" and code == 0x4:
        return _datetime_f(int.from_bytes(data, "little"))
    if vib.quantity == "datetime" and code == 0x6:
        return data[::-1].hex().upper()
    if code == 0xD:
        lvar = record.lvar or 0
        if lvar <= 0xBF:  # text, sent last character first
            return data[::-1].decode("latin-1").strip() if vib.quantity != "manufacturer" else data.hex().upper()
        if 0xC0 <= lvar <= 0xD9:  # positive / negative BCD
            raw_bcd = Decimal(_bcd(data)) * (-1 if lvar >= 0xD0 else 1)
            return raw_bcd.scaleb(vib.exponent) if vib.unit else raw_bcd
        if len(data) > 8:  # a long binary field (key, signature): raw hex, most significant byte first
            return data[::-1].hex(" ").upper()
        raw_int = Decimal(int.from_bytes(data, "little", signed=True))  # binary number
        return raw_int.scaleb(vib.exponent) if vib.unit else raw_int
    if code == 0x5:
        raw = _float32(data)
    elif code in (0x9, 0xA, 0xB, 0xC, 0xE):
        try:
            raw = Decimal(_bcd(data))
        except ValueError:
            return data[::-1].hex().upper()
    else:
        raw = Decimal(int.from_bytes(data, "little", signed=True))
    if raw is None:
        return None
    if vib.quantity == "manufacturer" or not vib.unit:
        return raw
    value = raw.scaleb(vib.exponent) * vib.factor
    if vib.offset is not None:
        value += Decimal(1).scaleb(vib.offset + vib.exponent)
    return value


@dataclass(frozen=True, slots=True)
class DecodedRecord:
    """A record with named fields and its value (Decimal in the VIF's SI unit, exact to the record's resolution)."""

    record: Record
    vib: Vib
    value: Decimal | str | None
    telegram: int = 0  # index of the telegram of a multi-telegram read

    @property
    def vif(self) -> Vib:
        """Backward-compatible name of vib."""
        return self.vib

    @property
    def unit(self) -> str:
        """The SI unit of value."""
        return self.vib.unit

    @property
    def function(self) -> str:
        """instantaneous, maximum, minimum or error."""
        return FUNCTION_NAMES[self.record.function]

    @property
    def storage(self) -> int:
        """Storage number (0: the current value)."""
        return self.record.storage

    @property
    def tariff(self) -> int:
        """Tariff number (0: no tariff, the total)."""
        return self.record.tariff

    @property
    def subunit(self) -> int:
        """Sub-unit (device) number."""
        return self.record.subunit

    def describe(self) -> str:
        """One line: DIB fields, VIB description, value, raw bytes."""
        r = self.record
        where = f"storage {r.storage} tariff {r.tariff} subunit {r.subunit} {self.function}"
        raw = (r.dib + r.vib).hex(" ").upper()
        value = format(self.value, "f") if isinstance(self.value, Decimal) else self.value
        return f"{self.vib.description}; {where}; value {value} ({raw})"


def decode_records(records: list[Record], telegram: int = 0) -> list[DecodedRecord]:
    """Name every record's fields and decode its value."""
    out = []
    for rec in records:
        vib = decode_vib(rec.vib)
        try:
            value = decode_data(rec, vib)
        except (ValueError, struct.error, UnicodeDecodeError):
            value = rec.data.hex().upper()
        out.append(DecodedRecord(rec, vib, value, telegram))
    return out


def decode_telegram(frame_bytes: bytes, telegram: int = 0) -> tuple[Payload, list[DecodedRecord]]:
    """Validate one RSP_UD and decode its records; MbusFrameError on anything malformed."""
    payload = parse_payload(parse_frame(frame_bytes))
    return payload, decode_records(payload.records, telegram)


__all__ = [
    "DecodedRecord",
    "Mapping",
    "MbusFrameError",
    "Vib",
    "decode_data",
    "decode_records",
    "decode_telegram",
    "decode_vib",
    "map_records",
    "medium_name",
]


@dataclass
class Mapping:
    """The result of mapping records through a profile: values, points withheld, and why each record is unused."""

    values: dict[str, Decimal]
    withheld: dict[str, str]  # point -> why it is not published (ambiguous, incomplete tariff sum)
    used: dict[int, str]  # record index -> point
    unmapped: dict[int, str]  # record index -> reason


def unmapped_reason(d: DecodedRecord) -> str:
    """Why the generic rules leave a record unmapped, most specific first."""
    from ..profiles.mbus import QUANTITY_UNITS

    v, r = d.vib, d.record
    if v.quantity == "manufacturer":
        return "manufacturer-specific VIF"
    if v.tag:
        return f"vendor-specific VIFE {v.tag.hex().upper()}"
    if v.quantity not in QUANTITY_UNITS or v.quantity == "dimensionless":
        return f"not an electrical quantity ({v.quantity})"
    if v.unit != QUANTITY_UNITS[v.quantity][0]:
        return f"{v.quantity} in {v.unit}, not {QUANTITY_UNITS[v.quantity][0]}"
    if r.storage:
        return f"storage {r.storage} (historic value)"
    if v.quantity.endswith("energy") and r.data_field == 0x5:
        return "float32 energy register (not exact: registers are read as integer or BCD)"
    if r.function:
        return f"{FUNCTION_NAMES[r.function]} value"
    if r.subunit:
        return f"sub-unit {r.subunit}"
    if r.tariff:
        return f"tariff {r.tariff}"
    if v.extra or v.offset is not None:
        return f"qualified value ({', '.join(v.extra) or 'additive offset'})"
    if v.quantity in ("voltage", "current") and not v.phase:
        return f"{v.quantity} with no phase stated"
    return f"no rule of the profile for {v.description}"


def map_records(profile, records: list[DecodedRecord], points=None) -> Mapping:
    """Map decoded records to canonical points through an M-Bus profile's rules.

    A rule that several records with different values match is ambiguous: nothing is published for it. A tariff sum
    is published only when every listed tariff is present exactly once. Values are converted to the catalogue's
    units and keep the record's resolution."""
    from ..profiles.mbus import QUANTITY_UNITS

    values: dict[str, Decimal] = {}
    withheld: dict[str, str] = {}
    used: dict[int, str] = {}
    ambiguous: dict[int, str] = {}
    for name, rule in profile.points.items():
        if points is not None and name not in points:
            continue
        hits = [(i, d) for i, d in enumerate(records) if isinstance(d.value, Decimal) and rule.matches(d.record, d.vib)]
        if not hits:
            continue
        factor = Decimal(QUANTITY_UNITS[rule.quantity][1]) * Decimal(repr(rule.scale))
        if rule.sum:
            by_tariff: dict[int, list[Decimal]] = {}
            for _i, d in hits:
                by_tariff.setdefault(d.record.tariff, []).append(d.value)  # type: ignore[arg-type]
            missing = [t for t in rule.tariffs if t not in by_tariff]
            multiple = [t for t, vs in by_tariff.items() if len(set(vs)) > 1]
            if missing or multiple:
                why = f"tariff sum incomplete (missing {missing})" if missing else f"tariffs {multiple} ambiguous"
                withheld[name] = why
                for i, _d in hits:
                    ambiguous.setdefault(i, f"{name}: {why}")
                continue
            total = sum((vs[0] for vs in by_tariff.values()), Decimal(0))
        else:
            if len(hits) > 1:
                why = f"ambiguous: {len(hits)} records match"
                withheld[name] = why
                for i, _d in hits:
                    ambiguous.setdefault(i, f"{name}: {why}")
                continue
            total = hits[0][1].value  # type: ignore[assignment]
        values[name] = total * factor
        for i, _d in hits:
            used.setdefault(i, name)
    unmapped = {}
    for i, d in enumerate(records):
        if i in used:
            continue
        if i in ambiguous:
            unmapped[i] = ambiguous[i]
        elif not isinstance(d.value, Decimal):
            kind = "no numeric value" if d.value is None else "text, date or raw value"
            unmapped[i] = f"{kind} ({d.vib.quantity})"
        else:
            unmapped[i] = unmapped_reason(d)
    return Mapping(values, withheld, used, unmapped)
