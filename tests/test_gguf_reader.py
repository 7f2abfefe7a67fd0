"""pyllama.gguf against the `gguf` package (the reference implementation of the format).

* files written by gguf.GGUFWriter with every value type read back identically;
* the real default model's metadata and tensor table equal gguf.GGUFReader's;
* files written by pyllama.gguf.write_gguf read back identically with gguf.GGUFReader;
* truncated and corrupted files raise ModelError naming the field.
"""

import os
import struct

import numpy as np
import pytest

from pyllama import gguf as pg
from pyllama.errors import ModelError

gguf = pytest.importorskip("gguf", reason="the `gguf` package (reference reader/writer) is not installed")


def reference_metadata(reader):
    """Metadata via gguf.GGUFReader as {key: (python value, [types])}, skipping the GGUF.* pseudo-fields."""
    out = {}
    for name, f in reader.fields.items():
        if name.startswith("GGUF."):
            continue
        types = [int(t) for t in f.types]
        if types == [gguf.GGUFValueType.ARRAY]:  # empty array: GGUFReader lists no element type
            types.append(int(f.parts[3][0]))  # parts: key length, key, value type, element type, count
        if types[0] == gguf.GGUFValueType.ARRAY and len(types) == 2 and types[1] != gguf.GGUFValueType.STRING:
            value = [f.parts[i][0].item() for i in f.data]
        else:
            value = f.contents()
        out[name] = (value, types)
    return out


def flatten(v):
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, list):
        out = []
        for x in v:
            out.extend(flatten(x) if isinstance(x, (list, np.ndarray)) else [x])
        return out
    return v


def typespec_list(t):
    return [int(x) for x in t] if isinstance(t, tuple) else [int(t)]


def assert_same_as_reference(path):
    ref = gguf.GGUFReader(path)
    mine = pg.read_gguf(path)
    refmeta = reference_metadata(ref)
    assert list(mine.metadata) == list(refmeta)
    for key, (value, types) in refmeta.items():
        got = mine.metadata[key]
        assert typespec_list(mine.value_types[key]) == types, key
        if len(types) > 2:  # nested: gguf's contents() flattens the nested arrays
            assert flatten(got) == flatten(value), key
        elif isinstance(got, np.ndarray):
            np.testing.assert_array_equal(got, np.array(value, dtype=got.dtype), err_msg=key)
        elif isinstance(got, float):
            assert got == pytest.approx(value, rel=1e-7), key
        else:
            assert got == value, key
    assert mine.version == ref.fields["GGUF.version"].contents()
    assert mine.alignment == ref.alignment
    assert mine.data_offset == ref.data_offset
    assert len(mine.tensors) == len(ref.tensors)
    for t, r in zip(mine.tensors, ref.tensors):
        assert t.name == r.name
        assert t.type == int(r.tensor_type)
        assert t.shape == tuple(int(x) for x in r.shape)
        assert t.offset == r.data_offset
        assert t.nbytes == r.n_bytes
        assert mine.tensor_bytes(t).tobytes() == np.asarray(r.data).tobytes()
    mine.close()
    return mine


def test_block_size_table_matches_gguf_package():
    for t, (block, size) in gguf.GGML_QUANT_SIZES.items():
        assert pg.GGML_BLOCK_SIZES[int(t)] == (block, size), t.name
        assert pg.GGMLType(int(t)).name == t.name


def test_real_default_model_matches_reference():
    from pyllama.models import default_model_path

    path = default_model_path(fetch_if_missing=False)
    if path is None:
        pytest.skip("default model not in the cache (run `python -m pyllama.models fetch`)")
    g = assert_same_as_reference(path)
    assert g.metadata["general.architecture"] == "llama"
    assert len(g.metadata["tokenizer.ggml.tokens"]) == 49152
    assert len(g.metadata["tokenizer.ggml.merges"]) == 48900
    assert pg.read_metadata(path).keys() == g.metadata.keys()


