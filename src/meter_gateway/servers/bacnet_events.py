"""BACnet intrinsic reporting (issue 16, item 2): alarm points report CHANGE_OF_STATE, analog limits OUT_OF_RANGE,
reliability changes (communication failure, stale values) CHANGE_OF_RELIABILITY; Notification Class objects with
recipient lists from the configuration; AcknowledgeAlarm, GetEventInformation and GetAlarmSummary.

The event state machines are bacpypes3's (local/event.py: ChangeOfStateEventAlgorithm, OutOfRangeEventAlgorithm);
this module subclasses them where 0.0.110 falls short:

- a reliability change assigned right after status-flags (the way the server fires COV) is missed by the library's
  parameter monitors, and a change from one fault to another needs a fault algorithm it does not have: the
  algorithm here tracks the object's reliability itself;
- points never read yet (start-up) are not evaluated, so a restart does not raise a fault event on every object;
- notifications: priority and ack-required from the right element of the class's arrays, date-and-time stamps in
  the gateway's zone, Event_Enable honoured, Acked_Transitions kept, recipients filtered by their day of the week
  (the library only looks at Thursday) and time window, device recipients found with Who-Is;
- every transition is logged once and counted for the metrics.

The objects a meter gets are described by `event_properties` (one call per object) and the classes by
`notification_class_objects`, so a per-meter virtual device can build its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from datetime import datetime
from typing import Any

from bacpypes3.apdu import (
    AcknowledgeAlarmRequest,
    ConfirmedEventNotificationRequest,
    GetAlarmSummaryACK,
    GetAlarmSummaryRequest,
    GetEventInformationACK,
    GetEventInformationRequest,
    SimpleAckPDU,
    UnconfirmedEventNotificationRequest,
)
from bacpypes3.basetypes import (
    BinaryPV,
    DateTime,
    DaysOfWeek,
    Destination,
    DeviceAddress,
    EventState,
    EventTransitionBits,
    EventType,
    GetAlarmSummaryAlarmSummary,
    GetEventInformationEventSummary,
    LimitEnable,
    NotifyType,
    Recipient,
    Reliability,
    StatusFlags,
    TimeStamp,
)
from bacpypes3.errors import ExecutionError
from bacpypes3.local.event import ChangeOfStateEventAlgorithm, OutOfRangeEventAlgorithm
from bacpypes3.local.object import Object as _LocalObject
from bacpypes3.object import NotificationClassObject as _NotificationClassObject
from bacpypes3.pdu import Address
from bacpypes3.primitivedata import Date, Time

from ..config_events import DAYS, TRANSITIONS, BacnetEventsSection, BacnetLimit, parse_address, parse_time

log = logging.getLogger(__name__)

#: alarm and status points with intrinsic reporting, and their alarm value (spec: Points d'État)
ALARM_VALUES: dict[str, BinaryPV] = {
    "Communication_Status": BinaryPV.inactive,  # 0 = Défaut
    "Phase_Loss_L1": BinaryPV.active,
    "Phase_Loss_L2": BinaryPV.active,
    "Phase_Loss_L3": BinaryPV.active,
    "Overload_Alarm": BinaryPV.active,
    "Tamper_Alarm": BinaryPV.active,
    "MID_Certification_Valid": BinaryPV.inactive,  # 0 = Invalide
    "Meter_Error": BinaryPV.active,
    "Voltage_Unbalance_Alarm": BinaryPV.active,
    "Current_Unbalance_Alarm": BinaryPV.active,
    "Reverse_Phase_Sequence": BinaryPV.active,
}
#: index of a transition in event-time-stamps, acked-transitions, event-enable, priority, ack-required
OFFNORMAL, FAULT, NORMAL = 0, 1, 2
#: event summaries per GetEventInformation answer (the client asks again with the last one it received)
EVENT_INFO_PAGE = 20
#: confirmed event notifications: seconds to wait for the recipient's acknowledgement
CONFIRM_TIMEOUT = 10.0
#: the gateway's own alarm objects are evaluated this long after start (the journal opens meanwhile)
GATEWAY_GRACE = 5.0

#: ASHRAE 135 clause 21 BACnetServicesSupported bits of the services this module executes or initiates
SERVICES = {
    "acknowledgeAlarm": 0,
    "confirmedEventNotification": 2,
    "getAlarmSummary": 3,
    "getEventInformation": 39,
    "unconfirmedEventNotification": 29,
}
#: the confirmed requests this module answers
REQUESTS = (AcknowledgeAlarmRequest, GetEventInformationRequest, GetAlarmSummaryRequest)


def transition_index(state: Any) -> int:
    """0 (to-offnormal), 1 (to-fault) or 2 (to-normal) for an event state."""
    state = EventState(state)
    if state == EventState.normal:
        return NORMAL
    if state == EventState.fault:
        return FAULT
    return OFFNORMAL


def _bits(names: list[str]) -> EventTransitionBits:
    return EventTransitionBits([int(t in names) for t in TRANSITIONS])


def _unspecified() -> TimeStamp:
    return TimeStamp(dateTime=DateTime(date=Date((255, 255, 255, 255)), time=Time((255, 255, 255, 255))))


def _ts_key(ts: Any) -> tuple:
    """A comparable form of a TimeStamp (hundredths and day of week ignored)."""
    choice = getattr(ts, "_choice", None)
    if choice == "dateTime":
        d, t = ts.dateTime.date, ts.dateTime.time
        return ("dt", tuple(d)[:3], tuple(t)[:3])
    if choice == "time":
        return ("t", tuple(ts.time)[:3])
    if choice == "sequenceNumber":
        return ("n", int(ts.sequenceNumber))
    return ("?",)


# -- objects --------------------------------------------------------------------------------------------------
class GwNotificationClass(_LocalObject, _NotificationClassObject):
    """A Notification Class object: priorities, ack-required and recipient list from the configuration (read-only)."""


def notification_class_objects(events: BacnetEventsSection) -> list[GwNotificationClass]:
    """The Notification Class objects of a device, one per configured class."""
    out = []
    for nc in events.notification_classes:
        dests = []
        for r in nc.recipients:
            if r.device is not None:
                rec = Recipient(device=("device", r.device))
            else:
                host, port = parse_address(r.address)
                mac = bytes(int(x) for x in host.split(".")) + port.to_bytes(2, "big")
                rec = Recipient(address=DeviceAddress(networkNumber=0, macAddress=mac))
            dests.append(
                Destination(
                    validDays=DaysOfWeek([int(d in r.days) for d in DAYS]),
                    fromTime=Time((*parse_time(r.from_time), 0)),
                    toTime=Time((*parse_time(r.to_time), 99)),
                    recipient=rec,
                    processIdentifier=r.process_id,
                    issueConfirmedNotifications=r.confirmed,
                    transitions=_bits(list(r.transitions)),
                )
            )
        obj = GwNotificationClass(
            objectIdentifier=("notification-class", nc.number),
            objectName=nc.name or f"NotificationClass-{nc.number}",
            notificationClass=nc.number,
            priority=[nc.priority.offnormal, nc.priority.fault, nc.priority.normal],
            ackRequired=_bits(list(nc.ack_required)),
            recipientList=dests,
        )
        obj._gw_config = nc
        out.append(obj)
    return out


def limits_of(events: BacnetEventsSection, meter: Any, point: str) -> BacnetLimit | None:
    """The limits of a meter's analog point: the meter's own (bacnet_limits), else the events defaults."""
    return meter.bacnet_limits.get(point) or events.limits.get(point)


def event_properties(events: BacnetEventsSection, meter: Any, point: str, object_type: str) -> dict[str, Any] | None:
    """The intrinsic-reporting properties of one object (None: the object does not report events)."""
    if not events.enabled:
        return None
    common: dict[str, Any] = {
        "eventEnable": EventTransitionBits([1, 1, 1]),
        "ackedTransitions": EventTransitionBits([1, 1, 1]),
        "notifyType": NotifyType(events.notify_type),
        "eventTimeStamps": [_unspecified(), _unspecified(), _unspecified()],
        "eventDetectionEnable": True,
    }
    if object_type == "gateway-alarm":  # the gateway's own alarm Binary Input (journal): active is the alarm
        return common | {"notificationClass": events.alarm_class, "alarmValue": 1, "timeDelay": events.time_delay}
    if object_type == "binary-input" and point in ALARM_VALUES:
        return common | {
            "notificationClass": events.alarm_class,
            "alarmValue": ALARM_VALUES[point],
            "timeDelay": events.time_delay,
        }
    if object_type in ("analog-input", "analog-value"):
        lim = limits_of(events, meter, point)
        if lim is None:
            return None
        return common | {
            "notificationClass": lim.notification_class if lim.notification_class is not None else events.limit_class,
            "highLimit": lim.high if lim.high is not None else 0.0,
            "lowLimit": lim.low if lim.low is not None else 0.0,
            "deadband": lim.deadband,
            "limitEnable": LimitEnable([int(lim.low is not None), int(lim.high is not None)]),
            "timeDelay": lim.time_delay,
            "timeDelayNormal": lim.time_delay_normal if lim.time_delay_normal is not None else lim.time_delay,
        }
    return None


class _NoFaultAlgorithm:
    """Stands for the fault algorithm bacpypes3 consults on a change from one fault to another (it has none)."""

    pCurrentReliability = None
    evaluated_reliability = None


class _GatewayEventAlgorithm:
    """Mixin over a bacpypes3 event algorithm: reliability tracked here, notifications through the EventReporting."""

    def __init__(self, monitoring_object, monitored_object) -> None:
        super().__init__(monitoring_object, monitored_object)  # type: ignore[call-arg]
        self.fault_algorithm = _NoFaultAlgorithm()
        self._gw_rel = Reliability.noFaultDetected

    def _execute(self) -> None:
        obj = self.monitored_object  # type: ignore[attr-defined]
        reporting: EventReporting | None = getattr(obj, "_gw_events", None)
        try:
            if reporting is None or not reporting.ready(obj):
                self._execute_handle = None
                self._what_changed = {}
                return
            rel = obj.reliability
            self._what_changed.pop("pCurrentReliability", None)
            if rel != self._gw_rel:
                self._what_changed["pCurrentReliability"] = (self._gw_rel, rel)
                self._gw_rel = rel
            super()._execute()  # type: ignore[misc]
        except Exception as exc:  # never a stack trace from a callback, never stop the device
            self._execute_handle = None
            self._what_changed = {}
            reporting_log_once(f"eval:{obj.objectName}", "BACnet events: %s not evaluated: %r", obj.objectName, exc)

    async def send_notifications(self, notification_parameters: dict[str, Any]) -> None:
        obj = self.monitored_object  # type: ignore[attr-defined]
        reporting: EventReporting | None = getattr(obj, "_gw_events", None)
        if reporting is None:
            return
        try:
            await reporting.transition(obj, notification_parameters)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a task of the library: never a stack trace, never a lost device
            reporting_log_once(f"send:{obj.objectName}", "BACnet events: %s not notified: %r", obj.objectName, exc)


class GwChangeOfState(_GatewayEventAlgorithm, ChangeOfStateEventAlgorithm):
    """CHANGE_OF_STATE on a binary alarm point."""


class GwOutOfRange(_GatewayEventAlgorithm, OutOfRangeEventAlgorithm):
    """OUT_OF_RANGE on an analog point with limits."""

    def execute(self) -> None:
        """The library's algorithm, with no limit check while present-value is not a number yet."""
        if self.pMonitoredValue is None:
            return
        super().execute()


