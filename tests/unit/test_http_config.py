"""upstream.http in gateway.yaml: users with argon2 hashes, tokens, HTTPS files; errors name file:line."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest
from argon2 import PasswordHasher

from meter_gateway.config import ConfigError, parse_config

HASH = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1).hash("secret-pass")
BASE = f"""\
buses:
  - {{id: rtu, type: modbus_rtu, simulated: true}}
upstream:
  bacnet: {{enabled: false}}
  prometheus: {{port: 0}}
  http:
    users:
      - name: ada
        role: admin
        password_hash: '{HASH}'
      - name: vera
        role: viewer
        password_hash: '{HASH}'
"""


def test_users_parse():
    cfg = parse_config(BASE, "gateway.yaml")
    assert [(u.name, u.role) for u in cfg.upstream.http.users] == [("ada", "admin"), ("vera", "viewer")]


@pytest.mark.parametrize(
    "old,new,line,words",
    [
        (f"'{HASH}'\n      - name: vera", "secret-pass\n      - name: vera", 10, "not an argon2 hash"),
        ("role: viewer", "role: root", 12, "role"),
        ("name: vera", "name: ada", 11, "user 'ada' is already defined"),
        ("  http:\n", "  http:\n    metrics_token: short\n", 7, "at least 16 characters"),
    ],
    ids=["plain password", "unknown role", "duplicate user", "short metrics token"],
)
def test_mistakes_name_file_and_line(old, new, line, words):
    with pytest.raises(ConfigError) as err:
        parse_config(BASE.replace(old, new, 1), "site/gateway.yaml")
    assert words in str(err.value) and f"site/gateway.yaml:{line}:" in str(err.value), str(err.value)


def test_check_reports_a_missing_certificate_file(tmp_path: Path):
    path = tmp_path / "gateway.yaml"
    text = (
        BASE.replace("  http:\n", "  http:\n    tls: {cert: none.pem, key: none.key}\n") + "gateway: {state_dir: .}\n"
    )
    with pytest.raises(ConfigError) as err:  # what `meter-gateway check` and a reload run
        parse_config(text, str(path), preflight=True)
    assert f"{path}:7: cert file {tmp_path / 'none.pem'} does not exist" in str(err.value), str(err.value)


def test_hash_password_prints_a_hash_the_config_accepts(monkeypatch, capsys):
    from meter_gateway.cli import main

    monkeypatch.setattr(sys, "stdin", io.StringIO("correct horse\n"))
    assert main(["hash-password", "--stdin"]) == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith("$argon2id$") and PasswordHasher().verify(out, "correct horse")
    parse_config(BASE.replace(HASH, out), "gateway.yaml")
