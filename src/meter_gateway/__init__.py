"""meter-gateway: an open gateway for electrical submeters (Modbus RTU/TCP, M-Bus -> BACnet/IP, Modbus TCP, Prometheus)."""

__version__ = "0.1.0"
