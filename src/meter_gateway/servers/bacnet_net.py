"""BACnet/IP network layer of the gateway's device: a guard in front of bacpypes3's BVLL stack.

Every datagram passes here before bacpypes3 decodes it:

- A datagram that is not a well-formed BVLC frame (ASHRAE 135 annex J.2: type 0x81, length field equal to the
  datagram's length, a known function) is dropped and logged once per source and kind, one line, no stack trace.
- Forwarded-NPDU carries the address of the node that sent the original broadcast; only a BBMD may send one
  (J.4.5, J.5). From a trusted BBMD (`bacnet.trusted_bbmds`, the BDT peers when the gateway is a BBMD, the BBMD it
  registers with as a foreign device) it is handled as bacpypes3 does, with the original source; from anybody else
  the claimed source is ignored and the NPDU is handled as a broadcast from the address it really came from, so
  the write policy and the audit log see the transport-level source (issue 21.2). Logged once per sender.
- As a BBMD (J.4.5): Distribute-Broadcast-To-Network is accepted from registered foreign devices only (others get
  the NAK result 0x0060), and a broadcast from outside the local subnet or an untrusted Forwarded-NPDU is handled
  by the device but never forwarded to BDT peers and foreign devices (no amplification, no laundering of sources).
- An exception raised while bacpypes3 handles a datagram is logged once per source and kind, one line (bacpypes3
  logs a 700-byte stack trace per datagram otherwise).

It also resolves where the device binds (an interface name or address, with the interface's prefix and broadcast
address, instead of the address of the host name, 127.0.1.1 on Debian) and listens to limited broadcasts
(255.255.255.255), which bacpypes3 does not receive on a socket bound to an interface address.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import struct
from collections import Counter
from dataclasses import dataclass
from typing import Any

import ifaddr
from bacpypes3.basetypes import FDTEntry
from bacpypes3.ipv4.bvll import Result
from bacpypes3.pdu import PDU, IPv4Address, LocalBroadcast

log = logging.getLogger(__name__)

BVLC_TYPE = 0x81
FORWARDED_NPDU = 0x04
DISTRIBUTE_BROADCAST = 0x09
ORIGINAL_BROADCAST = 0x0B
MAX_FUNCTION = 0x0C  # Secure-BVLL is the last function of annex J
_MAX_LOGGED = 1000


def host_port(text: str, default_port: int = 47808) -> tuple[str, int]:
    """'host[/prefix][:port]' -> (host, port), as the BDT and trusted BBMD entries are written."""
    addr = IPv4Address(text if ":" in text else f"{text}:{default_port}")
    return addr.addrTuple


class OncePerSource:
    """Log a kind of bad input once per source host; count every occurrence."""

    def __init__(self) -> None:
        self.logged: set[tuple[str, str]] = set()
        self.counts: Counter[str] = Counter()

    def __call__(self, source: str, kind: str, detail: str = "") -> None:
        """Count one occurrence; log it when this source has not shown this kind before."""
        self.counts[kind] += 1
        key = (source, kind)
        if key in self.logged or len(self.logged) >= _MAX_LOGGED:
            return
        self.logged.add(key)
        log.warning("BACnet: %s from %s%s (further ones from it counted, not logged)", kind, source, detail)


def check_bvlc(data: bytes) -> str | None:
    """The kind of defect of a BVLC frame, or None when its header is well formed."""
    if len(data) < 4:
        return "datagram too short for BVLC"
    if data[0] != BVLC_TYPE:
        return "datagram that is not BACnet/IP (BVLC type)"
    (length,) = struct.unpack_from(">H", data, 2)
    if length != len(data):
        return "BVLC length field not the datagram length"
    if data[1] > MAX_FUNCTION:
        return "unknown BVLC function"
    if data[1] == FORWARDED_NPDU and len(data) < 11:
        return "Forwarded-NPDU too short"
    return None


class BvllGuard:
    """Wraps the UDP multiplexer of one bacpypes3 BACnet/IP link layer (see the module doc)."""

    def __init__(self, link_layer: Any, trusted: set[tuple[str, int]], local: ipaddress.IPv4Network | None) -> None:
        self.link = link_layer
        self.trusted = trusted
        self.local = local
        self.bbmd = hasattr(link_layer, "bbmdFDT") and not hasattr(link_layer, "bbmdRegistrationStatus")
        self.note = OncePerSource()
        self.mux = link_layer.multiplexer
        self._inner = self.mux.confirmation
        self.mux.confirmation = self.confirmation  # the datagram server calls its peer's method by name

    async def confirmation(self, pdu: PDU) -> None:
        """One datagram from the socket."""
        data = bytes(pdu.pduData)
        source = pdu.pduSource.addrTuple if isinstance(pdu.pduSource, IPv4Address) else ("?", 0)
        host = source[0]
        kind = check_bvlc(data)
        if kind is not None:
            self.note(host, kind, f" ({len(data)} bytes)")
            return
        try:
            if data[1] == FORWARDED_NPDU and source not in self.trusted:
                claimed = f"{socket.inet_ntoa(data[4:8])}:{struct.unpack_from('>H', data, 8)[0]}"
                self.note(host, "Forwarded-NPDU (sender is not a trusted BBMD)", f" (claims {claimed})")
                if self.bbmd:  # a BBMD would forward it again: deliver it here only
                    await self._deliver_here(pdu, data[10:])
                    return
                npdu = data[10:]
                data = struct.pack(">BBH", BVLC_TYPE, ORIGINAL_BROADCAST, 4 + len(npdu)) + npdu
                pdu = PDU(data, source=pdu.pduSource, destination=pdu.pduDestination, user_data=pdu.pduUserData)
            elif self.bbmd and await self._bbmd_refuses(pdu, data, host):
                return
            await self._inner(pdu)
        except Exception as exc:
            self.note(host, f"undecodable BACnet datagram ({type(exc).__name__})", f": {exc}")

    async def _bbmd_refuses(self, pdu: PDU, data: bytes, host: str) -> bool:
        """As a BBMD (J.4.5): Distribute-Broadcast-To-Network only from a registered foreign device (else NAK
        0x0060); an Original-Broadcast-NPDU from outside the local subnet is handled here but not forwarded."""
        if data[1] == DISTRIBUTE_BROADCAST and all(e.fdAddress != pdu.pduSource for e in self.link.bbmdFDT):
            self.note(host, "Distribute-Broadcast-To-Network from a host that is not a registered foreign device")
            await self.link.request(Result(code=0x0060, destination=pdu.pduSource))
            return True
        if (
            data[1] == ORIGINAL_BROADCAST
            and self.local is not None
            and ipaddress.IPv4Address(pdu.pduSource.addrTuple[0]) not in self.local
        ):
            self.note(host, "Original-Broadcast-NPDU from outside the local subnet (not forwarded)")
            await self._deliver_here(pdu, data[4:])
            return True
        return False

    async def _deliver_here(self, pdu: PDU, npdu: bytes) -> None:
        """Hand an NPDU to the device as a local broadcast from the transport source, without forwarding it."""
        await self.link.response(
            PDU(npdu, source=pdu.pduSource, destination=LocalBroadcast(), user_data=pdu.pduUserData)
        )


def install_guards(
    app: Any, trusted: set[tuple[str, int]], local: ipaddress.IPv4Network | None = None
) -> list[BvllGuard]:
    """Put a BvllGuard in front of every BACnet/IP link layer of a bacpypes3 application."""
    return [BvllGuard(ll, trusted, local) for ll in app.link_layers.values() if hasattr(ll, "multiplexer")]


# -- where the device binds ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BindInfo:
    """The interface address the device binds to, with the interface's prefix and broadcast address."""

    address: str
    prefix: int
    interface: str

    @property
    def network(self) -> ipaddress.IPv4Network:
        """The interface's IPv4 network."""
        return ipaddress.IPv4Interface(f"{self.address}/{self.prefix}").network

    @property
    def broadcast(self) -> str:
        """The directed broadcast address of the interface's network."""
        return str(self.network.broadcast_address)

    @property
    def loopback(self) -> bool:
        """True when no other host can reach the device."""
        return ipaddress.IPv4Address(self.address).is_loopback