def write_all_types(path, version=3):
    w = gguf.GGUFWriter(path, "llama")
    vt = gguf.GGUFValueType
    w.add_uint8("t.u8", 200)
    w.add_int8("t.i8", -100)
    w.add_uint16("t.u16", 60000)
    w.add_int16("t.i16", -30000)
    w.add_uint32("t.u32", 4_000_000_000)
    w.add_int32("t.i32", -2_000_000_000)
    w.add_float32("t.f32", 3.25)
    w.add_bool("t.bool_t", True)
    w.add_bool("t.bool_f", False)
    w.add_string("t.str", "héllo wörld ✓")
    w.add_string("t.empty", "")
    w.add_uint64("t.u64", 2**63 + 5)
    w.add_int64("t.i64", -(2**62))
    w.add_float64("t.f64", 1.0 / 3.0)
    w.add_array("t.arr_str", ["a", "", "ü", "<|im_end|>"])
    w.add_array("t.arr_i32", [1, -2, 3])
    w.add_array("t.arr_f32", [0.5, 1.5])
    w.add_array("t.arr_bool", [True, False, True])
    w.add_array("t.arr_nested", [[1, 2], [3, 4, 5]])
    w.add_key_value("t.arr_u64", [7, 8, 2**40], vt.ARRAY, vt.UINT64)
    w.add_key_value("t.arr_f64", [0.25, -1e300], vt.ARRAY, vt.FLOAT64)
    w.add_key_value("t.arr_u8", [0, 255], vt.ARRAY, vt.UINT8)
    rng = np.random.default_rng(0)
    w.add_tensor("a", rng.standard_normal((3, 64)).astype(np.float32))
    w.add_tensor("b", rng.standard_normal((5,)).astype(np.float16))
    w.add_tensor("c", rng.standard_normal((2, 2, 32)).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_every_value_type_matches_reference(tmp_path):
    path = str(tmp_path / "all.gguf")
    write_all_types(path)
    g = assert_same_as_reference(path)
    m = g.metadata
    assert m["t.u64"] == 2**63 + 5 and isinstance(m["t.u64"], int)
    assert m["t.bool_t"] is True and m["t.bool_f"] is False
    assert m["t.str"] == "héllo wörld ✓"
    assert m["t.arr_str"] == ["a", "", "ü", "<|im_end|>"]
    assert [x.tolist() for x in m["t.arr_nested"]] == [[1, 2], [3, 4, 5]]
    assert m["t.arr_bool"].dtype == np.bool_ and m["t.arr_bool"].tolist() == [True, False, True]
    assert m["t.f64"] == 1.0 / 3.0


def test_version_2_file(tmp_path):
    path = str(tmp_path / "v2.gguf")
    write_all_types(path)
    data = bytearray(open(path, "rb").read())
    data[4:8] = struct.pack("<I", 2)  # v2 and v3 share the little-endian layout
    open(path, "wb").write(data)
    assert pg.read_gguf(path).version == 2


def test_custom_alignment(tmp_path):
    path = str(tmp_path / "al.gguf")
    w = gguf.GGUFWriter(path, "llama")
    w.add_custom_alignment(64)
    w.add_tensor("x", np.arange(7, dtype=np.float32))
    w.add_tensor("y", np.arange(3, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    g = assert_same_as_reference(path)
    assert g.alignment == 64 and g.data_offset % 64 == 0
    assert all((t.offset - g.data_offset) % 64 == 0 for t in g.tensors)


def test_writer_output_reads_back_with_reference(tmp_path):
    path = str(tmp_path / "w.gguf")
    V = pg.ValueType
    rng = np.random.default_rng(1)
    f32 = rng.standard_normal((4, 64)).astype(np.float32)
    q8 = rng.integers(0, 256, size=2 * 34, dtype=np.uint8)  # 2 Q8_0 blocks of raw bytes
    meta = {
        "general.architecture": "llama",
        "llama.block_count": 3,  # inferred UINT32
        "x.neg": -4,  # inferred INT32
        "x.f": 0.1,  # inferred FLOAT32
        "x.b": False,
        "x.s": "ok ✓",
        "x.tokens": ["<s>", "</s>", "▁a"],
        "x.scores": np.array([0.0, -1.5, 2.0], dtype=np.float32),
        "x.types": np.array([3, 3, 1], dtype=np.int32),
        "x.ints": [1, 2, 3],
        "x.i64": pg.GGUFValue(-(2**40), V.INT64),
        "x.u8": pg.GGUFValue(7, V.UINT8),
        "x.f64": pg.GGUFValue(0.1, V.FLOAT64),
        "x.arr_u16": pg.GGUFValue([1, 65535], (V.ARRAY, V.UINT16)),
        "x.nested": pg.GGUFValue([[1, 2], [3]], (V.ARRAY, V.ARRAY, V.INT32)),
        "x.empty": pg.GGUFValue([], (V.ARRAY, V.STRING)),
        "x.empty_f": np.zeros(0, dtype=np.float32),
    }
    tensors = [
        ("w", pg.GGMLType.F32, (64, 4), f32),
        ("q", pg.GGMLType.Q8_0, (64,), lambda: q8),
        ("h", pg.GGMLType.F16, (3,), np.array([1, 2, 3], dtype=np.float16).tobytes()),
    ]
    pg.write_gguf(path, meta, tensors)
    ref = gguf.GGUFReader(path)
    rm = reference_metadata(ref)
    T = gguf.GGUFValueType
    assert rm["llama.block_count"] == (3, [T.UINT32])
    assert rm["x.neg"] == (-4, [T.INT32])
    assert rm["x.f"][1] == [T.FLOAT32] and rm["x.f"][0] == pytest.approx(0.1)
    assert rm["x.b"] == (False, [T.BOOL])
    assert rm["x.s"] == ("ok ✓", [T.STRING])
    assert rm["x.tokens"] == (["<s>", "</s>", "▁a"], [T.ARRAY, T.STRING])
    assert rm["x.scores"] == ([0.0, -1.5, 2.0], [T.ARRAY, T.FLOAT32])
    assert rm["x.types"] == ([3, 3, 1], [T.ARRAY, T.INT32])
    assert rm["x.ints"] == ([1, 2, 3], [T.ARRAY, T.INT32])
    assert rm["x.i64"] == (-(2**40), [T.INT64])
    assert rm["x.u8"] == (7, [T.UINT8])
    assert rm["x.f64"] == (0.1, [T.FLOAT64])
    assert rm["x.arr_u16"] == ([1, 65535], [T.ARRAY, T.UINT16])
    assert rm["x.nested"] == ([1, 2, 3], [T.ARRAY, T.ARRAY, T.INT32])
    assert rm["x.empty"] == ([], [T.ARRAY, T.STRING])
    assert rm["x.empty_f"] == ([], [T.ARRAY, T.FLOAT32])
    by = {t.name: t for t in ref.tensors}
    np.testing.assert_array_equal(np.asarray(by["w"].data), f32)
    assert by["w"].tensor_type == gguf.GGMLQuantizationType.F32 and list(by["w"].shape) == [64, 4]
    assert np.asarray(by["q"].data).tobytes() == q8.tobytes()
    np.testing.assert_array_equal(np.asarray(by["h"].data), [1, 2, 3])
    assert ref.data_offset % 32 == 0
    # and our own reader agrees with the reference on it, types included
    g = assert_same_as_reference(path)
    # re-writing with the stored types reproduces the file byte for byte
    path2 = str(tmp_path / "w2.gguf")
    pg.write_gguf(path2, g.typed_metadata(), [(t.name, t.type, t.shape, g.tensor_bytes(t)) for t in g.tensors])
    assert open(path, "rb").read() == open(path2, "rb").read()


def test_nested_string_arrays_write_back(tmp_path):
    """Arrays of string arrays (read lazily as StringArray) write back as they were read."""
    a, b = tmp_path / "a.gguf", tmp_path / "b.gguf"
    pg.write_gguf(a, {"x.nested": [["a", "b"], ["c"]], "x.flat": ["p", "q"]}, [])
    md = pg.read_metadata(a)
    pg.write_gguf(b, md, [])
    back = pg.read_metadata(b)
    assert back["x.flat"] == ["p", "q"] and back["x.flat"].tolist() == ["p", "q"]
    assert [s.tolist() for s in back["x.nested"]] == [["a", "b"], ["c"]]
    assert md["x.flat"] != ("p", "q")  # like the list it stands for


def test_writer_rejects_wrong_tensor_size(tmp_path):
    with pytest.raises(ValueError, match="'w'"):
        pg.write_gguf(str(tmp_path / "bad.gguf"), {}, [("w", pg.GGMLType.F32, (4,), np.zeros(3, np.float32))])
    assert not os.path.exists(tmp_path / "bad.gguf")


# ---------------------------------------------------------------------------------------
# malformed files


@pytest.fixture
def small_file(tmp_path):
    path = str(tmp_path / "small.gguf")
    write_all_types(path)
    return path


def _write(tmp_path, data, name="mut.gguf"):
    p = str(tmp_path / name)
    with open(p, "wb") as f:
        f.write(data)
    return p


def test_truncated_anywhere_raises_model_error(tmp_path, small_file):
    data = open(small_file, "rb").read()
    g = pg.read_gguf(small_file)
    header_end = g.data_offset
    cuts = sorted(set(list(range(0, 64)) + list(range(64, header_end, 7)) + [header_end - 1, len(data) - 1]))
    for cut in cuts:
        p = _write(tmp_path, data[:cut])
        with pytest.raises(ModelError):
            pg.read_gguf(p)
    # metadata-only reading fails for cuts inside the metadata too
    with pytest.raises(ModelError):
        pg.read_metadata(_write(tmp_path, data[:100]))


def _offset_of(data: bytes, key: str) -> int:
    """Offset of the value-type field that follows metadata key `key`."""
    k = key.encode()
    i = data.index(struct.pack("<Q", len(k)) + k)
    return i + 8 + len(k)


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda d: b"GGUX" + d[4:], "magic"),
        (lambda d: d[:4] + struct.pack("<I", 1) + d[8:], "version 1"),
        (lambda d: d[:4] + struct.pack("<I", 99) + d[8:], "version 99"),
        (lambda d: d[:4] + struct.pack(">I", 3) + d[8:], "big-endian"),
        (lambda d: d[:8] + struct.pack("<Q", 2**60) + d[16:], "tensor count"),
        (lambda d: d[:16] + struct.pack("<Q", 2**40) + d[24:], "key/value count"),
        (lambda d: d[:24] + struct.pack("<Q", 2**50) + d[32:], "metadata key #0"),
    ],
)
def test_corrupt_header_fields(tmp_path, small_file, mutate, match):
    data = open(small_file, "rb").read()
    with pytest.raises(ModelError, match=match):
        pg.read_gguf(_write(tmp_path, mutate(data)))


