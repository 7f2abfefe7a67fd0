"""Reading and writing GGUF files (versions 2 and 3) in pure Python.

Layout of a GGUF file (all little-endian):

    magic "GGUF" | version u32 | n_tensors u64 | n_kv u64
    n_kv x        (key: string, value_type u32, value)
    n_tensors x   (name: string, n_dims u32, ne[n_dims] u64, ggml_type u32, offset u64)
    padding to `general.alignment` (default 32)
    tensor data   (each tensor at data_offset + offset, offsets aligned)

A string is a u64 byte length followed by UTF-8 bytes; an array is an element type
u32, a u64 count and the elements (arrays may nest).

The reader maps the file and validates every count, length and offset against the
file size before using it, so a damaged file raises :class:`pyllama.errors.ModelError`
naming the field instead of allocating absurd amounts of memory or reading past the
end.  Metadata comes back as native Python values: ints, floats, bools, strs; string
arrays as :class:`StringArray` (a read-only sequence of str that keeps the file's
bytes and decodes an item when asked: a 49k-entry vocabulary is one bytes object,
not 49k Python strings); numeric and bool arrays as numpy arrays (its scores do not
become 49k Python floats); nested arrays as lists.

The writer (:func:`write_gguf`) produces version 3 files; value types are inferred
from Python values or given explicitly with :class:`GGUFValue`.
"""

from __future__ import annotations

import enum
import mmap
import os
import struct
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, NamedTuple, Union

import numpy as np

from .errors import ModelError

GGUF_MAGIC = b"GGUF"
GGUF_DEFAULT_ALIGNMENT = 32
MAX_ARRAY_NESTING = 8
MAX_DIMS = 4  # GGML_MAX_DIMS


class ValueType(enum.IntEnum):
    UINT8 = 0
    INT8 = 1
    UINT16 = 2
    INT16 = 3
    UINT32 = 4
    INT32 = 5
    FLOAT32 = 6
    BOOL = 7
    STRING = 8
    ARRAY = 9
    UINT64 = 10
    INT64 = 11
    FLOAT64 = 12


# numpy dtype of each fixed-size value type (little-endian)
_DTYPES = {
    ValueType.UINT8: np.dtype("<u1"),
    ValueType.INT8: np.dtype("<i1"),
    ValueType.UINT16: np.dtype("<u2"),
    ValueType.INT16: np.dtype("<i2"),
    ValueType.UINT32: np.dtype("<u4"),
    ValueType.INT32: np.dtype("<i4"),
    ValueType.FLOAT32: np.dtype("<f4"),
    ValueType.BOOL: np.dtype("?"),
    ValueType.UINT64: np.dtype("<u8"),
    ValueType.INT64: np.dtype("<i8"),
    ValueType.FLOAT64: np.dtype("<f8"),
}
_STRUCT = {
    t: struct.Struct("<" + c)
    for t, c in zip(
        (ValueType.UINT8, ValueType.INT8, ValueType.UINT16, ValueType.INT16, ValueType.UINT32, ValueType.INT32,
         ValueType.FLOAT32, ValueType.BOOL, ValueType.UINT64, ValueType.INT64, ValueType.FLOAT64),
        "BbHhIif?Qqd",
    )
}


class GGMLType(enum.IntEnum):
    F32 = 0
    F16 = 1
    Q4_0 = 2
    Q4_1 = 3
    Q5_0 = 6
    Q5_1 = 7
    Q8_0 = 8
    Q8_1 = 9
    Q2_K = 10
    Q3_K = 11
    Q4_K = 12
    Q5_K = 13
    Q6_K = 14
    Q8_K = 15
    IQ2_XXS = 16
    IQ2_XS = 17
    IQ3_XXS = 18
    IQ1_S = 19
    IQ4_NL = 20
    IQ3_S = 21
    IQ2_S = 22
    IQ4_XS = 23
    I8 = 24
    I16 = 25
    I32 = 26
    I64 = 27
    F64 = 28
    IQ1_M = 29
    BF16 = 30
    TQ1_0 = 34
    TQ2_0 = 35
    MXFP4 = 39
    NVFP4 = 40
    Q1_0 = 41


