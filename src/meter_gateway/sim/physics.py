"""A plausible electrical load: powers wander, energy integrates power, voltages near 230 V, 50 Hz."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class LoadModel:
    """The canonical values of one simulated meter, advanced lazily with time."""

    seed: int = 0
    base_kw: float = 12.0
    phases: int = 3
    clock: Callable[[], float] = time.time
    values: dict[str, float | int | bool] = field(default_factory=dict)
    _last: float | None = None
    _rng: random.Random = field(default_factory=random.Random)
    frozen: bool = False  # tests may freeze the values to compare exactly

    def __post_init__(self) -> None:
        self._rng.seed(self.seed)
        r = self._rng
        v = self.values
        v.setdefault("Active_Energy_Import", round(1000 + r.random() * 50000, 2))
        v.setdefault("Active_Energy_Export", round(r.random() * 100, 2))
        v.setdefault("Reactive_Energy_Import", round(200 + r.random() * 5000, 2))
        v.setdefault("Reactive_Energy_Export", round(r.random() * 50, 2))
        v.update(
            {
                "Demand_Peak_Current": 0.0,
                "Demand_Peak_Timestamp": 0,
                "Phase_Loss_L1": False,
                "Phase_Loss_L2": False,
                "Phase_Loss_L3": False,
                "Overload_Alarm": False,
                "Energy_Direction": 0,
                "Tamper_Alarm": False,
                "MID_Certification_Valid": True,
                "Pulse_Output_Active": False,
                "Meter_Error": False,
                "Voltage_Unbalance_Alarm": False,
                "Current_Unbalance_Alarm": False,
                "Reverse_Phase_Sequence": False,
                "CT_Primary_Rating": 100.0,
                "CT_Secondary_Rating": 5.0,
                "Demand_Interval": 15.0,
                "Pulse_Constant": 1000.0,
                "Modbus_Address": 1.0,
                "Modbus_Baudrate": 9600,
                "Display_Backlight_Timeout": 60.0,
                "Overload_Threshold": 100.0,
                "Voltage_Unbalance_Threshold": 3.0,
                "Clock": 0,
            }
            | {k: v[k] for k in v}
        )
        self._power = self.base_kw
        self._instant(self.clock())

    def advance(self) -> dict[str, float | int | bool]:
        """Move the load forward to now and return the current values."""
        now = self.clock()
        if self._last is None:
            self._last = now
        dt = now - self._last
        if dt <= 0 or self.frozen:
            return self.values
        self._last = now
        v = self.values
        # energy integrates the power over the elapsed time (exact bookkeeping in 0.01 kWh steps is done by the codec)
        v["Active_Energy_Import"] = round(float(v["Active_Energy_Import"]) + self._power * dt / 3600.0, 6)
        v["Reactive_Energy_Import"] = round(float(v["Reactive_Energy_Import"]) + self._power * 0.3 * dt / 3600.0, 6)
        # the load wanders (bounded random walk) with a slow daily-like swing
        r = self._rng
        self._power = max(0.2, min(self.base_kw * 2.5, self._power + r.gauss(0, 0.02 * self.base_kw) * min(dt, 10)))
        self._instant(now)
        return v

    def _instant(self, now: float) -> None:
        r = self._rng
        v = self.values
        p = self._power * (1 + 0.05 * math.sin(now / 600.0))
        pf = 0.92 + 0.05 * math.sin(now / 900.0)
        phases = ("L1", "L2", "L3")[: self.phases]
        split = [1 / len(phases)] * len(phases)
        total = 0.0
        for i, ph in enumerate(phases):
            volt = 230.0 + r.gauss(0, 1.2)
            kw = p * split[i] * (1 + r.gauss(0, 0.01))
            total += kw
            v[f"Voltage_{ph}_N"] = round(volt, 2)
            v[f"Active_Power_{ph}"] = round(kw, 4)
            v[f"Current_{ph}"] = round(kw * 1000 / (volt * pf), 3)
            v[f"Power_Factor_{ph}"] = round(pf + r.gauss(0, 0.003), 4)
        if self.phases == 3:
            for a, b in (("L1", "L2"), ("L2", "L3"), ("L3", "L1")):
                v[f"Voltage_{a}_{b}"] = round(
                    math.sqrt(3) * (float(v[f"Voltage_{a}_N"]) + float(v[f"Voltage_{b}_N"])) / 2, 2
                )
            v["Current_Neutral"] = round(abs(r.gauss(0, 0.5)), 3)
        v["Active_Power_Total"] = round(total, 4)
        v["Reactive_Power_Total"] = round(total * math.tan(math.acos(pf)), 4)
        v["Apparent_Power_Total"] = round(total / pf, 4)
        v["Power_Factor_Total"] = round(pf, 4)
        v["Frequency"] = round(50.0 + r.gauss(0, 0.02), 3)
        v["THD_Voltage_L1"] = round(2.0 + abs(r.gauss(0, 0.3)), 2)
        v["THD_Current_L1"] = round(8.0 + abs(r.gauss(0, 1.0)), 2)
        if total > float(v["Demand_Peak_Current"]):
            v["Demand_Peak_Current"] = round(total, 4)
            v["Demand_Peak_Timestamp"] = int(now)

    def reset_demand(self) -> None:
        """Reset the peak demand register."""
        self.values["Demand_Peak_Current"] = 0.0
        self.values["Demand_Peak_Timestamp"] = 0

    def reset_energy(self) -> None:
        """Zero every energy register (a non-MID meter's reset)."""
        for k in ("Active_Energy_Import", "Active_Energy_Export", "Reactive_Energy_Import", "Reactive_Energy_Export"):
            self.values[k] = 0.0
