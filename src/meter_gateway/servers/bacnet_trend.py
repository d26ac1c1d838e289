"""BACnet Trend Log objects (ASHRAE 135 clause 12.25) and the ReadRange service (clause 15.8), which bacpypes3 0.0.110
declares but does not execute.

One Trend Log per configured point (upstream.bacnet.trend_logs.points) per meter, instance = the logged object's
instance, name `<meter id>.<Point_Name>.Trend`. Logging is polled at clock-aligned intervals (log-interval), the
buffer is a ring (stop-when-full false). Each record holds the logged object's present value and its status flags
(fault when the value is not good: communication failure, stale, bad data), or a failure datum when there is no value
at all, or a log-status record (log-interrupted) where the gateway restarted. With the billing journal on, records are
kept in its SQLite file (journal/trend.py) and reloaded at start with their sequence numbers; without it they live in
memory only. See docs/bacnet-trend.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import struct
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from bacpypes3.apdu import (
    ReadRangeACK,
    ReadRangeRequest,
    decode_max_apdu_length_accepted,
    decode_max_segments_accepted,
)
from bacpypes3.basetypes import (
    DateTime,
    DeviceObjectPropertyReference,
    ErrorType,
    EventState,
    LoggingType,
    LogRecord,
    LogRecordLogDatum,
    LogStatus,
    Reliability,
    ResultFlags,
    StatusFlags,
)
from bacpypes3.constructeddata import Any as AnyValue
from bacpypes3.constructeddata import List
from bacpypes3.errors import ExecutionError, MissingRequiredParameter, ParameterOutOfRange
from bacpypes3.local.object import Object as _LocalObject
from bacpypes3.object import TrendLogObject as _TrendLogObject
from bacpypes3.pdu import PDUData
from bacpypes3.primitivedata import Date, PropertyIdentifier, TagList, Time, Unsigned

from ..bacnet_model import ObjectSpec, present_value
from ..config import BacnetTrendSection
from ..core import trend_range
from ..core.quality import PointValue, Quality
from ..journal import trend as trend_store
from ..journal.store import JournalError

log = logging.getLogger(__name__)

#: the object types whose present value can be logged
LOGGABLE = ("accumulator", "analog-input", "analog-value")
#: octets of a ReadRange-ACK besides its items (identifiers, flags, count, tags, first sequence number), rounded up
ACK_OVERHEAD = 40
#: segments per answer at most when the client accepts any number
MAX_SEGMENTS = 64
#: seconds between looks at the journal while it opens, and the longest sleep of the logger
WATCH = 1.0


@dataclass(frozen=True, slots=True)
class TrendSpec:
    """One Trend Log object: which object it logs, and how it is named."""

    meter_id: str
    point: str
    logged: ObjectSpec
    instance: int
    name: str
    description: str

    @property
    def key(self) -> str:
        """The log's key in the journal ('<meter id>/<point>')."""
        return f"{self.meter_id}/{self.point}"

    @property
    def identity(self) -> tuple[str, int, str, str]:
        """What a head-end sees of the object (a reload that changes it restarts the device)."""
        return (self.key, self.instance, self.name, self.logged.object_type)


def meter_trend_specs(cfg: BacnetTrendSection, meter_specs: list[ObjectSpec]) -> list[TrendSpec]:
    """The Trend Logs of one meter, from that meter's object specs (empty when trend logs are off)."""
    if not cfg.enabled:
        return []
    out = []
    for spec in meter_specs:
        if spec.point.name in cfg.points and spec.object_type in LOGGABLE:
            out.append(
                TrendSpec(
                    spec.meter_id,
                    spec.point.name,
                    spec,
                    spec.instance,
                    f"{spec.name}.Trend",
                    f"Trend of {spec.description}"[:255],
                )
            )
    return out


def trend_specs(cfg: BacnetTrendSection, specs: list[ObjectSpec]) -> list[TrendSpec]:
    """The Trend Logs of every meter of a device."""
    by_meter: dict[str, list[ObjectSpec]] = {}
    for s in specs:
        by_meter.setdefault(s.meter_id, []).append(s)
    return [t for mid in by_meter for t in meter_trend_specs(cfg, by_meter[mid])]


