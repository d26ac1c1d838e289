"""A BACnet/IP client from ASHRAE 135 for the discovery test, run inside a network namespace:
`discovery_client.py PORT ADDRESS...`. Listens on 0.0.0.0:PORT (prints "ready"), waits for the device's I-Am at
start-up, then sends a global Who-Is to each ADDRESS and prints one JSON line: the device instance heard after
each (or null)."""

from __future__ import annotations

import json
import socket
import struct
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bacnet_raw import ORIGINAL_BROADCAST, apdu_of, bvlc

WHO_IS = b"\x01\x20\xff\xff\x00\xff" + b"\x10\x08"  # NPDU to the global network, unconfirmed Who-Is (no range)


def i_am(sock: socket.socket, timeout: float) -> int | None:
    """The device instance of the next I-Am within `timeout` s (other datagrams skipped)."""
    end = time.monotonic() + timeout
    while (left := end - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            data, _addr = sock.recvfrom(1500)
        except TimeoutError:
            return None
        if len(data) < 4 or data[0] != 0x81:
            continue
        apdu = apdu_of(data)
        if apdu[:3] == b"\x10\x00\xc4":
            return struct.unpack(">I", apdu[3:7])[0] & 0x3FFFFF
    return None


def main() -> None:
    port = int(sys.argv[1])
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    sock.bind(("0.0.0.0", port))
    print("ready", flush=True)
    result: dict[str, int | None] = {"start-up": i_am(sock, 30)}
    for address in sys.argv[2:]:
        sock.sendto(bvlc(WHO_IS, ORIGINAL_BROADCAST), (address, port))
        result[address] = i_am(sock, 3)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