def ipv4_interfaces() -> list[tuple[str, str, int]]:
    """(interface name, IPv4 address, prefix length) of every interface address of the host."""
    return [
        (adapter.nice_name, ip.ip, ip.network_prefix)
        for adapter in ifaddr.get_adapters()
        for ip in adapter.ips
        if ip.is_IPv4 and isinstance(ip.ip, str)
    ]


def resolve_bind(bind: str, netmask: int | None, interfaces: list[tuple[str, str, int]] | None = None) -> BindInfo:
    """The address to bind: an interface name, an address of an interface, or ""/0.0.0.0 for the first interface
    that is not loopback (loopback if there is none). The prefix is the interface's unless `netmask` is given."""
    ifaces = ipv4_interfaces() if interfaces is None else interfaces
    found: tuple[str, str, int] | None = None
    if bind in ("", "0.0.0.0"):
        outside = [i for i in ifaces if not ipaddress.IPv4Address(i[1]).is_loopback]
        found = outside[0] if outside else next(iter(ifaces), ("lo", "127.0.0.1", 8))
    else:
        try:
            ipaddress.IPv4Address(bind)
        except ValueError:
            named = [i for i in ifaces if i[0] == bind]
            if not named:
                names = ", ".join(sorted({i[0] for i in ifaces})) or "none"
                raise ValueError(
                    f"no IPv4 address on a network interface named {bind!r} (interfaces: {names})"
                ) from None
            found = named[0]
        else:
            found = next((i for i in ifaces if i[1] == bind), ("?", bind, netmask or 32))
    name, address, prefix = found
    return BindInfo(address, netmask if netmask is not None else prefix, name)


