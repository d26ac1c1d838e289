"""/metrics written family by family without sample objects (servers/prometheus.py Fam, exposition): the bytes
prometheus_client's generate_latest writes for the same families."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import HistogramMetricFamily

from meter_gateway.servers import prometheus
from meter_gateway.servers.prometheus import Fam, exposition

ROWS = [([f"m{i}", 'Tenant "A"\\\nB' if i % 3 else "Landlord", "L1"], i * 1.25e3 + 0.1) for i in range(10)]
ROWS += [(["m", "t", "L2"], v) for v in (0.0, -0.0, 1e22, 12345678.9, float("inf"), float("nan"), 3)]


class Whole:
    def __init__(self, metrics) -> None:
        self.metrics = metrics

    def collect(self):
        return self.metrics


def families() -> list:
    hist = HistogramMetricFamily("g_cycle_seconds", "Cycle", labels=["bus"])
    hist.add_metric(["b"], [("0.5", 1), ("+Inf", 3)], 2.5)
    return [
        Fam("energy_joules", "Energy\nwith \\ escapes", True, ["meter", "tenant", "phase"], ROWS),
        Fam("empty", "No samples", False, ["meter"], []),
        hist,
        Fam("unlabelled", "One value", False, [], [([], 7.0)]),
        Fam("point_quality", "Quality", False, ["quality", "meter", "point"], [(["a", "good", "c"], 1.0)]),
    ]


def test_text_is_what_prometheus_client_writes(monkeypatch):
    registry = CollectorRegistry(auto_describe=False)
    registry.register(Whole([f.metric() if isinstance(f, Fam) else f for f in families()]))
    want = generate_latest(registry)
    for part in (1, 3, 1000):
        monkeypatch.setattr(prometheus, "PART", part)
        chunks = list(exposition(families()))
        assert b"".join(chunks) == want
        assert len(chunks) >= len(ROWS) // part  # the large family in chunks of about PART lines