# ggml type -> (elements per block, bytes per block)
GGML_BLOCK_SIZES: dict[int, tuple[int, int]] = {
    GGMLType.F32: (1, 4),
    GGMLType.F16: (1, 2),
    GGMLType.Q4_0: (32, 2 + 16),
    GGMLType.Q4_1: (32, 2 + 2 + 16),
    GGMLType.Q5_0: (32, 2 + 4 + 16),
    GGMLType.Q5_1: (32, 2 + 2 + 4 + 16),
    GGMLType.Q8_0: (32, 2 + 32),
    GGMLType.Q8_1: (32, 4 + 4 + 32),
    GGMLType.Q2_K: (256, 84),
    GGMLType.Q3_K: (256, 110),
    GGMLType.Q4_K: (256, 144),
    GGMLType.Q5_K: (256, 176),
    GGMLType.Q6_K: (256, 210),
    GGMLType.Q8_K: (256, 292),
    GGMLType.IQ2_XXS: (256, 66),
    GGMLType.IQ2_XS: (256, 74),
    GGMLType.IQ3_XXS: (256, 98),
    GGMLType.IQ1_S: (256, 50),
    GGMLType.IQ4_NL: (32, 18),
    GGMLType.IQ3_S: (256, 110),
    GGMLType.IQ2_S: (256, 82),
    GGMLType.IQ4_XS: (256, 136),
    GGMLType.I8: (1, 1),
    GGMLType.I16: (1, 2),
    GGMLType.I32: (1, 4),
    GGMLType.I64: (1, 8),
    GGMLType.F64: (1, 8),
    GGMLType.IQ1_M: (256, 56),
    GGMLType.BF16: (1, 2),
    GGMLType.TQ1_0: (256, 54),
    GGMLType.TQ2_0: (256, 66),
    GGMLType.MXFP4: (32, 17),
    GGMLType.NVFP4: (64, 36),
    GGMLType.Q1_0: (128, 18),
}


def ggml_type_name(t: int) -> str:
    try:
        return GGMLType(t).name
    except ValueError:
        return f"type {t}"


def tensor_nbytes(ggml_type: int, shape: Iterable[int]) -> int:
    """Size in bytes of a tensor of `ggml_type` with GGML-order `shape` (ne[0] first)."""
    block, size = GGML_BLOCK_SIZES[ggml_type]
    shape = tuple(shape)
    n = 1
    for d in shape:
        n *= d
    if shape and shape[0] % block:
        raise ValueError(f"row length {shape[0]} is not a multiple of the {ggml_type_name(ggml_type)} block size {block}")
    return n // block * size


@dataclass(frozen=True)
class TensorInfo:
    name: str
    type: int
    shape: tuple  # GGML order: shape[0] = ne[0] = row length (contiguous dimension)
    offset: int  # absolute byte offset of the data in the file
    nbytes: int

    @property
    def type_name(self) -> str:
        return ggml_type_name(self.type)

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


# A value's GGUF type: a ValueType for scalars, or a tuple for arrays:
# (ValueType.ARRAY, elem_type) / (ValueType.ARRAY, ValueType.ARRAY, elem_type) ...
TypeSpec = Union[int, tuple]


class StringArray(Sequence):
    """A GGUF string array as the file stores it (per string a u64 length, then its
    bytes), read as a sequence of str. Items are decoded on access (invalid UTF-8 with
    ``surrogateescape``, so ``s.encode("utf-8", "surrogateescape")`` gives the bytes
    back); ``raw`` hands the stored bytes to the C tokenizer as they are. Compares equal
    to any sequence with the same strings."""

    __slots__ = ("raw", "_starts")

    def __init__(self, raw: bytes, starts):
        self.raw = raw          # the array's bytes
        self._starts = starts   # where each string's length field is, then len(raw)

    @classmethod
    def from_strings(cls, items) -> "StringArray":
        parts, starts, pos = [], array("Q"), 0
        for s in items:
            b = s if isinstance(s, bytes) else s.encode("utf-8", "surrogateescape")
            starts.append(pos)
            parts.append(struct.pack("<Q", len(b)) + b)
            pos += 8 + len(b)
        starts.append(pos)
        return cls(b"".join(parts), starts)

    def __len__(self) -> int:
        return len(self._starts) - 1

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError("StringArray index out of range")
        return _decode(self.raw[self._starts[i] + 8 : self._starts[i + 1]])

    def __iter__(self):
        raw, starts = self.raw, self._starts
        for i in range(len(starts) - 1):
            yield _decode(raw[starts[i] + 8 : starts[i + 1]])

    def __eq__(self, other) -> bool:
        if isinstance(other, StringArray):
            return self.raw == other.raw
        if isinstance(other, list):  # stands in for the list read_metadata used to return
            return len(other) == len(self) and all(a == b for a, b in zip(self, other))
        return NotImplemented

    def tolist(self) -> list:
        """The strings as a list (e.g. for json.dumps)."""
        return list(self)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        head = ", ".join(repr(s) for s in self[:5])
        return f"StringArray([{head}{', ...' if len(self) > 5 else ''}], {len(self)} items)"


