"""Fast path for ReadProperty and ReadPropertyMultiple of the device's own point objects.

bacpypes3 runs every confirmed request through its whole stack: a task per datagram, BVLL, network and APDU
decoding, a server transaction that looks the client up again, `inspect` on every property access, and an encoder
that costs about 100 us per reply. This module answers, straight from the UDP socket, the plain requests a head-end
sends most: an unsegmented ReadProperty or ReadPropertyMultiple in an Original-Unicast-NPDU without network
addressing, for properties of the gateway's point objects (and elements of the Device object's object-list). A
property's value is encoded once, by bacpypes3 itself (the Any of its answers), and kept per object until any
property of that object is assigned (`FastCached.__setattr__` forgets the object's encodings); the few octets
around it (object identifier, property identifier, context tags) are written here.

Everything else takes the normal bacpypes3 path, unchanged: any other BVLC function, network addressing (routed
requests, virtual devices behind a router), segmented requests, other services, objects that are not registered
here (the Device object except object-list elements, the Network Port, objects added by other modules), properties
that do not yield a value (the errors: unknown object or property, array index out of range), array elements other
than the object-list's, answers too long for the client (segmentation, Abort), a client whose device-info entry the
normal path would update, a retransmission of a request that the normal path is still answering. A request is only
answered here when every part of it is understood, so the answer is the normal path's, byte for byte (tests compare
both for every object type and property served).
"""

from __future__ import annotations

import inspect
import logging
import struct
from functools import partial
from typing import Any

from bacpypes3.basetypes import PropertyIdentifier
from bacpypes3.constructeddata import Any as AnyValue
from bacpypes3.local.object import Object as _LocalObject
from bacpypes3.pdu import IPv4Address

log = logging.getLogger(__name__)

SC_READ_PROPERTY = 12
SC_READ_PROPERTY_MULTIPLE = 14
DEVICE = 8
WILDCARD_DEVICE = (DEVICE << 22) | 4194303
OBJECT_LIST = 76
#: property identifiers that name groups of properties (ReadPropertyMultiple) rather than a property
GROUPS = frozenset({8, 80, 105})  # all, optional, required
#: max-APDU-length-accepted codes (ASHRAE 135 clause 20.1.2.5); other codes are reserved
MAX_APDU = (50, 128, 206, 480, 1024, 1476)
_OID = struct.Struct(">I")
_BVLC = struct.Struct(">BBH")
#: the reply's NPDU: version 1, no network layer message, no addresses, not expecting a reply, normal priority
REPLY_NPDU = b"\x01\x00"


def _sync_attrs(cls: type) -> frozenset[str]:
    """The properties of a class that bacpypes3 reads and assigns directly: all but coroutine Python properties."""
    found = _SYNC.get(cls)
    if found is None:
        mro = cls.__mro__
        between = mro[mro.index(FastCached) + 1 : mro.index(_LocalObject)] if _LocalObject in mro else ()
        hooks = ("__getattribute__", "__getattr__", "__setattr__")
        if _LocalObject not in mro or any(h in k.__dict__ for k in between for h in hooks):
            found = frozenset()  # another class hooks attribute access (or no bacpypes3 local object): its way
        else:
            found = frozenset(
                name
                for name in cls._elements  # type: ignore[attr-defined]
                if not (
                    isinstance(p := inspect.getattr_static(cls, name, None), property)
                    and (inspect.iscoroutinefunction(p.fget) or inspect.iscoroutinefunction(p.fset))
                )
            )
        _SYNC[cls] = found
    return found


_SYNC: dict[type, frozenset[str]] = {}


