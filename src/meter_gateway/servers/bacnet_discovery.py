"""Who-Is and Who-Has routed to the per-meter devices: a bounded, paced answer (no amplification through the router).

A remote-broadcast (DNET = the virtual network) or global-broadcast (DNET 65535) Who-Is that the router forwards to
the virtual network would be answered by every meter device at once: one 12-octet datagram, one I-Am per meter (an
amplification and reflection vector on a building network, and a burst on the BMS side). ASHRAE 135 clause 16.10
leaves the pacing of the answers to the device; this module bounds it in three ways:

- a Who-Is / Who-Has with device-instance range limits reaches only the meter devices in the range (their MAC on the
  virtual network is their device instance), so it costs the matching devices only;
- each source (the requester's IP address as the router wrote it into SNET/SADR, or `net<N>:<mac>` behind another
  router) may send `requests_per_minute` of them that reach every meter device (a burst of that many, then
  refilled evenly); a range-restricted or directed one costs its share (a Who-Is for one device of 250 costs
  1/250), so a head-end binding its devices one by one is not held back; further ones are not delivered, counted,
  and logged once per source;
- the deliveries of accepted requests to the meter devices (each yields at most one I-Am or I-Have) are paced: at
  most `answers_per_second` for all sources together, round robin between sources, so a head-end discovering every
  meter gets every answer, in `devices / answers_per_second` seconds. A repeated request while the answers to the
  same one are still waiting adds nothing (coalesced); at most `max_pending` deliveries wait (beyond that the request
  is dropped, counted, logged once per source).

`classify` reads the NPDU the router puts on the virtual network (ASHRAE 135 clause 6.2) without decoding it fully;
anything it does not recognise as a Who-Is / Who-Has is delivered as before.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

WHO_HAS, WHO_IS = 7, 8  # unconfirmed service choices (ASHRAE 135 clause 21)
#: sources remembered (token buckets); the least recently seen full one is forgotten beyond this
MAX_SOURCES = 4096


@dataclass(frozen=True)
class Discovery:
    """A Who-Is or Who-Has seen on the virtual network: its requester and its device-instance range."""

    service: str  # "Who-Is" or "Who-Has"
    source: str  # the requester as the limits count it
    low: int | None
    high: int | None

    def matches(self, instance: int) -> bool:
        """Whether a device with this instance answers (no range: every device)."""
        if self.low is None or self.high is None:
            return True
        return self.low <= instance <= self.high


def _source(snet: int, sadr: bytes, ip_net: int) -> str:
    """The requester: its IP address when it comes from the router's IP network, else `net<N>:<mac>`."""
    if snet == ip_net and len(sadr) == 6:
        return socket.inet_ntoa(sadr[:4])
    return f"net{snet}:{sadr.hex()}"


def _range(params: bytes) -> tuple[int | None, int | None]:
    """Context tags [0] and [1] (device-instance range limits, unsigned) at the start of the parameters."""
    limits: list[int | None] = [None, None]
    pos = 0
    for number in (0, 1):
        if pos >= len(params):
            break
        tag = params[pos]
        length = tag & 0x07
        if tag >> 4 != number or not tag & 0x08 or not 1 <= length <= 4 or pos + 1 + length > len(params):
            break
        limits[number] = int.from_bytes(params[pos + 1 : pos + 1 + length], "big")
        pos += 1 + length
    return limits[0], limits[1]


def classify(npdu: bytes, ip_net: int) -> Discovery | None:
    """The Who-Is / Who-Has in an NPDU routed onto the virtual network, None for anything else (clause 6.2.2)."""
    try:
        if len(npdu) < 2 or npdu[0] != 0x01:
            return None
        control = npdu[1]
        if control & 0x80:  # a network layer message
            return None
        pos = 2
        if control & 0x20:  # DNET, DLEN, DADR
            pos += 3 + npdu[pos + 2]
        snet, sadr = 0, b""
        if control & 0x08:  # SNET, SLEN, SADR
            snet = int.from_bytes(npdu[pos : pos + 2], "big")
            slen = npdu[pos + 2]
            sadr = npdu[pos + 3 : pos + 3 + slen]
            pos += 3 + slen
        if control & 0x20:  # hop count
            pos += 1
        if pos + 2 > len(npdu) or npdu[pos] >> 4 != 1:  # an unconfirmed request
            return None
        choice = npdu[pos + 1]
        if choice not in (WHO_IS, WHO_HAS):
            return None
        low, high = _range(npdu[pos + 2 :])
    except IndexError:
        return None
    service = "Who-Is" if choice == WHO_IS else "Who-Has"
    return Discovery(service, _source(snet, sadr, ip_net) if control & 0x08 else "the virtual network", low, high)


@dataclass
class _Bucket:
    tokens: float
    at: float


