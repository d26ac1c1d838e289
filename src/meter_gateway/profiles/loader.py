"""Load profiles from the package and from user directories, with errors that name file and line."""

from __future__ import annotations

from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from ..yamlutil import LineLoader, TextEncodingError, decode_utf8, format_validation_error
from .schema import ModbusProfile


class ProfileError(ValueError):
    """A profile file is invalid; the message names the file, line and what to fix."""


def _model_for(doc: dict[str, Any]) -> type[BaseModel]:
    proto = doc.get("protocol", "modbus")
    if proto == "modbus":
        return ModbusProfile
    if proto == "mbus":
        from .mbus import MbusProfile  # M-Bus record-mapping profiles

        return MbusProfile
    raise ValueError(f"unknown protocol {proto!r} (use modbus or mbus)")


def parse_profile(text: str, source: str) -> BaseModel:
    """Parse one profile document; raise ProfileError naming `source` and the line."""
    try:
        doc, lines = LineLoader.load(text)
    except yaml.YAMLError as exc:
        raise ProfileError(f"{source}: {exc}") from exc
    if not isinstance(doc, dict):
        raise ProfileError(f"{source}:1: a profile is a mapping with name, manufacturer, model, points")
    try:
        model = _model_for(doc)
        return model.model_validate(doc)
    except ValidationError as exc:
        raise ProfileError(format_validation_error(exc, source, lines)) from exc
    except ValueError as exc:
        raise ProfileError(f"{source}:{lines.get(('protocol',), 1)}: {exc}") from exc


def _read(path: Path) -> str:
    try:
        return decode_utf8(path.read_bytes(), str(path))
    except OSError as exc:
        raise ProfileError(f"{path}: cannot read the profile: {exc.strerror}") from exc
    except TextEncodingError as exc:
        raise ProfileError(str(exc)) from None


def load_profile_file(path: Path) -> BaseModel:
    """Load one profile file."""
    return parse_profile(_read(path), str(path))


class ProfileRegistry:
    """Profiles by name: the shipped ones plus those in user directories (which may override)."""

    def __init__(self, profiles: dict[str, BaseModel], sources: dict[str, str]) -> None:
        self.profiles = profiles
        self.sources = sources

    def __contains__(self, name: object) -> bool:
        return name in self.profiles

    def get(self, name: str) -> BaseModel:
        """The profile called `name`."""
        return self.profiles[name]

    def names(self) -> list[str]:
        """Sorted profile names."""
        return sorted(self.profiles)


def _iter_builtin() -> Iterable[tuple[str, str]]:
    root = resources.files("meter_gateway.profiles").joinpath("data")
    for entry in sorted(root.iterdir(), key=lambda e: e.name):
        if entry.name.endswith((".yaml", ".yml")):
            yield f"<builtin>/profiles/data/{entry.name}", entry.read_text(encoding="utf-8")


def load_profiles(extra_dirs: Iterable[Path] = ()) -> ProfileRegistry:
    """Load every shipped profile, then every *.yaml in `extra_dirs`; a file's `name` must match its stem."""
    profiles: dict[str, BaseModel] = {}
    sources: dict[str, str] = {}
    items: list[tuple[str, str]] = list(_iter_builtin())
    for d in extra_dirs:
        d = Path(d)
        if not d.is_dir():
            raise ProfileError(f"{d}: profile directory does not exist")
        for f in sorted(d.glob("*.y*ml")):
            items.append((str(f), _read(f)))
    for source, text in items:
        prof = parse_profile(text, source)
        stem = Path(source).stem
        name = prof.name  # type: ignore[attr-defined]
        if name != stem:
            raise ProfileError(f"{source}:1: profile name {name!r} must match the file name {stem!r}")
        profiles[name] = prof
        sources[name] = source
    return ProfileRegistry(profiles, sources)
