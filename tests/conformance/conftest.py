"""The conformance suite's fixtures: one real gateway process per module, its BACnet traffic captured with tshark,
the bacnet-stack command-line tools (skipped with a visible reason when absent)."""

from __future__ import annotations

from pathlib import Path

import pytest
from gwproc import (
    BACNET_STACK,
    CONFIG,
    TIMEZONE,
    GatewayProcess,
    start_capture,
    start_gateway,
    stop_capture,
    stop_gateway,
)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory) -> GatewayProcess:
    """One gateway process for the module, its traffic captured; stopped (and the capture closed) at the end."""
    tmp = tmp_path_factory.mktemp("conformance")
    gp = start_gateway(tmp, CONFIG.format(tz=TIMEZONE))
    start_capture(gp)
    try:
        yield gp
    finally:
        stop_capture(gp)
        stop_gateway(gp)


@pytest.fixture(scope="session")
def bacnet_stack() -> Path:
    """The bacnet-stack tools' folder (skip with the reason when it is absent)."""
    if not (BACNET_STACK / "bacrp").exists():
        pytest.skip(f"bacnet-stack tools not found at {BACNET_STACK} (independent BACnet peer; CI has them)")
    return BACNET_STACK
