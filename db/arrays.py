"""Typed binary arrays: a numpy array is stored as raw little-endian bytes with its dtype and shape beside it.

Reading checks the recorded dtype and shape against the byte count and against what the caller expects, so a
truncated blob or an array of the wrong model never turns into silently wrong numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from db.errors import CorruptArray


@dataclass(frozen=True)
class EncodedArray:
    data: bytes
    dtype: str
    shape: str


def encode_array(array: np.ndarray, dtype: str) -> EncodedArray:
    """Encode `array` as `dtype` (a numpy dtype string such as '<f4'), little-endian and C-ordered."""
    typed = np.ascontiguousarray(array, dtype=np.dtype(dtype).newbyteorder("<"))
    return EncodedArray(typed.tobytes(), typed.dtype.str, ",".join(str(n) for n in typed.shape))


def parse_shape(shape: str) -> tuple[int, ...]:
    return tuple(int(n) for n in shape.split(",")) if shape else ()


def decode_array(
    data: bytes,
    dtype: str,
    shape: str,
    *,
    expected_dtype: str | None = None,
    expected_shape: tuple[int | None, ...] | None = None,
) -> np.ndarray:
    """Decode a stored array; `None` in `expected_shape` accepts any length on that axis."""
    dims = parse_shape(shape)
    item = np.dtype(dtype)
    if expected_dtype is not None and item != np.dtype(expected_dtype):
        raise CorruptArray(f"stored array has dtype {dtype}, expected {np.dtype(expected_dtype).str}")
    if expected_shape is not None and (
        len(dims) != len(expected_shape) or any(e is not None and e != d for d, e in zip(dims, expected_shape))
    ):
        raise CorruptArray(f"stored array has shape {dims}, expected {expected_shape}")
    if len(data) != math.prod(dims) * item.itemsize:
        raise CorruptArray(f"stored array of shape {dims} and dtype {dtype} has {len(data)} bytes, not "
                           f"{math.prod(dims) * item.itemsize}")
    return np.frombuffer(data, dtype=item).reshape(dims)
