"""The small interface every upstream server implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..ports import ServerPorts
    from ..writes import WriteService


class ServerStartError(RuntimeError):
    """An upstream server could not start (port in use, bad bind address...)."""


class Server(ABC):
    """An upstream server built from the gateway's narrow interfaces (ports.ServerPorts); answers from the point
    table only."""

    name: str = "server"

    def __init__(self, ports: ServerPorts) -> None:
        self.ports = ports
        self.facts = ports.facts  # the running configuration (swapped in place on reload)
        self.table = ports.table

    def _writes(self) -> WriteService:
        """The current write service (the gateway keeps one while any upstream server runs)."""
        ws = self.ports.writes()
        if ws is None:
            raise RuntimeError("the write service is not running")
        return ws

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
        """Reload: these meters were added, removed or changed (self.facts.config is the new one already).

        Return True when the server now serves them without a restart; False (the default) makes the gateway
        restart this server.
        """
        return False
