"""Upstream BACnet/IP device (bacpypes3): one object per point per meter, values pushed from the point table.

Traps handled here (DESIGN.md section 8): the application is built inside the running loop; every property is
read-only except present-value of points, whose writes go through the write service (policy + audit);
WritePropertyMultiple and DeviceCommunicationControl are not offered; multi-state objects use GenericCriteria for
COV; Accumulator is a local class; reliability changes fire a COV notification (status flags alone would not);
the UDP port is checked before binding (SO_REUSEPORT would let two processes share it) and the bind is verified.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import ipaddress
import logging
import socket
from typing import Any

from bacpypes3 import appservice
from bacpypes3.apdu import (
    AbortPDU,
    APCISequence,
    DeviceCommunicationControlRequest,
    RejectPDU,
    WritePropertyMultipleRequest,
)
from bacpypes3.app import Application
from bacpypes3.basetypes import EngineeringUnits, EventState, Polarity, Reliability, Scale, StatusFlags
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

from .. import __version__
from ..bacnet_model import ACCUMULATOR_MAX, ObjectSpec, object_specs, present_value, table_value
from ..core.quality import PointValue, Quality
from ..writes import Decision, WriteRequest
from .base import Server, ServerStartError

log = logging.getLogger(__name__)
_source: contextvars.ContextVar[str] = contextvars.ContextVar("bacnet_source", default="")


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
    Quality.UNKNOWN: Reliability.unreliableOther,
}
STALE = {
    "unreliable-other": Reliability.unreliableOther,
    "no-sensor": Reliability.noSensor,
    "communication-failure": Reliability.communicationFailure,
}


class _GatewayPoint:
    """Mixin: every property is read-only except present-value, which goes through the write service."""

    # set after construction: _gw_spec (ObjectSpec) and _gw_server (BacnetServer); no annotations here, the
    # bacpypes3 object metaclass evaluates the type hints of every class in the hierarchy

    async def write_property(self, attr, value, index=None, priority=None) -> None:  # type: ignore[override]
        """Deny every write except present-value, which the write policy decides."""
        name = attr if isinstance(attr, str) else self._property_identifier_class(attr).attr  # type: ignore[attr-defined]
        if name != "presentValue" or index is not None:
            raise ExecutionError(errorClass="property", errorCode="writeAccessDenied")
        await self._gw_server.write_point(self._gw_spec, value)


class GwAccumulator(_GatewayPoint, _LocalObject, _AccumulatorObject):
    """Local Accumulator (bacpypes3 has none): unsigned present value in the catalogue's resolution."""

    _cov_criteria = GenericCriteria


class GwAnalogInput(_GatewayPoint, AnalogInputObject):
    """Analog input whose writes are guarded."""


class GwAnalogValue(_GatewayPoint, AnalogValueObject):
    """Analog value (configuration) whose writes go through the write policy."""


class GwBinaryInput(_GatewayPoint, BinaryInputObject):
    """Binary input whose writes are guarded."""


class GwBinaryOutput(_GatewayPoint, _LocalObject, _BinaryOutputObject):
    """Binary output (command) without a priority array machinery: writes go through the write policy."""

    _cov_criteria = GenericCriteria


class GwMultiStateValue(_GatewayPoint, MultiStateValueObject):
    """Multi-state value: COV on any state change (GenericCriteria)."""

    _cov_criteria = GenericCriteria


CLASSES = {
    "accumulator": GwAccumulator,
    "analog-input": GwAnalogInput,
    "analog-value": GwAnalogValue,
    "binary-input": GwBinaryInput,
    "binary-output": GwBinaryOutput,
    "multi-state-value": GwMultiStateValue,
}