def test_corrupt_values_name_the_key(tmp_path, small_file):
    data = bytearray(open(small_file, "rb").read())
    # string length past EOF
    o = _offset_of(data, "t.str")
    d = bytearray(data)
    d[o + 4 : o + 12] = struct.pack("<Q", 2**40)
    with pytest.raises(ModelError, match="t.str"):
        pg.read_gguf(_write(tmp_path, bytes(d)))
    # unknown value type
    d = bytearray(data)
    d[o : o + 4] = struct.pack("<I", 77)
    with pytest.raises(ModelError, match="t.str.*unknown value type 77"):
        pg.read_gguf(_write(tmp_path, bytes(d)))
    # absurd array count
    o = _offset_of(data, "t.arr_i32")
    d = bytearray(data)
    d[o + 8 : o + 16] = struct.pack("<Q", 2**61)
    with pytest.raises(ModelError, match="t.arr_i32"):
        pg.read_gguf(_write(tmp_path, bytes(d)))
    # string array element too long
    o = _offset_of(data, "t.arr_str")
    d = bytearray(data)
    d[o + 16 : o + 24] = struct.pack("<Q", 2**40)
    with pytest.raises(ModelError, match=r"t.arr_str.*\[0\]"):
        pg.read_gguf(_write(tmp_path, bytes(d)))
    # duplicate key
    d = bytes(data).replace(b"t.u16", b"t.u32", 1)
    with pytest.raises(ModelError, match="duplicate metadata key 't.u32'"):
        pg.read_gguf(_write(tmp_path, d))


