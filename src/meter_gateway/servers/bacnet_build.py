"""Building thousands of BACnet point objects cheaply: the first object of a shape is built by bacpypes3, the
others are copies of its state with their own values assigned.

bacpypes3 builds an object element by element: about 40 elements cast, checked against the class and assigned,
a property-monitor table, and a task scheduled per object (`_post_init`, which only links a notification class).
For 250 meters that is 13,500 objects, 4-5 s of the start-up and about 8 kB each, mostly values repeated in every
object of a kind (units, COV increment, out-of-service, event state, texts...).

`ObjectTemplates.make(cls, kwargs)` builds the first object of a (class, keyword names) shape normally and keeps a
snapshot of its instance dictionary. Every further object of that shape starts from a copy of the snapshot:
immutable values (bacpypes3 atomic values: numbers, enumerations, strings, identifiers) are shared with the first
object, and equal values given by later objects share one instance too (units, limits, texts); mutable ones (bit
strings, arrays, constructed values) are never shared: each comes from the object's own keywords; the
property-monitor table is new; elements left unset are not stored when the class reads them as None
(`absent_is_none`). Every keyword that is mutable or whose value differs from the first object's is stored as
bacpypes3's assignment stores it: cast to the element's type (object identifier and object name into the private
attributes their property setters fill while the object is in no application; any other Python property through
its setter). The result is the object bacpypes3 would have built (tests/unit/test_bacnet_build.py compares both,
property by property as encoded, for every object kind served, and checks that nothing mutable is shared).

`store_unwatched` is the same idea for table changes: a present value and a reliability stored into an object no
property monitor watches (no COV subscriber, no event algorithm), as the assignment would, forgetting the object's
encodings kept by the read fast path (`_gw_enc`, servers/bacnet_fast.py).

A shape is only copied when building it normally left no trace outside its own elements: no event or fault
algorithm, no property monitor, no notification class to link (intrinsic reporting attaches algorithms to the
object in `__init__`). Any other shape is always built by bacpypes3.
"""

from __future__ import annotations

import inspect
from collections import defaultdict
from typing import Any

from bacpypes3.local.object import Object as _LocalObject
from bacpypes3.primitivedata import ElementInterface

#: instance attributes never taken from the snapshot (the object's own bookkeeping)
PER_OBJECT = frozenset({"_property_monitors", "_app"})
#: Python properties of bacpypes3's local Object that keep their value in a private attribute (when in no application)
PRIVATE = {"objectIdentifier": "_Object__objectIdentifier", "objectName": "_Object__objectName"}
PRIVATE_PROPERTY = {k: inspect.getattr_static(_LocalObject, k) for k in PRIVATE}
#: distinct immutable values a template keeps to share (per-object ones such as descriptions fill it, then pass)
INTERNED = 2048
#: value types that are never changed in place once built (bacpypes3 atomic values derive from these)
IMMUTABLE = (int, float, str, bytes, tuple, type(None))


class _Template:
    """A snapshot of one normally built object: its state with mutable values left out, the keywords it had."""

    __slots__ = ("cls", "given", "mutable", "plain", "private", "shared", "values")

    def __init__(self, cls: type, state: dict[str, Any], kwargs: dict[str, Any], mutable: frozenset[str]) -> None:
        self.cls = cls
        self.mutable = mutable
        # an element that is None in the object and None in its class (`absent_is_none`) needs no entry of its own
        unset = {k for k, v in state.items() if v is None and inspect.getattr_static(cls, k, _ABSENT) is None}
        self.shared = {k: None if k in mutable else v for k, v in state.items() if k not in unset}
        self.given = dict(kwargs)
        self.values: dict[tuple[str, type, Any], Any] = {}
        # elements stored as they are (not Python properties): assigned here as bacpypes3 would store them
        self.plain = {k: element for k in kwargs if (element := _plain(cls, k)) is not None}
        # object-identifier and object-name: Python properties of bacpypes3's local Object over private attributes
        self.private = {
            k: (slot, cls._elements[k])
            for k, slot in PRIVATE.items()
            if k in kwargs and slot in self.shared and inspect.getattr_static(cls, k, None) is PRIVATE_PROPERTY[k]
        }

    def clone(self, kwargs: dict[str, Any]) -> Any:
        """A new object with the snapshot's state and the keywords that differ (or are mutable) assigned normally."""
        obj = self.cls.__new__(self.cls)
        state = vars(obj)
        state.update(self.shared)
        state["_property_monitors"] = defaultdict(list)
        state["_app"] = None  # not in an application yet
        given, mutable, plain, private = self.given, self.mutable, self.plain, self.private
        for k, v in kwargs.items():
            g = given[k]
            if k not in mutable and (v is g or (type(v) is type(g) and v == g)):
                continue
            # a mutable value's slot is None: the new value is always assigned, never shared
            element = plain.get(k)
            if element is None:
                slot = private.get(k)
                if slot is None:
                    setattr(obj, k, v)  # another Python property: its setter
                else:  # what bacpypes3's setter stores while the object is in no application
                    element = slot[1]
                    state[slot[0]] = v if v.__class__ is element else element(element.cast(v))
            elif v is None or v.__class__ is element:
                state[k] = v
            elif k in mutable:
                state[k] = element(element.cast(v))  # the cast Sequence.__setattr__ and set_attribute make
            else:
                state[k] = self._interned(k, element, v)
        return obj

    def _interned(self, k: str, element: type, v: Any) -> Any:
        """The cast value of an immutable element, one instance per distinct value (units, limits, texts repeat in
        every meter); values past INTERNED distinct ones per template are cast without being kept."""
        key = (k, v.__class__, v)
        try:
            found = self.values.get(key)
        except TypeError:  # not hashable
            return element(element.cast(v))
        if found is None:
            found = element(element.cast(v))
            if len(self.values) < INTERNED:
                self.values[key] = found
        return found


