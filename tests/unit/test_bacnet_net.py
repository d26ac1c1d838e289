"""Pure parts of the BACnet/IP network layer: where the device binds, which BVLC frames are well formed."""

from __future__ import annotations

import logging

import pytest

from meter_gateway.servers.bacnet_net import OneLineOnce, check_bvlc, host_port, resolve_bind

HOST = [("lo", "127.0.0.1", 8), ("eth0", "192.168.10.7", 23), ("wlan0", "10.1.2.3", 16)]


@pytest.mark.parametrize(
    ("bind", "netmask", "want"),
    [
        ("0.0.0.0", None, ("192.168.10.7", 23, "eth0", "192.168.11.255")),  # first interface that is not loopback
        ("", None, ("192.168.10.7", 23, "eth0", "192.168.11.255")),
        ("wlan0", None, ("10.1.2.3", 16, "wlan0", "10.1.255.255")),  # by interface name
        ("10.1.2.3", None, ("10.1.2.3", 16, "wlan0", "10.1.255.255")),  # by address: the interface's prefix
        ("10.1.2.3", 24, ("10.1.2.3", 24, "wlan0", "10.1.2.255")),  # an explicit netmask wins
        ("127.0.0.1", None, ("127.0.0.1", 8, "lo", "127.255.255.255")),
    ],
)
def test_resolve_bind(bind, netmask, want):
    info = resolve_bind(bind, netmask, HOST)
    assert (info.address, info.prefix, info.interface, info.broadcast) == want
    assert info.loopback is (want[0] == "127.0.0.1")


def test_only_loopback_falls_back_to_loopback():
    info = resolve_bind("0.0.0.0", None, HOST[:1])
    assert info.address == "127.0.0.1" and info.loopback


def test_unknown_interface_is_a_clear_error():
    with pytest.raises(
        ValueError, match=r"no IPv4 address on a network interface named 'eth9' \(interfaces: eth0, lo, wlan0\)"
    ):
        resolve_bind("eth9", None, HOST)


def test_host_port():
    assert host_port("10.0.0.2") == ("10.0.0.2", 47808)
    assert host_port("10.0.0.2:47809") == ("10.0.0.2", 47809)
    assert host_port("10.0.0.2/24:47808") == ("10.0.0.2", 47808)


@pytest.mark.parametrize(
    ("frame", "kind"),
    [
        ("810a0008 01000000", None),
        ("8104000e 0a000005bac0 0100 1008", None),
        ("00000000 00000000", "not BACnet/IP"),
        ("810a", "too short"),
        ("810a0040 01040005", "length field"),
        ("81ee0008 01040005", "unknown BVLC function"),
        ("8104000a 0a000005bac0", "Forwarded-NPDU too short"),
    ],
)
def test_check_bvlc(frame, kind):
    got = check_bvlc(bytes.fromhex(frame.replace(" ", "")))
    assert got is None if kind is None else kind in got


def test_library_log_lines_are_one_line_and_once_per_period(caplog):
    logger = logging.getLogger("bacpypes3.test_quiet")
    logger.addFilter(OneLineOnce(every=600))
    with caplog.at_level(logging.WARNING, logger="bacpypes3.test_quiet"):
        for i in range(100):
            try:
                raise ValueError(f"bad datagram {i}")
            except ValueError as exc:
                logger.exception("error processing incoming PDU: %r", exc)
        logger.warning("another kind")
    assert [r.getMessage() for r in caplog.records] == [
        "error processing incoming PDU: ValueError('bad datagram 0') [ValueError: bad datagram 0]",
        "another kind",
    ]
    assert all(r.exc_info is None and r.exc_text is None for r in caplog.records)
