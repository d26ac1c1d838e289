"""The gateway's BACnet/IP device on the network (issue 14.4): segments that fit the client's max-APDU, object-list
elements. A client written from ASHRAE 135 (tests/bacnet_raw.py) against a real gateway process."""

from __future__ import annotations

import pytest

from bacnet_raw import RawPeer, gateway_processes, object_ids, read_property

DEVICE, OBJECT_LIST = 8, 76
MAX_APDU = {0: 50, 1: 128, 2: 206, 3: 480, 4: 1024, 5: 1476}


@pytest.fixture(scope="module")
def three_meters(tmp_path_factory):
    """One gateway with 3 meters (161 objects: an object-list of 812 octets) for the module."""
    with gateway_processes(tmp_path_factory.mktemp("net")) as make:
        yield make(meters=3)


@pytest.mark.parametrize("code", sorted(MAX_APDU))
def test_every_segment_fits_the_clients_max_apdu(three_meters, code):
    peer = RawPeer(three_meters.ports["bacnet"])
    try:
        apdus, data = peer.read_segmented(read_property(code, DEVICE, 599, OBJECT_LIST, max_apdu=code), invoke=code)
    finally:
        peer.close()
    assert apdus and all(a[0] >> 4 == 3 for a in apdus), [a[:4].hex() for a in apdus]
    assert max(len(a) for a in apdus) <= MAX_APDU[code], [len(a) for a in apdus]
    ids = object_ids(data)
    assert len(ids) == 3 * 53 + 2 and (8, 599) in ids and len(set(ids)) == len(ids)
    if MAX_APDU[code] >= 1024:
        assert len(apdus) == 1  # fits unsegmented
    else:
        assert len(apdus) > 1 and all(len(a) >= MAX_APDU[code] - 5 for a in apdus[:-1])  # full segments


def test_object_list_element_by_element(three_meters):
    peer = RawPeer(three_meters.ports["bacnet"])
    try:
        _, data = peer.read_segmented(read_property(1, DEVICE, 599, OBJECT_LIST), invoke=1)
        whole = object_ids(data)
        count = peer.ask(read_property(2, DEVICE, 599, OBJECT_LIST, index=0), invoke=2)
        assert count is not None and count[-3:] == bytes([0x21, len(whole), 0x3F]), count  # Unsigned, 161 < 256
        elements = []
        for i in range(1, len(whole) + 1):
            a = peer.ask(read_property(i % 256, DEVICE, 599, OBJECT_LIST, index=i), invoke=i % 256)
            assert a is not None and a[0] >> 4 == 3, i
            elements += object_ids(a[3:])
        beyond = peer.ask(read_property(3, DEVICE, 599, OBJECT_LIST, index=len(whole) + 1), invoke=3)
    finally:
        peer.close()
    assert elements == whole
    # Error: class property (2), code invalid-array-index (42)
    assert beyond is not None and beyond[0] >> 4 == 5 and beyond[3:] == bytes([0x91, 2, 0x91, 42]), beyond
