"""meter-gateway: submeters in (Modbus RTU/TCP, M-Bus), BACnet/IP, Modbus TCP and Prometheus out."""

__version__ = "0.1.0"