# -- records -------------------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Record:
    """A log record: n counts from 1 for the log's whole life; kind real | unsigned | failure | status."""

    n: int
    ts: float
    kind: str
    value: Any  # float | int | (error class, error code) | (disabled, purged, interrupted)
    flags: tuple[int, int, int, int] | None  # in-alarm, fault, overridden, out-of-service

    @property
    def seq(self) -> int:
        """The BACnet sequence number (1..2^32-1, wrapping to 1)."""
        return (self.n - 1) % trend_range.SEQUENCE_MAX + 1

    def stored(self) -> trend_store.StoredRecord:
        """The record as the journal keeps it."""
        if self.kind == "failure":
            value = "/".join(self.value)
        elif self.kind == "status":
            value = ",".join(str(int(b)) for b in self.value)
        else:
            value = repr(self.value)
        flags = -1 if self.flags is None else sum(b << (3 - i) for i, b in enumerate(self.flags))
        return trend_store.StoredRecord(self.n, self.ts, self.kind, value, flags)

    @classmethod
    def from_stored(cls, r: trend_store.StoredRecord) -> Record:
        """A record read back from the journal (ValueError when malformed)."""
        value: Any
        if r.kind == "real":
            value = float(r.value)
        elif r.kind == "unsigned":
            value = int(r.value)
        elif r.kind == "failure":
            value = tuple(r.value.split("/", 1))
            if len(value) != 2:
                raise ValueError(f"failure {r.value!r}")
        elif r.kind == "status":
            value = tuple(int(b) for b in r.value.split(","))
            if len(value) != 3:
                raise ValueError(f"log status {r.value!r}")
        else:
            raise ValueError(f"kind {r.kind!r}")
        flags = None if r.flags < 0 else tuple((r.flags >> (3 - i)) & 1 for i in range(4))
        return cls(r.n, r.ts, r.kind, value, flags)  # type: ignore[arg-type]


def sample(spec: ObjectSpec, v: PointValue, ts: float) -> tuple[str, Any, tuple[int, int, int, int] | None]:
    """(kind, value, status flags) of a record of an object showing the table value `v`.

    A value that is not good is logged as the object shows it (the last value kept) with the fault flag, exactly what
    a ReadPropertyMultiple of present-value and status-flags would have given; no value at all is a failure datum.
    """
    fault = 0 if v.quality is Quality.GOOD else 1
    if v.value is None or (isinstance(v.value, float) and not math.isfinite(v.value)):
        if v.quality is Quality.COMM_FAILURE:
            return "failure", ("communication", "timeout"), (0, 1, 0, 0)
        return "failure", ("property", "valueNotInitialized"), (0, 1, 0, 0)
    pv = present_value(spec, v.value)
    if spec.object_type == "accumulator":
        return "unsigned", int(pv), (0, fault, 0, 0)
    return "real", float(pv), (0, fault, 0, 0)


