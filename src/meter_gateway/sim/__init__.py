"""Simulated meters speaking the real protocols, for the demo configuration and the tests."""