class FastCached:
    """Mixin for point objects (put before the bacpypes3 classes): assigning a property forgets the object's
    encoded property values; properties are read and assigned without `inspect`.

    bacpypes3's local `Object.__getattribute__` and `__setattr__` look the attribute up with `inspect.getattr_static`
    at every access, only to find Python properties with coroutine getters or setters (which they run in a thread).
    A class's properties do not change, so that is decided here once per class; for every other property this does
    what bacpypes3 does, in the same order. Reading: the element's get_attribute with the next class's getter.
    Assigning: cast to the property's type, compare with the current value (no change: no effect), the element's
    set_attribute through the next class's setter, then the property monitors (COV detection).
    """

    # no annotation: the bacpypes3 object metaclass evaluates the type hints of every class in the hierarchy
    _gw_enc = None

    def __getattribute__(self, attr: str) -> Any:
        """Read as bacpypes3 does, without `inspect`."""
        if attr.startswith("_"):
            return object.__getattribute__(self, attr)
        cls = type(self)
        sync = _SYNC.get(cls)
        if sync is None:
            sync = _sync_attrs(cls)
        if attr not in sync:
            return super().__getattribute__(attr)
        below = super(_LocalObject, self)
        return cls._elements[attr].get_attribute(  # type: ignore[attr-defined]
            getter=partial(below.__getattribute__, attr)
        )

    def __setattr__(self, attr: str, value: Any) -> None:
        """Assign as bacpypes3 does; a property (not a private attribute) invalidates the encodings."""
        if attr.startswith("_"):
            object.__setattr__(self, attr, value)
            return
        cls = type(self)
        sync = _SYNC.get(cls)
        if sync is None:
            sync = _sync_attrs(cls)
        if attr not in sync:
            try:
                super().__setattr__(attr, value)
            finally:
                _forget(self)
            return
        element = cls._elements[attr]  # type: ignore[attr-defined]
        if value.__class__ != element:
            value = element(element.cast(value))
        below = super(_LocalObject, self)
        current = below.__getattribute__(attr)
        if value == current:
            return
        try:
            element.set_attribute(
                getter=partial(below.__getattribute__, attr), setter=partial(below.__setattr__, attr), value=value
            )
        finally:
            _forget(self)
        monitors = _get(self, "_property_monitors").get(attr)
        if monitors:
            for fn in monitors:
                fn(current, value)


_get = object.__getattribute__


def _forget(obj: Any) -> None:
    """Forget the encoded property values of an object."""
    enc = _get(obj, "_gw_enc")
    if enc:
        enc.clear()


def _unsigned(data: bytes, pos: int, tag: int) -> tuple[int, int] | None:
    """A context-tagged unsigned (tag `tag`) in its shortest encoding at pos: (value, next pos), or None."""
    if pos >= len(data):
        return None
    head = data[pos]
    n = head & 0x07
    if head & 0xF8 != (tag << 4) | 0x08 or not 1 <= n <= 4 or pos + 1 + n > len(data):
        return None
    raw = data[pos + 1 : pos + 1 + n]
    if n > 1 and raw[0] == 0:
        return None  # not the shortest encoding: let bacpypes3 judge it
    return int.from_bytes(raw, "big"), pos + 1 + n


def _ctx_unsigned(tag: int, value: int) -> bytes:
    raw = value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big")
    return bytes([(tag << 4) | 0x08 | len(raw)]) + raw


def _app_unsigned(value: int) -> bytes:
    raw = value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big")
    return bytes([0x20 | len(raw)]) + raw


