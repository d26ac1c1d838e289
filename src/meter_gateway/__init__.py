"""meter-gateway: a gateway for electrical submeters (Modbus RTU/TCP, M-Bus in; BACnet/IP, Modbus TCP, Prometheus out)."""

__version__ = "0.1.0"
