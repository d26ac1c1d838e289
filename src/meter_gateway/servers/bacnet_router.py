"""Per-meter BACnet devices: the gateway routes between its BACnet/IP network and a virtual network of meter devices.

With `upstream.bacnet.devices: per-meter` the gateway's own device stays on the BACnet/IP network and becomes a
router (a second, virtual Network Port, number `upstream.bacnet.virtual_network`). Each enabled meter is a bacpypes3
Application of its own on that virtual network (bacpypes3.vlan): device instance from `bacnet_device_instance` (else
`bacnet_instance_base`), device name the meter's name, its point objects at the point's fixed catalogue index (the
same instances in every meter device). Network-layer services (Who-Is-Router-To-Network, I-Am-Router-To-Network,
routed confirmed and unconfirmed requests) are bacpypes3's router; the meter devices' objects are built by the
BACnet server (`BacnetServer._make`), so present values, reliability, COV and writes (write service, audit) are the
same as in single mode. A meter out of communication shows system-status non-operational on its device. A Who-Is or
Who-Has the router forwards to the meter devices reaches the matching ones only, limited per source and paced
(`upstream.bacnet.discovery`, servers/bacnet_discovery.py): no amplification through the router.

The devices' MAC addresses on the virtual network are their device instances in three octets (stable across
restarts and reloads); the router's is 0x3FFFFF (the wildcard instance, which no device has).

Without `upstream.bacnet.network_number` the router still needs a number for the BACnet/IP side inside its routing
table (it writes it as SNET into the NPDUs it forwards to the meter devices, which never leave the gateway): it uses
PLACEHOLDER_NET (65534, or 65533 when that is the virtual network) and never announces it (no answer to
What-Is-Network-Number on the IP side, not in Initialize-Routing-Table-Ack). It is kept as configured: a
Network-Number-Is heard on the IP network changes nothing (bacpypes3 would otherwise re-key its routing table, even
onto the virtual network's number).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from copy import deepcopy
from typing import Any

from bacpypes3.basetypes import DeviceStatus, NetworkNumberQuality, Reliability
from bacpypes3.npdu import InitializeRoutingTableAck, RoutingTableEntry
from bacpypes3.pdu import Address, LocalStation
from bacpypes3.primitivedata import ObjectType
from bacpypes3.vlan import VirtualNetwork

from .. import __version__
from ..bacnet_model import ROUTER_MAC, MeterDeviceSpec, ObjectSpec, meter_devices
from ..core.quality import PointValue, Quality
from ..core.table import COMM_STATUS
from .bacnet import MAX_APDU, GwDevice, GwNetworkPort, _GatewayApplication, utc_offset_minutes
from .bacnet_cov import CovLimits
from .bacnet_discovery import DiscoveryLimiter, classify
from .bacnet_events import EventReporting
from .bacnet_net import OncePerSource
from .bacnet_trend import GwTrendLog, TrendLogger, make_trend_logs, meter_trend_specs

log = logging.getLogger(__name__)

#: the IP side's number inside the routing table when upstream.bacnet.network_number is not configured
PLACEHOLDER_NET = 65534
#: object identifier of the router's virtual Network Port in the gateway's device
ROUTER_PORT = ("network-port", 2)


class GuardedVirtualNetwork(VirtualNetwork):
    """bacpypes3's virtual network, delivering to each node on its own: a request a meter device cannot decode (the
    router forwards the bytes it was given) is logged once per kind, one line, and reaches the other nodes. With a
    `DiscoveryLimiter`, a Who-Is / Who-Has the router forwards reaches the matching nodes only, limited per source and
    paced (servers/bacnet_discovery.py)."""

    def __init__(self, name: str, ip_net: int = 0, discovery: Any = None) -> None:
        super().__init__(name)
        self.note = OncePerSource()
        self.ip_net = ip_net
        self.discovery: DiscoveryLimiter | None = None
        if discovery is not None:
            self.discovery = DiscoveryLimiter(
                discovery.requests_per_minute,
                discovery.answers_per_second,
                discovery.max_pending,
                self.note,
                self._deliver,
            )

    async def process_pdu(self, pdu) -> None:
        """Deliver the PDU to every node the destination names (all but the sender for a broadcast)."""
        if pdu.pduDestination == self.broadcast_address:
            nodes = [n for n in self.nodes if pdu.pduSource != n.address]
        else:
            nodes = [n for n in self.nodes if n.promiscuous or pdu.pduDestination == n.address]
        if self.discovery is not None and getattr(pdu.pduSource, "addrAddr", None) == ROUTER_MAC:
            request = classify(bytes(pdu.pduData), self.ip_net)
            if request is not None:
                matching = [n for n in nodes if request.matches(int.from_bytes(n.address.addrAddr, "big"))]
                self.discovery.submit(request, pdu, matching, len(self.nodes) - 1)  # all nodes but the router
                return
        for node in nodes:  # one receiver (a unicast): the sender keeps no reference to the PDU, no copy needed
            await self._deliver(node, pdu if len(nodes) == 1 else deepcopy(pdu), copy=False)

    async def _deliver(self, node, pdu, copy: bool = True) -> None:
        """Hand a PDU to one node still on this network; what it cannot handle is logged once per kind."""
        if node.lan is not self:
            return
        try:
            await node.response(deepcopy(pdu) if copy else pdu)
        except Exception as exc:
            kind = f"request routed to a meter device that it cannot handle ({type(exc).__name__})"
            self.note("the virtual network", kind, f": {exc}")

    def close(self) -> None:
        """Drop the waiting Who-Is / Who-Has deliveries."""
        if self.discovery is not None:
            self.discovery.close()


def cfg_discovery(cfg: Any) -> Any:
    """The limits on routed Who-Is / Who-Has (upstream.bacnet.discovery), None when turned off."""
    section = getattr(cfg, "discovery", None)
    return section if section is not None and section.enabled else None


def placeholder_net(vnet: int) -> int:
    """The routing table's number for the IP side when none is configured (never the virtual network's)."""
    return PLACEHOLDER_NET if vnet != PLACEHOLDER_NET else PLACEHOLDER_NET - 1


def system_status(v: PointValue) -> DeviceStatus:
    """A meter device's system-status from its Communication_Status point: operational only while it answers."""
    if v.quality is Quality.GOOD and v.value:
        return DeviceStatus.operational
    return DeviceStatus.nonOperational


