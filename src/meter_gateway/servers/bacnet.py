"""Upstream BACnet/IP device (bacpypes3): one object per point per meter, values pushed from the point table.

Traps handled here (DESIGN.md section 8): the application is built inside the running loop; the application
answers WriteProperty itself: every property of every object is read-only except present-value of BO and AV
objects, whose writes go through the write service (policy + audit), and every refusal is audited too; services
the device does not offer get a Reject (unrecognized-service), logged once per client; protocol-services-supported
is stated explicitly (bacpypes3 puts unconfirmed services on confirmed-service bit numbers); multi-state objects use
GenericCriteria for COV; Accumulator is a local class; reliability changes fire a COV notification (status flags
alone would not); the UDP port is checked before binding (SO_REUSEPORT would let two processes share it) and the
bind is verified. See docs/bacnet.md for the conformance statement.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import hashlib
import inspect
import json
import logging
import math
import os
import socket
import time
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

# isort: off
from . import _bacpypes3  # noqa: F401  (first: bacpypes3 without its RDF module, see there)

# isort: on
from bacpypes3 import appservice
from bacpypes3.apdu import (
    AbortPDU,
    APCISequence,
    ConfirmedRequestPDU,
    IAmRequest,
    IHaveRequest,
    ReadPropertyMultipleRequest,
    ReadPropertyRequest,
    ReadRangeRequest,
    RejectPDU,
    SimpleAckPDU,
    SubscribeCOVRequest,
    WhoHasRequest,
    WhoIsRequest,
    WritePropertyRequest,
)
from bacpypes3.app import Application
from bacpypes3.basetypes import (
    BinaryPV,
    COVSubscription,
    DateTime,
    DeviceAddress,
    EngineeringUnits,
    EventState,
    ListOfCOVSubscription,
    ObjectPropertyReference,
    ObjectTypesSupported,
    OptionalUnsigned,
    Polarity,
    PriorityArray,
    PriorityValue,
    PropertyIdentifier,
    Recipient,
    RecipientProcess,
    Reliability,
    Scale,
    ServicesSupported,
    StatusFlags,
)
from bacpypes3.constructeddata import ArrayOf
from bacpypes3.errors import ExecutionError, RejectException
from bacpypes3.local.analog import AnalogInputObject, AnalogValueObject
from bacpypes3.local.binary import BinaryInputObject
from bacpypes3.local.cov import GenericCriteria
from bacpypes3.local.device import DeviceObject
from bacpypes3.local.multistate import MultiStateValueObject
from bacpypes3.local.networkport import NetworkPortObject
from bacpypes3.local.object import Object as _LocalObject
from bacpypes3.object import AccumulatorObject as _AccumulatorObject
from bacpypes3.object import BinaryOutputObject as _BinaryOutputObject
from bacpypes3.object import DateTimeValueObject as _DateTimeValueObject
from bacpypes3.primitivedata import Boolean, Date, ObjectType, TagClass, TagNumber, Time

from .. import __version__
from ..bacnet_model import (
    ACCUMULATOR_MAX,
    GatewayObjectSpec,
    ObjectSpec,
    gateway_objects,
    journal_alarm,
    meter_devices,
    object_specs,
    present_value,
    state_valid,
    table_value,
)
from ..core.quality import PointValue, Quality
from ..core.table import COMM_STATUS, Alarm
from ..writes import Decision, WriteRequest, WriteResult
from .bacnet_build import ObjectTemplates, absent_is_none, store_unwatched
from .bacnet_cov import CovGuard, CovLimits
from .bacnet_events import REQUESTS as EVENT_REQUESTS
from .bacnet_events import SERVICES as EVENT_SERVICES
from .bacnet_events import EventReporting, EventServices
from .bacnet_fast import FastCached, FastReadApplication, install_class_lookup_cache
from .bacnet_net import ForeignDeviceMonitor, announce, host_port, install_guards, quiet_library_logs, resolve_bind
from .bacnet_segment import ObjectListCache, fit_segments
from .bacnet_trend import TrendLogger, make_trend_logs, read_range, trend_specs
from .base import Server, ServerStartError

if TYPE_CHECKING:
    from ..ports import ServerPorts

log = logging.getLogger(__name__)
_get = object.__getattribute__
_source: contextvars.ContextVar[str] = contextvars.ContextVar("bacnet_source", default="")

#: the device instance that stands for "this device"
WILDCARD_INSTANCE = 4194303
#: seconds between two looks at the journal's state (the journal alarm's present value)
GATEWAY_POLL = 1.0
#: an empty slot of a priority array: one value for every slot of every object (a priority array's elements are
#: replaced, never changed in place; building 16 of them per Binary Output took 3 ms, 1.7 s for 250 meters)
NULL_PRIORITY = PriorityValue(null=())
#: the APDU length the device accepts (BACnet/IP)
MAX_APDU = 1476
#: properties a Property_List never contains (ASHRAE 135 clause 12.1.1.4.1)
NOT_IN_PROPERTY_LIST = frozenset({"objectIdentifier", "objectName", "objectType", "propertyList"})
#: protocol-services-supported bit of ReadRange, offered while the device has Trend Log objects
READ_RANGE_BIT = 35
#: confirmed services the device executes (anything else: Reject unrecognized-service)
CONFIRMED_SERVED = (ReadPropertyRequest, ReadPropertyMultipleRequest, WritePropertyRequest, SubscribeCOVRequest)
#: unconfirmed services the device executes (I-Am / I-Have from peers feed the address cache)
UNCONFIRMED_SERVED = (WhoIsRequest, WhoHasRequest, IAmRequest, IHaveRequest)
#: protocol-services-supported: services executed (confirmed and Who-Is/Who-Has) or initiated (I-Am, I-Have, COV
#: notifications); bit numbers of BACnetServicesSupported, ASHRAE 135 clause 21
SERVICES_SUPPORTED = {
    "subscribeCOV": 5,
    "confirmedCOVNotification": 1,
    "readProperty": 12,
    "readPropertyMultiple": 14,
    "writeProperty": 15,
    "iAm": 26,
    "iHave": 27,
    "unconfirmedCOVNotification": 28,
    "whoHas": 33,
    "whoIs": 34,
}


class RejectingServerSSM(appservice.ServerSSM):
    """bacpypes3's server transaction, answering a confirmed request it cannot decode with a Reject.

    The library hands such a request to the application as an Abort without a destination, so the client hears
    nothing and retries until it times out; ASHRAE 135 answers a syntax error in a confirmed request with a Reject
    (reason from the decoder where it names one, else other).
    """

    logged_peers: set[str] = set()

    async def request(self, apdu) -> None:
        """Decode a complete request and pass it up, or reject it."""
        if isinstance(apdu, AbortPDU):
            await super().request(apdu)
            return
        try:
            decoded = APCISequence.decode(apdu)
        except Exception as exc:
            reason = exc.rejectReason if isinstance(exc, RejectException) else "other"
            peer = str(self.pdu_address)
            if peer not in self.logged_peers and len(self.logged_peers) < 1000:
                self.logged_peers.add(peer)
                log.warning("BACnet: malformed confirmed request from %s rejected (%s): %r", peer, reason, exc)
            await self.confirmation(RejectPDU(self.invokeID, reason))
            return
        decoded.pduSource = self.pdu_address
        decoded.pduDestination = None
        await self.ssmSAP.sap_request(decoded)


# the state machine access point creates its server transactions by this module-level name
appservice.ServerSSM = RejectingServerSSM


RELIABILITY = {
    Quality.GOOD: Reliability.noFaultDetected,
    Quality.COMM_FAILURE: Reliability.communicationFailure,
    Quality.BAD_DATA: Reliability.unreliableOther,
    Quality.WRONG_DEVICE: Reliability.configurationError,
    Quality.UNKNOWN: Reliability.unreliableOther,
}
STALE = {
    "unreliable-other": Reliability.unreliableOther,
    "no-sensor": Reliability.noSensor,
    "communication-failure": Reliability.communicationFailure,
}


class _StandardPropertyList:
    """Mixin: a Property_List without the four properties the standard excludes from it."""

    @property
    def propertyList(self):
        """The properties this object has, less object-identifier, object-name, object-type and property-list."""
        out = []
        for name in self._elements:  # type: ignore[attr-defined]
            if name in NOT_IN_PROPERTY_LIST or inspect.getattr_static(self, name, None) is None:
                continue
            out.append(PropertyIdentifier(name))
        return ArrayOf(PropertyIdentifier)(out)

    @propertyList.setter
    def propertyList(self, value) -> None:
        """Ignored: the list is derived from the object's properties."""


