"""Codec: every data type x word order, negative values, 64-bit energies, sentinels, exact scaling."""

from __future__ import annotations

import math
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meter_gateway.core.codec import (
    CodecError,
    DataType,
    WordOrder,
    decode,
    encode,
    from_engineering,
    is_not_available,
    na_pattern_bits,
    normalise_pf,
    register_count,
    to_engineering,
)

INT_RANGES = {
    DataType.INT16: (-(2**15), 2**15 - 1),
    DataType.UINT16: (0, 2**16 - 1),
    DataType.INT32: (-(2**31), 2**31 - 1),
    DataType.UINT32: (0, 2**32 - 1),
    DataType.INT64: (-(2**63), 2**63 - 1),
    DataType.UINT64: (0, 2**64 - 1),
}


@pytest.mark.parametrize(
    "dtype,count",
    [
        (DataType.INT16, 1),
        (DataType.UINT16, 1),
        (DataType.INT32, 2),
        (DataType.UINT32, 2),
        (DataType.FLOAT32, 2),
        (DataType.INT64, 4),
        (DataType.UINT64, 4),
        (DataType.FLOAT64, 4),
    ],
)
def test_register_count(dtype, count):
    assert register_count(dtype) == count


CASES = [
    # (type, order, value, registers)
    (DataType.INT16, WordOrder.BIG, -2, [0xFFFE]),
    (DataType.UINT16, WordOrder.BIG, 65535, [0xFFFF]),
    (DataType.INT32, WordOrder.BIG, -2, [0xFFFF, 0xFFFE]),
    (DataType.INT32, WordOrder.LITTLE, -2, [0xFFFE, 0xFFFF]),
    (DataType.UINT32, WordOrder.BIG, 0x12345678, [0x1234, 0x5678]),
    (DataType.UINT32, WordOrder.LITTLE, 0x12345678, [0x5678, 0x1234]),
    (DataType.INT64, WordOrder.BIG, 2**40 + 7, [0x0000, 0x0100, 0x0000, 0x0007]),
    (DataType.INT64, WordOrder.LITTLE, 2**40 + 7, [0x0007, 0x0000, 0x0100, 0x0000]),
    (DataType.INT64, WordOrder.BIG, -1, [0xFFFF] * 4),
    (DataType.UINT64, WordOrder.BIG, 2**64 - 1, [0xFFFF] * 4),
    (DataType.FLOAT32, WordOrder.BIG, 230.5, [0x4366, 0x8000]),
    (DataType.FLOAT32, WordOrder.LITTLE, 230.5, [0x8000, 0x4366]),
    (DataType.FLOAT32, WordOrder.BIG, -1.0, [0xBF80, 0x0000]),
    (DataType.FLOAT64, WordOrder.BIG, 1.5, [0x3FF8, 0, 0, 0]),
    (DataType.FLOAT64, WordOrder.LITTLE, 1.5, [0, 0, 0, 0x3FF8]),
]


@pytest.mark.parametrize("dtype,order,value,regs", CASES)
def test_known_encodings(dtype, order, value, regs):
    assert encode(value, dtype, order) == regs
    assert decode(regs, dtype, order) == value


@pytest.mark.parametrize("dtype", list(INT_RANGES))
@pytest.mark.parametrize("order", list(WordOrder))
def test_integer_round_trip_at_the_limits(dtype, order):
    lo, hi = INT_RANGES[dtype]
    for v in (lo, hi, 0, 1, lo + 1, hi - 1):
        assert decode(encode(v, dtype, order), dtype, order) == v


@pytest.mark.parametrize("dtype", list(INT_RANGES))
def test_overflow_is_an_error(dtype):
    lo, hi = INT_RANGES[dtype]
    with pytest.raises(CodecError):
        encode(hi + 1, dtype)
    with pytest.raises(CodecError):
        encode(lo - 1, dtype)


@given(st.data())
def test_round_trip_every_type_and_order(data):
    dtype = data.draw(st.sampled_from(list(DataType)))
    order = data.draw(st.sampled_from(list(WordOrder)))
    if dtype in INT_RANGES:
        lo, hi = INT_RANGES[dtype]
        v = data.draw(st.integers(lo, hi))
        assert decode(encode(v, dtype, order), dtype, order) == v
    else:
        width = 32 if dtype is DataType.FLOAT32 else 64
        v = data.draw(st.floats(allow_nan=False, allow_infinity=False, width=width))
        assert decode(encode(v, dtype, order), dtype, order) == v


@given(st.lists(st.integers(0, 0xFFFF), min_size=2, max_size=2))
def test_word_order_is_word_swap_only(regs):
    assert decode(regs, DataType.UINT32, WordOrder.LITTLE) == decode(regs[::-1], DataType.UINT32, WordOrder.BIG)


def test_wrong_register_count_and_bad_words():
    with pytest.raises(CodecError):
        decode([1], DataType.UINT32)
    with pytest.raises(CodecError):
        decode([1, 2, 3], DataType.FLOAT32)
    with pytest.raises(CodecError):
        decode([0x10000, 0], DataType.UINT32)
    with pytest.raises(CodecError):
        encode(1.5, DataType.INT32)


