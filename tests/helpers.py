"""Helpers shared by the tests (importable as `helpers`: tests/ is on the pytest python path)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable

FAST = "{power: 0.5, voltage: 0.5, energy: 0.5, alarm: 0.5, status: 0.5, config: 5}"


async def wait_for(pred: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Poll a condition until it holds or the timeout passes."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while loop.time() < end:
        if pred():
            return True
        await asyncio.sleep(0.05)
    return pred()


#: examples per fuzz target: short in `make test`, long in `make fuzz` (FUZZ_EXAMPLES=100000)
FUZZ_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "150"))
