"""Routed Who-Is / Who-Has (servers/bacnet_discovery.py): the NPDUs the router puts on the virtual network read
correctly (ASHRAE 135 clause 6.2, 16.9, 16.10), the per-source budget, and `bacnet-read`'s route options."""

from __future__ import annotations

import logging

from meter_gateway.commands.bacnet_read import check_route, parse_mac
from meter_gateway.servers.bacnet_discovery import DiscoveryLimiter, classify
from meter_gateway.servers.bacnet_net import OncePerSource

IP_NET = 65534
#: SNET 65534, SLEN 6, SADR 192.168.1.20:47808, as the router writes a request from the IP network
SOURCE = "fffe06c0a80114bac0"


def routed(apdu: str, dest: str = "07d100") -> bytes:
    """An NPDU as bacpypes3's router forwards it: DNET/DLEN/DADR, SNET/SLEN/SADR, hop count."""
    return bytes.fromhex("0128" + dest + SOURCE + "fe" + apdu)


def test_who_is_and_who_has_are_recognised_with_their_range_and_source():
    who_is = classify(routed("1008"), IP_NET)
    assert (who_is.service, who_is.source, who_is.low, who_is.high) == ("Who-Is", "192.168.1.20", None, None)
    assert who_is.matches(1000) and who_is.matches(4194302)
    # Who-Is 77000..77999 (context tags 0 and 1, three and two octets)
    ranged = classify(routed("1008" + "0b012cc8" + "1a2f2f"), IP_NET)
    assert (ranged.low, ranged.high) == (77000, 12079)  # as written: the range decides, not plausibility
    ranged = classify(routed("1008" + "0b012cc8" + "1b012faf"), IP_NET)
    assert (ranged.low, ranged.high) == (77000, 77743)
    assert ranged.matches(77002) and not ranged.matches(1000) and not ranged.matches(77744)
    # Who-Has by name with a range, to one device (DADR 00:03:E8)
    has = classify(routed("1007" + "0903" + "1a03e8" + "3d0500414243", dest="07d1030003e8"), IP_NET)
    assert (has.service, has.low, has.high) == ("Who-Has", 3, 1000)
    # from behind another router: named by network and MAC
    other = classify(bytes.fromhex("0128" + "07d100" + "000a0105" + "fe" + "1008"), IP_NET)
    assert other.source == "net10:05"


def test_anything_else_is_not_a_discovery_request():
    assert classify(routed("1000c4020003e8"), IP_NET) is None  # an I-Am
    assert classify(routed("0005010c0c0000000519 55"), IP_NET) is None  # a confirmed ReadProperty
    assert classify(bytes.fromhex("01800007d1"), IP_NET) is None  # a network layer message
    assert classify(routed("ffff"), IP_NET) is None  # undecodable: delivered as before, each device rejects it
    assert classify(bytes.fromhex("0128"), IP_NET) is None  # truncated
    assert classify(b"", IP_NET) is None
    # a malformed range reads as no range: the request still counts against the source's budget
    broken = classify(routed("1008" + "0f"), IP_NET)
    assert (broken.low, broken.high) == (None, None)


def test_each_source_has_its_budget_refilled_evenly(caplog):
    now = [0.0]
    note = OncePerSource()
    limiter = DiscoveryLimiter(6, 100, 100, note, deliver=None, clock=lambda: now[0])
    assert [limiter.admit("10.0.0.1") for _ in range(8)] == [True] * 6 + [False] * 2
    assert limiter.admit("10.0.0.2")  # another source is not affected
    now[0] += 10.0  # 6 a minute: one more after 10 s
    assert [limiter.admit("10.0.0.1") for _ in range(2)] == [True, False]
    now[0] += 3600.0  # never more than the burst
    assert sum(limiter.admit("10.0.0.1") for _ in range(10)) == 6
    # a Who-Is for one device of 250 costs 1/250: a head-end binding 250 devices one by one (six times) is not held
    now[0] += 3600.0
    assert all(limiter.admit("10.0.0.1", 1 / 250) for _ in range(6 * 250))
    assert not limiter.admit("10.0.0.1", 1 / 250)


def test_a_rate_limited_source_is_logged_once_and_counted(caplog):
    note = OncePerSource()
    limiter = DiscoveryLimiter(1, 100, 100, note, deliver=None, clock=lambda: 0.0)
    request = classify(routed("1008"), IP_NET)
    limiter.admit(request.source)  # its one request of the minute
    with caplog.at_level(logging.WARNING):
        for _ in range(50):
            limiter.submit(request, None, [], 3)
    assert limiter.requests["rate-limited"] == 50
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "beyond 1 a minute from 192.168.1.20" in lines[0], lines


def test_bacnet_read_route_options():
    assert parse_mac("00:03:E8") == parse_mac("0003e8") == parse_mac("0x0003E8") == b"\x00\x03\xe8"
    assert parse_mac("0:3:e8") == b"\x00\x03\xe8"
    assert parse_mac("xyz") is None and parse_mac("") is None and parse_mac("00" * 8) is None
    assert check_route(2001, "00:03:E8", "accumulator,1", False) == ""
    assert check_route(2001, None, "", False) == ""  # list the devices on the network
    assert "give --dadr" in check_route(2001, None, "accumulator,1", False)
    assert "needs --dnet" in check_route(None, "00:03:E8", "", False)
    assert "1-65534" in check_route(65535, "00:03:E8", "", False)
    assert "in hex" in check_route(2001, "0g", "", False)


async def test_deliveries_are_round_robin_coalesced_and_bounded():
    import asyncio

    from bacpypes3.pdu import PDU, LocalStation
    from bacpypes3.vlan import Node

    delivered: list[tuple[bytes, bytes]] = []

    async def deliver(node, pdu) -> None:
        delivered.append((node.address.addrAddr, bytes(pdu.pduData)))

    limiter = DiscoveryLimiter(100, 1000, 5, OncePerSource(), deliver)
    nodes = [Node(LocalStation(bytes([0, 3, i]))) for i in range(3)]
    a = routed("1008")
    b = bytes.fromhex("0128" + "07d100" + "fffe06c0a80115bac0" + "fe" + "1008")  # another requester, .21
    limiter.submit(classify(a, IP_NET), PDU(a), nodes, 3)
    limiter.submit(classify(a, IP_NET), PDU(a), nodes, 3)  # a repeat while the answers wait: nothing added
    limiter.submit(classify(b, IP_NET), PDU(b), nodes, 3)  # 3 + 3 > max_pending 5: not answered
    limiter.submit(classify(b, IP_NET), PDU(b), nodes[:2], 3)
    assert (limiter.pending, limiter.coalesced) == (5, 3)
    assert dict(limiter.requests) == {"accepted": 3, "queue-full": 1}
    for _ in range(200):
        if limiter.pending == 0:
            break
        await asyncio.sleep(0.01)
    # one source after the other: the second requester does not wait behind the first one's whole discovery
    assert [(mac[2], data == a) for mac, data in delivered] == [(0, True), (0, False), (1, True), (1, False), (2, True)]
    assert limiter.answers == 5
    limiter.close()