def _run_sync(coro) -> Any:
    """The result of a coroutine that does not suspend; raises LookupError when it would."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    coro.close()
    raise LookupError("the property read would suspend")


class FastReads:
    """The fast path of one application: its registered objects and the datagram hook (see the module doc)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.enabled = True
        #: registered objects by packed object identifier (type << 22 | instance)
        self.objects: dict[int, Any] = {}
        #: property identifiers each registered class has (anything else is not looked at here)
        self._element_ids: dict[type, frozenset[int]] = {}
        self._device_key: int | None = None
        self.answered = 0
        self.passed = 0
        self._failed_logged = False

    # -- objects ---------------------------------------------------------------------------------------------
    def register(self, obj: Any) -> None:
        """Serve this object's properties from encodings kept until one of its properties is assigned."""
        t, i = obj.objectIdentifier
        cls = type(obj)
        if cls not in self._element_ids:
            ids = set()
            for attr in obj._elements:
                try:
                    ids.add(int(PropertyIdentifier(attr)))
                except (ValueError, TypeError):
                    continue
            self._element_ids[cls] = frozenset(ids - GROUPS)
        self.objects[(int(t) << 22) | i] = obj  # its encodings: a dictionary made at the first read

    def unregister(self, obj: Any) -> None:
        """Stop serving this object here."""
        t, i = obj.objectIdentifier
        key = (int(t) << 22) | i
        if self.objects.get(key) is obj:
            del self.objects[key]

    def _encoded(self, key: int, obj: Any, pid: int) -> tuple[bytes, bytes] | None:
        """(ReadProperty-ACK service data, ReadPropertyMultiple result element) of a property, or None."""
        enc = obj._gw_enc
        if enc is None:
            enc = obj._gw_enc = {}
        hit = enc.get(pid, False)
        if hit is not False:
            return hit
        if pid not in self._element_ids.get(type(obj), ()):
            return None
        prop = PropertyIdentifier(pid)
        out: tuple[bytes, bytes] | None = None
        try:
            value = _run_sync(obj.read_property(prop, None))
            if value is not None and obj.get_property_type(prop) is not None:
                # the value as bacpypes3 encodes it in both answers (an Any), between the context tags of each
                raw = bytes(AnyValue(value).encode().encode().pduData)
                out = (
                    b"\x0c" + _OID.pack(key) + _ctx_unsigned(1, pid) + b"\x3e" + raw + b"\x3f",
                    _ctx_unsigned(2, pid) + b"\x4e" + raw + b"\x4f",
                )
        except Exception:  # an error answer, or a read that is not plain: the normal path answers it
            out = None
        enc[pid] = out
        return out

    def _object_list_element(self, index: int) -> bytes | None:
        """Application-tagged object-list[index] (0: the length), None when out of range."""
        object_list = self.app.object_list()
        if index == 0:
            return _app_unsigned(len(object_list))
        if index > len(object_list):
            return None
        t, i = object_list[index - 1]
        return b"\xc4" + _OID.pack((int(t) << 22) | i)

    # -- requests --------------------------------------------------------------------------------------------
    def answer(self, data: bytes, addr: tuple[str, int]) -> bytes | None:
        """The datagram answering `data`, or None when the normal path must answer it."""
        # BVLC Original-Unicast-NPDU, NPDU version 1 without addresses or priority, unsegmented confirmed request
        if len(data) < 15 or data[0] != 0x81 or data[1] != 0x0A or data[4] != 0x01 or data[5] not in (0x00, 0x04):
            return None
        if _BVLC.unpack_from(data)[2] != len(data):
            return None
        pdu_flags, max_resp, invoke, service = data[6], data[7], data[8], data[9]
        if pdu_flags not in (0x00, 0x02) or max_resp & 0x80 or max_resp & 0x0F >= len(MAX_APDU):
            return None
        if service == SC_READ_PROPERTY:
            body = self._read_property(data)
        elif service == SC_READ_PROPERTY_MULTIPLE:
            body = self._read_property_multiple(data)
        else:
            return None
        if body is None:
            return None
        limit = MAX_APDU[max_resp & 0x0F]
        sap = self.app.asap
        if sap.serverTransactions:
            for tr in sap.serverTransactions:
                if tr.invokeID == invoke and tr.pdu_address.addrTuple == addr:
                    return None  # a retransmission of a request the normal path is answering
        cache = sap.device_info_cache.address_cache
        if cache:
            info = cache.get(IPv4Address(addr))
            if info is not None:
                seg = info.segmentation_supported
                if pdu_flags & 0x02 and seg is not None and int(seg) in (1, 3):  # transmit or none
                    return None  # the normal path records that this client accepts segments
                if info.max_npdu_length:
                    limit = min(limit, info.max_npdu_length)
        if len(body) + 3 > limit:
            return None  # segmented, or an Abort: the normal path decides
        apdu = bytes((0x30, invoke, service)) + body
        return _BVLC.pack(0x81, 0x0A, 6 + len(apdu)) + REPLY_NPDU + apdu

    def _read_property(self, data: bytes) -> bytes | None:
        if data[10] != 0x0C:
            return None
        (key,) = _OID.unpack_from(data, 11)
        got = _unsigned(data, 15, 1)
        if got is None:
            return None
        pid, pos = got
        index = None
        if pos < len(data):
            got = _unsigned(data, pos, 2)
            if got is None or got[1] != len(data):
                return None
            index = got[0]
        if index is None:
            obj = self.objects.get(key)
            if obj is None:
                return None
            enc = self._encoded(key, obj, pid)
            return None if enc is None else enc[0]
        if pid != OBJECT_LIST or (key >> 22) != DEVICE:
            return None
        dev_key = self._device_key
        if dev_key is None:
            device = self.app.device_object
            if device is None:
                return None
            dev_t, dev_i = device.objectIdentifier  # read-only: kept for the application's life
            dev_key = self._device_key = (int(dev_t) << 22) | dev_i
        if key not in (dev_key, WILDCARD_DEVICE):
            return None
        value = self._object_list_element(index)
        if value is None:
            return None
        return (
            b"\x0c" + _OID.pack(dev_key) + _ctx_unsigned(1, OBJECT_LIST) + _ctx_unsigned(2, index)
            + b"\x3e" + value + b"\x3f"
        )  # fmt: skip

    def _read_property_multiple(self, data: bytes) -> bytes | None:
        out = []
        pos, end = 10, len(data)
        objects = self.objects
        while pos < end:
            # object identifier, opening tag 1, property references, closing tag 1
            if data[pos] != 0x0C or pos + 6 > end or data[pos + 5] != 0x1E:
                return None
            (key,) = _OID.unpack_from(data, pos + 1)
            obj = objects.get(key)
            if obj is None:
                return None
            out.append(data[pos : pos + 6])
            pos += 6
            count = 0
            while pos < end and data[pos] != 0x1F:
                got = _unsigned(data, pos, 0)
                if got is None:
                    return None
                pid, pos = got
                if pos < end and data[pos] != 0x1F and data[pos] & 0xF8 == 0x18:
                    return None  # an array index: the normal path
                enc = self._encoded(key, obj, pid)
                if enc is None:
                    return None
                out.append(enc[1])
                count += 1
            if pos >= end or count == 0:
                return None
            out.append(b"\x1f")
            pos += 1
        return b"".join(out) if out else None

    # -- the socket ------------------------------------------------------------------------------------------
    def install(self) -> int:
        """Answer from the UDP socket of every BACnet/IP link layer (after the bind); the number of sockets."""
        n = 0
        for ll in self.app.link_layers.values():
            server = getattr(ll, "server", None)
            protocol = getattr(server, "local_protocol", None)
            transport = getattr(server, "local_transport", None)
            if protocol is None or transport is None:
                continue
            protocol.datagram_received = self._hook(protocol.datagram_received, transport, server)
            n += 1
        return n

    def _hook(self, inner, transport, server):
        def datagram_received(data: bytes, addr: tuple[str, int]) -> None:
            if self.enabled and addr != server.local_address:
                try:
                    reply = self.answer(data, addr)
                except Exception as exc:
                    reply = None
                    if not self._failed_logged:
                        self._failed_logged = True
                        log.error("BACnet fast path failed (%s: %s): the normal path answers", type(exc).__name__, exc)
                if reply is not None:
                    self.answered += 1
                    transport.sendto(reply, addr)
                    return
                self.passed += 1
            inner(data, addr)

        return datagram_received