class LimitedBroadcastListener:
    """A socket on 255.255.255.255:port handing limited broadcasts (Who-Is from a client that does not know the
    subnet) to the device's datagram server as local broadcasts; the device's own sockets receive unicast and the
    subnet's directed broadcast only."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None

    async def start(self, server: Any, port: int) -> None:
        """Bind 255.255.255.255:port and feed `server` (a bacpypes3 IPv4DatagramServer)."""
        from bacpypes3.ipv4 import IPv4DatagramProtocol
        from bacpypes3.pdu import LocalBroadcast

        def factory() -> IPv4DatagramProtocol:
            protocol = IPv4DatagramProtocol()
            protocol.server = server
            return protocol

        loop = asyncio.get_running_loop()
        transport, protocol = await loop.create_datagram_endpoint(
            factory, local_addr=("255.255.255.255", port), allow_broadcast=True, reuse_port=True
        )
        protocol.destination = LocalBroadcast()
        self.transport = transport

    def close(self) -> None:
        """Close the socket."""
        if self.transport is not None:
            self.transport.close()
            self.transport = None


async def announce(app: Any, info: BindInfo, port: int) -> LimitedBroadcastListener | None:
    """After the bind: warn when on loopback, listen to limited broadcasts, broadcast an I-Am (ASHRAE 135 16.10)."""
    listener = None
    if info.loopback:
        log.warning(
            "BACnet/IP device bound to loopback %s:%d: no BACnet client on the network can reach it; set "
            "upstream.bacnet.bind to an interface name (e.g. eth0) or address",
            info.address,
            port,
        )
    else:
        servers = [ll.server for ll in app.link_layers.values() if hasattr(ll, "server")]
        listener = LimitedBroadcastListener()
        try:
            await listener.start(servers[0], port)
        except OSError as exc:
            log.warning("BACnet: cannot listen to 255.255.255.255:%d (%s): global Who-Is unanswered", port, exc)
            listener = None
    log.info(
        "BACnet/IP on interface %s: %s/%d, broadcast %s, port %d",
        info.interface,
        info.address,
        info.prefix,
        info.broadcast,
        port,
    )
    app.i_am()
    return listener


# -- foreign devices -------------------------------------------------------------------------------------------------
FD_GRACE = 30  # seconds a BBMD keeps a foreign device beyond its time-to-live (ASHRAE 135 J.5.2.3)
NO_ANSWER_AFTER = 6.0  # seconds without an answer (the first attempt and its first repetition) before saying so


def _bbmd_grace(link: Any, max_entries: int) -> None:
    """Make a bacpypes3 BBMD keep foreign devices TTL + 30 s (it keeps them TTL + 5 s) and refuse registrations
    beyond `max_entries` (NAK 0x0030, J.2.1: the table is full)."""
    register = link.register_foreign_device
    full_logged: list[bool] = []

    def register_with_grace(addr, ttl: int) -> int:
        known = any(entry.fdAddress == addr for entry in link.bbmdFDT)
        if not known and len(link.bbmdFDT) >= max_entries:
            if not full_logged:
                full_logged.append(True)
                log.warning("BACnet: foreign-device table full (%d): registration of %s refused", max_entries, addr)
            return 0x0030
        status = register(addr, ttl)
        for entry in link.bbmdFDT:
            if entry.fdAddress == addr:
                entry.fdRemain = ttl + FD_GRACE
        return status

    link.register_foreign_device = register_with_grace


class ForeignDeviceMonitor:
    """Once a second: the gateway's foreign-device registration state (logged on change), or, as a BBMD, its
    foreign-device table copied into the Network Port object's foreign-device-table property."""

    def __init__(self, app: Any, port_obj: Any, bbmd: str, max_foreign_devices: int = 128) -> None:
        self.link = next(iter(app.link_layers.values()))
        self.port_obj = port_obj
        self.bbmd = bbmd
        self.state = "off"  # off, registering, registered, no-answer, refused, expired
        self._task: asyncio.Task | None = None
        self._registering_since: float | None = None
        if hasattr(self.link, "bbmdFDT"):
            _bbmd_grace(self.link, max_foreign_devices)

    @property
    def foreign(self) -> bool:
        """True when the gateway registers as a foreign device."""
        return hasattr(self.link, "bbmdRegistrationStatus")

    def start(self) -> None:
        """Start the once-a-second check."""
        self._task = asyncio.get_running_loop().create_task(self._run(), name="bacnet-foreign-device")

    async def _run(self) -> None:
        while True:
            self.tick()
            await asyncio.sleep(1.0)

    def tick(self) -> None:
        """Check the registration state, or copy the BBMD's foreign-device table."""
        if self.foreign:
            self._registration()
        elif hasattr(self.link, "bbmdFDT"):
            self.port_obj.bbmdForeignDeviceTable = [
                FDTEntry(
                    bacnetIPAddress=e.fdAddress.addrAddr,
                    timeToLive=e.fdTTL,
                    remainingTimeToLive=max(0, min(0xFFFF, e.fdRemain)),
                )
                for e in self.link.bbmdFDT
            ]

    def _registration(self) -> None:
        status = self.link.bbmdRegistrationStatus
        now = asyncio.get_running_loop().time()
        if status == 0:
            state = "registered"
        elif status > 0:
            state = "refused"
        elif status == -1:
            if self._registering_since is None:
                self._registering_since = now
            waited = now - self._registering_since
            state = "no-answer" if waited >= NO_ANSWER_AFTER else "registering"
        else:
            state = "expired" if self.state in ("registered", "no-answer", "refused") else "registering"
        if status != -1:
            self._registering_since = None
        if state == "registering" and self.state == "no-answer":
            state = "no-answer"  # stays until an answer comes
        if state != self.state:
            self._log(state, status)
            self.state = state

    def _log(self, state: str, status: int) -> None:
        ttl = self.link.bbmdTimeToLive
        if state == "registered":
            log.info("BACnet: registered as a foreign device with BBMD %s (time-to-live %s s)", self.bbmd, ttl)
        elif state == "no-answer":
            log.warning(
                "BACnet: foreign-device registration with BBMD %s: no answer for %.0f s (retrying every 5 s); "
                "broadcasts (Who-Is, I-Am) do not cross to other subnets",
                self.bbmd,
                NO_ANSWER_AFTER,
            )
        elif state == "refused":
            log.warning(
                "BACnet: BBMD %s refused the foreign-device registration (BVLC result 0x%04x)", self.bbmd, status
            )
        elif state == "expired":
            log.warning("BACnet: foreign-device registration with BBMD %s expired; registering again", self.bbmd)

    def close(self) -> None:
        """Stop the check."""
        if self._task is not None:
            self._task.cancel()
            self._task = None