def routed_peer(source: Any, ip_net: int | None) -> str:
    """The requester of a routed request as the write policy sees it.

    The router puts the UDP source of a request into SADR with SNET = its IP network (and drops an NPDU that claims
    to come from a network it is directly connected to), so that pair is the transport-level IP address. A source
    behind another router (another SNET) is named `net<N>:<mac>`, which no IP allowlist matches.
    """
    if source is None:
        return ""
    net = getattr(source, "addrNet", None)
    mac = bytes(getattr(source, "addrAddr", b"") or b"")
    if net is not None and net == ip_net and len(mac) == 6:
        return socket.inet_ntoa(mac[:4])
    if net is None and hasattr(source, "addrTuple"):
        return str(source.addrTuple[0])
    return f"net{net}:{mac.hex()}"


def _virtual_port(instance: int, name: str, mac: bytes, vnet: int, vlan: str):
    """A Network Port object on the virtual network (the router's, or a meter device's)."""
    return GwNetworkPort(
        objectIdentifier=("network-port", instance),
        objectName=name,
        networkType="virtual",
        protocolLevel="bacnet-application",
        macAddress=mac,
        networkNumber=vnet,
        networkNumberQuality=NetworkNumberQuality.configured,
        networkInterfaceName=vlan,
        statusFlags=[0, 0, 0, 0],
        reliability=Reliability.noFaultDetected,
        outOfService=False,
        changesPending=False,
        linkSpeed=0.0,
        apduLength=MAX_APDU,
    )