def test_scaling_is_exact_for_billing_values():
    assert to_engineering(123456789, 0.01) == 1234567.89
    assert to_engineering(2**40 + 7, 0.001) == 1099511627.783  # 64-bit Wh to kWh
    assert to_engineering(-2, 0.001) == -0.002
    assert to_engineering(12345, 0.1, offset=-1000.0) == 234.5
    for raw in range(0, 100000, 7):
        assert to_engineering(raw, 0.01) == round(raw / 100, 2)


def test_non_finite_floats_are_refused():
    with pytest.raises(CodecError):
        to_engineering(float("nan"))
    with pytest.raises(CodecError):
        to_engineering(float("inf"))
    nan_regs = list(struct.unpack(">HH", struct.pack(">f", math.nan)))
    assert math.isnan(decode(nan_regs, DataType.FLOAT32))


def test_from_engineering_inverse_and_resolution():
    assert from_engineering(1234567.89, 0.01) == 123456789
    assert from_engineering(30, 1) == 30
    assert from_engineering(2.5, 1, integer=False) == 2.5
    with pytest.raises(CodecError):
        from_engineering(0.005, 0.01)  # not a multiple of the register resolution
    with pytest.raises(CodecError):
        from_engineering(1, 0)


def test_profile_sentinel_reads_as_not_available(profiles):
    from meter_gateway.core.catalogue import load_catalogue
    from meter_gateway.drivers.modbus import decode_point

    prof, cat = profiles.get("carlo_gavazzi_em340"), load_catalogue()
    regs = encode(0x7FFFFFFF, DataType.INT32, WordOrder.LITTLE)
    reading = decode_point(cat, prof, "Active_Energy_Import", regs, 0)
    assert reading.value is None and "not available" in reading.error and reading.raw == tuple(regs)
    ok = decode_point(cat, prof, "Active_Energy_Import", encode(123456, DataType.INT32, WordOrder.LITTLE), 0)
    assert ok.value == 12345.6
    pf = decode_point(cat, prof, "Power_Factor_Total", encode(-950, DataType.INT16), 0)
    assert pf.value == -0.95


# -- "not available" patterns (issue 17) ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("dtype", "keyword", "words"),
    [
        (DataType.INT16, "min", [0x8000]),
        (DataType.INT16, "max", [0x7FFF]),
        (DataType.UINT16, "ones", [0xFFFF]),
        (DataType.UINT16, "max", [0xFFFF]),
        (DataType.INT32, "min", [0x8000, 0x0000]),
        (DataType.INT32, "max", [0x7FFF, 0xFFFF]),
        (DataType.UINT32, "ones", [0xFFFF, 0xFFFF]),
        (DataType.INT64, "min", [0x8000, 0, 0, 0]),
        (DataType.INT64, "max", [0x7FFF, 0xFFFF, 0xFFFF, 0xFFFF]),
        (DataType.UINT64, "ones", [0xFFFF] * 4),
        (DataType.FLOAT32, "nan", [0xFFC0, 0x0000]),
        (DataType.FLOAT32, "nan", [0x7FC0, 0x0000]),
        (DataType.FLOAT64, "nan", [0x7FF8, 0, 0, 0]),
        (DataType.FLOAT32, "ones", [0xFFFF, 0xFFFF]),
    ],
)
@pytest.mark.parametrize("order", list(WordOrder))
def test_named_not_available_patterns(dtype, keyword, words, order):
    wire = list(reversed(words)) if order is WordOrder.LITTLE else words
    assert is_not_available(wire, dtype, order, [keyword])
    # a real value of the same type is not taken for the marker
    assert not is_not_available(encode(1, dtype, order), dtype, order, [keyword])


def test_numeric_not_available_compares_the_decoded_value():
    assert is_not_available([0xFFFF, 0x7FFF], DataType.INT32, WordOrder.LITTLE, [0x7FFFFFFF])
    assert not is_not_available([0x7FFF, 0xFFFF], DataType.INT32, WordOrder.LITTLE, [0x7FFFFFFF])


@pytest.mark.parametrize(
    ("dtype", "keyword"),
    [(DataType.UINT32, "min"), (DataType.INT32, "nan"), (DataType.FLOAT32, "min"), (DataType.INT16, "zero")],
)
def test_meaningless_not_available_patterns_are_refused(dtype, keyword):
    with pytest.raises(CodecError):
        na_pattern_bits(keyword, dtype)


@pytest.mark.parametrize(
    ("pf", "p", "want"), [(0.9, 1.0, 0.9), (-0.9, 1.0, 0.9), (0.9, -1.0, -0.9), (-0.9, -2.0, -0.9), (0.5, 0.0, 0.5)]
)
def test_power_factor_takes_the_sign_of_active_power(pf, p, want):
    assert normalise_pf(pf, p) == want
