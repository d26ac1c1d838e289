"""Small asyncio helpers.

Python 3.11's asyncio.wait_for loses a cancellation that arrives in the same step as its inner future completing
(a poll task stopped just as its wake-up event is set keeps running), while asyncio.timeout() loses a result that
completes in the same step as its timer (a meter's reply handled just as the timeout fires). So: a task that only
waits for a wake-up waits with asyncio.timeout(); a request whose answer must win keeps wait_for; and our tasks are
stopped with cancel_and_wait(), which cancels again, within a bound, if a cancellation was swallowed.
"""

from __future__ import annotations

import asyncio
import contextlib


async def cancel_and_wait(task: asyncio.Task, timeout: float = 5.0) -> bool:
    """Cancel a task and wait for its end, cancelling again if a cancellation was swallowed; True once it ended."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not task.done() and loop.time() < end:
        task.cancel()
        await asyncio.wait({task}, timeout=min(0.1, max(0.0, end - loop.time())))
    if task.done() and not task.cancelled():
        with contextlib.suppress(BaseException):
            task.exception()  # retrieved: an error on the way out was already logged by the task itself
    return task.done()