def meter_device_objects(
    server, dev: MeterDeviceSpec, specs: list[ObjectSpec], status: DeviceStatus, vnet: int, vlan: str
) -> list[Any]:
    """Every object of one meter device: its Device, its virtual Network Port, its point objects, its Notification
    Class objects (intrinsic reporting on) and its Trend Log objects (trend logs on).

    The one place a meter device's object list is built. The point objects enrol with the meter device's own
    EventReporting (`server.events_for`), whose classes are built first so each object finds its class.
    """
    cfg = server.cfg
    classes = server.events_for(dev.meter_id).class_objects()
    trends = make_trend_logs(meter_trend_specs(cfg.trend_logs, specs), cfg.trend_logs)
    device = GwDevice(
        objectIdentifier=("device", dev.instance),
        objectName=dev.name,
        vendorName=cfg.vendor_name,
        vendorIdentifier=cfg.vendor_id,
        modelName=dev.model_name or "meter",
        firmwareRevision=__version__,
        applicationSoftwareVersion=__version__,
        location=dev.location,
        description=dev.description,
        serialNumber=dev.serial_number,
        maxApduLengthAccepted=MAX_APDU,
        segmentationSupported="segmentedBoth",
        databaseRevision=server.database_revision,
        utcOffset=utc_offset_minutes(server.zone),
        systemStatus=status,
    )
    device._gw_zone = server.zone
    port = _virtual_port(1, "NetworkPort-1", dev.mac, vnet, vlan)
    return [device, port, *(server._make(spec) for spec in specs), *classes, *trends]