class DiscoveryLimiter:
    """Per-source limit on routed Who-Is / Who-Has and a paced queue of their deliveries (see the module doc)."""

    def __init__(
        self,
        requests_per_minute: int,
        answers_per_second: int,
        max_pending: int,
        note: Callable[[str, str, str], None],
        deliver: Callable[[Any, Any], Awaitable[None]],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.per_minute = requests_per_minute
        self.rate = float(answers_per_second)
        self.max_pending = max_pending
        self.note = note
        self._deliver = deliver
        self.clock = clock
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        #: source -> waiting deliveries (node, pdu, key); the sources served in turn
        self._queues: OrderedDict[str, deque[tuple[Any, Any, tuple]]] = OrderedDict()
        self._waiting: set[tuple] = set()
        self._task: asyncio.Task | None = None
        self._send_tokens = 1.0
        self._send_at = clock()
        #: requests by outcome (accepted, rate-limited, queue-full) and deliveries (answers) made, coalesced
        self.requests: Counter[str] = Counter()
        self.answers = 0
        self.coalesced = 0

    @property
    def pending(self) -> int:
        """Deliveries waiting for their turn."""
        return len(self._waiting)

    def admit(self, source: str, cost: float = 1.0) -> bool:
        """Take `cost` (1: a request reaching every device) from the source's bucket; False when over its limit."""
        now = self.clock()
        bucket = self._buckets.get(source)
        if bucket is None:
            bucket = self._buckets[source] = _Bucket(float(self.per_minute), now)
            if len(self._buckets) > MAX_SOURCES:
                self._buckets.popitem(last=False)
        else:
            bucket.tokens = min(float(self.per_minute), bucket.tokens + (now - bucket.at) * self.per_minute / 60.0)
            bucket.at = now
            self._buckets.move_to_end(source)
        if bucket.tokens < cost - 1e-9:
            return False
        bucket.tokens = max(0.0, bucket.tokens - cost)
        return True

    def submit(self, request: Discovery, pdu: Any, nodes: list[Any], devices: int) -> None:
        """A routed Who-Is / Who-Has for these (matching) nodes of `devices` meter devices: limited per source (at the
        share of the devices it reaches), queued, delivered paced."""
        source = request.source
        if not self.admit(source, min(1.0, max(1, len(nodes)) / max(1, devices))):
            self.requests["rate-limited"] += 1
            self.note(source, f"Who-Is/Who-Has to the meter devices beyond {self.per_minute} a minute", "")
            return
        data = bytes(pdu.pduData)
        new = [(n, (source, n.address, data)) for n in nodes]
        new = [(n, key) for n, key in new if key not in self._waiting]
        self.coalesced += len(nodes) - len(new)
        if len(self._waiting) + len(new) > self.max_pending:
            self.requests["queue-full"] += 1
            self.note(source, f"Who-Is/Who-Has to the meter devices while {self.max_pending} answers wait", "")
            return
        self.requests["accepted"] += 1
        if not new:
            return
        queue = self._queues.setdefault(source, deque())
        for node, key in new:
            queue.append((node, pdu, key))
            self._waiting.add(key)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._drain(), name="bacnet-router-discovery")

    async def _drain(self) -> None:
        """Deliver the waiting requests, one source after the other, at most `rate` a second."""
        burst = max(1.0, self.rate / 10.0)
        while self._queues:
            now = self.clock()
            self._send_tokens = min(burst, self._send_tokens + (now - self._send_at) * self.rate)
            self._send_at = now
            if self._send_tokens < 1.0:
                await asyncio.sleep((1.0 - self._send_tokens) / self.rate)
                continue
            source, queue = next(iter(self._queues.items()))
            node, pdu, key = queue.popleft()
            self._waiting.discard(key)
            if queue:
                self._queues.move_to_end(source)
            else:
                del self._queues[source]
            self._send_tokens -= 1.0
            self.answers += 1
            try:
                await self._deliver(node, pdu)
            except Exception as exc:  # the network's delivery logs its own failures: this is a last guard
                self.note(source, f"Who-Is/Who-Has not delivered ({type(exc).__name__})", f": {exc}")

    def close(self) -> None:
        """Stop delivering; what waits is dropped."""
        if self._task is not None:
            self._task.cancel()
            self._task = None
        self._queues.clear()
        self._waiting.clear()


def discovery_metrics(limiter: DiscoveryLimiter | None, prefix: str) -> list[Any]:
    """Prometheus families: routed Who-Is / Who-Has by outcome, the answers delivered, the answers waiting."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    if limiter is None:
        return []
    requests = CounterMetricFamily(
        prefix + "bacnet_routed_discovery_requests",
        "Who-Is/Who-Has routed to the per-meter devices, by outcome (accepted, rate-limited, queue-full)",
        labels=["outcome"],
    )
    for outcome in ("accepted", "rate-limited", "queue-full"):
        requests.add_metric([outcome], limiter.requests.get(outcome, 0))
    answers = CounterMetricFamily(
        prefix + "bacnet_routed_discovery_deliveries",
        "Who-Is/Who-Has delivered to a meter device (each answered by at most one I-Am/I-Have), paced",
    )
    answers.add_metric([], limiter.answers)
    pending = GaugeMetricFamily(
        prefix + "bacnet_routed_discovery_pending", "Who-Is/Who-Has deliveries to meter devices waiting their turn"
    )
    pending.add_metric([], limiter.pending)
    return [requests, answers, pending]
