"""Registers <-> values: one codec for every Modbus data type and word order, used in both directions."""

from __future__ import annotations

import math
import struct
from enum import StrEnum


class DataType(StrEnum):
    """Register data types a profile may declare."""

    INT16 = "int16"
    UINT16 = "uint16"
    INT32 = "int32"
    UINT32 = "uint32"
    INT64 = "int64"
    UINT64 = "uint64"
    FLOAT32 = "float32"
    FLOAT64 = "float64"


class WordOrder(StrEnum):
    """Order of 16-bit words inside a multi-register value (bytes inside a word are always big-endian)."""

    BIG = "big"  # high word first (Modbus convention)
    LITTLE = "little"  # low word first


_STRUCT = {
    DataType.INT16: "h",
    DataType.UINT16: "H",
    DataType.INT32: "i",
    DataType.UINT32: "I",
    DataType.INT64: "q",
    DataType.UINT64: "Q",
    DataType.FLOAT32: "f",
    DataType.FLOAT64: "d",
}


class CodecError(ValueError):
    """Registers cannot be decoded, or a value cannot be encoded, as asked."""


def register_count(dtype: DataType) -> int:
    """Number of 16-bit registers a value of `dtype` occupies."""
    return struct.calcsize(">" + _STRUCT[dtype]) // 2


def decode(
    registers: list[int] | tuple[int, ...], dtype: DataType, word_order: WordOrder = WordOrder.BIG
) -> int | float:
    """Decode registers (each 0..65535) into a number."""
    n = register_count(dtype)
    if len(registers) != n:
        raise CodecError(f"{dtype} needs {n} registers, got {len(registers)}")
    words = list(registers)
    if any(not 0 <= w <= 0xFFFF for w in words):
        raise CodecError(f"register value out of 0..65535 in {words}")
    if word_order is WordOrder.LITTLE:
        words.reverse()
    raw = b"".join(w.to_bytes(2, "big") for w in words)
    return struct.unpack(">" + _STRUCT[dtype], raw)[0]


def encode(value: int | float, dtype: DataType, word_order: WordOrder = WordOrder.BIG) -> list[int]:
    """Encode a number into registers; integers must fit the type exactly."""
    fmt = ">" + _STRUCT[dtype]
    if dtype in (DataType.FLOAT32, DataType.FLOAT64):
        value = float(value)
    else:
        if isinstance(value, float):
            if not value.is_integer():
                raise CodecError(f"{value} is not an integer for {dtype}")
            value = int(value)
    try:
        raw = struct.pack(fmt, value)
    except (struct.error, OverflowError) as exc:
        raise CodecError(f"{value} does not fit {dtype}: {exc}") from exc
    words = [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2)]
    if word_order is WordOrder.LITTLE:
        words.reverse()
    return words


#: Named "not available" patterns a profile may declare instead of a number (`na: [min]`).
NA_KEYWORDS = ("min", "max", "ones", "nan")


def na_pattern_bits(keyword: str, dtype: DataType) -> int | None:
    """Raw bit pattern (unsigned, high word first) of a named "not available" marker; None for NaN (any NaN)."""
    bits = 16 * register_count(dtype)
    if keyword == "nan":
        if dtype not in (DataType.FLOAT32, DataType.FLOAT64):
            raise CodecError(f"`nan` is no pattern of the integer type {dtype}")
        return None
    if keyword == "ones":
        return (1 << bits) - 1
    if dtype in (DataType.FLOAT32, DataType.FLOAT64):
        raise CodecError(f"`{keyword}` is no pattern of the float type {dtype} (use nan or a number)")
    signed = dtype in (DataType.INT16, DataType.INT32, DataType.INT64)
    if keyword == "min":  # most negative signed value: 0x8000...; 0 is no marker for an unsigned type
        if not signed:
            raise CodecError(f"`min` of the unsigned type {dtype} is 0, a real reading: use a number")
        return 1 << (bits - 1)
    if keyword == "max":
        return (1 << (bits - 1)) - 1 if signed else (1 << bits) - 1
    raise CodecError(f"unknown not-available pattern {keyword!r} (use a number or one of {', '.join(NA_KEYWORDS)})")


def is_not_available(
    registers: list[int] | tuple[int, ...],
    dtype: DataType,
    word_order: WordOrder,
    patterns: list[int | str] | tuple[int | str, ...],
) -> bool:
    """Whether the registers carry one of the declared "not available" patterns (numbers compare as decoded)."""
    if not patterns:
        return False
    words = list(registers)
    if word_order is WordOrder.LITTLE:
        words.reverse()
    bits = int.from_bytes(b"".join(w.to_bytes(2, "big") for w in words), "big")
    value = None
    for pat in patterns:
        if isinstance(pat, str):
            want = na_pattern_bits(pat, dtype)
            if want is None:
                if value is None:
                    value = decode(registers, dtype, word_order)
                if isinstance(value, float) and math.isnan(value):
                    return True
            elif bits == want:
                return True
        else:
            if value is None:
                value = decode(registers, dtype, word_order)
            if value == pat:
                return True
    return False


def to_engineering(raw: int | float, scale: float = 1.0, offset: float = 0.0) -> float:
    """Apply a profile's scale and offset; integer raw values are scaled without binary float noise."""
    if isinstance(raw, float):
        if math.isnan(raw) or math.isinf(raw):
            raise CodecError(f"non-finite value {raw}")
        return raw * scale + offset
    value = raw * scale + offset
    # Round away representation noise: keep the decimals the scale implies (e.g. 0.01 -> 2 digits + margin).
    digits = max(0, -math.floor(math.log10(abs(scale)))) + 3 if scale else 0
    return round(value, digits)


def from_engineering(value: float, scale: float = 1.0, offset: float = 0.0, integer: bool = True) -> int | float:
    """Inverse of to_engineering: engineering value to raw register number."""
    if scale == 0:
        raise CodecError("scale must not be zero")
    raw = (value - offset) / scale
    if integer:
        rounded = round(raw)
        if abs(rounded - raw) > 1e-6 * max(1.0, abs(raw)):
            raise CodecError(f"{value} is not a multiple of the register resolution {scale}")
        return int(rounded)
    return raw


def normalise_pf(pf: float, active_power: float) -> float:
    """Power factor in the catalogue's convention: |PF| with the sign of the active power (negative = export)."""
    magnitude = min(abs(pf), 1.0) if abs(pf) <= 1.0 + 1e-6 else abs(pf)  # a value >1 stays for the range check
    return -magnitude if active_power < 0 else magnitude
