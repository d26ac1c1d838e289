"""/metrics encoded family part by part (servers/prometheus.py exposition): the text prometheus_client writes."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from meter_gateway.servers import prometheus
from meter_gateway.servers.prometheus import _parts, exposition

ROWS = [([f"m{i}", 'Tenant "A"\\\nB' if i % 3 else "Landlord"], i * 1.25e3 + 0.1) for i in range(10)]


class Whole:
    def __init__(self, families) -> None:
        self.families = families

    def collect(self):
        return self.families


def test_parts_encode_as_the_whole_family(monkeypatch):
    def counter():
        return CounterMetricFamily("g_energy_joules", "Energy\nwith \\ escapes", labels=["meter", "tenant"])

    def gauge():
        return GaugeMetricFamily("g_empty", "No samples", labels=["meter"])

    whole = counter()
    for labels, value in ROWS:
        whole.add_metric(labels, value)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(Whole([whole, gauge()]))
    want = generate_latest(registry)
    for part in (1, 3, 10, 1000):
        monkeypatch.setattr(prometheus, "PART", part)
        metrics = [*_parts(counter, ROWS), *_parts(gauge, [])]
        assert len(metrics) == -(-len(ROWS) // part) + 1
        assert all(len(m.samples) <= part for m in metrics)
        assert exposition(metrics) == want
