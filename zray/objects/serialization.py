"""Turning values into bytes and back, with large buffers kept out of band.

Values are pickled with cloudpickle at protocol 5 (``Pickler``, which keeps the file names of
code pickled by value): numpy arrays, Arrow tables and anything else exporting ``PickleBuffer``
hand their buffers over out of band, so they are copied once into their destination and read
back in place (zero-copy) from the store's mapping.

One layout serves inline messages and store objects alike (all integers little-endian)::

    u32 magic  u32 n_buffers  u64 pickle_len  (u64 offset, u64 length) * n_buffers
    pickle bytes, then each buffer at its offset (64-byte aligned, from the start)

While a value is pickled, each ``ObjectRef`` inside it reports itself to the active
``SerializationContext``, so the runtime learns which refs an object contains and keeps
them alive as long as the object lives.
"""

from __future__ import annotations

import copyreg
import io
import marshal
import pickle
import struct
import threading
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import cloudpickle

_MAGIC = 0x5A524159  # "ZRAY"
_HEAD = struct.Struct("<IIQ")
_SPAN = struct.Struct("<QQ")
_ALIGN = 64

_context = threading.local()


class _DispatchTable(dict[type, Any]):
    """cloudpickle's reducers, and copyreg's registered since: a dict costs the C pickler
    less per object than cloudpickle's ChainMap."""

    def __missing__(self, kind: type) -> Any:
        return copyreg.dispatch_table[kind]


def _reduce_code(code: types.CodeType) -> Any:
    try:
        data = marshal.dumps(code)
    except ValueError:  # a constant marshal cannot write: cloudpickle's way then
        return cloudpickle.Pickler.dispatch_table[types.CodeType](code)
    files = getattr(_context, "code_files", None)
    if files is not None:
        files.add(code.co_filename)
    return marshal.loads, (data,)


class Pickler(cloudpickle.Pickler):
    """cloudpickle, except that code pickled by value keeps its file name.

    cloudpickle pickles by value what its module cannot give back by name: functions and
    classes of a script, and any decorated with ``@zray.remote``. Since 3.1 it names each such
    code object ``<dynamic-code>``, so a remote traceback or a warning would point nowhere.
    Here a code object travels as ``marshal`` writes it, whole, as in a ``.pyc``: the same
    Python reads it back (as cloudpickle's own way also needs)."""

    dispatch_table = _DispatchTable({**cloudpickle.Pickler.dispatch_table,
                                     types.CodeType: _reduce_code})


def register_serializer(cls: type, *, serializer: Callable[[Any], Any],
                        deserializer: Callable[[Any], Any]) -> None:
    """Ray's ``ray.util.register_serializer``: this process pickles instances of ``cls``
    as ``serializer(obj)``, read back anywhere as ``deserializer(that)`` (it travels with
    them, by value if need be: readers need not register anything)."""
    if not isinstance(cls, type):
        raise TypeError(f"register_serializer takes a class, got {cls!r}")
    if not callable(serializer) or not callable(deserializer):
        raise TypeError("register_serializer: serializer and deserializer must be callable")
    Pickler.dispatch_table[cls] = lambda obj: (deserializer, (serializer(obj),))


def deregister_serializer(cls: type) -> None:
    """Instances of ``cls`` are pickled as before ``register_serializer``."""
    Pickler.dispatch_table.pop(cls, None)


def dumps(value: Any, buffer_callback: Callable[[pickle.PickleBuffer], Any] | None = None,
          code_files: set[str] | None = None) -> bytes:
    """``value`` pickled by ``Pickler``; the files its code came from are added to
    ``code_files`` if given (zray/exported.py ships their source)."""
    outer = getattr(_context, "code_files", None)
    _context.code_files = code_files
    try:
        with io.BytesIO() as file:
            Pickler(file, protocol=5, buffer_callback=buffer_callback).dump(value)
            return file.getvalue()
    finally:
        _context.code_files = outer


@dataclass
class Serialized:
    """A value ready to be written: its size, and the refs it contains."""

    pickled: bytes
    buffers: list[memoryview]
    contained: list[bytes] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)
    size: int = 0

    def write_into(self, dest: memoryview) -> None:
        """Lay the value out in ``dest`` (at least ``size`` bytes): one copy per buffer."""
        at = 0
        for part in self._parts():
            n = len(part) if isinstance(part, bytes) else part.nbytes
            dest[at : at + n] = part
            at += n

    def to_bytes(self) -> bytes:
        """The layout as one bytes object, each part copied once."""
        return b"".join(self._parts())

    def _parts(self) -> list[Any]:
        """The layout, in order (the one definition of it): header, spans, pickle, then
        each buffer at its 64-byte aligned offset, zero padding between and after."""
        parts: list[Any] = [_HEAD.pack(_MAGIC, len(self.buffers), len(self.pickled))]
        parts += [_SPAN.pack(offset, buf.nbytes)
                  for offset, buf in zip(self.offsets, self.buffers, strict=True)]
        parts.append(self.pickled)
        if not self.buffers:  # the common small value: no padding
            return parts
        at = sum(len(part) for part in parts)
        for offset, buf in zip(self.offsets, self.buffers, strict=True):
            parts += [bytes(offset - at), buf]
            at = offset + buf.nbytes
        parts.append(bytes(self.size - at))
        return parts


