"""Our EN 13757-3 record decoder against pyMeterBus, an implementation we did not write, on the libmbus corpus.

pyMeterBus stays in the required stack as this cross-check: every numeric record value it decodes must be the
value our decoder gives for the same record (its trailing manufacturer-specific block is not a record for us)."""

from __future__ import annotations

import warnings
from decimal import Decimal
from pathlib import Path

import pytest

from meter_gateway.drivers.mbus import decode_telegram
from meter_gateway.mbus_frame import MbusFrameError

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import meterbus

DATA = Path(__file__).resolve().parents[1] / "data" / "mbus-frames" / "test-frames"
FRAMES = sorted(p.stem for p in DATA.glob("*.hex"))
#: frames pyMeterBus 0.8.5 gets wrong where libmbus agrees with us (test_mbus_corpus)
PYMETERBUS_WRONG = {
    "example_binary16_lvar": "LVAR 0xF0 (binary, 16 bytes) read with another length: the record is split in two",
}


def _load(name: str) -> bytes:
    return bytes(int(tok, 16) for tok in (DATA / f"{name}.hex").read_text().split())


def _their_records(raw: bytes) -> list:
    """pyMeterBus's data records, without the manufacturer-specific / more-records-follow block (DIF 0x0F/0x1F)."""
    return [r for r in meterbus.load(raw).records if not (r.dib.is_eoud or r.dib.more_records_follow)]


@pytest.mark.parametrize("name", FRAMES)
def test_record_values_agree_with_pymeterbus(name):
    if name in PYMETERBUS_WRONG:
        pytest.skip(f"pyMeterBus: {PYMETERBUS_WRONG[name]}")
    raw = _load(name)
    try:
        _payload, ours = decode_telegram(raw)
    except MbusFrameError:
        pytest.skip("refused on purpose (see test_mbus_corpus.REFUSED_ON_PURPOSE)")
    theirs = _their_records(raw)
    assert len(theirs) == len(ours)
    compared = 0
    for n, (their, our) in enumerate(zip(theirs, ours, strict=True)):
        try:
            value = their.value
        except Exception:  # pyMeterBus raises on some codings it does not know; nothing to compare with
            continue
        if isinstance(our.value, Decimal) and isinstance(value, int | float | Decimal) and not isinstance(value, bool):
            assert abs(float(value) - float(our.value)) <= 1e-6 * max(1.0, abs(float(value))), (n, value, our.value)
            compared += 1
    if any(isinstance(o.value, Decimal) for o in ours):
        assert compared > 0
