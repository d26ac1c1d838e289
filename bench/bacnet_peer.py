"""What the benchmarks' BACnet/IP client processes share: a free port and a minimal bacpypes3 client application."""

from __future__ import annotations

import socket


def free_udp_port() -> int:
    """A free UDP port on loopback, chosen by the kernel."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def client_app(my_port: int, instance: int, name: str):
    """A bacpypes3 client device on 127.0.0.1:my_port (call inside the running loop); close it with app.close()."""
    from bacpypes3.app import Application
    from bacpypes3.local.device import DeviceObject
    from bacpypes3.local.networkport import NetworkPortObject

    dev = DeviceObject(objectIdentifier=("device", instance), objectName=name, vendorIdentifier=999)
    np = NetworkPortObject(f"127.0.0.1/8:{my_port}", objectIdentifier=("network-port", 1), objectName="NetworkPort-1")
    return Application.from_object_list([dev, np])
