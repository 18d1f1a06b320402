"""Pure tests of value serialisation: roundtrips, out-of-band buffers, contained refs, errors."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from zray.objects.refs import ObjectRef
from zray.objects.serialization import deserialize, serialize

pytestmark = pytest.mark.timeout(30)


def roundtrip(value: Any) -> Any:
    return deserialize(serialize(value).to_bytes())


def address(buffer: Any) -> int:
    return int(np.frombuffer(buffer, dtype=np.uint8).ctypes.data)


@pytest.mark.parametrize("value", [
    None, 0, -1, 2**70, 1.5, float("inf"), "", "h\u00e9llo", b"", b"\x00" * 100,
    [], [1, [2, [3]]], (1, "a"), {"a": {"b": [None, True]}}, {1, 2, 3}, frozenset({b"x"}),
], ids=repr)
def test_plain_data_roundtrips(value: Any) -> None:
    out = roundtrip(value)
    assert out == value and type(out) is type(value)


def test_plain_data_has_no_buffers_and_exact_size() -> None:
    ser = serialize({"k": list(range(10))})
    assert ser.buffers == [] and ser.contained == []
    assert len(ser.to_bytes()) == ser.size


def test_lambda_roundtrips() -> None:
    assert roundtrip(lambda x: x + 1)(1) == 2


def test_numpy_array_is_out_of_band_and_read_in_place() -> None:
    array = np.arange(10_000, dtype=np.float64)
    ser = serialize(array)
    assert len(ser.buffers) == 1 and ser.buffers[0].nbytes == array.nbytes
    assert len(ser.pickled) < 1000  # the data is not in the pickle
    data = ser.to_bytes()
    assert len(data) == ser.size

    out = deserialize(memoryview(data))
    assert np.array_equal(out, array) and out.dtype == array.dtype
    whole = np.frombuffer(data, dtype=np.uint8)
    assert np.shares_memory(out, whole)  # zero-copy: a view of ``data``
    assert (out.ctypes.data - address(data)) % 64 == 0


def test_several_arrays_each_64_byte_aligned_in_a_writable_buffer() -> None:
    arrays = [np.arange(n, dtype=np.int8) for n in (1, 63, 65, 1000)]
    arrays.append(np.asfortranarray(np.arange(12.0).reshape(3, 4)))
    ser = serialize(arrays)
    assert len(ser.buffers) == len(arrays)
    assert all(offset % 64 == 0 for offset in ser.offsets)
    dest = bytearray(ser.size)
    ser.write_into(memoryview(dest))

    out = deserialize(memoryview(dest))
    base = address(dest)
    for got, want in zip(out, arrays, strict=True):
        assert np.array_equal(got, want)
        assert np.shares_memory(got, np.frombuffer(dest, dtype=np.uint8))
        assert (got.ctypes.data - base) % 64 == 0
    out[0][0] = 42  # a writable destination gives writable arrays
    assert dest[ser.offsets[0]] == 42


def test_non_contiguous_array_roundtrips() -> None:
    array = np.arange(100).reshape(10, 10)[::2, ::3]
    assert np.array_equal(roundtrip(array), array)


def test_arrow_table_roundtrips() -> None:
    table = pa.table({"n": pa.array(range(1000), pa.int64()), "s": ["x", "y"] * 500})
    ser = serialize(table)
    assert ser.buffers  # Arrow hands its buffers over out of band too
    out = deserialize(ser.to_bytes())
    assert out.equals(table)


def test_contained_refs_are_reported() -> None:
    a, b = ObjectRef(b"a" * 20, None, created=True), ObjectRef(b"b" * 20, None, created=True)
    ser = serialize({"one": a, "more": [b, (a,)]})
    assert sorted(set(ser.contained)) == [b"a" * 20, b"b" * 20]
    assert b"b" * 20 in ser.contained

    out = deserialize(ser.to_bytes())
    assert out["one"] == a and out["more"][0] == b and out["one"].id == b"a" * 20
    assert serialize([1, 2]).contained == []  # reported per value, not accumulated


def test_refs_next_to_plain_values_are_reported() -> None:
    """Small lists, tuples and dicts of builtin scalars take a faster pickler; a ref among
    them, or a subclass of a scalar, must still take the full one."""
    import enum

    class Colour(enum.IntEnum):
        RED = 1

    ref = ObjectRef(b"r" * 20, None, created=True)
    for value in [(ref,), ((1, 2.0), {"k": ref}), [None, [True, [ref]]]]:
        assert serialize(value).contained == [b"r" * 20]
    out = roundtrip(((Colour.RED,), {"x": [1, (2, "three")]}))
    assert type(out[0][0]) is Colour and out[1] == {"x": [1, (2, "three")]}
    ser = serialize(((7,), {}))
    assert len(ser.to_bytes()) == ser.size and roundtrip(((7,), {})) == ((7,), {})


def test_single_ref_is_reported() -> None:
    ref = ObjectRef(b"x" * 20, None, created=True)
    assert serialize(ref).contained == [b"x" * 20]


class Holder:
    def __init__(self) -> None:
        self.fine = [1, 2]
        self.lock = threading.Lock()


def test_unpicklable_attribute_is_named() -> None:
    with pytest.raises(TypeError, match=r"\.lock") as info:
        serialize(Holder())
    assert "Holder" in str(info.value)
    assert info.value.__cause__ is not None


def test_unpicklable_item_deep_inside_is_named_by_its_path() -> None:
    with pytest.raises(TypeError, match=r"\['k'\]\[1\]\.lock"):
        serialize({"k": [0, Holder()]})


def test_failed_serialize_does_not_leak_refs_into_the_next() -> None:
    ref = ObjectRef(b"x" * 20, None, created=True)
    with pytest.raises(TypeError):
        serialize([ref, threading.Lock()])
    assert serialize("after").contained == []


def test_bad_magic_is_refused() -> None:
    data = bytearray(serialize(1).to_bytes())
    data[0] ^= 0xFF
    with pytest.raises(ValueError, match="magic"):
        deserialize(bytes(data))
