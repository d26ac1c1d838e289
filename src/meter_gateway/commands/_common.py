"""Helpers shared by subcommands: load the configuration or exit 2 with its error."""

from __future__ import annotations

import sys
from pathlib import Path

from ..config import EXIT_CONFIG, ConfigError, GatewayConfig, load_config
from ..profiles import ProfileError, ProfileRegistry, load_profiles


def add_config_arg(p) -> None:
    """Add the -c/--config option."""
    p.add_argument("-c", "--config", default="gateway.yaml", help="configuration file (default: gateway.yaml)")


def load_checked(path: str | Path) -> tuple[GatewayConfig, ProfileRegistry]:
    """Load config and profiles and run every check `run` depends on; raise ConfigError / ProfileError."""
    cfg = load_config(path, preflight=True)
    profiles = load_profiles([Path(path).parent / d for d in cfg.gateway.profile_dirs])
    return cfg, profiles


def load_or_exit(path: str) -> tuple[GatewayConfig, ProfileRegistry]:
    """Load config and profiles; on error print it and exit with status 2."""
    try:
        cfg, profiles = load_checked(path)
    except (ConfigError, ProfileError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None
    return cfg, profiles
