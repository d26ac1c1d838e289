"""Where state files live: gateway.state_dir, systemd's $STATE_DIRECTORY, /var/lib/meter-gateway under /etc, var/."""

from __future__ import annotations

from pathlib import Path

import pytest

from meter_gateway.config import parse_config, state_dir, state_path
from meter_gateway.profiles import load_profiles

BASE = """
gateway: {{name: s{extra}}}
buses: [{{id: b, type: modbus_tcp, simulated: true, port: 0}}]
meters: [{{id: m, bus: b, address: 1, profile: generic, bacnet_instance_base: 1000}}]
"""


def cfg(extra: str = ""):
    return parse_config(BASE.format(extra=extra), "gateway.yaml", profiles=load_profiles())


@pytest.mark.parametrize(
    ("extra", "config_path", "env", "want"),
    [
        ("", "/home/me/demo/gateway.yaml", {}, "/home/me/demo/var"),
        ("", "/etc/meter-gateway/gateway.yaml", {}, "/var/lib/meter-gateway"),
        ("", "/etc/meter-gateway/gateway.yaml", {"STATE_DIRECTORY": "/var/lib/mg2:/var/lib/other"}, "/var/lib/mg2"),
        (", state_dir: /srv/mg", "/etc/meter-gateway/gateway.yaml", {"STATE_DIRECTORY": "/x"}, "/srv/mg"),
        (", state_dir: data", "/home/me/demo/gateway.yaml", {}, "/home/me/demo/data"),
    ],
)
def test_state_dir_rules(extra, config_path, env, want):
    assert state_dir(cfg(extra), config_path, env) == Path(want)


@pytest.mark.parametrize(
    ("value", "config_path", "want"),
    [
        ("journal.sqlite", "/home/me/demo/gateway.yaml", "/home/me/demo/var/journal.sqlite"),
        ("var/journal.sqlite", "/home/me/demo/gateway.yaml", "/home/me/demo/var/journal.sqlite"),  # older configs
        ("journal.sqlite", "/etc/meter-gateway/gateway.yaml", "/var/lib/meter-gateway/journal.sqlite"),
        ("/data/j.sqlite", "/etc/meter-gateway/gateway.yaml", "/data/j.sqlite"),
    ],
)
def test_state_files_are_inside_the_state_dir(value, config_path, want):
    assert state_path(cfg(), config_path, value, {}) == Path(want)