class ObjectTemplates:
    """Builds objects of a (class, keyword names) shape from the first one bacpypes3 built (see the module doc)."""

    def __init__(self, copy: bool = True) -> None:
        #: False: every object is built by bacpypes3 (the reference the tests compare copies with)
        self.copy = copy
        self._shapes: dict[tuple[type, tuple[str, ...]], _Template | None] = {}
        self.built = 0
        self.copied = 0

    def make(self, cls: type, kwargs: dict[str, Any]) -> Any:
        """An object of class `cls` built with these keywords (copied from its shape's first object when safe)."""
        key = (cls, tuple(kwargs))
        template = self._shapes.get(key, False)
        if template:
            self.copied += 1
            return template.clone(kwargs)
        obj = cls(**kwargs)
        self.built += 1
        if template is False and self.copy:
            state = _state(obj)
            mutable = frozenset(k for k, v in state.items() if not isinstance(v, IMMUTABLE) or isinstance(v, list))
            # a mutable value that no keyword gives could only be shared or deep-copied: build such shapes normally
            copyable = _copyable(obj) and mutable <= kwargs.keys()
            self._shapes[key] = _Template(cls, state, kwargs, mutable) if copyable else None
        return obj


def _state(obj: Any) -> dict[str, Any]:
    """The instance dictionary less the object's own bookkeeping (monitors, application, the gateway's `_gw_`)."""
    return {k: v for k, v in vars(obj).items() if k not in PER_OBJECT and not k.startswith("_gw_")}


def absent_is_none(cls: type) -> type:
    """Class decorator: every element the class does not define reads None at class level, so that an object
    needs no entry of its own for an element it leaves unset (30 of an Analog Input's 44: half its memory)."""
    for name in cls._elements:  # type: ignore[attr-defined]
        if inspect.getattr_static(cls, name, _ABSENT) is _ABSENT:
            setattr(cls, name, None)
    return cls


_ABSENT = object()


def _copyable(obj: Any) -> bool:
    """Whether building this object normally changed nothing but its own elements (see the module doc)."""
    return (
        getattr(obj, "_event_algorithm", None) is None
        and getattr(obj, "_fault_algorithm", None) is None
        and not any(obj._property_monitors.values())
        and getattr(obj, "notificationClass", None) is None
    )


def _plain(cls: type, attr: str) -> Any:
    """The element class of a property bacpypes3 stores as it is (no Python property, default assignment), or None."""
    element = cls._elements.get(attr)  # type: ignore[attr-defined]
    if element is None or isinstance(inspect.getattr_static(cls, attr, None), property):
        return None
    if element.set_attribute.__func__ is not ElementInterface.set_attribute.__func__:
        return None
    return element


_get = object.__getattribute__
_STORED: dict[type, tuple[Any, Any] | None] = {}


def store_unwatched(obj: Any, present_value: Any, reliability: int) -> bool:
    """Store a present value (None: keep it) and a reliability into an object no property monitor watches, as
    bacpypes3's assignment would (cast to the element's type; an equal value leaves the object as it is), and forget
    its encoded values if anything changed. False when the object's class needs the normal assignment."""
    cls = type(obj)
    elements = _STORED.get(cls, False)
    if elements is False:
        pv, rel = _plain(cls, "presentValue"), _plain(cls, "reliability")
        elements = _STORED[cls] = (pv, rel) if pv is not None and rel is not None else None
    if elements is None:
        return False
    pv_element, rel_element = elements
    state = _get(obj, "__dict__")  # (point objects hook attribute access: this is the plain way)
    changed = False
    current = state.get("presentValue")
    if present_value is not None and current != present_value:  # (compared raw first: no cast when equal)
        if present_value.__class__ is not pv_element:
            present_value = pv_element(pv_element.cast(present_value))
        if current != present_value:
            state["presentValue"] = present_value
            changed = True
    if state.get("reliability") != reliability:
        state["reliability"] = _reliability(rel_element, reliability)
        changed = True
    if changed:
        enc = state.get("_gw_enc")
        if enc:
            enc.clear()
    return True


_RELIABILITY: dict[tuple[type, int], Any] = {}


def _reliability(element: type, value: int) -> Any:
    """A reliability value of the element's type, one shared instance per value (enumerations are immutable)."""
    found = _RELIABILITY.get((element, value))
    if found is None:
        found = _RELIABILITY[(element, value)] = element(element.cast(value))
    return found