class _GatewayPoint(FastCached, _StandardPropertyList):
    """Mixin: a point object; the application decides its writes, this is the last line of defence."""

    # set after construction: _gw_spec (ObjectSpec) and _gw_server (BacnetServer); no annotations here, the
    # bacpypes3 object metaclass evaluates the type hints of every class in the hierarchy

    async def write_property(self, attr, value, index=None, priority=None) -> None:  # type: ignore[override]
        """Never reached from the network (the application answers WriteProperty): deny."""
        raise ExecutionError(errorClass="property", errorCode="writeAccessDenied")


@absent_is_none
class GwAccumulator(_GatewayPoint, _LocalObject, _AccumulatorObject):
    """Local Accumulator (bacpypes3 has none): unsigned present value in the catalogue's resolution."""

    _cov_criteria = GenericCriteria


@absent_is_none
class GwAnalogInput(_GatewayPoint, AnalogInputObject):
    """Analog input whose writes are guarded."""


@absent_is_none
class GwAnalogValue(_GatewayPoint, AnalogValueObject):
    """Analog value (configuration) whose present-value writes go through the write policy."""


@absent_is_none
class GwBinaryInput(_GatewayPoint, BinaryInputObject):
    """Binary input whose writes are guarded."""


@absent_is_none
class GwGatewayBinaryInput(_GatewayPoint, BinaryInputObject):
    """A Binary Input of the gateway itself (the journal alarm): no meter behind it, read-only like every point."""


@absent_is_none
class GwBinaryOutput(_GatewayPoint, _LocalObject, _BinaryOutputObject):
    """Commandable binary output (a meter command): the priority array decides present-value (see gw_command)."""

    _cov_criteria = GenericCriteria


@absent_is_none
class GwMultiStateValue(_GatewayPoint, MultiStateValueObject):
    """Multi-state value: COV on any state change (GenericCriteria)."""

    _cov_criteria = GenericCriteria


@absent_is_none
class GwDateTimeValue(_GatewayPoint, _LocalObject, _DateTimeValueObject):
    """Date and time of a Unix-seconds point (exact, where a REAL loses up to 128 s), in the gateway's zone."""

    _cov_criteria = GenericCriteria


class GwNetworkPort(FastCached, _StandardPropertyList, NetworkPortObject):
    """The BACnet/IP network port, with a standard property list."""


