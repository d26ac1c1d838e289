"""COV subscriptions for the BACnet device: limits, and a bound on confirmed notifications to each subscriber.

bacpypes3 0.0.110 sends every confirmed COV notification at once and picks each one an invoke ID with a loop that
never ends once the 256 IDs of one peer are all in use: a subscriber that never acknowledges (300 confirmed
subscriptions from one socket, or a head-end with more than 256 subscriptions that goes offline) locks the event loop
at 100 % CPU for good. This mixin (put before `Application` in the bases) keeps at most `max_outstanding` confirmed
notifications in flight per subscriber, coalesces the rest (the newest value per subscription waits, as COV reports
state, not events), leaves retries and time-outs to the client transaction (the Device object's apdu-timeout and
number-of-APDU-retries, ASHRAE 135 clause 5.4.4), and cancels every subscription of a subscriber whose
notifications went unanswered `drop_after` times in a row (logged once). `request` never spins: a peer with all 256
invoke IDs in use gets an immediate abort instead.

SubscribeCOV beyond the configured limits (per device, per client address) answers Result(-) with
error class resources, error code no-space-to-add-list-element (ASHRAE 135 clause 13.14.1.3.2).
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from bacpypes3.apdu import (
    AbortPDU,
    AbortReason,
    ConfirmedCOVNotificationRequest,
    ConfirmedRequestPDU,
)
from bacpypes3.errors import ExecutionError

log = logging.getLogger(__name__)

INVOKE_IDS = 256  # one octet per peer (ASHRAE 135 clause 20.1.2.3)
_MAX_LOGGED = 1000  # distinct peers remembered for "log once"


@dataclass
class CovLimits:
    """Limits on COV subscriptions and on notifications in flight."""

    max_subscriptions: int = 1000
    max_subscriptions_per_client: int = 500
    max_outstanding: int = 8
    drop_after: int = 3


@dataclass
class _Peer:
    """Confirmed notifications to one subscriber address."""

    outstanding: int = 0
    failures: int = 0
    dropped: bool = False
    pending: OrderedDict[tuple[int, Any], tuple[Any, Any]] = field(default_factory=OrderedDict)


class CovGuard:
    """Application mixin: COV subscription limits and bounded confirmed notifications (see the module doc)."""

    cov_limits: CovLimits = CovLimits()

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._cov_peers: dict[Any, _Peer] = {}
        self._cov_dropped_logged: set[str] = set()
        self._cov_refused_logged: set[str] = set()
        self.cov_dropped_subscribers = 0
        self.cov_refused_subscriptions = 0
        self.cov_coalesced_notifications = 0

    # -- invoke IDs ----------------------------------------------------------------------------------------
    def request(self, apdu):  # type: ignore[override]
        """Send a request; a confirmed one to a peer with every invoke ID in use fails at once (no spin)."""
        if isinstance(apdu, ConfirmedRequestPDU):
            in_use = self._requests.get(apdu.pduDestination)  # type: ignore[attr-defined]
            if in_use is not None and len(in_use) >= INVOKE_IDS:
                future = asyncio.get_running_loop().create_future()
                future.set_exception(AbortPDU(False, 0, AbortReason.other))
                return future
        return super().request(apdu)  # type: ignore[misc]

    # -- subscriptions -------------------------------------------------------------------------------------
    def cov_subscriptions(self) -> list[Any]:
        """Every active subscription (bacpypes3 Subscription objects)."""
        return [cov for det in self._cov_detections.values() for cov in det.cov_subscriptions]  # type: ignore[attr-defined]

    async def do_SubscribeCOVRequest(self, apdu) -> None:
        """Refuse a new subscription beyond the limits, then let bacpypes3 handle it."""
        cancel = apdu.issueConfirmedNotifications is None and apdu.lifetime is None
        if not cancel:
            subs = self.cov_subscriptions()
            client = apdu.pduSource
            key = (apdu.subscriberProcessIdentifier, apdu.monitoredObjectIdentifier)
            mine = [c for c in subs if c.client_addr == client]
            renewal = any((c.proc_id, c.obj_id) == key for c in mine)
            limits = self.cov_limits
            if not renewal and (
                len(subs) >= limits.max_subscriptions or len(mine) >= limits.max_subscriptions_per_client
            ):
                self.cov_refused_subscriptions += 1
                peer = str(client)
                if peer not in self._cov_refused_logged and len(self._cov_refused_logged) < _MAX_LOGGED:
                    self._cov_refused_logged.add(peer)
                    log.warning(
                        "BACnet: SubscribeCOV from %s refused: %d subscriptions (limit %d), %d from this client "
                        "(limit %d); further refusals are counted, not logged",
                        peer,
                        len(subs),
                        limits.max_subscriptions,
                        len(mine),
                        limits.max_subscriptions_per_client,
                    )
                raise ExecutionError(errorClass="resources", errorCode="noSpaceToAddListElement")
            peer_state = self._cov_peers.get(client)
            if peer_state is not None:  # the subscriber is talking to us again
                peer_state.failures = 0
                peer_state.dropped = False
        await super().do_SubscribeCOVRequest(apdu)  # type: ignore[misc]

    # -- notifications -------------------------------------------------------------------------------------
    def cov_notification(self, cov, apdu) -> None:
        """Send a notification; a confirmed one waits (coalesced) while the subscriber has too many in flight."""
        if not isinstance(apdu, ConfirmedCOVNotificationRequest):
            self.request(apdu)
            return
        peer = self._cov_peers.setdefault(cov.client_addr, _Peer())
        if peer.outstanding >= self.cov_limits.max_outstanding:
            key = (cov.proc_id, cov.obj_id)
            if key in peer.pending:
                self.cov_coalesced_notifications += 1
            peer.pending[key] = (cov, apdu)
            return
        self._cov_send(peer, cov, apdu)

    def _cov_send(self, peer: _Peer, cov, apdu) -> None:
        if cov.cancel_handle is not None:  # time remaining as of sending, not as of queuing
            left = int(cov.cancel_handle.when() - asyncio.get_running_loop().time())
            apdu.timeRemaining = max(1, left)
        apdu.apduInvokeID = None  # a fresh invoke ID for a queued request
        peer.outstanding += 1
        future = self.request(apdu)
        future.add_done_callback(lambda f: self._cov_done(cov.client_addr, f))

    def _cov_done(self, address, future: asyncio.Future) -> None:
        peer = self._cov_peers.get(address)
        if peer is None:
            return
        peer.outstanding -= 1
        if peer.dropped:
            if peer.outstanding == 0:
                del self._cov_peers[address]
            return
        exc = None if future.cancelled() else future.exception()
        if future.cancelled() or (isinstance(exc, AbortPDU) and not exc.apduSrv):
            peer.failures += 1  # no answer after the retries (or no invoke ID): the subscriber is silent
        else:
            peer.failures = 0  # an ack, or an error/reject/abort from the subscriber: it is alive
        if peer.failures >= self.cov_limits.drop_after:
            self._cov_drop(address, peer)
            return
        while peer.pending and peer.outstanding < self.cov_limits.max_outstanding:
            _key, (cov, apdu) = peer.pending.popitem(last=False)
            if cov.obj_ref is None:
                continue  # cancelled or expired while waiting
            self._cov_send(peer, cov, apdu)
        if peer.outstanding == 0 and not peer.pending:
            del self._cov_peers[address]

    def _cov_drop(self, address, peer: _Peer) -> None:
        """Cancel every subscription of a subscriber that does not acknowledge its notifications."""
        mine = [c for c in self.cov_subscriptions() if c.client_addr == address]
        for cov in mine:
            self.cancel_subscription(cov)  # type: ignore[attr-defined]
        peer.pending.clear()
        peer.dropped = True
        if peer.outstanding == 0:
            self._cov_peers.pop(address, None)
        self.cov_dropped_subscribers += 1
        name = str(address)
        if name not in self._cov_dropped_logged and len(self._cov_dropped_logged) < _MAX_LOGGED:
            self._cov_dropped_logged.add(name)
            log.warning(
                "BACnet: COV subscriber %s left %d confirmed notifications in a row unacknowledged: its %d "
                "subscriptions are cancelled (it may subscribe again)",
                name,
                self.cov_limits.drop_after,
                len(mine),
            )