class GGUFValue(NamedTuple):
    """A metadata value with an explicit GGUF type, for :func:`write_gguf`.

    ``GGUFValue(7, ValueType.INT32)``, ``GGUFValue([1, 2], (ValueType.ARRAY, ValueType.UINT64))``.
    """

    value: Any
    type: TypeSpec


@dataclass
class GGUFFile:
    """A parsed GGUF file. Tensor data stays in the file; read it with :meth:`tensor_bytes`."""

    path: str
    version: int
    metadata: dict
    value_types: dict  # key -> TypeSpec as stored in the file
    tensors: list
    alignment: int
    data_offset: int
    file_size: int
    _map: Any = field(default=None, repr=False)

    def tensor(self, name: str) -> TensorInfo:
        for t in self.tensors:
            if t.name == name:
                return t
        raise KeyError(name)

    def tensor_bytes(self, t: TensorInfo | str) -> np.ndarray:
        """The raw bytes of tensor `t` as a read-only uint8 numpy view of the mapped file."""
        if isinstance(t, str):
            t = self.tensor(t)
        if self._map is None:
            with open(self.path, "rb") as f:
                if os.fstat(f.fileno()).st_size != self.file_size:
                    raise ModelError(f"{self.path}: file changed size since it was read")
                self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        return np.frombuffer(self._map, dtype=np.uint8, count=t.nbytes, offset=t.offset)

    def typed_metadata(self) -> dict:
        """Metadata with each value wrapped in :class:`GGUFValue` carrying its stored type."""
        return {k: GGUFValue(v, self.value_types[k]) for k, v in self.metadata.items()}

    def close(self) -> None:
        if self._map is not None:
            try:
                self._map.close()
            except BufferError:  # numpy views still alive: let garbage collection close it
                pass
            self._map = None

    def __enter__(self) -> "GGUFFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ----------------------------------------------------------------------------------------
# reading


