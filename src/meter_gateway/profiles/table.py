"""The README's table of supported Modbus meters, generated from the shipped profiles.

Run `python -m meter_gateway.profiles.table` to print it, `... table --write README.md` to replace the block
between the README's markers (a test fails when the README and the profiles disagree).
"""

from __future__ import annotations

import re

from .loader import ProfileRegistry, load_profiles
from .schema import ModbusProfile

START = "<!-- meters-table:start (generated: python -m meter_gateway.profiles.table) -->"
END = "<!-- meters-table:end -->"


def _source_names(prof: ModbusProfile) -> str:
    """Short names of the sources: a repository (owner/name) or a document title."""
    out: list[str] = []
    for text in prof.sources.values():
        m = re.match(r"([\w.-]+/[\w.-]+) ", text)
        short = m.group(1) if m else text.split(",")[0].split(" (")[0]
        if short not in out:
            out.append(short)
    return "; ".join(out)


def markdown_table(registry: ProfileRegistry | None = None) -> str:
    """One row per shipped Modbus profile: make, model, protocol, profile, sources, confirmed points."""
    reg = registry or load_profiles()
    rows = [
        "| Make | Model | Protocol | Profile | Sources | Confirmed points | Identification | Variants |",
        "|---|---|---|---|---|---|---|---|",
    ]
    profs = [p for n in reg.names() if isinstance(p := reg.get(n), ModbusProfile)]
    for p in sorted(profs, key=lambda p: (p.name == "generic", p.manufacturer.lower(), p.model)):
        confirmed = sum(not pt.unconfirmed for pt in p.points.values())
        ident = "registers" if p.identify else "guess only"
        variants = ", ".join(v.name for v in p.variants) or "-"
        model = p.model.replace("|", "/")
        rows.append(
            f"| {p.manufacturer} | {model} | Modbus | `{p.name}` | {_source_names(p)} | "
            f"{confirmed} / {len(p.points)} | {ident} | {variants} |"
        )
    return "\n".join(rows)


def readme_block(registry: ProfileRegistry | None = None) -> str:
    """The table with its markers, as it stands in README.md."""
    return f"{START}\n{markdown_table(registry)}\n{END}"


def write_readme(path: str) -> None:
    """Replace the table between the markers of a README file."""
    from pathlib import Path

    p = Path(path)
    text = p.read_text(encoding="utf-8")
    i, j = text.index(START), text.index(END) + len(END)
    p.write_text(text[:i] + readme_block() + text[j:], encoding="utf-8")


if __name__ == "__main__":
    import sys

    if len(sys.argv) == 3 and sys.argv[1] == "--write":
        write_readme(sys.argv[2])
    else:
        print(readme_block())