def _tensor_info_offset(data: bytes, name: str, end: int) -> int:
    k = name.encode()  # tensor infos follow the metadata: search backwards from the data section
    return data.rindex(struct.pack("<Q", len(k)) + k, 0, end) + 8 + len(k)


def test_corrupt_tensor_infos_name_the_tensor(tmp_path, small_file):
    data = open(small_file, "rb").read()
    o = _tensor_info_offset(data, "a", pg.read_gguf(small_file).data_offset)  # n_dims u32, ne[2] u64, type u32, offset u64
    cases = [
        (o, struct.pack("<I", 9), "'a'.*n_dims"),
        (o + 4, struct.pack("<Q", 2**62), "'a'"),  # huge ne0
        (o + 4, struct.pack("<Q", 0), "'a'.*zero dimension"),
        (o + 20, struct.pack("<I", 200), "'a'.*unknown ggml type 200"),
        (o + 20, struct.pack("<I", int(pg.GGMLType.Q8_0)), "'a'.*block size"),  # 64 ok, but check next
        (o + 24, struct.pack("<Q", 2**40), "'a'.*past the end"),
        (o + 24, struct.pack("<Q", 4), "'a'.*alignment"),
    ]
    for pos, patch, match in cases:
        d = bytearray(data)
        d[pos : pos + len(patch)] = patch
        if "block size" in match:  # make ne0 not a multiple of 32 for Q8_0
            d[o + 4 : o + 12] = struct.pack("<Q", 63)
        with pytest.raises(ModelError, match=match):
            pg.read_gguf(_write(tmp_path, bytes(d)))
    # tensor data cut off
    g = pg.read_gguf(small_file)
    last = max(g.tensors, key=lambda t: t.offset)
    with pytest.raises(ModelError, match=repr(last.name)):
        pg.read_gguf(_write(tmp_path, data[: last.offset + last.nbytes - 1]))


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(ModelError, match="cannot open"):
        pg.read_gguf(str(tmp_path / "nope.gguf"))
    with pytest.raises(ModelError, match="empty"):
        pg.read_gguf(_write(tmp_path, b""))


def test_random_corruption_never_escapes_model_error(tmp_path, small_file):
    """Flip random header bytes: the reader either succeeds or raises ModelError, nothing else."""
    data = open(small_file, "rb").read()
    end = pg.read_gguf(small_file).data_offset
    rng = np.random.default_rng(123)
    for i in range(300):
        d = bytearray(data)
        for _ in range(rng.integers(1, 4)):
            d[rng.integers(0, end)] = rng.integers(0, 256)
        p = _write(tmp_path, bytes(d))
        try:
            pg.read_gguf(p)
        except ModelError:
            pass
