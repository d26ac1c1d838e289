"""The small interface every upstream server implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..app import Gateway


class ServerStartError(RuntimeError):
    """An upstream server could not start (port in use, bad bind address...)."""


class Server(ABC):
    """An upstream server built from the running Gateway; answers from gateway.table only."""

    name: str = "server"

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    @abstractmethod
    async def start(self) -> None:
        """Bind and start serving; raise ServerStartError with a clear message on failure."""

    @abstractmethod
    async def stop(self) -> None:
        """Stop accepting, finish in-flight work, release sockets; bounded in time and idempotent."""

    def address(self) -> tuple[str, int] | None:
        """The (host, port) actually bound, once started (port 0 in config resolves here)."""
        return None

    def meters_changed(self, meter_ids: set[str]) -> bool:
        """Reload: these meters were added, removed or changed (gateway.config is the new one already).

        Return True when the server now serves them without a restart; False (the default) makes the gateway
        restart this server.
        """
        return False
