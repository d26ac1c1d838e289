"""Screenshots of the web pages for the README: overview, a meter, the traffic monitor (docs/img/*.png).

A real gateway process with simulated meters (tests/webgw.py) and Debian's Chromium through Playwright, 1024 px wide.
Run: .venv/bin/python bench/screenshots.py [seconds of history to gather first, default 60]
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from webgw import WebGateway, chromium_path, login  # noqa: E402

OUT = ROOT / "docs" / "img"
SHOTS = (
    ("web-overview.png", "#/", "#meters tbody tr"),
    ("web-meter.png", "#/meter/r1", "svg.chart path.line"),
    ("web-traffic.png", "#/bus/rtu", "#frames tbody tr"),
)


def main() -> None:
    """Start the gateway, wait for some history, take the pictures."""
    wait = float(sys.argv[1]) if len(sys.argv) > 1 else 60.0
    exe, why = chromium_path()
    if exe is None:
        sys.exit(f"no Chromium: {why}")
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as d:
        gw = WebGateway(Path(d), tcp_units=3)
        try:
            gw.wait_ready()
            time.sleep(wait)  # the recent history fills (one sample per 10 s)
            with sync_playwright() as p:
                b = p.chromium.launch(executable_path=exe, args=["--no-sandbox", "--disable-gpu"])
                page = b.new_page(viewport={"width": 1024, "height": 720})
                login(page, gw.base, "admin", gw.passwords["admin"])
                for name, hash_, sel in SHOTS:
                    page.goto(gw.base + "/ui/index.html" + hash_)
                    page.wait_for_selector(sel, timeout=30000)
                    page.wait_for_timeout(2500)  # live updates arrive, the traffic monitor fills
                    page.screenshot(path=str(OUT / name), full_page=name != "web-traffic.png")
                    print(OUT / name)
                b.close()
        finally:
            gw.stop()


if __name__ == "__main__":
    main()