class _Parser:
    """Cursor over the mapped file with bounds-checked primitive reads."""

    def __init__(self, buf, size: int, path: str):
        self.buf = buf
        self.size = size
        self.path = path
        self.pos = 0

    def fail(self, what: str) -> ModelError:
        return ModelError(f"{self.path}: {what}")

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.size:
            raise self.fail(
                f"{what} needs {n} bytes at offset {self.pos} but the file ends at {self.size} (truncated or corrupt)"
            )

    def scalar(self, vt: int, what: str):
        st = _STRUCT[vt]
        self.need(st.size, what)
        (v,) = st.unpack_from(self.buf, self.pos)
        self.pos += st.size
        return v

    def u32(self, what: str) -> int:
        return self.scalar(ValueType.UINT32, what)

    def u64(self, what: str) -> int:
        return self.scalar(ValueType.UINT64, what)

    def string(self, what: str) -> str:
        n = self.u64(f"length of {what}")
        if n > self.size - self.pos:
            raise self.fail(f"{what}: string length {n} runs past the end of the file")
        raw = self.buf[self.pos : self.pos + n]
        self.pos += n
        return _decode(raw)

    def count(self, n: int, min_item_size: int, what: str) -> int:
        if n * min_item_size > self.size - self.pos:
            raise self.fail(f"{what} = {n} is impossible: the rest of the file has only {self.size - self.pos} bytes")
        return n

    def value(self, vt: int, what: str, depth: int = 0):
        """Read one value of type `vt`; returns (value, typespec)."""
        if vt in _STRUCT:
            v = self.scalar(vt, what)
            if vt == ValueType.BOOL:
                v = bool(v)
            return v, ValueType(vt)
        if vt == ValueType.STRING:
            return self.string(what), ValueType.STRING
        if vt == ValueType.ARRAY:
            return self.array(what, depth)
        raise self.fail(f"{what}: unknown value type {vt}")

    def array(self, what: str, depth: int):
        if depth >= MAX_ARRAY_NESTING:
            raise self.fail(f"{what}: arrays nested more than {MAX_ARRAY_NESTING} deep")
        et = self.u32(f"element type of {what}")
        n = self.u64(f"element count of {what}")
        if et in _DTYPES:
            dt = _DTYPES[et]
            self.count(n, dt.itemsize, f"element count of {what}")
            a = np.frombuffer(self.buf, dtype=dt, count=n, offset=self.pos).copy()
            self.pos += n * dt.itemsize
            if et == ValueType.BOOL:
                a = a.view(np.uint8) != 0  # any nonzero byte is true
            return a, (ValueType.ARRAY, ValueType(et))
        if et == ValueType.STRING:
            self.count(n, 8, f"element count of {what}")
            return self.string_array(n, what), (ValueType.ARRAY, ValueType.STRING)
        if et == ValueType.ARRAY:
            self.count(n, 12, f"element count of {what}")
            items = []
            sub = (ValueType.ARRAY, ValueType.UINT8)
            for i in range(n):
                v, t = self.array(f"{what}[{i}]", depth + 1)
                if i == 0:
                    sub = t
                items.append(v)
            return items, (ValueType.ARRAY,) + tuple(sub)
        raise self.fail(f"{what}: unknown array element type {et}")

    def string_array(self, n: int, what: str) -> StringArray:
        buf, size, first = self.buf, self.size, self.pos
        unpack = struct.Struct("<Q").unpack_from
        starts = array("Q", bytes(8 * (n + 1)))
        pos = first
        try:
            for i in range(n):
                (ln,) = unpack(buf, pos)
                starts[i] = pos - first
                pos += 8 + ln
                if pos > size:
                    raise self.fail(f"{what}[{i}]: string length {ln} runs past the end of the file")
        except struct.error:
            raise self.fail(f"{what}[{i}]: truncated string length (file ends at {size})") from None
        starts[n] = pos - first
        self.pos = pos
        if pos - first < 1 << 32:
            starts = array("I", starts)  # half the size for every real vocabulary
        return StringArray(bytes(buf[first:pos]), starts)


def _decode(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        # keep the bytes recoverable: .encode("utf-8", "surrogateescape") gives them back
        return raw.decode("utf-8", "surrogateescape")


def _open_map(path):
    path = os.fspath(path)
    try:
        f = open(path, "rb")
    except OSError as e:
        raise ModelError(f"cannot open model file {path}: {e.strerror or e}") from e
    with f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            raise ModelError(f"{path}: empty file (not a GGUF file)")
        return path, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ), size


def _parse_header(p: _Parser):
    p.need(4, "magic")
    magic = bytes(p.buf[0:4])
    if magic != GGUF_MAGIC:
        raise p.fail(f"bad magic {magic!r}: not a GGUF file (expected b'GGUF')")
    p.pos = 4
    version = p.u32("version")
    if version not in (2, 3):
        if version & 0xFFFF == 0 and (version >> 16) in (2 << 8, 3 << 8):
            raise p.fail(f"version field {version:#x}: big-endian GGUF files are not supported")
        if version == 1:
            raise p.fail("GGUF version 1 is not supported (only versions 2 and 3)")
        raise p.fail(f"unsupported GGUF version {version} (only versions 2 and 3)")
    n_tensors = p.u64("tensor count")
    n_kv = p.u64("metadata key/value count")
    p.count(n_tensors, 8 + 4 + 4 + 8, "tensor count")
    p.count(n_kv, 8 + 4 + 1, "metadata key/value count")
    metadata: dict = {}
    types: dict = {}
    for i in range(n_kv):
        key = p.string(f"metadata key #{i}")
        if key in metadata:
            raise p.fail(f"duplicate metadata key {key!r}")
        vt = p.u32(f"value type of metadata key {key!r}")
        metadata[key], types[key] = p.value(vt, f"metadata {key!r}")
    return version, n_tensors, metadata, types


