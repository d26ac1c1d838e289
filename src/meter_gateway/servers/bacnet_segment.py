"""Segmented answers that fit the client's max-APDU, and an object-list that is not rebuilt per element.

bacpypes3 0.0.110 cuts a Complex-ACK's service data into pieces of max-APDU octets and then adds the 5-octet
segment header (ASHRAE 135 clause 20.1.5), so every segment overshoots by 5 (1481 for 1476, 485 for 480); an
unsegmented answer of up to max-APDU octets of data overshoots by its 3-octet header. It also prefers the
max-APDU cached from an I-Am over the max-APDU-length-accepted of the request itself (clause 20.1.2.5), which is
what the client accepts for this transaction. `fit_segments` wraps the server transaction class to size segments
from the request, header included.

The Device object's object-list is built from the application's object map at every read; reading it element by
element (as bacepics and many head-ends do) therefore costs the whole list per element. `ObjectListCache` keeps
the built array until an object is added or deleted.
"""

from __future__ import annotations

from typing import Any

from bacpypes3 import appservice
from bacpypes3.apdu import ComplexAckPDU, decode_max_apdu_length_accepted
from bacpypes3.constructeddata import ArrayOf
from bacpypes3.local.device import DeviceObject
from bacpypes3.primitivedata import ObjectIdentifier

UNSEGMENTED_ACK_HEADER = 3  # PDU type, invoke ID, service choice
SEGMENTED_ACK_HEADER = 5  # + sequence number, proposed window size


class _FitSegments:
    """ServerSSM mixin: segment size from the request's max-APDU minus the segment header."""

    _request_max_apdu: int | None = None

    async def idle(self, apdu) -> None:
        """Remember the max-APDU of the request before bacpypes3 replaces it with a cached one."""
        self._request_max_apdu = decode_max_apdu_length_accepted(apdu.apduMaxResp)
        await super().idle(apdu)  # type: ignore[misc]

    async def confirmation(self, apdu) -> None:
        """Size a Complex-ACK's segments so that each whole APDU fits the client's max-APDU."""
        if apdu.apduType != ComplexAckPDU.pduType or self._request_max_apdu is None:
            await super().confirmation(apdu)  # type: ignore[misc]
            return
        limit = self._request_max_apdu
        info = self.device_info  # type: ignore[attr-defined]
        if info is not None and info.max_npdu_length:
            limit = min(limit, info.max_npdu_length)
        size = len(apdu.pduData or b"")
        # bacpypes3 takes min(client max-NPDU, maxApduLengthAccepted) octets of service data per segment, and
        # limit is already at most the client's max-NPDU
        self.maxApduLengthAccepted = limit if size + UNSEGMENTED_ACK_HEADER <= limit else limit - SEGMENTED_ACK_HEADER
        await super().confirmation(apdu)  # type: ignore[misc]


def fit_segments() -> None:
    """Make bacpypes3 create its server transactions with `_FitSegments` (idempotent)."""
    current = appservice.ServerSSM
    if not issubclass(current, _FitSegments):
        appservice.ServerSSM = type("FitSegments" + current.__name__, (_FitSegments, current), {})


_ObjectList = ArrayOf(ObjectIdentifier)


class ObjectListCache:
    """Application mixin: the Device object's object-list, rebuilt only when an object is added or deleted."""

    _object_list: Any = None

    def add_object(self, obj) -> None:
        """Add an object; the object-list is rebuilt at its next read."""
        self._object_list = None
        super().add_object(obj)  # type: ignore[misc]

    def delete_object(self, obj) -> None:
        """Delete an object; the object-list is rebuilt at its next read."""
        self._object_list = None
        super().delete_object(obj)  # type: ignore[misc]

    def object_list(self) -> Any:
        """The object identifiers of the application, built once per change of the object set."""
        if self._object_list is None or len(self._object_list) != len(self.objectIdentifier):  # type: ignore[attr-defined]
            self._object_list = _ObjectList(list(self.objectIdentifier.keys()))  # type: ignore[attr-defined]
        return self._object_list


def _cached_object_list(self) -> Any:
    app = self._app
    if isinstance(app, ObjectListCache):
        return app.object_list()
    return _library_object_list(self)


_library_object_list = DeviceObject.objectList.fget
DeviceObject.objectList = property(_cached_object_list, DeviceObject.objectList.fset, doc="object-list (cached)")
