"""Mutation of captured traffic: radamsa when it is installed, else a byte-level mutator of our own."""

from __future__ import annotations

import random
import shutil
import subprocess
import tempfile
from pathlib import Path

INTERESTING_BYTES = (0x00, 0x01, 0x7F, 0x80, 0x81, 0xFE, 0xFF)
INTERESTING_WORDS = (0, 1, 0x7B, 0x7C, 0x7D, 0x7E, 0x7D0, 0x7D1, 0x7FFF, 0x8000, 0xFF00, 0xFFFF)


def load_seeds(path: Path) -> list[bytes]:
    """Hex frames, one per line (blank lines and # comments skipped)."""
    lines = (ln.split("#")[0].strip() for ln in path.read_text().splitlines())
    return [bytes.fromhex(ln) for ln in lines if ln]


def mutate(rng: random.Random, seeds: list[bytes], length_at: int = 4) -> bytes:
    """One to four byte-level mutations of a seed: bit flips, interesting bytes and words, insertions, deletions,
    repeats, truncation, a wrong length field (16 bits at `length_at`: 4 for the MBAP header, 2 for BVLC), splices
    and concatenations of seeds (pipelined requests)."""
    data = bytearray(rng.choice(seeds))
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(10)
        n = len(data)
        if op == 0 and n:
            i = rng.randrange(n)
            data[i] ^= 1 << rng.randrange(8)
        elif op == 1 and n:
            data[rng.randrange(n)] = rng.choice(INTERESTING_BYTES)
        elif op == 2 and n >= 2:
            i = rng.randrange(n - 1)
            data[i : i + 2] = rng.choice(INTERESTING_WORDS).to_bytes(2, "big")
        elif op == 3:
            i = rng.randint(0, n)
            data[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
        elif op == 4 and n:
            i = rng.randrange(n)
            del data[i : i + rng.randint(1, 8)]
        elif op == 5 and n:
            i = rng.randrange(n)
            chunk = data[i : i + rng.randint(1, 8)]
            data[i:i] = chunk * rng.randint(1, 30)
        elif op == 6 and n:
            del data[rng.randrange(n) :]
        elif op == 7 and n >= length_at + 2:
            length = int.from_bytes(data[length_at : length_at + 2], "big")
            new = rng.choice([0, 1, length - 1, length + 1, 254, 255, 0xFFFF]) & 0xFFFF
            data[length_at : length_at + 2] = new.to_bytes(2, "big")
        elif op == 8:
            other = rng.choice(seeds)
            data = data[: rng.randint(0, n)] + other[rng.randint(0, len(other)) :]
        else:
            data += rng.choice(seeds)
    return bytes(data)


def radamsa_cases(seeds: list[bytes], count: int, seed: int) -> list[bytes] | None:
    """`count` cases from radamsa (None when it is not installed)."""
    exe = shutil.which("radamsa")
    if exe is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        files = []
        for i, s in enumerate(seeds):
            f = Path(tmp) / f"seed-{i}.bin"
            f.write_bytes(s)
            files.append(str(f))
        out = Path(tmp) / "out"
        out.mkdir()
        subprocess.run(
            [exe, "-s", str(seed), "-n", str(count), "-o", str(out / "case-%n"), *files], check=True, timeout=600
        )
        return [p.read_bytes()[:2048] for p in sorted(out.iterdir())]
