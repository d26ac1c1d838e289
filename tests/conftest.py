"""Shared fixtures: profiles, configs for simulated gateways, free ports."""

from __future__ import annotations

import socket

import pytest

from meter_gateway.profiles import load_profiles


@pytest.fixture(scope="session")
def profiles():
    """Every shipped profile."""
    return load_profiles()


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port that is free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
