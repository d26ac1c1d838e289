"""The master side of a pseudo-terminal pair: simulated serial lines answer here, the gateway opens `port`."""

from __future__ import annotations

import asyncio
import contextlib
import os
import tty

from ..aio import cancel_and_wait


class PtyLine:
    """Bytes written by the gateway arrive in `queue`; `write` answers. Subclasses implement `serve()`."""

    def __init__(self) -> None:
        self.master_fd = self.slave_fd = -1
        self.port = ""
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()
        self._task: asyncio.Task | None = None

    def open_pty(self) -> str:
        """Create the pty pair (raw, 8N1); returns the path the gateway opens as its serial port."""
        self.master_fd, self.slave_fd = os.openpty()
        tty.setraw(self.master_fd)
        tty.setraw(self.slave_fd)
        os.set_blocking(self.master_fd, False)
        self.port = os.ttyname(self.slave_fd)
        return self.port

    async def start(self) -> str:
        """Open the pty if needed and start answering."""
        if self.master_fd < 0:
            self.open_pty()
        asyncio.get_running_loop().add_reader(self.master_fd, self._readable)
        self._task = asyncio.create_task(self.serve(), name=f"sim-{self.port}")
        return self.port

    def _readable(self) -> None:
        try:
            data = os.read(self.master_fd, 4096)
        except OSError:  # nothing to read yet, or the other side closed: wait for the next event
            return
        if data:
            self.queue.put_nowait(data)

    async def serve(self) -> None:
        """Answer the frames arriving in `queue` (provided by the protocol's simulator)."""
        raise NotImplementedError

    def write(self, data: bytes) -> None:
        """Send bytes to the gateway."""
        with contextlib.suppress(OSError):
            os.write(self.master_fd, data)

    async def close(self) -> None:
        """Stop answering and close both ends of the pty."""
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None
        if self.master_fd >= 0:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self.master_fd)
            for fd in (self.master_fd, self.slave_fd):
                with contextlib.suppress(OSError):
                    os.close(fd)
            self.master_fd = self.slave_fd = -1