# -- bacpypes3's own log lines ---------------------------------------------------------------------------------------
class OneLineOnce(logging.Filter):
    """For bacpypes3's loggers: no stack trace (the exception in one line), and each message template at most once per
    `every` seconds, with the number of repeats left out (a client must not be able to flood the log)."""

    def __init__(self, every: float = 600.0) -> None:
        super().__init__()
        self.every = every
        self.seen: dict[tuple[str, str], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        """Keep the first record of a kind per period, flattened to one line."""
        key = (record.name, str(record.msg))
        last, repeats = self.seen.get(key, (float("-inf"), 0))
        if record.created - last < self.every:
            self.seen[key] = (last, repeats + 1)
            return False
        if len(self.seen) < _MAX_LOGGED or key in self.seen:
            self.seen[key] = (record.created, 0)
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            record.msg = f"{record.msg} [{type(exc).__name__}: {exc}]"
        record.exc_info = None
        record.exc_text = None
        record.stack_info = None
        if repeats:
            record.msg = f"{record.msg} ({repeats} more like it in the last period not logged)"
        record.msg = str(record.msg).replace("\n", " ")
        return True


_QUIET = OneLineOnce()


def quiet_library_logs() -> None:
    """Put `OneLineOnce` on every bacpypes3 logger (they are created when its modules are imported)."""
    for name, logger in list(logging.Logger.manager.loggerDict.items()):
        if name.startswith("bacpypes3") and isinstance(logger, logging.Logger) and _QUIET not in logger.filters:
            logger.addFilter(_QUIET)
