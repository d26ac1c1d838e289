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


async def start_gateway(meters: int):
    """The gateway with `meters` simulated meters on one RTU line and only its BACnet device upstream (loopback)."""
    from meter_gateway.app import Gateway
    from meter_gateway.config import parse_config
    from meter_gateway.profiles import load_profiles

    lines = [
        f"  - {{id: m{i}, bus: rtu, address: {i}, profile: generic, bacnet_instance_base: {1000 * i}}}"
        for i in range(1, meters + 1)
    ]
    text = (
        "gateway: {name: bench}\nbuses: [{id: rtu, type: modbus_rtu, simulated: true}]\nmeters:\n"
        + "\n".join(lines)
        + "\nupstream:\n  bacnet: {enabled: true, bind: 127.0.0.1, netmask: 8, port: 0}\n"
        "  modbus_tcp: {enabled: false}\n  prometheus: {enabled: false}\n"
    )
    profiles = load_profiles()
    gw = Gateway(parse_config(text, profiles=profiles), profiles)
    await gw.start()
    return gw