def bacnet_datetime(ts: float, zone: ZoneInfo) -> DateTime:
    """A DateTime in the gateway's zone (the device's local time), to the hundredth."""
    d = datetime.fromtimestamp(ts, zone)
    return DateTime(
        date=Date((d.year - 1900, d.month, d.day, d.isoweekday())),
        time=Time((d.hour, d.minute, d.second, d.microsecond // 10000)),
    )


def unix_time(dt: DateTime, zone: ZoneInfo) -> float:
    """Unix seconds of a DateTime in the device's local time (ValueError for a wildcard or an impossible date)."""
    year, month, day, _dow = dt.date
    hour, minute, second, hundredth = dt.time
    if 255 in (year, month, day, hour, minute, second) or month > 12 or day > 31:
        raise ValueError("a reference time must be a complete date and time")
    hundredth = 0 if hundredth == 255 else hundredth
    d = datetime(year + 1900, month, day, hour, minute, second, hundredth * 10000, tzinfo=zone)
    return d.timestamp()


def log_record(r: Record, zone: ZoneInfo) -> LogRecord:
    """The BACnetLogRecord of a record."""
    if r.kind == "real":
        datum = LogRecordLogDatum(realValue=r.value)
    elif r.kind == "unsigned":
        datum = LogRecordLogDatum(unsignedValue=r.value)
    elif r.kind == "failure":
        datum = LogRecordLogDatum(failure=ErrorType(errorClass=r.value[0], errorCode=r.value[1]))
    else:
        datum = LogRecordLogDatum(logStatus=LogStatus(list(r.value)))
    rec = LogRecord(timestamp=bacnet_datetime(r.ts, zone), logDatum=datum)
    if r.flags is not None:
        rec.statusFlags = StatusFlags(list(r.flags))
    return rec


def encode_record(r: Record, zone: ZoneInfo) -> bytes:
    """A record's BACnetLogRecord encoding (ASHRAE 135 clause 20.2), written directly: building bacpypes3 objects
    costs about a millisecond per record. The tests compare it with bacpypes3's encoding of `log_record`."""
    d = datetime.fromtimestamp(r.ts, zone)
    out = bytearray(b"\x0e")  # [0] timestamp: Date, Time
    out += bytes((0xA4, d.year - 1900, d.month, d.day, d.isoweekday()))
    out += bytes((0xB4, d.hour, d.minute, d.second, d.microsecond // 10000))
    out += b"\x0f\x1e"  # [1] log-datum
    if r.kind == "real":
        out += b"\x2c" + struct.pack(">f", r.value)
    elif r.kind == "unsigned":
        v = int(r.value)
        n = max(1, (v.bit_length() + 7) // 8)
        out += bytes((0x48 + n,)) + v.to_bytes(n, "big")
    elif r.kind == "status":
        out += bytes((0x0A, 5, sum(b << (7 - i) for i, b in enumerate(r.value))))
    else:
        out += b"\x8e"
        for name in r.value:
            v = _enum_value(name)
            n = max(1, (v.bit_length() + 7) // 8)
            out += bytes((0x90 + n,)) + v.to_bytes(n, "big")
        out += b"\x8f"
    out += b"\x1f"
    if r.flags is not None:  # [2] status-flags
        out += bytes((0x2A, 4, sum(b << (7 - i) for i, b in enumerate(r.flags))))
    return bytes(out)


class TrendBuffer:
    """The records of one log: a ring of buffer-size records, numbered for the log's whole life."""

    def __init__(self, size: int) -> None:
        self.records: deque[Record] = deque(maxlen=size)
        self.last_n = 0

    def add(self, ts: float, kind: str, value: Any, flags: tuple[int, int, int, int] | None) -> Record:
        """Append a record (the oldest one goes when the buffer is full)."""
        self.last_n += 1
        r = Record(self.last_n, ts, kind, value, flags)
        self.records.append(r)
        return r

    def adopt(self, loaded: list[Record], interrupted_at: float | None) -> None:
        """Put records reloaded from the journal before the ones taken since the start (renumbered after them)."""
        since = list(self.records)
        self.records.clear()
        self.records.extend(loaded)
        self.last_n = loaded[-1].n if loaded else 0
        if loaded and interrupted_at is not None:
            self.add(max(interrupted_at, loaded[-1].ts), "status", (0, 0, 1), None)
        for r in since:
            self.add(r.ts, r.kind, r.value, r.flags)

    @property
    def total(self) -> int:
        """Total_Record_Count: the sequence number of the last record (0 before any)."""
        return self.records[-1].seq if self.records else 0


# -- the object ------------------------------------------------------------------------------------------------------
def _no_write(*_args, **_kw) -> None:
    raise ExecutionError(errorClass="property", errorCode="writeAccessDenied")


class GwTrendLog(_LocalObject, _TrendLogObject):
    """A Trend Log whose buffer is read with ReadRange; every property is read-only."""

    # set after construction: _gw_trend (TrendSpec), _gw_buffer (TrendBuffer)

    @property
    def logBuffer(self):
        """Readable with ReadRange only (ReadProperty: read-access-denied, as bacnet-stack does)."""
        raise ExecutionError(errorClass="property", errorCode="readAccessDenied")

    @logBuffer.setter
    def logBuffer(self, value) -> None:
        _no_write()

    @property
    def recordCount(self) -> Unsigned:
        """Records in the buffer."""
        return Unsigned(len(self._gw_buffer.records))

    @recordCount.setter
    def recordCount(self, value) -> None:
        _no_write()

    @property
    def totalRecordCount(self) -> Unsigned:
        """Records collected since the log was created (modulo 2^32-1), across restarts when the journal is on."""
        return Unsigned(self._gw_buffer.total)

    @totalRecordCount.setter
    def totalRecordCount(self, value) -> None:
        _no_write()

    @property
    def propertyList(self):
        """The properties this object has, less the four the standard excludes."""
        from bacpypes3.constructeddata import ArrayOf

        skip = {"objectIdentifier", "objectName", "objectType", "propertyList"}
        names = [n for n in self._elements if n not in skip and _has(self, n)]
        return ArrayOf(PropertyIdentifier)([PropertyIdentifier(n) for n in names])

    @propertyList.setter
    def propertyList(self, value) -> None:
        """Ignored: derived from the properties."""

    async def write_property(self, attr, value, index=None, priority=None) -> None:  # type: ignore[override]
        """Never reached from the network (the application answers WriteProperty): deny."""
        _no_write()


def _has(obj: Any, name: str) -> bool:
    import inspect

    return inspect.getattr_static(obj, name, None) is not None


UNSPECIFIED = DateTime(date=Date((255, 255, 255, 255)), time=Time((255, 255, 255, 255)))


def make_trend_logs(specs: list[TrendSpec], cfg: BacnetTrendSection) -> list[GwTrendLog]:
    """The Trend Log objects of one meter (or of any list of trend specs), with empty buffers."""
    out = []
    for t in specs:
        obj = GwTrendLog(
            objectIdentifier=("trendLog", t.instance),
            objectName=t.name,
            description=t.description,
            statusFlags=StatusFlags([0, 0, 0, 0]),
            eventState=EventState.normal,
            reliability=Reliability.noFaultDetected,
            enable=True,
            startTime=UNSPECIFIED,
            stopTime=UNSPECIFIED,
            logDeviceObjectProperty=DeviceObjectPropertyReference(
                objectIdentifier=(t.logged.object_type, t.logged.instance), propertyIdentifier="presentValue"
            ),
            logInterval=cfg.interval * 100,  # hundredths of a second
            stopWhenFull=False,
            bufferSize=cfg.buffer_size,
            loggingType=LoggingType.polled,
            alignIntervals=True,
            intervalOffset=0,
        )
        obj._gw_trend = t
        obj._gw_buffer = TrendBuffer(cfg.buffer_size)
        out.append(obj)
    return out


# -- logging ------------------------------------------------------------------------------------------------------
class TrendLogger:
    """Takes the records of a device's Trend Logs at clock-aligned intervals and keeps them in the journal.

    `table_get(meter, point)` reads the point table; `journal()` is the journal recorder or None (journal off).
    """

    def __init__(
        self,
        logs: list[GwTrendLog],
        cfg: BacnetTrendSection,
        table_get: Callable[[str, str], PointValue],
        journal: Callable[[], Any],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.logs = logs
        self.cfg = cfg
        self.table_get = table_get
        self.journal = journal
        self.clock = clock
        self.started = clock()
        self.next_boundary: float | None = None
        self._store: Any = None  # the journal store the buffers were loaded from / are written to
        self._persisted: dict[str, int] = {}  # log key -> last n written to the store
        self._error = ""
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        """Start the logging task."""
        self._task = asyncio.create_task(self.run(), name="bacnet-trend-logs")

    async def stop(self) -> None:
        """Stop the task; records already taken are in the journal (written after every interval)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def _current_store(self) -> Any:
        rec = self.journal()
        return None if rec is None else getattr(rec, "store", None)

    async def attach(self) -> None:
        """Load the buffers from the journal when it has (newly) become available."""
        store = self._current_store()
        if store is None or store is self._store:
            return
        keys = [(o._gw_trend.key, self.cfg.buffer_size) for o in self.logs]
        try:
            loaded = await asyncio.to_thread(trend_store.load, store, keys)
        except JournalError as exc:
            self._report(f"trend logs not reloaded from the journal: {exc}")
            return
        first = self._store is None
        self._store = store
        n_loaded = 0
        for obj in self.logs:
            rows = loaded.get(obj._gw_trend.key, [])
            records = []
            for r in rows:
                try:
                    records.append(Record.from_stored(r))
                except ValueError as exc:
                    self._report(f"trend log {obj.objectName}: record {r.n} unreadable ({exc}): skipped")
            buf: TrendBuffer = obj._gw_buffer
            if first:
                buf.adopt(records, self.started)
                n_loaded += len(records)
                self._persisted[obj._gw_trend.key] = records[-1].n if records else 0
            else:  # another journal file now: write the whole buffer into it
                self._persisted[obj._gw_trend.key] = 0
            if buf.records:
                self.next_boundary = max(self.next_boundary or 0, self._aligned_after(buf.records[-1].ts))
        if first and n_loaded:
            log.info("BACnet trend logs: %d records reloaded from the journal", n_loaded)
        await self.persist()

    def _aligned_after(self, ts: float) -> float:
        i = self.cfg.interval
        return (math.floor(ts / i) + 1) * i

    def take(self, ts: float) -> None:
        """One record in every log, at time ts."""
        for obj in self.logs:
            t: TrendSpec = obj._gw_trend
            buf: TrendBuffer = obj._gw_buffer
            if buf.records and ts <= buf.records[-1].ts:
                continue  # the clock was set back: the buffer stays in time order
            kind, value, flags = sample(t.logged, self.table_get(t.meter_id, t.point), ts)
            buf.add(ts, kind, value, flags)

    async def persist(self) -> None:
        """Write the records not yet in the journal (nothing when the journal is off or not open)."""
        store = self._store
        if store is None or store is not self._current_store():
            return
        rows = []
        keep = {}
        for obj in self.logs:
            key = obj._gw_trend.key
            keep[key] = self.cfg.buffer_size
            done = self._persisted.get(key, 0)
            rows += [(key, r.stored()) for r in obj._gw_buffer.records if r.n > done]
        if not rows:
            return
        try:
            await asyncio.to_thread(trend_store.append, store, rows, keep)
        except JournalError as exc:
            self._report(f"trend records not written to the journal (kept in memory, retried): {exc}")
            return
        for obj in self.logs:
            self._persisted[obj._gw_trend.key] = obj._gw_buffer.last_n
        if self._error:
            log.info("BACnet trend logs: writing to the journal again")
            self._error = ""

    def _report(self, msg: str) -> None:
        """Log a problem once (until it goes away)."""
        if msg.split(":")[0] != self._error.split(":")[0]:
            log.error("BACnet: %s", msg)
        self._error = msg

    async def run(self) -> None:
        """Take records at every boundary; attach to the journal as soon as it is open."""
        while True:
            await self.attach()
            now = self.clock()
            if self.next_boundary is None:
                self.next_boundary = self._aligned_after(now)
            if now >= self.next_boundary:
                # a gateway that was busy (or a clock step forward) takes one record now, not every missed one
                self.take(self.next_boundary if now - self.next_boundary < self.cfg.interval else now)
                self.next_boundary = self._aligned_after(now)
                await self.persist()
            elif self.next_boundary - now > 2 * self.cfg.interval:  # the clock was set back
                self.next_boundary = self._aligned_after(now)
            await asyncio.sleep(min(max(0.02, self.next_boundary - self.clock()), WATCH))


# -- ReadRange --------------------------------------------------------------------------------------------------
def _room(apdu: ReadRangeRequest) -> int:
    """Octets of items an answer to this request may carry (the client's max-APDU and segments)."""
    try:
        max_apdu = decode_max_apdu_length_accepted(apdu.apduMaxResp)
    except (ValueError, IndexError, TypeError):
        max_apdu = 480
    if not getattr(apdu, "apduSA", 0):
        return max_apdu - 3 - ACK_OVERHEAD
    segs = decode_max_segments_accepted(apdu.apduMaxSegs) or MAX_SEGMENTS
    return min(segs, MAX_SEGMENTS) * (max_apdu - 5) - ACK_OVERHEAD


def _encoded_len(item: Any) -> int:
    return len(item.encode().encode().pduData)


def encoded_length(r: Record) -> int:
    """Octets of a record's BACnetLogRecord encoding, without building it (checked against bacpypes3 in the tests):
    timestamp [0] date + time (12), log-datum [1] around the choice (2 + the choice), status-flags [2] (3)."""
    if r.kind == "real":
        inner = 5
    elif r.kind == "unsigned":
        inner = 1 + max(1, (int(r.value).bit_length() + 7) // 8)
    elif r.kind == "status":
        inner = 3
    else:  # failure: [8] error-class, error-code (enumerated, one octet each below 256)
        inner = 2 + sum(2 if _enum_value(x) < 256 else 3 for x in r.value)
    return 12 + 2 + inner + (3 if r.flags is not None else 0)


def _enum_value(name: str) -> int:
    from bacpypes3.basetypes import ErrorClass, ErrorCode

    for enum in (ErrorClass, ErrorCode):
        with contextlib.suppress(Exception):
            return int(enum(name))
    return 0


def _fitting(values: list[Any], size: Callable[[Any], int], room: int, backwards: bool) -> tuple[int, int]:
    """(first, stop) indexes into `values` of the items that fit in `room` octets, taken from the front (or from the
    back when backwards); only the items kept are built into the answer."""
    used = 0
    n = 0
    for v in reversed(values) if backwards else values:
        used += size(v)
        if used > room:
            break
        n += 1
    return (len(values) - n, len(values)) if backwards else (0, n)


def _selection(rng, length: int, seqs, times, zone: ZoneInfo) -> tuple[trend_range.Selection, bool]:
    """The items a Range names, and whether the answer carries a first sequence number."""
    try:
        if rng is None:
            return trend_range.whole(length), False
        if rng.byPosition is not None:
            return trend_range.by_position(length, rng.byPosition.referenceIndex, rng.byPosition.count), False
        if seqs is None:
            # a list without sequence numbers or timestamps has no range by sequence number or by time
            raise ExecutionError(errorClass="property", errorCode="datatypeNotSupported")
        if rng.bySequenceNumber is not None:
            r = rng.bySequenceNumber
            return trend_range.by_sequence_number(seqs(), r.referenceSequenceNumber, r.count), True
        if rng.byTime is not None:
            try:
                ref = unix_time(rng.byTime.referenceTime, zone)
            except (ValueError, TypeError, OverflowError) as exc:
                raise ExecutionError(errorClass="services", errorCode="parameterOutOfRange") from exc
            return trend_range.by_time(times(), ref, rng.byTime.count), True
    except ValueError as exc:  # count zero
        raise ParameterOutOfRange("count must not be zero") from exc
    raise MissingRequiredParameter("range")


async def read_range(app, apdu: ReadRangeRequest, zone: ZoneInfo) -> None:
    """Execute a ReadRange: a Trend Log's log-buffer by position, sequence number or time; any other list property
    by position."""
    obj = app.get_object_id(apdu.objectIdentifier)
    if obj is None:
        raise ExecutionError(errorClass="object", errorCode="unknownObject")
    prop = PropertyIdentifier(apdu.propertyIdentifier)
    attr = prop.attr
    datatype = obj.get_property_type(attr) if attr in obj._elements else None
    if datatype is None or not _has(obj, attr):
        raise ExecutionError(errorClass="property", errorCode="unknownProperty")
    if apdu.propertyArrayIndex is not None:
        raise ExecutionError(errorClass="property", errorCode="propertyIsNotAnArray")
    if not (isinstance(datatype, type) and issubclass(datatype, List)):
        raise ExecutionError(errorClass="services", errorCode="propertyIsNotAList")
    buf: TrendBuffer | None = getattr(obj, "_gw_buffer", None) if attr == "logBuffer" else None
    records: list[Record] = []
    if buf is not None:
        records = list(buf.records)
        sel, with_seq = _selection(
            apdu.range, len(records), lambda: [r.seq for r in records], lambda: [r.ts for r in records], zone
        )
        values: list[Any] = records
        size: Callable[[Any], int] = encoded_length
    else:
        value = await obj.read_property(attr)
        values = list(value or [])
        sel, with_seq = _selection(apdu.range, len(values), None, None, zone)
        size = _encoded_len
    first, stop = _fitting(values[sel.start : sel.stop], size, _room(apdu), sel.backwards)
    res = trend_range.fit(sel, len(values), stop - first)
    chosen = values[res.start : res.stop]
    ack = ReadRangeACK(context=apdu)
    ack.objectIdentifier = apdu.objectIdentifier
    ack.propertyIdentifier = apdu.propertyIdentifier
    ack.resultFlags = ResultFlags([int(res.first_item), int(res.last_item), int(res.more_items)])
    ack.itemCount = res.count
    if buf is not None:
        ack.itemData = AnyValue(TagList.decode(PDUData(b"".join(encode_record(r, zone) for r in chosen))))
    else:
        ack.itemData = AnyValue(datatype(chosen))
    if with_seq and res.count:
        ack.firstSequenceNumber = records[res.start].seq
    await app.response(ack)
