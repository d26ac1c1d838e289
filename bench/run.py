"""`make bench`: every benchmark in one run, a table on stdout, bench/results.json, and a last line of JSON."""

from __future__ import annotations

import asyncio
import json
import os
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bacnet_on_change  # noqa: E402
import bacnet_speed  # noqa: E402
import bacnet_throughput  # noqa: E402
import bus  # noqa: E402
import freshness  # noqa: E402
import plot  # noqa: E402
import scale  # noqa: E402
import upstream_modbus  # noqa: E402


async def main() -> dict:
    """Run everything; returns the results document."""
    t0 = time.monotonic()
    results: dict = {
        "machine": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
        },
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "load_before": [round(x, 2) for x in os.getloadavg()],
    }
    eff = []
    for profile in ("generic", "eastron_sdm630"):
        for n in (1, 8, 32):
            r = await bus.efficiency(n, profile)
            eff.append(r)
            print(
                f"bus efficiency  {profile:15} {n:3} meters: {r['transactions_per_cycle']:4} tx "
                f"(naive {r['one_read_per_point']:5}), cycle {r['cycle_time_s']:7.3f} s, "
                f"wire {r['wire_limit_s']:7.3f} s, efficiency {r['efficiency']:.3f}",
                flush=True,
            )
    results["bus_efficiency"] = eff
    cap = []
    for baud in (9600, 19200):
        r = await bus.capacity("generic", baud)
        cap.append(r)
        print(
            f"capacity        generic @ {baud:5} Bd: {r['measured_max_meters']} meters keep up (run: "
            + ", ".join(
                f"{k} meters {v['seconds']} s" + (f", {n_f} failed" if (n_f := v["failed_transactions"]) else "")
                for k, v in r["runs"].items()
            )
            + f" per minute of reads), wire bound {r['computed_max_meters']} (ratio {r['ratio']})",
            flush=True,
        )
    results["capacity"] = cap
    mb = await upstream_modbus.run()
    results["modbus_tcp"] = mb
    for n in upstream_modbus.CONNECTIONS:
        lo, hi = mb[f"ratio_{n}_range"]
        print(
            f"modbus tcp      50 regs, {n} conn: gateway {mb[f'gateway_rps_{n}']} req/s, bare pymodbus "
            f"{mb[f'bare_pymodbus_rps_{n}']} req/s (medians of {mb['rounds']} rounds): ratio {mb[f'ratio_{n}']} "
            f"(range {lo}-{hi})",
            flush=True,
        )
    bn = await bacnet_throughput.run()
    results["bacnet"] = bn
    print(
        f"bacnet          {bn['meters']} meters: RP {bn['read_property_per_s']}/s, "
        f"RPM {bn['rpm_points_per_s']} points/s",
        flush=True,
    )
    bs = await bacnet_speed.run()
    results["bacnet_speed"] = bs
    print(bacnet_speed.table(bs), flush=True)
    oc = await bacnet_on_change.run(240, 4)
    results["bacnet_on_change"] = oc
    print(
        f"bacnet          table change -> objects ({oc['objects']} objects): {oc['cpu_us_per_value_change']} us CPU "
        f"per value change, {oc['cpu_us_per_quality_change']} us per quality change, "
        f"{oc['cpu_us_per_value_change_watched']} us per value change of a watched object (COV, events)",
        flush=True,
    )
    fr = await freshness.run()
    results["freshness"] = fr
    for key, label in (("modbus", "modbus tcp"), ("bacnet_cov", "bacnet cov")):
        f = fr[key]
        print(
            f"freshness       {label:10} read -> visible: p50 {f.get('p50_ms')} ms, p99 {f.get('p99_ms')} ms, "
            f"max {f.get('max_ms')} ms over {f['n']} changes",
            flush=True,
        )
    print(
        f"freshness       context: poll wait p50 {fr['poll_wait'].get('p50_ms')} ms "
        f"(poll every {fr['poll_interval_s']} s), read -> table p50 {fr['read_to_table'].get('p50_ms')} ms, "
        f"{fr['missed']} missed",
        flush=True,
    )
    for key, ups, label in (
        ("scale", True, "all upstreams"),
        ("scale_without_bacnet", ("modbus_tcp", "prometheus"), "no BACnet"),
    ):
        sc = await scale.run(250, 30.0, ups)
        results[key] = sc
        print(
            f"scale           {sc['meters']} meters, {label:13}: full table {sc['startup_to_full_table_s']} s "
            f"(servers up at {sc['started_s']} s), {sc['rss_mib']} MiB ({sc.get('rss_after_scrapes_mib')} MiB after 3 "
            f"scrapes), CPU {sc['cpu_share_steady'] * 100:.1f} %",
            flush=True,
        )
    results["duration_s"] = round(time.monotonic() - t0, 1)
    results["load_after"] = [round(x, 2) for x in os.getloadavg()]
    return results


if __name__ == "__main__":
    res = asyncio.run(main())
    (HERE / "results.json").write_text(json.dumps(res, indent=2) + "\n")
    print(f"plot            {plot.plot_bus(res, HERE / 'bus_efficiency.png').relative_to(HERE.parent)}", flush=True)
    g32 = next(e for e in res["bus_efficiency"] if e["profile"] == "generic" and e["meters"] == 32)
    headline = {
        "bus_efficiency_32_generic": g32["efficiency"],
        "transactions_ratio_32_generic": g32["transactions_ratio"],
        "capacity_9600": res["capacity"][0]["measured_max_meters"],
        "capacity_19200": res["capacity"][1]["measured_max_meters"],
        "modbus_rps_1": res["modbus_tcp"]["gateway_rps_1"],
        "modbus_rps_8": res["modbus_tcp"]["gateway_rps_8"],
        "modbus_ratio_1": res["modbus_tcp"]["ratio_1"],
        "modbus_ratio_8": res["modbus_tcp"]["ratio_8"],
        "bacnet_rp_per_s": res["bacnet"]["read_property_per_s"],
        "bacnet_rpm_points_per_s": res["bacnet"]["rpm_points_per_s"],
        "scale_250_full_table_s": res["scale"]["startup_to_full_table_s"],
        "bacnet_ratio_rp_1": res["bacnet_speed"]["ratio_rp_1"],
        "bacnet_ratio_rp_32": res["bacnet_speed"]["ratio_rp_32"],
        "bacnet_ratio_rpm_points": res["bacnet_speed"]["ratio_rpm_points"],
        "bacnet_cpu_ratio_rp_1": res["bacnet_speed"]["cpu_ratio_rp_1"],
        "bacnet_cpu_ratio_rpm_points": res["bacnet_speed"]["cpu_ratio_rpm_points"],
        "bacnet_rpm_points_per_s_raw_client": res["bacnet_speed"]["gateway_rpm_points"],
        "bacnet_cpu_us_per_change": res["bacnet_on_change"]["cpu_us_per_value_change"],
        "scale_250_rss_mib": res["scale"]["rss_mib"],
        "scale_250_cpu": res["scale"]["cpu_share_steady"],
        "freshness_modbus_p50_ms": res["freshness"]["freshness_modbus_p50_ms"],
        "freshness_modbus_p99_ms": res["freshness"]["freshness_modbus_p99_ms"],
        "freshness_bacnet_cov_p50_ms": res["freshness"]["freshness_bacnet_cov_p50_ms"],
        "freshness_bacnet_cov_p99_ms": res["freshness"]["freshness_bacnet_cov_p99_ms"],
    }
    print(json.dumps(headline))
