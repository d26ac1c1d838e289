"""The bus-efficiency figure of `make bench` (bench/bus_efficiency.png), drawn from the results document."""

from __future__ import annotations

import json
import sys
from pathlib import Path

PROFILES = {"generic": "generic (canonical map)", "eastron_sdm630": "Eastron SDM630"}


def plot_bus(results: dict, path: Path) -> Path:
    """Draw bus efficiency per meter count and line capacity per baud rate into a PNG; returns its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.8), layout="constrained")
    eff = results["bus_efficiency"]
    counts: list[int] = []
    for profile, label in PROFILES.items():
        rows = sorted((e for e in eff if e["profile"] == profile), key=lambda e: e["meters"])
        if not rows:
            continue
        xs = [e["meters"] for e in rows]
        counts = sorted(set(counts) | set(xs))
        ys = [e["efficiency"] for e in rows]
        (line,) = ax1.plot(xs, ys, marker="o", label=label)
        for e in rows:
            ax1.annotate(
                f"{e['cycle_time_s']:.2f} s / {e['wire_limit_s']:.2f} s",
                (e["meters"], e["efficiency"]),
                textcoords="offset points",
                xytext=(0, 8 if profile == "generic" else -14),
                ha="center",
                fontsize=7,
                color=line.get_color(),
            )
    baud = eff[0]["baudrate"] if eff else 9600
    ax1.set_xscale("log", base=2)
    ax1.set_xticks(counts, [str(c) for c in counts])
    low = min((e["efficiency"] for e in eff), default=0.9)
    ax1.set_xlim(counts[0] / 1.5 if counts else 0.5, counts[-1] * 1.5 if counts else 64)
    ax1.set_ylim(min(0.9, int((low - 0.05) * 20) / 20), 1.03)  # zoomed: the interesting part is near 1
    ax1.axhline(1.0, color="grey", linewidth=0.8, linestyle="--", label="wire limit (efficiency 1)")
    ax1.set_xlabel("meters on the line")
    ax1.set_ylabel("efficiency = wire limit / measured cycle time (axis zoomed)")
    ax1.set_title(f"Full poll cycle at {baud} Bd (labels: measured / wire limit)")
    ax1.grid(True, alpha=0.3)
    ax1.legend(loc="lower right", fontsize=8)

    cap = sorted(results["capacity"], key=lambda c: c["baudrate"])
    bauds = [c["baudrate"] for c in cap]
    xs2 = list(range(len(cap)))
    w = 0.38
    bars_m = ax2.bar([x - w / 2 for x in xs2], [c["measured_max_meters"] for c in cap], w, label="measured")
    bars_c = ax2.bar([x + w / 2 for x in xs2], [c["computed_max_meters"] for c in cap], w, label="computed (wire time)")
    ax2.bar_label(bars_m, fontsize=8)
    ax2.bar_label(bars_c, fontsize=8)
    ax2.set_xticks(xs2, [f"{b} Bd" for b in bauds])
    turn = cap[0]["turnaround_s"] * 1000 if cap else 5
    ax2.set_xlabel(f"line speed (generic profile, spec poll rates, {turn:g} ms meter turnaround)")
    ax2.set_ylabel("maximum meters per RS485 line")
    ax2.set_title("Line capacity: measured vs computed")
    ax2.margins(y=0.15)
    ax2.grid(True, axis="y", alpha=0.3)
    ax2.legend(loc="upper left", fontsize=8)

    machine = results.get("machine", {})
    fig.suptitle(
        f"meter-gateway bus benchmarks ({results.get('date', '')}, Python {machine.get('python', '?')}, "
        f"{machine.get('cpus', '?')} CPUs)",
        fontsize=11,
    )
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


if __name__ == "__main__":
    here = Path(__file__).resolve().parent
    src = Path(sys.argv[1]) if len(sys.argv) > 1 else here / "results.json"
    print(plot_bus(json.loads(src.read_text()), src.with_name("bus_efficiency.png")))