_LOGGED: set[str] = set()


def reporting_log_once(key: str, msg: str, *args: Any) -> None:
    """Log an error once per key (1000 keys at most)."""
    if key in _LOGGED or len(_LOGGED) >= 1000:
        return
    _LOGGED.add(key)
    log.error(msg, *args)


_IR_CLASSES: dict[type, type] = {}
_IR_REQUIRED = ("eventEnable", "ackedTransitions", "notifyType", "eventTimeStamps", "eventDetectionEnable")


def reporting_class(base: type) -> type:
    """The intrinsic-reporting variant of a point class (binary input: CHANGE_OF_STATE; analog: OUT_OF_RANGE)."""
    cls = _IR_CLASSES.get(base)
    if cls is not None:
        return cls
    from bacpypes3.object import BinaryInputObject

    binary = issubclass(base, BinaryInputObject)
    algorithm = GwChangeOfState if binary else GwOutOfRange
    extra = (
        ("timeDelay", "notificationClass", "alarmValue")
        if binary
        else ("timeDelay", "notificationClass", "highLimit", "lowLimit", "deadband", "limitEnable")
    )

    def __init__(self, **kwargs: Any) -> None:
        base.__init__(self, **kwargs)
        self._event_algorithm = algorithm(None, self)

    name = base.__name__ + "IR"
    ns = {"__init__": __init__, "_required": (*extra, *_IR_REQUIRED), "__module__": __name__, "__qualname__": name}
    cls = type(base)(name, (base,), ns)
    _IR_CLASSES[base] = cls
    return cls