def read_metadata(path) -> dict:
    """Read only the header and metadata of the GGUF file at `path`."""
    path, buf, size = _open_map(path)
    try:
        return _parse_header(_Parser(buf, size, path))[2]
    finally:
        buf.close()


def read_gguf(path) -> GGUFFile:
    """Parse the GGUF file at `path`: metadata, tensor infos, alignment and data offset."""
    path, buf, size = _open_map(path)
    try:
        p = _Parser(buf, size, path)
        version, n_tensors, metadata, types = _parse_header(p)

        alignment = GGUF_DEFAULT_ALIGNMENT
        if "general.alignment" in metadata:
            alignment = metadata["general.alignment"]
            if types["general.alignment"] != ValueType.UINT32:
                raise p.fail(f"general.alignment has type {_type_str(types['general.alignment'])}, expected UINT32")
            if alignment == 0 or alignment & (alignment - 1):
                raise p.fail(f"general.alignment = {alignment} is not a power of two")

        raw_infos = []
        names = set()
        for i in range(n_tensors):
            name = p.string(f"name of tensor #{i}")
            if name in names:
                raise p.fail(f"duplicate tensor name {name!r}")
            names.add(name)
            n_dims = p.u32(f"n_dims of tensor {name!r}")
            if n_dims > MAX_DIMS:
                raise p.fail(f"tensor {name!r}: n_dims = {n_dims} exceeds the maximum of {MAX_DIMS}")
            shape = tuple(p.u64(f"dimension {d} of tensor {name!r}") for d in range(n_dims))
            ttype = p.u32(f"type of tensor {name!r}")
            offset = p.u64(f"data offset of tensor {name!r}")
            raw_infos.append((name, shape, ttype, offset))

        data_offset = -(-p.pos // alignment) * alignment
        if data_offset > size:
            raise p.fail(f"tensor data section starts at {data_offset}, past the end of the file ({size} bytes)")
        data_size = size - data_offset

        tensors = []
        for name, shape, ttype, offset in raw_infos:
            if ttype not in GGML_BLOCK_SIZES:
                raise p.fail(f"tensor {name!r} has unknown ggml type {ttype}")
            block, bsize = GGML_BLOCK_SIZES[ttype]
            if any(d == 0 for d in shape):
                raise p.fail(f"tensor {name!r} has a zero dimension in shape {shape}")
            if shape and shape[0] % block:
                raise p.fail(
                    f"tensor {name!r}: row length {shape[0]} is not a multiple of the "
                    f"{ggml_type_name(ttype)} block size {block}"
                )
            n = 1
            for d in shape:
                n *= d
                if n > data_size * block:  # stop before products get absurd
                    raise p.fail(f"tensor {name!r}: shape {shape} is larger than the file")
            nbytes = n // block * bsize
            if offset % alignment:
                raise p.fail(f"tensor {name!r}: data offset {offset} is not a multiple of the alignment {alignment}")
            if offset + nbytes > data_size:
                raise p.fail(
                    f"tensor {name!r}: data [{offset}, {offset + nbytes}) runs past the end of the "
                    f"tensor data section ({data_size} bytes)"
                )
            tensors.append(TensorInfo(name, ttype, shape, data_offset + offset, nbytes))
        return GGUFFile(path, version, metadata, types, tensors, alignment, data_offset, size)
    finally:
        buf.close()


def _type_str(t: TypeSpec) -> str:
    if isinstance(t, tuple):
        return "[" * (len(t) - 1) + ValueType(t[-1]).name + "]" * (len(t) - 1)
    return ValueType(t).name


# ----------------------------------------------------------------------------------------
# writing


def _infer_type(v) -> TypeSpec:
    if isinstance(v, GGUFValue):
        return v.type
    if isinstance(v, (bool, np.bool_)):
        return ValueType.BOOL
    if isinstance(v, (int, np.integer)):
        v = int(v)
        if 0 <= v < 2**32:
            return ValueType.UINT32  # llama.cpp's convention for counts and token ids
        if -(2**31) <= v < 0:
            return ValueType.INT32
        if v < 2**63 and v >= -(2**63):
            return ValueType.INT64
        if 0 <= v < 2**64:
            return ValueType.UINT64
        raise ValueError(f"integer {v} does not fit in 64 bits")
    if isinstance(v, (float, np.floating)):
        return ValueType.FLOAT32
    if isinstance(v, (str, bytes)):
        return ValueType.STRING
    if isinstance(v, np.ndarray):
        for t, dt in _DTYPES.items():
            if v.dtype == dt or (v.dtype.kind == dt.kind and v.dtype.itemsize == dt.itemsize):
                return (ValueType.ARRAY, t)
        raise ValueError(f"numpy dtype {v.dtype} has no GGUF value type")
    if isinstance(v, StringArray):
        return (ValueType.ARRAY, ValueType.STRING)
    if isinstance(v, (list, tuple)):
        if not v:
            return (ValueType.ARRAY, ValueType.INT32)
        if all(isinstance(x, (str, bytes)) for x in v):
            return (ValueType.ARRAY, ValueType.STRING)
        if all(isinstance(x, (bool, np.bool_)) for x in v):
            return (ValueType.ARRAY, ValueType.BOOL)
        if all(isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_)) for x in v):
            lo, hi = min(int(x) for x in v), max(int(x) for x in v)
            return (ValueType.ARRAY, ValueType.INT32 if -(2**31) <= lo and hi < 2**31 else ValueType.INT64)
        if all(isinstance(x, (int, float, np.integer, np.floating)) for x in v):
            return (ValueType.ARRAY, ValueType.FLOAT32)
        if all(isinstance(x, (list, tuple, np.ndarray, GGUFValue, StringArray)) for x in v):
            return (ValueType.ARRAY,) + _as_tuple(_infer_type(v[0]))
        raise ValueError(f"cannot infer one GGUF type for the mixed list {v[:5]!r}...")
    raise ValueError(f"cannot infer a GGUF type for {type(v).__name__} value {v!r}")


