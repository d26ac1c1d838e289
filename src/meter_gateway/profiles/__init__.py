"""Meter profiles: data files mapping each meter make to the canonical points."""

from .loader import ProfileError, ProfileRegistry, load_profile_file, load_profiles
from .schema import CommandSpec, ModbusProfile, RegisterPoint

__all__ = [
    "CommandSpec",
    "ModbusProfile",
    "ProfileError",
    "ProfileRegistry",
    "RegisterPoint",
    "load_profile_file",
    "load_profiles",
]
