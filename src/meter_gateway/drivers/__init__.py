"""Downstream drivers: one per bus, behind the small Driver interface of drivers.base."""