# -- the reporting side of the device -------------------------------------------------------------------------
class EventReporting:
    """Notification classes, transitions (log, metrics, notifications) and the alarm services of one device."""

    def __init__(self, events: BacnetEventsSection, zone: Any, table: Any) -> None:
        self.cfg = events
        self.zone = zone
        self.table = table
        self.enabled = events.enabled
        #: notification class objects by number
        self.classes: dict[int, GwNotificationClass] = {}
        #: objects with intrinsic reporting, by object identifier
        self.objects: dict[Any, Any] = {}
        self.app: Any = None
        self.transitions: Counter[tuple[str, str]] = Counter()
        self.notifications: Counter[tuple[str, str]] = Counter()  # (kind, outcome)
        self._tasks: set[asyncio.Task] = set()
        self._logged_recipients: set[str] = set()
        self._fault_batch: dict[tuple[str, str, str], list[str]] = {}
        self._started = 0.0

    # -- objects --
    def class_objects(self) -> list[GwNotificationClass]:
        """The Notification Class objects to add to the device (none when reporting is off)."""
        if not self.enabled:
            return []
        objs = notification_class_objects(self.cfg)
        self.classes = {int(o.notificationClass): o for o in objs}
        return objs

    def enroll(self, spec: Any, base: type, meter: Any) -> tuple[type, dict[str, Any]]:
        """The class and extra properties of a point object (unchanged when it does not report events)."""
        props = event_properties(self.cfg, meter, spec.point.name, spec.object_type) if meter is not None else None
        if props is None:
            return base, {}
        return reporting_class(base), props

    def created(self, obj: Any, spec: Any) -> None:
        """Register a new object with intrinsic reporting (and link its notification class)."""
        if getattr(obj, "_event_algorithm", None) is None:
            return
        obj._gw_events = self
        obj._gw_meter = spec.meter_id
        obj._gw_point = spec.point.name
        obj._notification_class_object = self.classes.get(int(obj.notificationClass))
        self.objects[obj.objectIdentifier] = obj
        if self.app is not None:  # added after start (reload): evaluate its current state once
            asyncio.get_running_loop().call_soon(obj._event_algorithm._execute)

    def enroll_gateway(self, base: type) -> tuple[type, dict[str, Any]]:
        """The class and extra properties of one of the gateway's own alarm Binary Inputs (the journal alarm)."""
        props = event_properties(self.cfg, None, "", "gateway-alarm")
        return (base, {}) if props is None else (reporting_class(base), props)

    def created_gateway(self, obj: Any) -> None:
        """Register a gateway alarm object (no meter behind it: evaluated from the start)."""
        if getattr(obj, "_event_algorithm", None) is None:
            return
        obj._gw_events = self
        obj._gw_meter = "gateway"
        obj._gw_point = None
        obj._notification_class_object = self.classes.get(int(obj.notificationClass))
        self.objects[obj.objectIdentifier] = obj

    @staticmethod
    def unchanged(obj: Any, props: dict[str, Any]) -> bool:
        """Whether an object's event configuration (not its event state) equals `props`."""
        for key, want in props.items():
            if key in ("eventTimeStamps", "ackedTransitions"):
                continue
            have = getattr(obj, key, None)
            if key in ("eventEnable", "limitEnable"):
                have, want = list(have or ()), list(want)
            elif isinstance(want, float):
                have = float(have) if have is not None else None
            if have != want:
                return False
        return True

    def deleted(self, obj: Any) -> None:
        """Forget an object removed from the device (reload)."""
        algo = getattr(obj, "_event_algorithm", None)
        if algo is None or self.objects.pop(obj.objectIdentifier, None) is None:
            return
        with contextlib.suppress(Exception):
            if algo._transition_timeout_handle is not None:
                algo._transition_timeout_handle.cancel()
            algo.unbind()

    def start(self, app: Any) -> None:
        """The application exists: evaluate every object once (an alarm present at start-up is reported)."""
        self.app = app
        loop = asyncio.get_running_loop()
        self._started = loop.time()
        for obj in self.objects.values():
            if obj._gw_point is None:
                loop.call_later(GATEWAY_GRACE, obj._event_algorithm._execute)
            else:
                loop.call_soon(obj._event_algorithm._execute)
        if self.enabled:
            log.info(
                "BACnet events: %d objects with intrinsic reporting, notification classes %s",
                len(self.objects),
                ", ".join(str(n) for n in self.classes) or "none",
            )

    async def stop(self) -> None:
        """Cancel delayed transitions and notifications in flight."""
        for obj in list(self.objects.values()):
            self.deleted(obj)
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        self.app = None

    def ready(self, obj: Any) -> bool:
        """Whether an object's point has been read at least once (start-up values are not evaluated)."""
        if self.app is None:
            return False
        if obj._gw_point is None:  # a gateway object: evaluated once the gateway had time to start
            return asyncio.get_running_loop().time() - self._started >= GATEWAY_GRACE - 0.01
        try:
            return self.table.get(obj._gw_meter, obj._gw_point).quality.value != "unknown"
        except KeyError:
            return False

    # -- transitions --
    def _now(self) -> TimeStamp:
        d = datetime.now(self.zone)
        return TimeStamp(
            dateTime=DateTime(
                date=Date((d.year - 1900, d.month, d.day, d.isoweekday())),
                time=Time((d.hour, d.minute, d.second, d.microsecond // 10000)),
            )
        )

    async def transition(self, obj: Any, params: dict[str, Any]) -> None:
        """One event-state transition: stamps, acked-transitions, COV of the status flags, log, metrics, notify."""
        to_state, from_state = EventState(params["toState"]), EventState(params["fromState"])
        idx = transition_index(to_state)
        stamp = self._now()
        stamps = list(obj.eventTimeStamps)
        stamps[idx] = stamp
        obj.eventTimeStamps = stamps
        nc = self.classes.get(int(obj.notificationClass))
        ack_required = bool(nc is not None and nc.ackRequired[idx])
        enabled = bool(obj.eventEnable[idx])
        acked = list(obj.ackedTransitions)
        acked[idx] = 0 if (enabled and ack_required) else 1
        obj.ackedTransitions = EventTransitionBits(acked)
        # status-flags in-alarm follows event-state; assigning the previous flags makes bacpypes3 send the COV
        flags = list(obj.statusFlags)
        flags[0] = int(from_state != EventState.normal)
        with contextlib.suppress(Exception):
            obj.statusFlags = StatusFlags(flags)
        meter = obj._gw_meter
        self.transitions[(meter, str(to_state))] += 1
        what = self._describe(obj, params)
        if params.get("eventType") == EventType.changeOfReliability:
            self._batch_log(meter, from_state, to_state, obj)  # a meter's outage: one line, not one per object
        else:
            for key in [k for k in self._fault_batch if k[0] == meter]:
                self._flush_batch(key)  # the log keeps the order of the transitions
            line = "BACnet event: %s %s -> %s (%s)%s"
            args = (obj.objectName, from_state, to_state, what, "" if enabled else ", not notified (event-enable)")
            (log.info if to_state == EventState.normal else log.warning)(line, *args)
        if not enabled or nc is None:
            return
        params["timeStamp"] = stamp
        params["priority"] = int(nc.priority[idx])
        params["ackRequired"] = ack_required
        params["messageText"] = f"{obj.objectName}: {what}"
        params["notificationClass"] = int(obj.notificationClass)
        await self.notify(nc, params, to_state)

    def _batch_log(self, meter: str, from_state: Any, to_state: Any, obj: Any) -> None:
        """Gather the fault transitions of a meter's objects (they come together) into one log line."""
        change = "to fault" if to_state == EventState.fault else "out of fault"
        key = (meter, change, str(obj.reliability))
        names = self._fault_batch.setdefault(key, [])
        names.append(obj.objectName.split(".", 1)[-1])
        if len(names) == 1:
            asyncio.get_running_loop().call_later(0.2, self._flush_batch, key)

    def _flush_batch(self, key: tuple[str, str, str]) -> None:
        names = self._fault_batch.pop(key, [])
        meter, change, reliability = key
        level = logging.WARNING if change == "to fault" else logging.INFO
        log.log(
            level,
            "BACnet event: meter %s: %d objects %s (reliability %s): %s",
            meter,
            len(names),
            change,
            reliability,
            ", ".join(sorted(names)),
        )

    @staticmethod
    def _describe(obj: Any, params: dict[str, Any]) -> str:
        if params.get("eventType") == EventType.changeOfReliability:
            return f"reliability {obj.reliability}"
        if obj._gw_point in ALARM_VALUES or obj._gw_point is None:
            return f"{obj.objectName.split('.', 1)[-1]} {obj.presentValue}"
        return f"present-value {float(obj.presentValue):g}"

    async def notify(self, nc: GwNotificationClass, params: dict[str, Any], to_state: Any) -> None:
        """Send a notification to each recipient of the class whose days, times and transitions match."""
        idx = transition_index(to_state) if to_state is not None else None
        now = datetime.now(self.zone)
        today = DAYS[now.weekday()]
        clock = (now.hour, now.minute, now.second)
        sends = []
        for r in nc._gw_config.recipients:
            if today not in r.days or not parse_time(r.from_time) <= clock <= parse_time(r.to_time):
                continue
            if idx is not None and TRANSITIONS[idx] not in r.transitions:
                continue
            sends.append(self._send(r, params))
        if sends:
            await asyncio.gather(*sends)

    async def _send(self, r: Any, params: dict[str, Any]) -> None:
        kind = "confirmed" if r.confirmed else "unconfirmed"
        who = f"device {r.device}" if r.device is not None else r.address
        app = self.app
        if app is None:
            return
        try:
            if r.device is not None:
                dest = await self._device_address(r.device)
                if dest is None:
                    self._recipient_problem(who, "does not answer Who-Is")
                    self.notifications[(kind, "no-route")] += 1
                    return
            else:
                host, port = parse_address(r.address)
                dest = Address(f"{host}:{port}")
            cls = ConfirmedEventNotificationRequest if r.confirmed else UnconfirmedEventNotificationRequest
            req = cls(processIdentifier=r.process_id, **params)
            req.pduDestination = dest
            req.encode()  # an encoding problem raises here, not in the library's sending task
            result = app.request(req)
            if r.confirmed:
                await asyncio.wait_for(result, CONFIRM_TIMEOUT)
            self.notifications[(kind, "sent")] += 1
            self._logged_recipients.discard(who)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.notifications[(kind, "failed")] += 1
            self._recipient_problem(who, f"notification failed: {exc!r}")

    def _recipient_problem(self, who: str, what: str) -> None:
        """Log a recipient's problem once until a notification reaches it again."""
        if who in self._logged_recipients or len(self._logged_recipients) >= 1000:
            return
        self._logged_recipients.add(who)
        log.warning("BACnet events: recipient %s %s (logged again after it recovers)", who, what)

    async def _device_address(self, instance: int) -> Any:
        info = await self.app.device_info_cache.get_device_info(instance)
        if info is not None and getattr(info, "device_address", None) is not None:
            return info.device_address
        i_ams = await self.app.who_is(instance, instance, timeout=3)
        return i_ams[0].pduSource if i_ams else None

    def device_recipients(self) -> set[int]:
        """Device instances named as recipients in the notification classes."""
        return {r.device for nc in self.cfg.notification_classes for r in nc.recipients if r.device is not None}

    def identities(self) -> list[tuple[str, int, str]]:
        """(object type, instance, name) of the notification class objects (for database-revision)."""
        if not self.enabled:
            return []
        return [
            ("notification-class", nc.number, nc.name or f"NotificationClass-{nc.number}")
            for nc in self.cfg.notification_classes
        ]

    # -- services --
    async def acknowledge(self, apdu: AcknowledgeAlarmRequest, source: str) -> None:
        """AcknowledgeAlarm: mark the transition acknowledged (ExecutionError when the request does not match)."""
        obj = self.objects.get(apdu.eventObjectIdentifier)
        if obj is None:
            raise ExecutionError(errorClass="object", errorCode="unknownObject")
        idx = transition_index(apdu.eventStateAcknowledged)
        if _ts_key(apdu.timeStamp) != _ts_key(obj.eventTimeStamps[idx]):
            raise ExecutionError(errorClass="services", errorCode="invalidTimeStamp")
        acked = list(obj.ackedTransitions)
        if acked[idx]:
            return  # already acknowledged: success, no second acknowledgement notification
        acked[idx] = 1
        obj.ackedTransitions = EventTransitionBits(acked)
        state = EventState(apdu.eventStateAcknowledged)
        log.info(
            "BACnet event: %s %s acknowledged by %s (%s)", obj.objectName, state, source, apdu.acknowledgmentSource
        )
        nc = self.classes.get(int(obj.notificationClass))
        if nc is not None:
            params = {
                "initiatingDeviceIdentifier": self.app.device_object.objectIdentifier,
                "eventObjectIdentifier": obj.objectIdentifier,
                "timeStamp": self._now(),
                "notificationClass": int(obj.notificationClass),
                "priority": int(nc.priority[idx]),
                "eventType": EventType.changeOfReliability if idx == FAULT else obj._event_algorithm.event_type,
                "notifyType": NotifyType.ackNotification,
                "toState": state,
                "messageText": f"{obj.objectName}: {state} acknowledged ({apdu.acknowledgmentSource})",
            }
            task = asyncio.create_task(self.notify(nc, params, state))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _listed(self) -> list[Any]:
        """Objects not normal or with an unacknowledged transition, in object-identifier order."""
        out = [
            o
            for o in self.objects.values()
            if o.eventState != EventState.normal or not all(int(b) for b in o.ackedTransitions)
        ]
        return sorted(out, key=lambda o: (int(o.objectIdentifier[0]), int(o.objectIdentifier[1])))

    def event_information(self, after: Any) -> tuple[list[GetEventInformationEventSummary], bool]:
        """GetEventInformation: the summaries of the listed objects after `after` (a page), and whether more follow."""
        listed = self._listed()
        if after is not None:
            key = (int(after[0]), int(after[1]))
            listed = [o for o in listed if (int(o.objectIdentifier[0]), int(o.objectIdentifier[1])) > key]
        page = listed[:EVENT_INFO_PAGE]
        summaries = []
        for o in page:
            nc = self.classes.get(int(o.notificationClass))
            prios = [int(p) for p in nc.priority] if nc is not None else [255, 255, 255]
            summaries.append(
                GetEventInformationEventSummary(
                    objectIdentifier=o.objectIdentifier,
                    eventState=o.eventState,
                    acknowledgedTransitions=o.ackedTransitions,
                    eventTimeStamps=list(o.eventTimeStamps),
                    notifyType=o.notifyType,
                    eventEnable=o.eventEnable,
                    eventPriorities=prios,
                )
            )
        return summaries, len(listed) > len(page)

    def alarm_summary(self) -> list[GetAlarmSummaryAlarmSummary]:
        """GetAlarmSummary: objects in an alarm state whose notify-type is alarm."""
        return [
            GetAlarmSummaryAlarmSummary(
                objectIdentifier=o.objectIdentifier, alarmState=o.eventState, acknowledgedTransitions=o.ackedTransitions
            )
            for o in self._listed()
            if o.eventState != EventState.normal and o.notifyType == NotifyType.alarm
        ]

    # -- metrics --
    def summary(self) -> dict[str, dict[str, int]]:
        """Per meter: objects in alarm (event-state not normal) and objects with an unacknowledged transition."""
        out: dict[str, dict[str, int]] = {}
        for o in self.objects.values():
            m = out.setdefault(o._gw_meter, {"active": 0, "unacked": 0})
            m["active"] += int(o.eventState != EventState.normal)
            m["unacked"] += int(not all(int(b) for b in o.ackedTransitions))
        return out


class EventServices:
    """Application mixin: AcknowledgeAlarm, GetEventInformation and GetAlarmSummary answered by the EventReporting."""

    def _gw_events(self) -> EventReporting:
        server = getattr(self, "gw_server", None)
        reporting = getattr(server, "events", None)
        if reporting is None or not reporting.enabled:
            raise ExecutionError(errorClass="services", errorCode="serviceRequestDenied")
        return reporting

    async def do_IAmRequest(self, apdu) -> None:
        """I-Am: also binds a device recipient of a notification class that announces itself (unsolicited I-Am)."""
        await super().do_IAmRequest(apdu)  # type: ignore[misc]
        reporting = getattr(getattr(self, "gw_server", None), "events", None)
        oid = apdu.iAmDeviceIdentifier
        if reporting is not None and reporting.enabled and oid is not None and oid[1] in reporting.device_recipients():
            await self.device_info_cache.set_device_info(apdu)  # type: ignore[attr-defined]

    async def do_AcknowledgeAlarmRequest(self, apdu: AcknowledgeAlarmRequest) -> None:
        """AcknowledgeAlarm (ASHRAE 135 clause 13.5)."""
        source = str(getattr(apdu.pduSource, "addrTuple", (apdu.pduSource,))[0])
        await self._gw_events().acknowledge(apdu, source)
        await self.response(SimpleAckPDU(context=apdu))  # type: ignore[attr-defined]

    async def do_GetEventInformationRequest(self, apdu: GetEventInformationRequest) -> None:
        """GetEventInformation (clause 13.12)."""
        summaries, more = self._gw_events().event_information(apdu.lastReceivedObjectIdentifier)
        ack = GetEventInformationACK(listOfEventSummaries=summaries, moreEvents=more, context=apdu)
        await self.response(ack)  # type: ignore[attr-defined]

    async def do_GetAlarmSummaryRequest(self, apdu: GetAlarmSummaryRequest) -> None:
        """GetAlarmSummary (clause 13.10)."""
        ack = GetAlarmSummaryACK(listOfAlarmSummaries=self._gw_events().alarm_summary(), context=apdu)
        await self.response(ack)  # type: ignore[attr-defined]


def event_metrics(reporting: EventReporting | None, prefix: str) -> list[Any]:
    """Prometheus families: alarms active and unacknowledged per meter, transitions and notifications counted."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    if reporting is None or not reporting.enabled:
        return []
    active = GaugeMetricFamily(
        prefix + "bacnet_alarms_active", "BACnet objects whose event-state is not normal", labels=["meter"]
    )
    unacked = GaugeMetricFamily(
        prefix + "bacnet_alarms_unacked", "BACnet objects with a transition not yet acknowledged", labels=["meter"]
    )
    for meter, counts in sorted(reporting.summary().items()):
        active.add_metric([meter], counts["active"])
        unacked.add_metric([meter], counts["unacked"])
    trans = CounterMetricFamily(
        prefix + "bacnet_event_transitions", "BACnet event-state transitions", labels=["meter", "to_state"]
    )
    for (meter, state), n in sorted(reporting.transitions.items()):
        trans.add_metric([meter, state], n)
    sent = CounterMetricFamily(
        prefix + "bacnet_event_notifications",
        "BACnet event notifications by kind and outcome",
        labels=["kind", "outcome"],
    )
    for (kind, outcome), n in sorted(reporting.notifications.items()):
        sent.add_metric([kind, outcome], n)
    return [active, unacked, trans, sent]
