"""The shipped web pages load nothing from elsewhere and reference only files that ship with them."""

from __future__ import annotations

import re
from importlib import resources

STATIC = resources.files("meter_gateway").joinpath("web/static")
TEXT = ("html", "js", "css")


def _files() -> dict[str, str]:
    return {f.name: f.read_text(encoding="utf-8") for f in STATIC.iterdir() if f.name.rsplit(".", 1)[-1] in TEXT}


def test_no_asset_from_the_internet():
    files = _files()
    assert {"index.html", "login.html", "app.js", "app.css", "login.js"} <= set(files)
    for name, text in files.items():
        # the SVG namespace is an identifier, not a download
        urls = [
            u
            for u in re.findall(r"(?:https?:)?//[A-Za-z0-9.-]+\.[A-Za-z]{2,}[^\s\"')]*", text)
            if u != "http://www.w3.org/2000/svg"
        ]
        assert urls == [], (name, urls)
        assert "@import" not in text and "url(" not in text.replace("URLSearchParams(", ""), name


def test_pages_reference_shipped_files_only():
    files = _files()
    for page in ("index.html", "login.html"):
        refs = re.findall(r'(?:src|href)="(/ui/[^"]+)"', files[page])
        assert refs, page
        for ref in refs:
            assert ref.removeprefix("/ui/") in files, (page, ref)


def test_values_never_go_in_as_html():
    for name, text in _files().items():
        if name.endswith(".js"):
            assert "innerHTML" not in text and "outerHTML" not in text and "insertAdjacentHTML" not in text, name
            assert "document.write" not in text and "eval(" not in text, name