def _as_tuple(t: TypeSpec) -> tuple:
    return tuple(t) if isinstance(t, tuple) else (t,)


def _encode_str(s) -> bytes:
    b = s if isinstance(s, bytes) else s.encode("utf-8", "surrogateescape")
    return struct.pack("<Q", len(b)) + b


def _encode_value(v, t: TypeSpec, out: list) -> None:
    """Append the encoding of value `v` (without its type tag) with type `t` to `out`."""
    if isinstance(v, GGUFValue):
        v = v.value
    t = _as_tuple(t)
    head = t[0]
    if head == ValueType.ARRAY:
        if len(t) < 2:
            raise ValueError("an ARRAY type needs an element type: (ValueType.ARRAY, elem_type)")
        elem = t[1:]
        if elem[0] in _DTYPES:
            a = np.asarray(v, dtype=_DTYPES[elem[0]]).reshape(-1)
            out.append(struct.pack("<IQ", elem[0], a.size))
            out.append(a.tobytes())
        elif elem[0] == ValueType.STRING:
            out.append(struct.pack("<IQ", ValueType.STRING, len(v)))
            out.append(v.raw if isinstance(v, StringArray) else b"".join(_encode_str(s) for s in v))
        elif elem[0] == ValueType.ARRAY:
            out.append(struct.pack("<IQ", ValueType.ARRAY, len(v)))
            for x in v:
                # an inner GGUFValue may carry its own element type
                _encode_value(x, x.type if isinstance(x, GGUFValue) else elem, out)
        else:
            raise ValueError(f"unknown element type {elem[0]}")
        return
    if head == ValueType.STRING:
        out.append(_encode_str(v))
    elif head in _STRUCT:
        if head == ValueType.BOOL:
            v = bool(v)
        elif _DTYPES[head].kind in "iu":
            v = int(v)
        else:
            v = float(v)
        out.append(_STRUCT[head].pack(v))
    else:
        raise ValueError(f"unknown value type {head}")


TensorData = Union[bytes, bytearray, memoryview, np.ndarray, Callable[[], Any]]