class FastReadApplication:
    """Application mixin: keeps the fast path's object registry in step with the application's objects."""

    fast_reads: FastReads | None = None
    #: classes whose objects the fast path serves (exactly these classes, not subclasses)
    fast_classes: frozenset[type] = frozenset()

    def add_object(self, obj) -> None:
        """Add an object; a point object of a fast class is served by the fast path too."""
        super().add_object(obj)  # type: ignore[misc]
        if self.fast_reads is None:
            self.fast_reads = FastReads(self)
        if type(obj) in self.fast_classes:
            self.fast_reads.register(obj)

    def delete_object(self, obj) -> None:
        """Delete an object (and its fast-path entry)."""
        if self.fast_reads is not None:
            self.fast_reads.unregister(obj)
        super().delete_object(obj)  # type: ignore[misc]


class _ClassLookup:
    """Stands for the `inspect` module inside bacpypes3.constructeddata: `getattr_static` answers from a cache per
    (class, name) when the instance's own dictionary does not hold the name, everything else is `inspect` itself.

    bacpypes3's Sequence.__init__ asks `inspect.getattr_static(self, attr)` for every element it leaves unset (is it
    a Python property?) - about 40 per object, 90 % of building 13,500 BACnet objects for 250 meters (20 s). The
    answer depends on the class only (the instance's dictionary is checked first, as getattr_static does), and
    classes do not change once built, so it is cached.
    """

    _MISSING = object()
    _UNSEEN = object()

    def __init__(self) -> None:
        self._cache: dict[tuple[type, str], Any] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(inspect, name)

    def getattr_static(self, obj: Any, attr: str, *default: Any) -> Any:
        """inspect.getattr_static, cached per class for names the instance does not hold itself."""
        try:
            own = object.__getattribute__(obj, "__dict__")
        except AttributeError:
            own = {}
        if attr in own or isinstance(obj, type):
            return inspect.getattr_static(obj, attr, *default)
        key = (type(obj), attr)
        found = self._cache.get(key, self._UNSEEN)
        if found is self._UNSEEN:  # (a class attribute may well be None: not a miss)
            found = self._MISSING
            for klass in type(obj).__mro__:  # as getattr_static does for an instance: the class's MRO, no metaclass
                space = klass.__dict__
                if attr in space:
                    found = space[attr]
                    break
            self._cache[key] = found
        if found is self._MISSING:
            if default:
                return default[0]
            raise AttributeError(attr)
        return found


def install_class_lookup_cache() -> None:
    """Make bacpypes3's object construction look up class attributes through `_ClassLookup` (idempotent)."""
    from bacpypes3 import constructeddata

    if not isinstance(constructeddata.inspect, _ClassLookup):
        constructeddata.inspect = _ClassLookup()  # type: ignore[assignment]
