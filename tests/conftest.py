"""Shared fixtures: profiles, configs for simulated gateways, free ports."""

from __future__ import annotations

import asyncio
import inspect
import os
import sys

import pytest

from meter_gateway.profiles import load_profiles


@pytest.fixture(scope="session")
def profiles():
    """Every shipped profile."""
    return load_profiles()


STUCK_AFTER = float(os.environ.get("TEST_STUCK_AFTER", "240"))


@pytest.fixture(autouse=True)
def dump_tasks_if_stuck(request):
    """An async test still running after STUCK_AFTER s (pytest-timeout fails it at 300 s) prints its tasks' stacks."""
    if not inspect.iscoroutinefunction(request.function):
        yield
        return
    handles = []
    real_new_loop = asyncio.events.new_event_loop

    def dump(loop: asyncio.AbstractEventLoop) -> None:
        print(f"\n{request.node.nodeid} still running after {STUCK_AFTER} s; asyncio tasks:", file=sys.stderr)
        for task in asyncio.all_tasks(loop):
            task.print_stack(file=sys.stderr)

    def new_loop() -> asyncio.AbstractEventLoop:
        loop = real_new_loop()
        handles.append(loop.call_later(STUCK_AFTER, dump, loop))
        return loop

    asyncio.events.new_event_loop = new_loop  # asyncio.Runner creates the test's loop after this fixture runs
    try:
        yield
    finally:
        asyncio.events.new_event_loop = real_new_loop
        for h in handles:
            h.cancel()
