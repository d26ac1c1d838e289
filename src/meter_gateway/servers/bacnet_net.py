"""BACnet/IP network layer of the gateway's device: a guard in front of bacpypes3's BVLL stack.

Every datagram passes here before bacpypes3 decodes it:

- A datagram that is not a well-formed BVLC frame (ASHRAE 135 annex J.2: type 0x81, length field equal to the
  datagram's length, a known function) is dropped and logged once per source and kind, one line, no stack trace.
- Forwarded-NPDU carries the address of the node that sent the original broadcast; only a BBMD may send one
  (J.4.5, J.5). From a trusted BBMD (`bacnet.trusted_bbmds`, the BDT peers when the gateway is a BBMD, the BBMD it
  registers with as a foreign device) it is handled as bacpypes3 does, with the original source; from anybody else
  the claimed source is ignored and the NPDU is handled as a broadcast from the address it really came from, so
  the write policy and the audit log see the transport-level source (issue 21.2). Logged once per sender.
- An exception raised while bacpypes3 handles a datagram is logged once per source and kind, one line (bacpypes3
  logs a 700-byte stack trace per datagram otherwise).
"""

from __future__ import annotations

import logging
import socket
import struct
from collections import Counter
from typing import Any

from bacpypes3.pdu import PDU, IPv4Address

log = logging.getLogger(__name__)

BVLC_TYPE = 0x81
FORWARDED_NPDU = 0x04
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

    def __init__(self, link_layer: Any, trusted: set[tuple[str, int]]) -> None:
        self.trusted = trusted
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
        if data[1] == FORWARDED_NPDU and source not in self.trusted:
            claimed = f"{socket.inet_ntoa(data[4:8])}:{struct.unpack_from('>H', data, 8)[0]}"
            self.note(host, "Forwarded-NPDU (sender is not a trusted BBMD)", f" (claims {claimed})")
            npdu = data[10:]
            data = struct.pack(">BBH", BVLC_TYPE, ORIGINAL_BROADCAST, 4 + len(npdu)) + npdu
            pdu = PDU(data, source=pdu.pduSource, destination=pdu.pduDestination, user_data=pdu.pduUserData)
        try:
            await self._inner(pdu)
        except Exception as exc:
            self.note(host, f"undecodable BACnet datagram ({type(exc).__name__})", f": {exc}")


def install_guards(app: Any, trusted: set[tuple[str, int]]) -> list[BvllGuard]:
    """Put a BvllGuard in front of every BACnet/IP link layer of a bacpypes3 application."""
    return [BvllGuard(ll, trusted) for ll in app.link_layers.values() if hasattr(ll, "multiplexer")]
