"""The BACnet read fast path (servers/bacnet_fast.py) answers byte for byte what bacpypes3's normal path answers.

One gateway with every object type the device serves; its simulated meters are frozen so that values stay put.
Every request goes out twice from a raw UDP socket (frames written by hand, tests/bacnet_raw.py): once with the fast
path on and once with it off (the normal bacpypes3 path), and the two whole datagrams (BVLC, NPDU, APDU) must be
equal. Requests cover every property of two objects of each type (and properties they lack, group properties, array
indices), through ReadProperty and ReadPropertyMultiple, the changing properties of every object, several objects in
one ReadPropertyMultiple, object-list elements and their edges, small
max-APDU sizes (segmentation or abort on the normal path), and malformed variants of the encodings.
"""

from __future__ import annotations

import asyncio
import random
import struct

from bacnet_raw import _ctx_oid, _ctx_unsigned, bvlc, confirmed, read_property
from helpers import more_polls, wait_for
from integration.test_bacnet import yaml_for
from meter_gateway.core.quality import Quality

OBJECT_LIST = 76
PROPERTY_LIST = 371
#: properties no point object has, group identifiers (all, optional, required), a proprietary number
NOT_PROPERTIES = (8, 80, 105, 0, 4, 9999, 4194303)


def rpm(invoke: int, specs: list[tuple[int, int, list[int | tuple[int, int]]]], **kw) -> bytes:
    """ReadPropertyMultiple request: (object type, instance, [property or (property, array index)]) per object."""
    body = b""
    for t, i, props in specs:
        body += _ctx_oid(0, t, i) + b"\x1e"
        for p in props:
            if isinstance(p, tuple):
                body += _ctx_unsigned(0, p[0]) + _ctx_unsigned(1, p[1])
            else:
                body += _ctx_unsigned(0, p)
        body += b"\x1f"
    return confirmed(invoke, 14, body, **kw)


class _Client(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr) -> None:
        self.queue.put_nowait(data)


async def exchange(port: int, frames: list[bytes], abort: bool = False) -> list[bytes | None]:
    """Send each frame from a new UDP socket and wait for its answer (one at a time); None after 2 s of silence.
    With `abort`, each answer is followed by an Abort from the client (ends a segmented answer's transaction)."""
    loop = asyncio.get_running_loop()
    transport, client = await loop.create_datagram_endpoint(_Client, local_addr=("127.0.0.1", 0))
    out: list[bytes | None] = []
    try:
        for frame in frames:
            transport.sendto(frame, ("127.0.0.1", port))
            try:
                out.append(await asyncio.wait_for(client.queue.get(), 2.0))
            except TimeoutError:
                out.append(None)
            if abort:
                transport.sendto(bvlc(b"\x01\x00" + bytes([0x70, frame[8], 0])), ("127.0.0.1", port))
    finally:
        transport.close()
    return out


def property_ids(answer: bytes) -> list[int]:
    """The property identifiers in a property-list ReadProperty-ACK datagram (BVLC + NPDU 01 00 + APDU)."""
    data = answer[6 + 3 :]  # BVLC, NPDU, Complex-ACK header
    i = data.index(0x3E) + 1
    out = []
    while data[i] != 0x3F:
        n = data[i] & 0x07
        out.append(int.from_bytes(data[i + 1 : i + 1 + n], "big"))
        i += 1 + n
    return out


#: the comparison needs a table that stays put: values frozen, and polls late on a loaded machine (0.5 s intervals)
#: must not turn them stale between the two paths' answers, nor a single slow reply cut the simulated meters off
STEADY = (
    yaml_for()
    .replace("location: Plant room}", "location: Plant room, stale_factor: 100}")
    .replace("timeout: 0.2, retries: 0, fail_after: 1", "timeout: 1.0, retries: 1, fail_after: 2")
)


