"""Upstream servers: BACnet/IP, Modbus TCP, Prometheus; each reads the point table only."""