class _GatewayApplication(Application):
    """The bacpypes3 application with the services the gateway does not offer removed."""

    async def indication(self, apdu) -> None:  # type: ignore[override]
        """Record the requester for write allowlists; reject services that are not offered."""
        if isinstance(apdu, (WritePropertyMultipleRequest, DeviceCommunicationControlRequest)):
            await self.response(RejectPDU(reason="unrecognizedService", context=apdu))
            return
        source = apdu.pduSource
        _source.set(str(getattr(source, "addrTuple", (str(source),))[0]) if source is not None else "")
        await super().indication(apdu)

    def get_services_supported(self):
        """Services supported, without WritePropertyMultiple and DeviceCommunicationControl."""
        ss = super().get_services_supported()
        for name in ("writePropertyMultiple", "deviceCommunicationControl"):
            ss[getattr(ss, name)] = 0
        return ss


def _units(name: str | None):
    return EngineeringUnits(name or "noUnits")


class BacnetServer(Server):
    """One BACnet/IP device for the gateway."""

    name = "bacnet"

    def __init__(self, gateway) -> None:
        super().__init__(gateway)
        self.cfg = gateway.config.upstream.bacnet
        self.specs = object_specs(
            gateway.config, gateway.catalogue, {m: gateway.meter_points(m) for m in gateway.table.meter_ids}
        )
        self.objects: dict[tuple[str, str], Any] = {}
        self.app: _GatewayApplication | None = None
        self._bound: tuple[str, int] | None = None

    # -- start / stop ---------------------------------------------------------------------------------
    def _address(self) -> str:
        host = self.cfg.bind
        if host in ("0.0.0.0", ""):
            host = _primary_ipv4()
        return f"{host}/{self.cfg.netmask}:{self.cfg.port}"

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
            address = f"{host}/{self.cfg.netmask}:{port}"
        self._check_port_free(host, port)
        gw = self.gateway
        device = DeviceObject(
            objectIdentifier=("device", self.cfg.device_instance),
            objectName=self.cfg.device_name or gw.config.gateway.name,
            vendorName=self.cfg.vendor_name,
            vendorIdentifier=self.cfg.vendor_id,
            modelName="meter-gateway",
            firmwareRevision=__version__,
            applicationSoftwareVersion=__version__,
            location=self.cfg.location or gw.config.gateway.location,
            description=self.cfg.description or gw.config.gateway.description,
            maxApduLengthAccepted=1476,
            segmentationSupported="segmentedBoth",
        )
        port_obj = NetworkPortObject(address, objectIdentifier=("network-port", 1), objectName="NetworkPort-1")
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
        objs = [device, port_obj] + [self._make(spec) for spec in self.specs]
        try:
            self.app = _GatewayApplication.from_object_list(objs)
        except Exception as exc:
            raise ServerStartError(f"BACnet/IP device cannot start: {exc}") from exc
        await self._verify_bound(host, port)
        gw.table.add_listener(self._on_change)
        log.info(
            "BACnet/IP device %d (%s) on %s:%d with %d objects",
            self.cfg.device_instance,
            device.objectName,
            host,
            port,
            len(self.specs),
        )

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

    async def stop(self) -> None:
        """Stop listening to the table and close the sockets."""
        self.gateway.table.remove_listener(self._on_change)
        if self.app is not None:
            self.app.close()
            self.app = None
            await asyncio.sleep(0)

    def address(self) -> tuple[str, int] | None:
        """The bound UDP address."""
        return self._bound

    def meters_changed(self, meter_ids: set[str]) -> bool:
        """Reload: replace the objects of those meters whose objects differ; the others keep their COV subscribers."""
        # a tenant rename or a new Modbus unit leaves a meter's objects as they are
        if self.app is None:
            return False
        gw = self.gateway
        specs = object_specs(gw.config, gw.catalogue, {m: gw.meter_points(m) for m in gw.table.meter_ids})
        old = {mid: [x for x in self.specs if x.meter_id == mid] for mid in meter_ids}
        new = {mid: [x for x in specs if x.meter_id == mid] for mid in meter_ids}
        self.specs = specs

        def same(a: list[ObjectSpec], b: list[ObjectSpec]) -> bool:
            return [(x.point.name, x.object_type, x.instance, x.name) for x in a] == [
                (x.point.name, x.object_type, x.instance, x.name) for x in b
            ]

        for mid in meter_ids:
            if old[mid] and same(old[mid], new[mid]):
                for spec in new[mid]:  # same objects: new description, the table's current values
                    obj = self.objects[(mid, spec.point.name)]
                    obj._gw_spec = spec
                    if obj.description != spec.description:
                        obj.description = spec.description
                    self._on_change(mid, spec.point.name, None, gw.table.get(mid, spec.point.name))
                continue
            for key in [k for k in self.objects if k[0] == mid]:
                obj = self.objects.pop(key)
                with contextlib.suppress(Exception):
                    self.app.delete_object(obj)
            for spec in new[mid]:
                self.app.add_object(self._make(spec))
        return True

    # -- objects ---------------------------------------------------------------------------------------
    def _make(self, spec: ObjectSpec):
        p = spec.point
        cls = CLASSES[spec.object_type]
        v = self.gateway.table.get(spec.meter_id, p.name)
        common: dict[str, Any] = {
            "objectIdentifier": (spec.object_type, spec.instance),
            "objectName": spec.name,
            "description": spec.description,
            "presentValue": present_value(spec, v.value),
            "eventState": EventState.normal,
            "outOfService": False,
            "reliability": self._reliability(v),
        }
        t = spec.object_type
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
        obj = cls(**common)
        obj._gw_spec = spec
        obj._gw_server = self
        self.objects[(spec.meter_id, p.name)] = obj
        return obj

    def _reliability(self, v: PointValue) -> Reliability:
        if v.quality is Quality.STALE:
            return STALE[self.cfg.stale_reliability]
        return RELIABILITY.get(v.quality, Reliability.unreliableOther)

    def _on_change(self, meter_id: str, point: str, old: PointValue, new: PointValue) -> None:
        """Push a table change into the object: present value, then reliability (with its own COV)."""
        obj = self.objects.get((meter_id, point))
        if obj is None:
            return
        spec: ObjectSpec = obj._gw_spec
        if new.value is not None and new.quality is Quality.GOOD:
            obj.presentValue = present_value(spec, new.value)
        rel = self._reliability(new)
        if obj.reliability != rel:
            fault = int(rel != Reliability.noFaultDetected)
            # statusFlags is derived from reliability: assigning it first is what makes bacpypes3 notify COV
            # subscribers of a reliability change (a change of status flags alone fires no COV otherwise)
            obj.statusFlags = StatusFlags([0, fault, 0, 0])
            obj.reliability = rel

    # -- writes ------------------------------------------------------------------------------------------
    async def write_point(self, spec: ObjectSpec, written) -> None:
        """A present-value write: decided by the write policy, carried out by the driver, audited."""
        try:
            value = table_value(spec, written)
        except (TypeError, ValueError) as exc:
            raise ExecutionError(errorClass="property", errorCode="invalidDataType") from exc
        source = _source.get() or "unknown"
        result = await self.gateway.write_service.write(
            WriteRequest("bacnet", source, spec.meter_id, spec.point.name, value)
        )
        if result.decision is Decision.ACCEPTED:
            return
        if result.decision is Decision.OUT_OF_RANGE:
            raise ExecutionError(errorClass="property", errorCode="valueOutOfRange")
        if result.decision is Decision.DENIED:
            raise ExecutionError(errorClass="property", errorCode="writeAccessDenied")
        raise ExecutionError(errorClass="device", errorCode="operationalProblem")


def _primary_ipv4() -> str:
    """The host's own IPv4 address, as BACnet/IP needs a real interface address (not 0.0.0.0)."""
    try:
        addr = socket.gethostbyname(socket.gethostname())
        ipaddress.ip_address(addr)
    except (OSError, ValueError):
        addr = "127.0.0.1"
    return addr