class MeterRouter:
    """The router part of the BACnet server in per-meter mode (see the module doc)."""

    def __init__(self, server) -> None:
        self.server = server
        #: the point table (the router's only other way into the gateway is `_config`)
        self.table = server.table
        cfg = server.cfg
        self.vnet: int = cfg.virtual_network
        self.ip_net: int = cfg.network_number or placeholder_net(self.vnet)
        self.ip_net_configured = cfg.network_number is not None
        self.vlan_name = f"meter-gateway-{id(self):x}"
        self.network: VirtualNetwork | None = None
        #: meter id -> its running device application
        self.apps: dict[str, Any] = {}
        self.devices: dict[str, MeterDeviceSpec] = {}
        #: meter id -> its device's intrinsic reporting, and the task filling its device's Trend Logs
        self.reporting: dict[str, EventReporting] = {}
        self.trend_loggers: dict[str, TrendLogger] = {}
        #: meter id -> the stop of its replaced device's trend logger (the new one starts after it: no record lost)
        self._stopping: dict[str, asyncio.Task] = {}
        self._listening = False
        self._tasks: set[asyncio.Task] = set()

    @property
    def discovery(self) -> DiscoveryLimiter | None:
        """The limits on Who-Is / Who-Has routed to the meter devices (their counters), None when off."""
        return getattr(self.network, "discovery", None)

    def _config(self):
        """The gateway's current configuration (it changes on reload)."""
        return self.server.facts.config

    # -- the router side (the gateway's own device) ----------------------------------------------------------
    def prepare(self, ip_port) -> list[Any]:
        """Before the gateway's application exists: number the IP port, create the virtual network and its port."""
        ip_port.networkNumber = self.ip_net
        ip_port.networkNumberQuality = NetworkNumberQuality.configured
        self.network = GuardedVirtualNetwork(self.vlan_name, self.ip_net, cfg_discovery(self.server.cfg))
        return [_virtual_port(ROUTER_PORT[1], "NetworkPort-2", ROUTER_MAC, self.vnet, self.vlan_name)]

    def attach(self, app, ip_port) -> None:
        """After the gateway's application exists: an unconfigured IP network number is never announced."""
        if self.ip_net_configured:
            return
        ip_adapter = app.nsap.local_adapter
        ip_port.networkNumber = 0
        ip_port.networkNumberQuality = NetworkNumberQuality.unknown
        inner = app.nse.WhatIsNetworkNumber

        async def what_is_network_number(adapter, npdu) -> None:
            """Answered for the virtual network only: the IP side's number is not known."""
            if adapter is not ip_adapter:
                await inner(adapter, npdu)

        async def initialize_routing_table(adapter, npdu) -> None:
            """Initialize-Routing-Table (a query: bacpypes3 changes nothing): the ack lists the virtual network."""
            ack = InitializeRoutingTableAck([RoutingTableEntry(self.vnet, 1, b"")], user_data=npdu.pduUserData)
            ack.pduDestination = npdu.pduSource
            await app.nse.response(adapter, ack)

        app.nse.WhatIsNetworkNumber = what_is_network_number
        app.nse.InitializeRoutingTable = initialize_routing_table

    def start(self, app) -> None:
        """Start one device per meter on the virtual network and announce the route on the IP network."""
        for dev in meter_devices(self._config()):
            self._add(dev)
        self.table.add_listener(self._on_change)
        self._listening = True
        # I-Am-Router-To-Network at start-up (ASHRAE 135 clause 6.6.3.3), broadcast on the IP network
        self._spawn(app.nse.i_am_router_to_network(adapter=app.nsap.local_adapter))
        log.info(
            "BACnet router: IP network %s, virtual network %d with %d meter devices (%s)",
            self.ip_net if self.ip_net_configured else "number unknown",
            self.vnet,
            len(self.apps),
            ", ".join(f"{d.instance} {d.name}" for d in self.devices.values()),
        )
        if self.server.events.enabled or self.trend_loggers:
            log.info(
                "BACnet meter devices: %d objects with intrinsic reporting, %d Trend Logs",
                sum(len(r.objects) for r in self.reporting.values()),
                sum(len(t.logs) for t in self.trend_loggers.values()),
            )

    def _spawn(self, coro) -> asyncio.Task:
        """Run a coroutine of the router's in the background; a failure is logged, never raised."""

        async def guarded() -> None:
            try:
                await coro
            except Exception as exc:
                log.warning("BACnet router: %s", exc or type(exc).__name__)

        task = asyncio.get_running_loop().create_task(guarded())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def stop_trend_logs(self) -> None:
        """Stop the meter devices' trend loggers (their records are in the journal: written after every interval)."""
        loggers = list(self.trend_loggers.values())
        self.trend_loggers.clear()
        for tl in loggers:
            await tl.stop()

    def stop(self) -> None:
        """Stop every meter device and remove the virtual network."""
        if self._listening:
            self.table.remove_listener(self._on_change)
            self._listening = False
        for task in list(self._tasks):
            task.cancel()
        for mid in list(self.apps):
            self._remove(mid)
        if self.network is not None:
            if isinstance(self.network, GuardedVirtualNetwork):
                self.network.close()
            VirtualNetwork._networks.pop(self.vlan_name, None)
            self.network = None

    # -- meter devices --------------------------------------------------------------------------------------
    def _specs(self, meter_id: str) -> list[ObjectSpec]:
        return [s for s in self.server.specs if s.meter_id == meter_id]

    def _add(self, dev: MeterDeviceSpec) -> None:
        """Build one meter device and put it on the virtual network."""
        status = system_status(self.table.get(dev.meter_id, COMM_STATUS))
        server = self.server
        reporting = self.reporting[dev.meter_id] = server.events.member(dev.meter_id)
        reporting.remote_net = self.ip_net  # address recipients: through the router to the IP network
        objs = meter_device_objects(server, dev, self._specs(dev.meter_id), status, self.vnet, self.vlan_name)
        trends = [o for o in objs if isinstance(o, GwTrendLog)]
        app = MeterDeviceApplication.from_object_list(objs)
        app.gw_server = server
        app.gw_events = reporting
        app.gw_trends = bool(trends)
        app.router_ip_net = self.ip_net
        app.cov_limits = CovLimits(**server.cfg.cov.model_dump())
        reporting.start(app, quiet=True)
        if trends:
            logger = TrendLogger(trends, server.cfg.trend_logs, self.table.get, lambda: server.ports.status.journal)
            self.trend_loggers[dev.meter_id] = logger
            stopping = self._stopping.pop(dev.meter_id, None)
            if stopping is None or stopping.done():
                logger.start()
            else:  # the replaced device's logger writes its last records first, then this one reloads them
                mid = dev.meter_id
                stopping.add_done_callback(lambda _t: logger.start() if self.trend_loggers.get(mid) is logger else None)
        # the way back to the IP network is through the router: no Who-Is-Router-To-Network needed
        self._spawn(app.nsap.update_router_references(self.vnet, LocalStation(ROUTER_MAC), [self.ip_net]))
        self.apps[dev.meter_id] = app
        self.devices[dev.meter_id] = dev

    def _remove(self, meter_id: str) -> None:
        """Take one meter device off the virtual network and forget its objects."""
        app = self.apps.pop(meter_id, None)
        self.devices.pop(meter_id, None)
        server = self.server
        reporting = self.reporting.pop(meter_id, None)
        if reporting is not None:
            reporting.close()
            server.events.members.pop(meter_id, None)
        logger = self.trend_loggers.pop(meter_id, None)
        if logger is not None:  # records already taken are in the journal (written after every interval)
            task = self._stopping[meter_id] = self._spawn(logger.stop())
            task.add_done_callback(
                lambda t: self._stopping.pop(meter_id) if self._stopping.get(meter_id) is t else None
            )
        for key in [k for k in server.objects if k[0] == meter_id]:
            del server.objects[key]
        for key in [k for k in server._by_point if k[0] == meter_id]:
            del server._by_point[key]
        if app is None:
            return
        for cov in app.cov_subscriptions():  # their lifetime timers would outlive the device
            with contextlib.suppress(Exception):
                app.cancel_subscription(cov)
        for ll in app.link_layers.values():
            node = getattr(ll, "node", None)
            if node is not None and node.lan is not None:
                node.lan.remove_node(node)
        app.close()

    def meters_changed(self, meter_ids: set[str]) -> None:
        """Reload: the devices of meters added, removed or changed; the other devices keep running.

        A meter whose device keeps its instance, name and object set (a new tenant, serial number or location) keeps
        its device and COV subscribers, with the new texts; any other change replaces its device.
        """
        wanted = {d.meter_id: d for d in meter_devices(self._config())}
        for mid in meter_ids:
            dev, old = wanted.get(mid), self.devices.get(mid)
            specs = self._specs(mid)
            if dev is not None and old is not None and mid in self.apps and self._same(mid, dev, old, specs):
                self._refresh(mid, dev, specs)
                continue
            self._remove(mid)
            if dev is not None:
                self._add(dev)
        for app in self.apps.values():
            app.device_object.databaseRevision = self.server.database_revision

    def _same(self, mid: str, dev: MeterDeviceSpec, old: MeterDeviceSpec, specs: list[ObjectSpec]) -> bool:
        """Whether a meter's device can stay: same instance, name, objects, event enrolment (limits) and trend logs."""
        server = self.server
        if not all(server._same_events(s) for s in specs):
            return False
        logger = self.trend_loggers.get(mid)
        have_trends = [o._gw_trend.identity for o in logger.logs] if logger is not None else []
        if [t.identity for t in meter_trend_specs(server.cfg.trend_logs, specs)] != have_trends:
            return False
        keys = {(s.meter_id, s.point.name, s.object_type) for s in specs}
        ids = {(s.object_type, s.instance, s.name) for s in specs}
        have = {k: o for k, o in self.server.objects.items() if k[0] == mid}
        now = {(str(ObjectType(o.objectIdentifier[0])), o.objectIdentifier[1], o.objectName) for o in have.values()}
        return (dev.instance, dev.name) == (old.instance, old.name) and keys == set(have) and ids == now

    def _refresh(self, mid: str, dev: MeterDeviceSpec, specs: list[ObjectSpec]) -> None:
        """New texts on a meter's device and objects, the table's current values on its objects."""
        device = self.apps[mid].device_object
        for attr, value in (
            ("description", dev.description),
            ("location", dev.location),
            ("serialNumber", dev.serial_number),
            ("modelName", dev.model_name or "meter"),
        ):
            if getattr(device, attr) != value:
                setattr(device, attr, value)
        for spec in specs:
            obj = self.server.objects[(mid, spec.point.name, spec.object_type)]
            obj._gw_spec = spec
            if obj.description != spec.description:
                obj.description = spec.description
            self.server._on_change(mid, spec.point.name, None, self.table.get(mid, spec.point.name))
        self.devices[mid] = dev

    def _on_change(self, meter_id: str, point: str, old: PointValue, new: PointValue) -> None:
        """A meter's communication status drives its device's system-status."""
        if point != COMM_STATUS:
            return
        app = self.apps.get(meter_id)
        if app is None:
            return
        status = system_status(new)
        if app.device_object.systemStatus != status:
            app.device_object.systemStatus = status


class MeterDeviceApplication(_GatewayApplication):
    """A meter's device on the virtual network: the gateway's services, requesters named through the router."""

    router_ip_net: int | None = None

    def _peer(self, source: Address | None) -> str:
        """The requester as the write policy sees it (see routed_peer)."""
        return routed_peer(source, self.router_ip_net)