def record_contained_ref(object_id: bytes) -> None:
    """Called by ObjectRef.__reduce__: note that the value being pickled holds this ref."""
    contained = getattr(_context, "contained", None)
    if contained is not None:
        contained.append(object_id)


_PLAIN = frozenset({int, float, str, bool, type(None)})  # pickled the same by C pickle


def _plain(value: Any, depth: int = 3) -> bool:
    """Whether ``value`` is builtin scalars in small, shallow tuples, lists and dicts: what
    plain ``pickle`` writes exactly as cloudpickle would, at a fraction of its cost (no
    Python-level pickler), with no refs, classes or functions inside."""
    kind = type(value)
    if kind in _PLAIN:
        return True
    if depth == 0:
        return False
    if kind is tuple or kind is list:
        if len(value) > 8:
            return False
        for item in value:  # (a loop: cheaper than all() over a generator here)
            if type(item) not in _PLAIN and not _plain(item, depth - 1):
                return False
        return True
    if kind is dict:
        if len(value) > 8:
            return False
        for key, item in value.items():
            if type(key) is not str or (type(item) not in _PLAIN and not _plain(item, depth - 1)):
                return False
        return True
    return False


def serialize(value: Any) -> Serialized:
    """Pickle ``value``; raises TypeError naming what could not be pickled."""
    if _plain(value):  # the common small argument list or result
        pickled = pickle.dumps(value, protocol=5)
        return Serialized(pickled, [], [], [], _HEAD.size + len(pickled))
    buffers: list[pickle.PickleBuffer] = []
    outer = getattr(_context, "contained", None)
    _context.contained = []
    try:
        pickled = dumps(value, buffers.append)
        contained = _context.contained
    except Exception as exc:
        culprit = find_unpicklable(value)
        where = f" (the part that fails: {culprit})" if culprit else ""
        raise TypeError(f"could not serialise {describe(value)}{where}: {exc}") from exc
    finally:
        _context.contained = outer
    views = [b.raw() for b in buffers]
    result = Serialized(pickled, views, contained)
    offset = _align(_HEAD.size + _SPAN.size * len(views) + len(pickled))
    for view in views:
        result.offsets.append(offset)
        offset = _align(offset + view.nbytes)
    result.size = offset if views else _HEAD.size + len(pickled)
    return result


def deserialize(data: memoryview | bytes) -> Any:
    """The value laid out in ``data``; buffers are views into ``data``, not copies."""
    view = memoryview(data)
    buffers = []
    for i in range(_header(view)[1]):
        offset, length = _SPAN.unpack_from(view, _HEAD.size + i * _SPAN.size)
        buffers.append(view[offset : offset + length])
    return pickle.loads(pickled_part(view), buffers=buffers)


def pickled_part(data: memoryview | bytes) -> memoryview:
    """The pickle stream of a serialised value (without its out-of-band buffers)."""
    view = memoryview(data)
    _, n_buffers, pickle_len = _header(view)
    start = _HEAD.size + n_buffers * _SPAN.size
    return view[start : start + pickle_len]


def _header(view: memoryview) -> tuple[int, int, int]:
    magic, n_buffers, pickle_len = _HEAD.unpack_from(view, 0)
    if magic != _MAGIC:
        raise ValueError("not a zray serialised object (bad magic)")
    return magic, n_buffers, pickle_len


def find_unpicklable(value: Any, path: str = "", depth: int = 3) -> str:
    """The path to the innermost attribute or item of ``value`` that fails to pickle."""
    if depth == 0:
        return path
    parts: list[tuple[str, Any]] = []
    if isinstance(value, dict):
        parts = [(f"{path}[{k!r}]", v) for k, v in value.items()]
    elif isinstance(value, (list, tuple, set)):
        parts = [(f"{path}[{i}]", v) for i, v in enumerate(value)]
    elif hasattr(value, "__dict__") and not isinstance(value, type):
        parts = [(f"{path}.{k}", v) for k, v in vars(value).items()]
    for sub_path, sub_value in parts:
        try:
            dumps(sub_value, lambda b: None)
        except Exception:
            return find_unpicklable(sub_value, sub_path, depth - 1) or sub_path
    return path


def describe(value: Any) -> str:
    text = repr(value)
    if len(text) > 80:
        text = text[:77] + "..."
    return f"{type(value).__name__} {text}"


def _align(n: int) -> int:
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN
