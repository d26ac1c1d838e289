"""Fixtures that start a whole gateway on simulated meters, on loopback, and stop it in bounded time."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from meter_gateway.app import Gateway
from meter_gateway.config import parse_config
from meter_gateway.profiles import load_profiles


@pytest.fixture
async def gateways(tmp_path: Path):
    """Async variant: yields a starter; every gateway it started is stopped after the test."""
    started: list[Gateway] = []
    profiles = load_profiles()

    async def make(text: str) -> Gateway:
        path = tmp_path / f"gateway{len(started)}.yaml"
        path.write_text(text)
        gw = Gateway(parse_config(text, str(path), profiles=profiles), profiles, config_path=path)
        started.append(gw)
        await gw.start()
        return gw

    yield make
    for gw in started:
        await asyncio.wait_for(gw.stop(), 15)