class GwDevice(FastCached, _StandardPropertyList, DeviceObject):
    """The device object: local date and time in the gateway's time zone, object types from the objects served."""

    # set after construction: _gw_zone (ZoneInfo)

    def _gw_now(self) -> datetime:
        return datetime.now(self._gw_zone)

    @property
    def localDate(self) -> Date:  # type: ignore[override]
        """Today in the gateway's time zone."""
        now = self._gw_now()
        return Date((now.year - 1900, now.month, now.day, now.isoweekday()))

    @localDate.setter
    def localDate(self, value) -> None:
        """Ignored: the date is the host clock's, never changed from the network."""

    @property
    def localTime(self) -> Time:  # type: ignore[override]
        """The time of day in the gateway's time zone."""
        now = self._gw_now()
        return Time((now.hour, now.minute, now.second, now.microsecond // 10000))

    @localTime.setter
    def localTime(self, value) -> None:
        """Ignored: the time is the host clock's, never changed from the network."""

    @property
    def daylightSavingsStatus(self) -> Boolean:
        """Whether daylight saving time is in effect in the gateway's time zone."""
        return Boolean(bool(self._gw_now().dst()))

    @daylightSavingsStatus.setter
    def daylightSavingsStatus(self, value) -> None:
        """Ignored: derived from the time zone."""

    @property
    def protocolObjectTypesSupported(self) -> ObjectTypesSupported:  # type: ignore[override]
        """One bit per object type the device serves."""
        ots = ObjectTypesSupported([])
        app = self._app
        objs = app.objectIdentifier.keys() if app is not None else [self.objectIdentifier]
        for t in {oid[0] for oid in objs}:
            ots[int(ObjectType(t))] = 1
        return ots

    @protocolObjectTypesSupported.setter
    def protocolObjectTypesSupported(self, value) -> None:
        """Ignored: derived from the objects."""


CLASSES = {
    "accumulator": GwAccumulator,
    "analog-input": GwAnalogInput,
    "analog-value": GwAnalogValue,
    "binary-input": GwBinaryInput,
    "binary-output": GwBinaryOutput,
    "multi-state-value": GwMultiStateValue,
    "datetime-value": GwDateTimeValue,
}


def utc_offset_minutes(zone: ZoneInfo, when: datetime | None = None) -> int:
    """BACnet UTC_Offset of a zone's standard time: minutes, positive west of Greenwich (Paris: -60)."""
    now = when or datetime.now(zone)
    off = now.utcoffset() or (now - now)
    dst = now.dst() or (now - now)
    return -round((off - dst).total_seconds() / 60)


def services_supported() -> ServicesSupported:
    """protocol-services-supported: exactly the services in SERVICES_SUPPORTED."""
    ss = ServicesSupported([])
    for bit in SERVICES_SUPPORTED.values():
        ss[bit] = 1
    return ss


class _GatewayApplication(FastReadApplication, EventServices, CovGuard, ObjectListCache, Application):
    """The bacpypes3 application: only the offered services, writes answered by the gateway's own rules."""

    gw_server: BacnetServer | None = None
    #: whether this device has Trend Log objects (None: the server's trend logs decide; per-meter mode sets it)
    gw_trends: bool | None = None
    _logged_services: set[str]
    fast_classes = frozenset({*CLASSES.values(), GwGatewayBinaryInput})

    async def indication(self, apdu) -> None:  # type: ignore[override]
        """Record the requester for write allowlists; reject services that are not offered."""
        peer = self._peer(apdu.pduSource)
        reporting = self._gw_reporting()
        events = reporting is not None and reporting.enabled
        served = (
            CONFIRMED_SERVED + ((ReadRangeRequest,) if self._trend_logs() else ()) + (EVENT_REQUESTS if events else ())
        )
        if isinstance(apdu, ConfirmedRequestPDU) and not isinstance(apdu, served):
            self._log_unserved(peer, type(apdu).__name__, "rejected (unrecognized-service)")
            await self.response(RejectPDU(reason="unrecognizedService", context=apdu))
            return
        if not isinstance(apdu, (ConfirmedRequestPDU, *UNCONFIRMED_SERVED)):
            self._log_unserved(peer, type(apdu).__name__, "ignored")
            return
        _source.set(peer)
        self._resolve_wildcard(apdu)
        await super().indication(apdu)

    def _peer(self, source) -> str:
        """The requester's address as the write allowlists and the audit log see it."""
        return str(getattr(source, "addrTuple", (str(source),))[0]) if source is not None else ""

    def _resolve_wildcard(self, apdu) -> None:
        """Device instance 4194303 names this device (ASHRAE 135 clause 15.5.1.1.1 and others)."""
        dev = self.device_object
        if dev is None:
            return

        def resolved(oid):
            if oid is not None and oid[0] == ObjectType.device and oid[1] == WILDCARD_INSTANCE:
                return dev.objectIdentifier
            return oid

        if isinstance(apdu, (ReadPropertyRequest, WritePropertyRequest, ReadRangeRequest)):
            apdu.objectIdentifier = resolved(apdu.objectIdentifier)
        elif isinstance(apdu, ReadPropertyMultipleRequest):
            for spec in apdu.listOfReadAccessSpecs:
                spec.objectIdentifier = resolved(spec.objectIdentifier)

    def _log_unserved(self, peer: str, service: str, what: str) -> None:
        """One line per client (address) at most, whatever it sends; 1000 clients at most."""
        if not hasattr(self, "_logged_services"):
            self._logged_services = set()
        if peer in self._logged_services or len(self._logged_services) >= 1000:
            return
        self._logged_services.add(peer)
        log.warning(
            "BACnet: %s from %s is not a service of this device: %s (further ones from %s are not logged)",
            service,
            peer,
            what,
            peer,
        )

    def get_services_supported(self):
        """The services the device executes or initiates (ASHRAE 135 clause 21 bit numbers)."""
        ss = services_supported()
        if self._trend_logs():
            ss[READ_RANGE_BIT] = 1
        reporting = self._gw_reporting()
        if reporting is not None and reporting.enabled:
            for bit in EVENT_SERVICES.values():
                ss[bit] = 1
        return ss

    def _trend_logs(self) -> bool:
        """Whether the device has Trend Log objects (ReadRange is offered with them)."""
        if self.gw_trends is not None:
            return self.gw_trends
        return self.gw_server is not None and bool(self.gw_server.trend_specs)

    async def do_ReadRangeRequest(self, apdu: ReadRangeRequest) -> None:  # type: ignore[override]
        """ReadRange (bacpypes3 declares it but does not execute it): servers/bacnet_trend.py."""
        assert self.gw_server is not None
        await read_range(self, apdu, self.gw_server.zone)

    def get_active_cov_subscriptions(self) -> ListOfCOVSubscription:
        """The device's active-cov-subscriptions: one entry per subscription, with its time remaining."""
        now = asyncio.get_running_loop().time()
        out = []
        for objid, detection in list(getattr(self, "_cov_detections", {}).items()):
            for cov in list(detection.cov_subscriptions):
                handle = cov.cancel_handle
                remaining = 0 if handle is None else max(0, math.ceil(handle.when() - now))
                addr = cov.client_addr
                mac = bytes(getattr(addr, "addrAddr", b"") or b"")
                entry = COVSubscription(
                    recipient=RecipientProcess(
                        recipient=Recipient(
                            address=DeviceAddress(networkNumber=getattr(addr, "addrNet", None) or 0, macAddress=mac)
                        ),
                        processIdentifier=cov.proc_id,
                    ),
                    monitoredPropertyReference=ObjectPropertyReference(
                        objectIdentifier=objid, propertyIdentifier="presentValue"
                    ),
                    issueConfirmedNotifications=bool(cov.confirmed),
                    timeRemaining=remaining,
                )
                if cov.covIncrement is not None:
                    entry.covIncrement = cov.covIncrement
                out.append(entry)
        return ListOfCOVSubscription(out)

    async def do_WritePropertyRequest(self, apdu: WritePropertyRequest) -> None:  # type: ignore[override]
        """WriteProperty: present-value of BO/AV through the write policy; anything else refused and audited."""
        server = self.gw_server
        assert server is not None
        objid = apdu.objectIdentifier
        obj = self.get_object_id(objid)
        prop = PropertyIdentifier(apdu.propertyIdentifier)
        attr = prop.attr
        spec: ObjectSpec | None = getattr(obj, "_gw_spec", None)
        target = f"{ObjectType(objid[0])},{objid[1]}"

        def refuse(code: str, reason: str, error_class: str = "property") -> ExecutionError:
            server.audit_refusal(spec, target, str(prop), apdu, reason)
            return ExecutionError(errorClass=error_class, errorCode=code)

        if obj is None:
            raise refuse("unknownObject", "unknown object", "object")
        if attr not in obj._elements or inspect.getattr_static(obj, attr, None) is None:
            raise refuse("unknownProperty", f"{obj.objectName} has no {prop}")
        if spec is None or not spec.writable or attr != "presentValue":
            raise refuse("writeAccessDenied", f"{prop} of {obj.objectName} is read-only")
        if apdu.propertyArrayIndex is not None:
            raise refuse("propertyIsNotAnArray", "present-value is not an array")
        priority = apdu.priority
        if priority is not None and not 1 <= priority <= 16:
            raise refuse("parameterOutOfRange", f"priority {priority} is not 1..16", "services")
        tags = [t for t in apdu.propertyValue.tagList if t.tag_class in (TagClass.application, TagClass.context)]
        if len(tags) == 1 and len(list(apdu.propertyValue.tagList)) == 3:
            pass  # opening tag 3, the value, closing tag 3 (the encoding of a WriteProperty value)
        elif len(list(apdu.propertyValue.tagList)) != 1:
            tags = []
        tag = tags[0] if len(tags) == 1 and tags[0].tag_class == TagClass.application else None
        is_null = tag is not None and tag.tag_number == TagNumber.null
        if spec.object_type == "binary-output":
            if is_null:
                await server.command(obj, None, priority or 16)
            elif tag is None or tag.tag_number != TagNumber.enumerated:
                raise refuse("invalidDataType", "a binary output takes an enumerated (BinaryPV) or NULL")
            else:
                raw = int.from_bytes(bytes(tag.tag_data), "big") if tag.tag_data else 0
                if raw not in (0, 1):
                    raise refuse("valueOutOfRange", f"BinaryPV {raw} is neither inactive (0) nor active (1)")
                await server.command(obj, raw, priority or 16)
        else:
            if tag is None or tag.tag_number != TagNumber.real:
                what = "NULL (no priority array)" if is_null else "a value that is not a REAL"
                raise refuse("invalidDataType", f"present-value of {obj.objectName} takes a REAL, not {what}")
            value = float(tag.app_to_object())
            if not math.isfinite(value):
                raise refuse("valueOutOfRange", f"{value} is not a finite number")
            await server.write_point(spec, value)
        await self.response(SimpleAckPDU(context=apdu))


@functools.cache
def _units(name: str | None):
    """The engineering units of a catalogue unit name (one value per name: enumerations are immutable)."""
    return EngineeringUnits(name or "noUnits")


@functools.cache
def _object_type(name: str) -> ObjectType:
    """The object type of a name, looked up once (13,500 objects for 250 meters share a handful)."""
    return ObjectType(name)


#: objects made between two yields to the event loop at start (about 0.1 s of work)
MAKE_BATCH = 250

#: receive buffer asked for the BACnet/IP socket: a burst of requests (a head-end reading every object at once, a
#: flood) waits there while the event loop works; the default (about 200 KiB) drops beyond ~270 datagrams
RECEIVE_BUFFER = 4 * 1024 * 1024


def _widen_receive_buffer(sock: Any) -> None:
    """Ask for RECEIVE_BUFFER on the socket (the kernel caps it at net.core.rmem_max); log what was granted."""
    if sock is None:
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
        got = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    except OSError as exc:
        log.info("BACnet/IP: the receive buffer stays at its default (%s)", exc)
        return
    if got < RECEIVE_BUFFER:
        log.info(
            "BACnet/IP: receive buffer %d KiB (raise net.core.rmem_max to %d for bursts of requests)",
            got // 1024,
            RECEIVE_BUFFER,
        )


class BacnetServer(Server):
    """One BACnet/IP device for the gateway."""

    name = "bacnet"

    def __init__(self, ports: ServerPorts) -> None:
        super().__init__(ports)
        facts = self.facts
        self.cfg = facts.config.upstream.bacnet
        self.specs = object_specs(
            facts.config, facts.catalogue, {m: facts.meter_points(m) for m in self.table.meter_ids}
        )
        self.zone = ZoneInfo(facts.config.gateway.timezone)
        #: every point object, by (meter, point, object type)
        self.objects: dict[tuple[str, str, str], Any] = {}
        self._by_point: dict[tuple[str, str], list[Any]] = {}
        #: point objects of one shape are copies of the first one bacpypes3 built (servers/bacnet_build.py)
        self._templates = ObjectTemplates()
        self.app: _GatewayApplication | None = None
        self.device: GwDevice | None = None
        self.database_revision = 1
        self._bound: tuple[str, int] | None = None
        self._broadcast_listener = None
        self.fd_monitor: ForeignDeviceMonitor | None = None
        #: the gateway's own objects (journal alarm), by key, and the task that keeps their present values
        self.gateway_specs: list[GatewayObjectSpec] = gateway_objects(facts.config)
        self.gateway_objects: dict[str, Any] = {}
        self._gateway_active: dict[str, bool] = {}
        self._watch_task: asyncio.Task | None = None
        #: Trend Log objects (upstream.bacnet.trend_logs) and the task that fills them
        self.trend_specs = trend_specs(self.cfg.trend_logs, self.specs)
        self.trend_logger: TrendLogger | None = None
        #: intrinsic reporting (notification classes, alarm services): docs/bacnet.md, Alarms
        self.events = EventReporting(self.cfg.events, self.zone, self.table)
        #: per-meter devices: the router and its meter devices (servers/bacnet_router.py), None in single mode
        self.router: Any = None
        self._meters_by_id: tuple[Any, dict[str, Any]] | None = None  # (configuration, meters by id)

    # -- start / stop ---------------------------------------------------------------------------------
    def _address(self) -> str:
        try:
            self.bind_info = resolve_bind(self.cfg.bind, self.cfg.netmask)
        except ValueError as exc:
            raise ServerStartError(f"BACnet/IP: {exc}") from exc
        return f"{self.bind_info.address}/{self.bind_info.prefix}:{self.cfg.port}"

    def _check_port_free(self, host: str, port: int) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.bind((host, port))
            except OSError as exc:
                raise ServerStartError(
                    f"BACnet/IP cannot bind UDP {host}:{port}: {exc.strerror} (is another BACnet stack running?)"
                ) from exc

    async def start(self) -> None:
        """Build the device and its objects inside the running loop, bind, and verify the bind."""
        address = self._address()
        host, port = address.split("/")[0], self.cfg.port
        if port == 0:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.bind((host, 0))
                port = s.getsockname()[1]
            address = f"{host}/{self.bind_info.prefix}:{port}"
        self._check_port_free(host, port)
        gcfg = self.facts.config.gateway
        install_class_lookup_cache()  # thousands of objects follow: bacpypes3's per-element inspect, cached
        self.database_revision = self._database_revision()
        device = GwDevice(
            objectIdentifier=("device", self.cfg.device_instance),
            objectName=self.cfg.device_name or gcfg.name,
            vendorName=self.cfg.vendor_name,
            vendorIdentifier=self.cfg.vendor_id,
            modelName="meter-gateway",
            firmwareRevision=__version__,
            applicationSoftwareVersion=__version__,
            location=self.cfg.location or gcfg.location,
            description=self.cfg.description or gcfg.description,
            maxApduLengthAccepted=MAX_APDU,
            segmentationSupported="segmentedBoth",
            databaseRevision=self.database_revision,
            utcOffset=utc_offset_minutes(self.zone),
        )
        device._gw_zone = self.zone
        self.device = device
        port_obj = GwNetworkPort(address, objectIdentifier=("network-port", 1), objectName="NetworkPort-1")
        self._complete_network_port(port_obj)
        if self.cfg.foreign_bbmd:
            from bacpypes3.basetypes import HostNPort, IPMode

            port_obj.bacnetIPMode = IPMode.foreign
            port_obj.fdBBMDAddress = HostNPort(self.cfg.foreign_bbmd)
            port_obj.fdSubscriptionLifetime = self.cfg.foreign_ttl
        elif self.cfg.bbmd:
            from bacpypes3.basetypes import BDTEntry, IPMode

            port_obj.bacnetIPMode = IPMode.bbmd
            port_obj.bbmdAcceptFDRegistrations = True
            port_obj.bbmdForeignDeviceTable = []
            port_obj.bbmdBroadcastDistributionTable = [BDTEntry(e) for e in self.cfg.bdt]
        router_objs: list[Any] = []
        if self.cfg.devices == "per-meter":
            from .bacnet_router import MeterRouter

            self.router = MeterRouter(self)
            router_objs = self.router.prepare(port_obj)
        # the table's changes reach every object made from here on (each reads the table when made), and making
        # thousands of them yields to the event loop now and then: the buses keep polling meanwhile
        self.table.add_listener(self._on_change)
        objs = [device, port_obj, *router_objs]
        for i, spec in enumerate(self.specs if self.router is None else ()):
            objs.append(self._make(spec))
            if i % MAKE_BATCH == MAKE_BATCH - 1:
                await asyncio.sleep(0)
        objs += [self._make_gateway(spec) for spec in self.gateway_specs]
        # per-meter mode: each meter device has its own Trend Logs (servers/bacnet_router.py), the router none
        trend_objs = make_trend_logs(self.trend_specs if self.router is None else [], self.cfg.trend_logs)
        objs += trend_objs
        objs += self.events.class_objects()
        fit_segments()
        quiet_library_logs()
        try:
            self.app = _GatewayApplication.from_object_list(objs)
        except Exception as exc:
            raise ServerStartError(f"BACnet/IP device cannot start: {exc}") from exc
        self.app.gw_server = self
        self.app.gw_trends = bool(trend_objs)
        self.events.start(self.app)
        self.app.cov_limits = CovLimits(**self.cfg.cov.model_dump())
        if self.router is not None:
            self.router.attach(self.app, port_obj)
        self.bvll_guards = install_guards(self.app, self._trusted_bbmds(), self.bind_info.network)
        await self._verify_bound(host, port)
        if self.app.fast_reads is not None:  # reads of the point objects answered from the socket (bacnet_fast)
            self.app.fast_reads.install()
        if self.router is not None:
            try:
                self.router.start(self.app)
            except Exception as exc:
                self.router.stop()
                self.router = None
                self.app.close()
                raise ServerStartError(f"BACnet meter devices cannot start: {exc}") from exc
        self._broadcast_listener = await announce(self.app, self.bind_info, port)
        if self.cfg.foreign_bbmd or self.cfg.bbmd:
            self.fd_monitor = ForeignDeviceMonitor(
                self.app, port_obj, self.cfg.foreign_bbmd, self.cfg.bbmd_max_foreign_devices
            )
            self.fd_monitor.start()
        self.table.add_alarm_listener(self._on_alarm)
        if trend_objs:
            self.trend_logger = TrendLogger(
                trend_objs, self.cfg.trend_logs, self.table.get, lambda: self.ports.status.journal
            )
            self.trend_logger.start()
        if self.gateway_specs:
            self._watch_task = asyncio.create_task(self._watch_gateway(), name="bacnet-gateway-objects")
        log.info(
            "BACnet/IP device %d (%s) on %s:%d with %d objects, database revision %d",
            self.cfg.device_instance,
            device.objectName,
            host,
            port,
            (len(self.specs) if self.router is None else 0) + len(self.gateway_specs) + len(trend_objs),
            self.database_revision,
        )

    def _complete_network_port(self, port_obj: GwNetworkPort) -> None:
        """Required properties of a BACnet/IP Network Port that bacpypes3 leaves unset."""
        from bacpypes3.basetypes import IPMode, NetworkNumberQuality

        if port_obj.networkNumber is None:
            port_obj.networkNumber = 0
        if port_obj.networkNumberQuality is None:
            port_obj.networkNumberQuality = NetworkNumberQuality.unknown
        port_obj.apduLength = MAX_APDU
        if port_obj.linkSpeed is None:
            port_obj.linkSpeed = 0.0
        if port_obj.bacnetIPMode is None:
            port_obj.bacnetIPMode = IPMode.normal
        if port_obj.ipDefaultGateway is None:
            port_obj.ipDefaultGateway = "0.0.0.0"
        if port_obj.ipDNSServer is None:
            port_obj.ipDNSServer = []
        if port_obj.outOfService is None:
            port_obj.outOfService = False
        if port_obj.reliability is None:
            port_obj.reliability = Reliability.noFaultDetected
        if port_obj.changesPending is None:
            port_obj.changesPending = False

    def _state_path(self) -> Path | None:
        """The device state file: absolute as written, a relative one in gateway.state_dir (None without a file)."""
        if self.facts.config_path is None and not Path(self.cfg.state_file).is_absolute():
            return None
        return self.facts.state_path(self.cfg.state_file)

    def _database_revision(self) -> int:
        """The persisted database-revision, raised (and saved) when the object set differs from the last run."""
        items = sorted((s.object_type, s.instance, s.name) for s in [*self.specs, *self.gateway_specs])
        items += sorted(("trend-log", t.instance, t.name) for t in self.trend_specs)
        items = sorted([*items, *self.events.identities()])
        ident: list[Any] = [self.cfg.device_instance, self.cfg.device_name or self.facts.config.gateway.name]
        if self.cfg.devices == "per-meter":  # the meter devices' identities and the network numbers too
            ident += [self.cfg.virtual_network, [(d.instance, d.name) for d in meter_devices(self.facts.config)]]
        fingerprint = hashlib.sha256(json.dumps([ident, items]).encode()).hexdigest()
        path = self._state_path()
        if path is None:
            return 1
        state: dict[str, Any] = {}
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
            rev = int(state.get("database_revision", 0))
        except FileNotFoundError:
            rev = 0
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            log.warning("BACnet state file %s unreadable (%s): database revision restarts", path, exc)
            state, rev = {}, 0
        if rev >= 1 and state.get("object_set") == fingerprint:
            return rev
        rev = rev + 1 if rev < 0xFFFFFFFF else 1
        state = {"database_revision": rev, "object_set": fingerprint, "changed": time.strftime("%Y-%m-%dT%H:%M:%SZ")}
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(state, fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except OSError as exc:
            log.warning("BACnet state file %s cannot be written (%s): database revision not persisted", path, exc)
        return rev

    def _trusted_bbmds(self) -> set[tuple[str, int]]:
        """Sources whose Forwarded-NPDU are trusted: configured BBMDs, BDT peers (as BBMD), the foreign BBMD."""
        entries = list(self.cfg.trusted_bbmds)
        if self.cfg.bbmd:
            entries += self.cfg.bdt
        if self.cfg.foreign_bbmd:
            entries.append(self.cfg.foreign_bbmd)
        return {host_port(e) for e in entries}

    async def _verify_bound(self, host: str, port: int) -> None:
        """Wait until bacpypes3 really owns the socket (its own bind retries silently)."""
        assert self.app is not None
        servers = [ll.server for ll in self.app.link_layers.values() if hasattr(ll, "server")]
        try:
            await asyncio.wait_for(asyncio.gather(*(s._local_transport_ready.wait() for s in servers)), 5.0)
        except TimeoutError as exc:
            self.app.close()
            raise ServerStartError(f"BACnet/IP could not bind UDP {host}:{port} within 5 s") from exc
        for s in servers:
            if s.local_transport is not None:
                self._bound = s.local_transport.get_extra_info("sockname")[:2]
                _widen_receive_buffer(s.local_transport.get_extra_info("socket"))

    async def stop(self) -> None:
        """Stop listening to the table and close the sockets."""
        self.table.remove_listener(self._on_change)
        self.table.remove_alarm_listener(self._on_alarm)
        if self.trend_logger is not None:
            await self.trend_logger.stop()
            self.trend_logger = None
        if self._watch_task is not None:
            self._watch_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch_task
            self._watch_task = None
        if self._broadcast_listener is not None:
            self._broadcast_listener.close()
            self._broadcast_listener = None
        if self.fd_monitor is not None:
            self.fd_monitor.close()
            self.fd_monitor = None
        if self.router is not None:
            await self.router.stop_trend_logs()
        await self.events.stop()
        if self.router is not None:
            self.router.stop()
            self.router = None
        if self.app is not None:
            self.app.close()
            self.app = None
            await asyncio.sleep(0)

    def address(self) -> tuple[str, int] | None:
        """The bound UDP address."""
        return self._bound

    def foreign_registration(self) -> str | None:
        """Foreign-device registration state (registering, registered, no-answer, refused, expired), None if none."""
        return self.fd_monitor.state if self.fd_monitor is not None and self.fd_monitor.foreign else None

    def meters_changed(self, meter_ids: set[str]) -> bool:
        """Reload: replace the objects of those meters whose objects differ; the others keep their COV subscribers."""
        # a tenant rename or a new Modbus unit leaves a meter's objects as they are
        if self.app is None:
            return False
        facts = self.facts
        specs = object_specs(facts.config, facts.catalogue, {m: facts.meter_points(m) for m in self.table.meter_ids})
        old = {mid: [x for x in self.specs if x.meter_id == mid] for mid in meter_ids}
        new = {mid: [x for x in specs if x.meter_id == mid] for mid in meter_ids}
        new_trends = trend_specs(self.cfg.trend_logs, specs)
        if self.router is None and [t.identity for t in new_trends] != [t.identity for t in self.trend_specs]:
            return False  # other Trend Logs: the device restarts (their records come back from the journal)
        self.specs = specs
        self.trend_specs = new_trends
        if self.router is not None:  # per-meter devices: those meters' devices are replaced
            self.database_revision = self._database_revision()
            if self.device is not None:
                self.device.databaseRevision = self.database_revision
            self.router.meters_changed(meter_ids)
            return True

        def same(a: list[ObjectSpec], b: list[ObjectSpec]) -> bool:
            return [(x.point.name, x.object_type, x.instance, x.name) for x in a] == [
                (x.point.name, x.object_type, x.instance, x.name) for x in b
            ]

        for mid in meter_ids:
            if old[mid] and same(old[mid], new[mid]) and all(self._same_events(s) for s in new[mid]):
                for spec in new[mid]:  # same objects: new description, the table's current values
                    obj = self.objects[(mid, spec.point.name, spec.object_type)]
                    obj._gw_spec = spec
                    if obj.description != spec.description:
                        obj.description = spec.description
                    self._on_change(mid, spec.point.name, None, self.table.get(mid, spec.point.name))
                continue
            for key in [k for k in self.objects if k[0] == mid]:
                obj = self.objects.pop(key)
                self.events.deleted(obj)
                with contextlib.suppress(Exception):
                    self.app.delete_object(obj)
            for key in [k for k in self._by_point if k[0] == mid]:
                del self._by_point[key]
            for spec in new[mid]:
                self.app.add_object(self._make(spec))
        revision = self._database_revision()  # raised (and saved) when the object set changed
        if self.device is not None and revision != self.database_revision:
            self.database_revision = revision
            self.device.databaseRevision = revision
        return True

    # -- objects ---------------------------------------------------------------------------------------
    def _meter_config(self, meter_id: str):
        config = self.facts.config
        if self._meters_by_id is None or self._meters_by_id[0] is not config:  # one map per configuration
            self._meters_by_id = (config, {m.id: m for m in config.meters})
        return self._meters_by_id[1].get(meter_id)

    def events_for(self, meter_id: str) -> EventReporting:
        """The reporting of the device holding a meter's objects: its own device's in per-meter mode."""
        own = self.router.reporting.get(meter_id) if self.router is not None else None
        return own if own is not None else self.events

    def _same_events(self, spec: ObjectSpec) -> bool:
        """Whether an existing object already has the intrinsic reporting the configuration asks for."""
        obj = self.objects.get((spec.meter_id, spec.point.name, spec.object_type))
        events = self.events_for(spec.meter_id)
        cls, extra = events.enroll(spec, CLASSES[spec.object_type], self._meter_config(spec.meter_id))
        return obj is not None and type(obj) is cls and events.unchanged(obj, extra)

    def _make(self, spec: ObjectSpec):
        p = spec.point
        reporting = self.events_for(spec.meter_id)
        cls, events = reporting.enroll(spec, CLASSES[spec.object_type], self._meter_config(spec.meter_id))
        v = self.table.get(spec.meter_id, p.name)
        t = spec.object_type
        common: dict[str, Any] = {
            "objectIdentifier": (_object_type(t), spec.instance),
            "objectName": spec.name,
            "description": spec.description,
            "outOfService": False,
            "reliability": self._reliability(spec, v),
        }
        if t != "datetime-value":
            common["eventState"] = EventState.normal
        if t == "datetime-value":
            common |= {"presentValue": self._datetime(v.value), "isUTC": False}
        elif t == "binary-output":
            common |= {
                "presentValue": BinaryPV.inactive,
                "priorityArray": PriorityArray([NULL_PRIORITY] * 16),
                "relinquishDefault": BinaryPV.inactive,
                "currentCommandPriority": OptionalUnsigned(null=()),
            }
        else:
            common["presentValue"] = present_value(spec, v.value if state_valid(spec, v.value) else None)
        if t == "accumulator":
            common |= {
                "units": _units(p.bacnet_unit),
                "scale": Scale(integerScale=spec.accumulator_scale),
                "maxPresValue": ACCUMULATOR_MAX,
            }
        elif t in ("analog-input", "analog-value"):
            common |= {"units": _units(p.bacnet_unit), "covIncrement": spec.cov_increment}
            if p.range:
                common |= {"minPresValue": p.range[0], "maxPresValue": p.range[1]}
        elif t in ("binary-input", "binary-output"):
            states = p.states or ("inactive", "active")
            common |= {"inactiveText": states[0], "activeText": states[1], "polarity": Polarity.normal}
        elif t == "multi-state-value":
            states = p.states or ()
            common |= {"numberOfStates": len(states), "stateText": list(states)}
        obj = self._templates.make(cls, common | events)
        obj._gw_spec = spec
        obj._gw_server = self
        reporting.created(obj, spec)
        if t == "binary-output":
            obj._gw_slots = [None] * 16
        self.objects[(spec.meter_id, p.name, t)] = obj
        self._by_point.setdefault((spec.meter_id, p.name), []).append(obj)
        return obj

    def _gateway_value(self, spec: GatewayObjectSpec) -> bool:
        """The present value of one of the gateway's own objects (True: active)."""
        if spec.key == "journal_alarm":
            rec = self.ports.status.journal
            return rec is not None and journal_alarm(rec.state, rec.disk_full)
        return False

    def _make_gateway(self, spec: GatewayObjectSpec) -> GwGatewayBinaryInput:
        """A Binary Input of the gateway itself, showing its current state."""
        active = self._gateway_value(spec)
        cls, events = self.events.enroll_gateway(GwGatewayBinaryInput)
        obj = cls(
            **events,
            objectIdentifier=(spec.object_type, spec.instance),
            objectName=spec.name,
            description=spec.description,
            presentValue=BinaryPV.active if active else BinaryPV.inactive,
            outOfService=False,
            reliability=Reliability.noFaultDetected,
            eventState=EventState.normal,
            polarity=Polarity.normal,
            inactiveText=spec.inactive_text,
            activeText=spec.active_text,
        )
        obj._gw_server = self
        self.events.created_gateway(obj)
        self.gateway_objects[spec.key] = obj
        self._gateway_active[spec.key] = active
        return obj

    def refresh_gateway_objects(self) -> None:
        """Assign the present value of the gateway's objects that changed (a COV notification follows)."""
        for spec in self.gateway_specs:
            obj = self.gateway_objects.get(spec.key)
            active = self._gateway_value(spec)
            if obj is None or self._gateway_active.get(spec.key) == active:
                continue
            self._gateway_active[spec.key] = active
            obj.presentValue = BinaryPV.active if active else BinaryPV.inactive
            log.info("BACnet: %s is now %s", spec.name, spec.active_text if active else spec.inactive_text)

    async def _watch_gateway(self) -> None:
        """Poll the journal's state (it changes in a worker thread) into the gateway's objects."""
        while True:
            await asyncio.sleep(GATEWAY_POLL)
            try:
                self.refresh_gateway_objects()
            except Exception as exc:  # never let bookkeeping stop the device
                log.error("BACnet: gateway objects not refreshed: %s", exc)

    def _datetime(self, value) -> DateTime:
        """A DateTime in the gateway's zone for Unix seconds (unspecified when there is no value)."""
        if value is None or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
            return DateTime(date=Date((255, 255, 255, 255)), time=Time((255, 255, 255, 255)))
        d = datetime.fromtimestamp(int(value), self.zone)
        return DateTime(
            date=Date((d.year - 1900, d.month, d.day, d.isoweekday())), time=Time((d.hour, d.minute, d.second, 0))
        )

    def _reliability(self, spec: ObjectSpec, v: PointValue) -> Reliability:
        if spec.point.name == COMM_STATUS and v.quality is Quality.GOOD and self._profile_mismatch(spec.meter_id):
            return Reliability.configurationError  # the meter contradicts its profile (docs/bacnet.md)
        if v.quality is Quality.STALE:
            return STALE[self.cfg.stale_reliability]
        if v.quality is Quality.GOOD and not state_valid(spec, v.value):
            return Reliability.multiStateFault
        if v.quality is Quality.BAD_DATA and spec.object_type == "multi-state-value":
            return Reliability.multiStateFault  # the table refuses a value outside the point's states as bad data
        return RELIABILITY.get(v.quality, Reliability.unreliableOther)

    def _profile_mismatch(self, meter_id: str) -> bool:
        """True while the meter contradicts its configured profile (PROFILE MISMATCH)."""
        try:
            return bool(self.table.meter(meter_id).profile_warning)
        except KeyError:
            return False

    def _on_alarm(self, alarm: Alarm) -> None:
        """A meter-level alarm (profile mismatch): re-derive the reliability of the meter's status object."""
        if alarm.point == "" and (alarm.meter_id, COMM_STATUS) in self._by_point:
            self._on_change(alarm.meter_id, COMM_STATUS, None, self.table.get(alarm.meter_id, COMM_STATUS))

    def _on_change(self, meter_id: str, point: str, old: PointValue, new: PointValue) -> None:
        """Push a table change into the objects: present value, then reliability (with its own COV)."""
        for obj in self._by_point.get((meter_id, point), ()):
            spec: ObjectSpec = _get(obj, "_gw_spec")  # (point objects hook attribute access: the plain way)
            rel = self._reliability(spec, new)
            pv = None
            if new.value is not None and new.quality is Quality.GOOD and spec.object_type != "binary-output":
                if spec.object_type == "datetime-value":
                    pv = self._datetime(new.value)
                elif rel != Reliability.multiStateFault:
                    pv = present_value(spec, new.value)
            if not _get(obj, "_property_monitors") and store_unwatched(obj, pv, rel):
                continue  # nobody watches this object (no COV subscriber, no event algorithm): stored directly
            if pv is not None:
                obj.presentValue = pv
            if obj.reliability != rel:
                fault = int(rel != Reliability.noFaultDetected)
                # statusFlags is derived from reliability: assigning it first is what makes bacpypes3 notify COV
                # subscribers of a reliability change (a change of status flags alone fires no COV otherwise)
                obj.statusFlags = StatusFlags([0, fault, 0, 0])
                obj.reliability = rel

    # -- writes ------------------------------------------------------------------------------------------
    def audit_refusal(self, spec: ObjectSpec | None, target: str, prop: str, apdu, reason: str) -> None:
        """Audit a WriteProperty refused before the write policy (read-only property, unknown object, bad type)."""
        try:
            tags = [t for t in apdu.propertyValue.tagList if t.tag_class == TagClass.application]
            value = str(tags[0].app_to_object()) if len(tags) == 1 else f"({len(tags)} values)"
        except Exception:
            value = "(undecodable)"
        meter = spec.meter_id if spec is not None else ""
        self._writes().refuse(
            WriteRequest("bacnet", _source.get() or "unknown", meter, f"{target}/{prop}", value[:80]), reason
        )

    @staticmethod
    def _raise_for(result: WriteResult) -> None:
        if result.decision is Decision.ACCEPTED:
            return
        if result.decision is Decision.OUT_OF_RANGE:
            raise ExecutionError(errorClass="property", errorCode="valueOutOfRange")
        if result.decision is Decision.DENIED:
            raise ExecutionError(errorClass="property", errorCode="writeAccessDenied")
        raise ExecutionError(errorClass="device", errorCode="operationalProblem")

    async def write_point(self, spec: ObjectSpec, written) -> None:
        """A present-value write: decided by the write policy, carried out by the driver, audited."""
        try:
            value = table_value(spec, written)
        except (TypeError, ValueError) as exc:
            raise ExecutionError(errorClass="property", errorCode="invalidDataType") from exc
        source = _source.get() or "unknown"
        result = await self._writes().write(WriteRequest("bacnet", source, spec.meter_id, spec.point.name, value))
        self._raise_for(result)

    async def command(self, obj: GwBinaryOutput, value: int | None, priority: int) -> None:
        """Command a binary output at a priority (None relinquishes).

        The meter command is a pulse: it is executed when active is written at the winning priority (no higher
        priority holds a command); inactive, a losing active and a relinquish never reach the meter. Every one
        is decided by the write policy and audited; the slot changes only when the policy accepts.
        """
        spec: ObjectSpec = obj._gw_spec
        slots: list[int | None] = obj._gw_slots
        current = next((i + 1 for i, s in enumerate(slots) if s is not None), None)
        executes = value == 1 and (current is None or priority <= current)
        if value is None:
            detail = f"relinquish at priority {priority}"
        elif value == 1 and not executes:
            detail = f"active at priority {priority}, below the command at priority {current}: not executed"
        else:
            detail = f"{'active' if value else 'inactive'} at priority {priority}"
        result = await self._writes().write(
            WriteRequest("bacnet", _source.get() or "unknown", spec.meter_id, spec.point.name, int(executes), detail)
        )
        self._raise_for(result)
        slots[priority - 1] = value
        winner = next((i for i, s in enumerate(slots) if s is not None), None)
        obj.priorityArray = PriorityArray([NULL_PRIORITY if s is None else PriorityValue(enumerated=s) for s in slots])
        obj.currentCommandPriority = (
            OptionalUnsigned(null=()) if winner is None else OptionalUnsigned(unsigned=winner + 1)
        )
        obj.presentValue = BinaryPV(slots[winner]) if winner is not None else obj.relinquishDefault