def write_gguf(path, metadata: dict, tensors: list, alignment: int | None = None, progress=None) -> None:
    """Write a GGUF v3 file.

    `metadata`: key -> value (type inferred: non-negative int -> UINT32, negative int -> INT32,
    float -> FLOAT32, bool, str, list of str / ints / floats, numpy arrays by dtype) or
    :class:`GGUFValue` for an explicit type.
    `tensors`: list of (name, ggml_type, shape in GGML order, data); data is bytes-like, a
    numpy array, or a zero-argument callable returning one (called while writing, so large
    models need not sit in memory at once).
    `alignment`: tensor data alignment; default ``general.alignment`` from `metadata` or 32.
    `progress`: optional callable(index, n_tensors, name) called before each tensor is written.
    The file is written to a temporary name and renamed into place when complete.
    """
    path = os.fspath(path)
    meta = dict(metadata)
    if alignment is None:
        a = meta.get("general.alignment", GGUF_DEFAULT_ALIGNMENT)
        alignment = int(a.value if isinstance(a, GGUFValue) else a)
    if alignment <= 0 or alignment & (alignment - 1):
        raise ValueError(f"alignment {alignment} is not a power of two")
    if alignment != GGUF_DEFAULT_ALIGNMENT or "general.alignment" in meta:
        meta["general.alignment"] = GGUFValue(alignment, ValueType.UINT32)

    header = [GGUF_MAGIC, struct.pack("<IQQ", 3, len(tensors), len(meta))]
    for key, v in meta.items():
        t = _infer_type(v)
        header.append(_encode_str(key))
        header.append(struct.pack("<I", _as_tuple(t)[0]))
        _encode_value(v, t, header)

    offset = 0
    layout = []
    seen = set()
    for name, ttype, shape, data in tensors:
        if name in seen:
            raise ValueError(f"duplicate tensor name {name!r}")
        seen.add(name)
        shape = tuple(int(d) for d in shape)
        if len(shape) > MAX_DIMS:
            raise ValueError(f"tensor {name!r}: more than {MAX_DIMS} dimensions")
        nbytes = tensor_nbytes(ttype, shape)
        header.append(_encode_str(name))
        header.append(struct.pack(f"<I{len(shape)}QIQ", len(shape), *shape, int(ttype), offset))
        layout.append((name, nbytes, data, offset))
        offset += -(-nbytes // alignment) * alignment

    tmp = path + ".tmp"
    try:
        with open(tmp, "wb") as f:
            hdr = b"".join(header)
            f.write(hdr)
            f.write(b"\0" * (-len(hdr) % alignment))
            start = f.tell()
            for i, (name, nbytes, data, off) in enumerate(layout):
                if progress is not None:
                    progress(i, len(layout), name)
                if callable(data):
                    data = data()
                if isinstance(data, np.ndarray):
                    data = np.ascontiguousarray(data)
                mv = memoryview(data).cast("B")
                if mv.nbytes != nbytes:
                    raise ValueError(f"tensor {name!r}: {mv.nbytes} bytes of data but its type and shape need {nbytes}")
                pad = off - (f.tell() - start)
                f.write(b"\0" * pad)
                f.write(mv)
            f.write(b"\0" * (-(f.tell() - start) % alignment) if layout else b"")
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _main(argv=None) -> int:
    """`python -m pyllama.gguf FILE`: print metadata (long arrays abbreviated) and tensors."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m pyllama.gguf FILE.gguf", file=sys.stderr)
        return 2
    try:
        g = read_gguf(args[0])
    except ModelError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"GGUF v{g.version}, {len(g.metadata)} metadata keys, {len(g.tensors)} tensors, "
          f"alignment {g.alignment}, data at {g.data_offset}")
    for k, v in g.metadata.items():
        if isinstance(v, (list, np.ndarray, StringArray)) and len(v) > 8:
            v = f"[{', '.join(repr(x) for x in list(v[:5]))}, ... ({len(v)} items)]"
        elif isinstance(v, str) and len(v) > 120:
            v = repr(v[:120]) + f"... ({len(v)} chars)"
        print(f"  {k} ({_type_str(g.value_types[k])}) = {v}")
    for t in g.tensors:
        print(f"  {t.name:40s} {t.type_name:6s} {str(t.shape):20s} @ {t.offset}")
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