async def test_fast_path_answers_exactly_as_the_normal_path(gateways):
    gw = await gateways(STEADY)
    server = gw.servers[0]
    port = server.address()[1]
    fast = server.app.fast_reads
    assert fast is not None and fast.objects, "the point objects are registered with the fast path"
    assert await wait_for(lambda: all(gw.table.is_online(m) for m in gw.table.meter_ids), 10)
    assert await wait_for(lambda: gw.table.get("gen", "Demand_Interval").quality is Quality.GOOD, 10)
    for sim in gw.simulators.values():
        sim.model.frozen = True
    assert await more_polls(gw)  # the last reads before freezing reach the table (one poll may have been in flight)

    async def both(frames: list[bytes]) -> tuple[list, list, int]:
        fast.enabled = True
        before = fast.answered
        on = await exchange(port, frames)
        answered = fast.answered - before
        fast.enabled = False
        off = await exchange(port, frames)
        fast.enabled = True
        return on, off, answered

    def check(frames, on, off) -> None:
        for frame, a, b in zip(frames, on, off, strict=True):
            assert b is not None, f"the normal path did not answer {frame.hex()}"
            assert a == b, f"request {frame.hex()}\n fast   {a.hex() if a else None}\n normal {b.hex()}"

    # every property of every point object: property-list first, then each property, plus ones they lack
    objs = sorted(server.app.objectIdentifier)
    points = [(int(t), i) for t, i in objs if (int(t) << 22 | i) in fast.objects]
    types = {t for t, _ in points}
    assert types >= {0, 2, 3, 4, 19, 23, 44}, f"every object type is served: {types}"
    lists = await exchange(port, [bvlc(read_property(1, t, i, PROPERTY_LIST)) for t, i in points])
    frames, rpm_frames = [], []
    per_type: dict[int, int] = {}
    for n, ((t, i), answer) in enumerate(zip(points, lists, strict=True)):
        assert answer is not None
        props = [75, 77, 79, PROPERTY_LIST, *property_ids(answer)]
        # every property (and the edges) for the first two objects of each type, through ReadProperty and through
        # ReadPropertyMultiple; name, value, reliability and status of every other object
        per_type[t] = per_type.get(t, 0) + 1
        if per_type[t] <= 2:
            frames += [bvlc(read_property(n % 256, t, i, p)) for p in [*props, *NOT_PROPERTIES]]
            frames += [bvlc(read_property(n % 256, t, i, PROPERTY_LIST, index=k)) for k in (0, 1, len(props) + 1)]
            frames.append(bvlc(read_property(n % 256, t, i, 85, index=1)))  # present-value is not an array
            rpm_frames.append(bvlc(rpm(n % 256, [(t, i, [85, 9999])])))  # one property the object lacks
            rpm_frames.append(bvlc(rpm(n % 256, [(t, i, [85, 8])])))  # all
            rpm_frames.append(bvlc(rpm(n % 256, [(t, i, props)])))
        else:
            rpm_frames.append(bvlc(rpm(n % 256, [(t, i, [77, 85, 103, 111])])))
    on, off, answered = await both(frames)
    check(frames, on, off)
    assert answered >= len(per_type) * 2 * 10, "the fast path answered the reads of existing properties"
    on, off, answered = await both(rpm_frames)
    check(rpm_frames, on, off)
    assert answered >= len(points), "the fast path answered ReadPropertyMultiple"

    # several objects in one ReadPropertyMultiple; an unknown object among them; sizes that need segmentation
    dev = server.device.objectIdentifier[1]
    many = [(t, i, [85, 111, 103, 77]) for t, i in points[:40]]
    no_sa = rpm(10, many, max_apdu=0)
    frames = [
        bvlc(rpm(7, many)),
        bvlc(rpm(8, [*many[:3], (0, 3999999, [85])])),
        bvlc(no_sa[:2] + b"\x00" + no_sa[3:]),  # 50 octets, segmented answer not accepted: abort
        bvlc(rpm(12, [(8, dev, [76])])),
    ]
    # object-list elements: length, first, last, one past the end, through the wildcard device instance
    count = len(objs)
    for k, inst in enumerate((dev, 4194303)):
        frames += [bvlc(read_property(20 + k, 8, inst, OBJECT_LIST, index=x)) for x in (0, 1, count, count + 1)]
    frames.append(bvlc(read_property(30, 8, dev, OBJECT_LIST, index=2**32 - 1)))
    frames.append(bvlc(read_property(31, 8, 12345, OBJECT_LIST, index=1)))  # another device
    # variants of the encoding: a request without segmented-response-accepted, network priority, a non-minimal
    # property identifier, trailing octets, a property identifier in two octets
    t, i = points[0]
    rp = read_property(40, t, i, 85)
    frames += [
        bvlc(rp[:2] + b"\x00" + rp[3:]),
        bvlc(b"\x01\x05" + rp[2:]),
        bvlc(b"\x01\x00" + rp[2:]),  # not expecting a reply
        bvlc(rp[:-2] + b"\x1a\x00\x55"),
        bvlc(rp + b"\x00"),
        bvlc(read_property(41, t, i, 371)),
        bvlc(rp, function=0x0B),  # Original-Broadcast-NPDU
    ]
    on, off, _ = await both(frames)
    check(frames, on, off)
    # a segmented answer (128 octets): the first segments are equal (the client then aborts the transaction)
    seg = bvlc(rpm(9, many, max_apdu=1))
    fast.enabled = True
    first = await exchange(port, [seg], abort=True)
    fast.enabled = False
    normal = await exchange(port, [seg], abort=True)
    fast.enabled = True
    assert first[0] is not None and first[0][6] >> 4 == 3 and first[0][6] & 0x08, "a segment"
    assert first == normal

    # mutated requests (octets changed, dropped, inserted): every one the fast path would answer gets the normal
    # path's answer, byte for byte (the others go to the normal path anyway)
    rng = random.Random(19)
    seeds = [
        bvlc(read_property(50, t, i, 85)),
        bvlc(read_property(51, t, i, 77)),
        bvlc(rpm(52, many[:4])),
        bvlc(read_property(53, 8, dev, OBJECT_LIST, index=3)),
    ]
    accepted = []
    for _ in range(4000):
        frame = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 2)):
            k = rng.randrange(4, len(frame))  # the BVLC header's length is checked first: mutate past it
            op = rng.random()
            if op < 0.6:
                frame[k] = rng.randrange(256)
            elif op < 0.8:
                del frame[k]
            else:
                frame.insert(k, rng.randrange(256))
        frame[2:4] = struct.pack(">H", len(frame))
        if fast.answer(bytes(frame), ("127.0.0.1", 47808)) is not None:
            accepted.append(bytes(frame))
    on, off, answered = await both(accepted)
    check(accepted, on, off)
    assert answered == len(accepted) >= 50, f"{len(accepted)} mutated requests answered by the fast path"


async def test_a_changed_value_is_served_at_once(gateways):
    """A value assigned to an object forgets its encodings: the next read shows the new value."""
    gw = await gateways(yaml_for())
    server = gw.servers[0]
    port = server.address()[1]
    obj = server.objects[("gen", "Voltage_L1_N", "analog-input")]
    t, i = obj.objectIdentifier
    frame = bvlc(read_property(1, int(t), i, 85))
    for value in (230.5, 231.25, 229.0):
        obj.presentValue = value
        (answer,) = await exchange(port, [frame])
        assert answer is not None and answer[-7:-5] == b"\x3e\x44" and answer[-1] == 0x3F, answer
        assert struct.unpack(">f", answer[-5:-1])[0] == value
