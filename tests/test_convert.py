"""pyllama.convert: dequantizers against the gguf package, GGUF <-> llama2.c round trips on tiny
random models, llama2.c file layouts checked by reading them back independently (offsets computed
here from run.c / runq.c's order), and tokenizer.bin export."""

import os
import struct

import numpy as np
import pytest

from pyllama import convert
from pyllama._bpe import BYTE_TO_CHAR
from pyllama.cli import convert as convert_cli
from pyllama.errors import ModelError
from pyllama.vocab.from_llama2c import read_tokenizer_bin

gguf = pytest.importorskip("gguf", reason="the `gguf` package (reference writer/dequantizers) is not installed")
from gguf.quants import dequantize as ref_dequantize, quantize as ref_quantize  # noqa: E402

SHARED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared")
QT = gguf.GGMLQuantizationType


@pytest.mark.parametrize("tname", ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q4_K", "Q6_K"])
def test_dequantize_bit_exact_vs_gguf(tname):
    qt = QT[tname]
    block, size = gguf.GGML_QUANT_SIZES[qt]
    rng = np.random.default_rng(int(qt))
    raw = rng.integers(0, 256, size=size * 96, dtype=np.uint8)  # random bytes: any scale, NaN included
    with np.errstate(invalid="ignore", over="ignore"):
        ref = ref_dequantize(raw.reshape(1, -1), qt).reshape(-1)
        mine = convert.dequantize(raw, int(qt))
    assert mine.dtype == np.float32
    np.testing.assert_array_equal(mine.view(np.uint32), ref.view(np.uint32))
    if tname.endswith("_K"):
        return  # the gguf package has no quantizer for these
    # realistic data too, with a shape
    x = rng.standard_normal((4, 64)).astype(np.float32)
    if tname == "F32":
        q = x
    elif tname in ("F16",):
        q = x.astype(np.float16)
    else:
        q = ref_quantize(x, qt)
    got = convert.dequantize(np.frombuffer(q.tobytes(), np.uint8), int(qt), (64, 4))
    assert got.shape == (4, 64)
    np.testing.assert_array_equal(got, ref_dequantize(q, qt).reshape(4, 64))


def test_dequantize_unsupported_type_names_it():
    with pytest.raises(ModelError, match="blk.0.attn_q.weight.*IQ2_XXS"):
        convert.dequantize(np.zeros(66, np.uint8), int(QT.IQ2_XXS), (256,), "blk.0.attn_q.weight")
    with pytest.raises(ModelError, match="blk.0.attn_k.weight: 33 bytes.*34-byte Q8_0 blocks"):
        convert.dequantize(np.zeros(33, np.uint8), int(QT.Q8_0), (32,), "blk.0.attn_k.weight")


# ---------------------------------------------------------------------------------------
# tiny random llama models

DIM, HIDDEN, LAYERS, HEADS, KV_HEADS, VOCAB, CTX = 64, 128, 2, 4, 2, 96, 16


def spm_vocab(n=VOCAB):
    toks = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(16)]
    toks += ["▁" + chr(ord("a") + i % 26) * (1 + i // 26) for i in range(n - len(toks))]
    types = [2, 3, 3] + [6] * 16 + [1] * (n - 19)
    scores = [0.0] * 19 + [-float(i) for i in range(n - 19)]
    return toks, scores, types


def random_weights(shared=True, seed=0):
    """numpy (out, in) float32 weights of a tiny llama, keyed by GGUF name."""
    rng = np.random.default_rng(seed)
    kv = KV_HEADS * DIM // HEADS
    w = {"token_embd.weight": rng.standard_normal((VOCAB, DIM)),
         "output_norm.weight": 1 + 0.1 * rng.standard_normal(DIM)}
    for i in range(LAYERS):
        w[f"blk.{i}.attn_norm.weight"] = 1 + 0.1 * rng.standard_normal(DIM)
        w[f"blk.{i}.attn_q.weight"] = rng.standard_normal((DIM, DIM))
        w[f"blk.{i}.attn_k.weight"] = rng.standard_normal((kv, DIM))
        w[f"blk.{i}.attn_v.weight"] = rng.standard_normal((kv, DIM))
        w[f"blk.{i}.attn_output.weight"] = rng.standard_normal((DIM, DIM))
        w[f"blk.{i}.ffn_norm.weight"] = 1 + 0.1 * rng.standard_normal(DIM)
        w[f"blk.{i}.ffn_gate.weight"] = rng.standard_normal((HIDDEN, DIM))
        w[f"blk.{i}.ffn_down.weight"] = rng.standard_normal((DIM, HIDDEN))
        w[f"blk.{i}.ffn_up.weight"] = rng.standard_normal((HIDDEN, DIM))
    if not shared:
        w["output.weight"] = rng.standard_normal((VOCAB, DIM))
    return {k: (0.05 * v if v.ndim == 2 else v).astype(np.float32) for k, v in w.items()}


def write_tiny_gguf(path, weights, qtype=None, arch="llama", rope_base=10000.0, extra=None):
    """Write a tiny llama GGUF with gguf.GGUFWriter; matrices in `qtype` (norms stay F32)."""
    w = gguf.GGUFWriter(str(path), arch)
    w.add_context_length(CTX)
    w.add_embedding_length(DIM)
    w.add_block_count(LAYERS)
    w.add_feed_forward_length(HIDDEN)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_rope_freq_base(rope_base)
    w.add_rope_dimension_count(DIM // HEADS)
    w.add_layer_norm_rms_eps(1e-5)
    toks, scores, types = spm_vocab()
    w.add_tokenizer_model("llama")
    w.add_token_list(toks)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    for k, v in (extra or {}).items():
        w.add_string(k, v)
    for name, a in weights.items():
        if a.ndim == 2 and qtype is not None and qtype != QT.F32:
            if qtype == QT.F16:
                w.add_tensor(name, a.astype(np.float16))
            else:
                # raw bytes; the writer derives the element shape from the byte shape
                w.add_tensor(name, ref_quantize(a, qtype).view(np.uint8), raw_dtype=qtype)
        else:
            w.add_tensor(name, a)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return str(path)


def run_c_order(weights, shared):
    """The fp32 arrays of a v0 file, in run.c's memory_map_weights order (written out here by hand)."""
    L = range(LAYERS)
    seq = [weights["token_embd.weight"]]
    seq += [weights[f"blk.{i}.attn_norm.weight"] for i in L]
    for m in ("attn_q", "attn_k", "attn_v", "attn_output"):
        seq += [weights[f"blk.{i}.{m}.weight"] for i in L]
    seq += [weights[f"blk.{i}.ffn_norm.weight"] for i in L]
    for m in ("ffn_gate", "ffn_down", "ffn_up"):
        seq += [weights[f"blk.{i}.{m}.weight"] for i in L]
    seq += [weights["output_norm.weight"]]
    head = DIM // HEADS
    seq += [None, None]  # freq_cis_real, freq_cis_imag: CTX * head/2 floats each
    if not shared:
        seq += [weights["output.weight"]]
    return seq, CTX * head // 2


def read_gguf_tensors_with_reference(path):
    r = gguf.GGUFReader(path)
    return {t.name: ref_dequantize(t.data, t.tensor_type).reshape(tuple(reversed([int(x) for x in t.shape])))
            for t in r.tensors}, r


@pytest.mark.parametrize("shared", [True, False])
def test_gguf_to_v0_layout_and_round_trip(tmp_path, shared, capsys):
    weights = random_weights(shared)
    src = write_tiny_gguf(tmp_path / "tiny.gguf", weights)
    v0 = str(tmp_path / "tiny.bin")
    assert convert_cli.main([src, v0]) == 0
    assert "100%" in capsys.readouterr().err

    data = open(v0, "rb").read()
    header = struct.unpack_from("<7i", data, 0)
    assert header == (DIM, HIDDEN, LAYERS, HEADS, KV_HEADS, VOCAB if shared else -VOCAB, CTX)
    seq, half = run_c_order(weights, shared)
    pos = 28
    for a in seq:
        n = half if a is None else a.size
        got = np.frombuffer(data, "<f4", n, pos)
        if a is not None:
            np.testing.assert_array_equal(got, a.reshape(-1))
        pos += 4 * n
    assert pos == len(data)
    # the (ignored) rope tables hold cos/sin of position * 10000^(-2i/head)
    head = DIM // HEADS
    fr = np.frombuffer(data, "<f4", half, pos - 4 * half - (0 if shared else 4 * VOCAB * DIM) - 4 * half)
    ang = np.outer(np.arange(CTX), 10000.0 ** (-np.arange(0, head, 2) / head))
    np.testing.assert_allclose(fr.reshape(CTX, head // 2), np.cos(ang), atol=1e-6)

    # and back: identical float tensors, as read by the gguf package
    back = str(tmp_path / "back.gguf")
    assert convert_cli.main([v0, back, "--format", "gguf", "-q"]) == 0
    tensors, r = read_gguf_tensors_with_reference(back)
    assert set(tensors) == set(weights)
    for name, a in weights.items():
        assert r.tensors[[t.name for t in r.tensors].index(name)].tensor_type == QT.F32
        np.testing.assert_array_equal(tensors[name], a, err_msg=name)
    f = r.fields
    assert f["general.architecture"].contents() == "llama"
    for key, want in [("llama.embedding_length", DIM), ("llama.feed_forward_length", HIDDEN),
                      ("llama.block_count", LAYERS), ("llama.attention.head_count", HEADS),
                      ("llama.attention.head_count_kv", KV_HEADS), ("llama.context_length", CTX),
                      ("llama.rope.dimension_count", DIM // HEADS)]:
        assert f[key].contents() == want, key
        assert f[key].types == [gguf.GGUFValueType.UINT32], key


def test_v1_round_trip(tmp_path):
    weights = random_weights(shared=False, seed=3)
    src = write_tiny_gguf(tmp_path / "tiny.gguf", weights)
    v1 = str(tmp_path / "tiny_v1.bin")
    convert.gguf_to_llama2c(src, v1, version=1, progress=False)
    data = open(v1, "rb").read()
    assert struct.unpack_from("<Ii7iB", data, 0) == (0x616B3432, 1, DIM, HIDDEN, LAYERS, HEADS, KV_HEADS, VOCAB,
                                                      CTX, 0)
    assert data[37:256] == b"\0" * 219
    # v1 order (export.py version1_export): norms first, then embedding and matrices, then wcls
    L = range(LAYERS)
    seq = [weights[f"blk.{i}.attn_norm.weight"] for i in L] + [weights[f"blk.{i}.ffn_norm.weight"] for i in L]
    seq += [weights["output_norm.weight"], weights["token_embd.weight"]]
    for m in ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_down", "ffn_up"):
        seq += [weights[f"blk.{i}.{m}.weight"] for i in L]
    seq += [weights["output.weight"]]
    pos = 256
    for a in seq:
        np.testing.assert_array_equal(np.frombuffer(data, "<f4", a.size, pos), a.reshape(-1))
        pos += 4 * a.size
    assert pos == len(data)
    back = str(tmp_path / "back.gguf")
    convert.llama2c_to_gguf(v1, back, progress=False)
    tensors, _ = read_gguf_tensors_with_reference(back)
    for name, a in weights.items():
        np.testing.assert_array_equal(tensors[name], a, err_msg=name)


def test_v2_layout_and_quantization_error(tmp_path):
    weights = random_weights(shared=True, seed=5)
    src = write_tiny_gguf(tmp_path / "tiny.gguf", weights)
    v2 = str(tmp_path / "tiny_v2.bin")
    assert convert_cli.main([src, v2, "--format", "llama2c-v2", "--group-size", "32", "-q"]) == 0
    data = open(v2, "rb").read()
    magic, version, *cfg = struct.unpack_from("<Ii7i", data, 0)
    assert (magic, version, tuple(cfg)) == (0x616B3432, 2, (DIM, HIDDEN, LAYERS, HEADS, KV_HEADS, VOCAB, CTX))
    assert data[36] == 1  # shared classifier
    (gs,) = struct.unpack_from("<i", data, 37)
    assert gs == 32
    # runq.c: fp32 norms, then per tensor int8 values followed by that tensor's fp32 scales
    L = range(LAYERS)
    pos = 256
    for a in [weights[f"blk.{i}.attn_norm.weight"] for i in L] + [weights[f"blk.{i}.ffn_norm.weight"] for i in L] \
            + [weights["output_norm.weight"]]:
        np.testing.assert_array_equal(np.frombuffer(data, "<f4", a.size, pos), a)
        pos += 4 * a.size
    mats = [weights["token_embd.weight"]]
    for m in ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_down", "ffn_up"):
        mats += [weights[f"blk.{i}.{m}.weight"] for i in L]
    for a in mats:
        q = np.frombuffer(data, np.int8, a.size, pos).astype(np.float32).reshape(-1, gs)
        pos += a.size
        s = np.frombuffer(data, "<f4", a.size // gs, pos)
        pos += 4 * (a.size // gs)
        groups = a.reshape(-1, gs)
        # scale is max|w|/127, every value within half a step, and the max hits +-127
        np.testing.assert_allclose(s, np.abs(groups).max(axis=1) / 127, rtol=1e-6)
        assert np.all(np.abs(q * s[:, None] - groups) <= 0.5 * s[:, None] * (1 + 1e-5) + 1e-12)
        assert np.all(np.abs(q).max(axis=1) == 127)
    assert pos == len(data)
    # back to GGUF: norms exact, matrices within the quantization bound
    back = str(tmp_path / "back.gguf")
    convert.llama2c_to_gguf(v2, back, progress=False)
    tensors, _ = read_gguf_tensors_with_reference(back)
    for name, a in weights.items():
        if a.ndim == 1:
            np.testing.assert_array_equal(tensors[name], a)
        else:
            bound = np.abs(a.reshape(-1, gs)).max(axis=1, keepdims=True) / 127 * 0.5 * (1 + 1e-5)
            assert np.all(np.abs(tensors[name].reshape(-1, gs) - a.reshape(-1, gs)) <= bound), name


def test_v2_group_size_backs_off(tmp_path):
    src = write_tiny_gguf(tmp_path / "tiny.gguf", random_weights())
    c = convert.gguf_to_llama2c(src, str(tmp_path / "v2.bin"), version=2, group_size=256, progress=False)
    assert c.group_size == 64  # halved until it divides dim (64) and hidden_dim (128)
    assert struct.unpack_from("<i", open(tmp_path / "v2.bin", "rb").read(), 37) == (64,)


@pytest.mark.parametrize("qname", ["F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"])
def test_quantized_gguf_to_v0_equals_reference_dequantization(tmp_path, qname):
    weights = random_weights(shared=False, seed=7)
    src = write_tiny_gguf(tmp_path / "q.gguf", weights, QT[qname])
    v0 = str(tmp_path / "q.bin")
    convert.gguf_to_llama2c(src, v0, progress=False)
    expected, _ = read_gguf_tensors_with_reference(src)
    _, got = convert.read_llama2c(v0)
    for name in weights:
        np.testing.assert_array_equal(got[name], expected[name], err_msg=name)


def test_rope_base_note_and_option(tmp_path, capsys):
    src = write_tiny_gguf(tmp_path / "tiny.gguf", random_weights(), rope_base=100000.0)
    v0 = str(tmp_path / "t.bin")
    assert convert_cli.main([src, v0, "-q"]) == 0
    assert "rope base 100000" in capsys.readouterr().err
    back = str(tmp_path / "b.gguf")
    assert convert_cli.main([v0, back, "--rope-base", "100000", "--bos-id", "1", "-q"]) == 0
    r = gguf.GGUFReader(back)
    assert r.fields["llama.rope.freq_base"].contents() == 100000.0


# ---------------------------------------------------------------------------------------
# refusals and bad llama2.c files


def test_refuses_what_llama2c_cannot_hold(tmp_path):
    w = random_weights()
    src = write_tiny_gguf(tmp_path / "q.gguf", w, arch="qwen2")
    with pytest.raises(ModelError, match="architecture 'qwen2'"):
        convert.gguf_to_llama2c(src, str(tmp_path / "x.bin"), progress=False)
    w2 = dict(w)
    del w2["blk.1.ffn_up.weight"]
    src = write_tiny_gguf(tmp_path / "m.gguf", w2)
    with pytest.raises(ModelError, match="blk.1.ffn_up.weight.*missing"):
        convert.gguf_to_llama2c(src, str(tmp_path / "x.bin"), progress=False)
    w3 = dict(w)
    w3["blk.0.attn_q.bias"] = np.zeros(DIM, np.float32)
    src = write_tiny_gguf(tmp_path / "b.gguf", w3)
    with pytest.raises(ModelError, match="blk.0.attn_q.bias"):
        convert.gguf_to_llama2c(src, str(tmp_path / "x.bin"), progress=False)
    w4 = dict(w)
    w4["blk.0.attn_k.weight"] = np.zeros((DIM, DIM), np.float32)  # disagrees with head_count_kv
    src = write_tiny_gguf(tmp_path / "s.gguf", w4)
    with pytest.raises(ModelError, match="blk.0.attn_k.weight.*shape"):
        convert.gguf_to_llama2c(src, str(tmp_path / "x.bin"), progress=False)
    assert not os.path.exists(tmp_path / "x.bin") and not os.path.exists(tmp_path / "x.bin.tmp")


def test_bad_llama2c_files(tmp_path):
    src = write_tiny_gguf(tmp_path / "t.gguf", random_weights())
    v0, v2 = str(tmp_path / "t.bin"), str(tmp_path / "t2.bin")
    convert.gguf_to_llama2c(src, v0, progress=False)
    convert.gguf_to_llama2c(src, v2, version=2, progress=False)
    d0, d2 = open(v0, "rb").read(), open(v2, "rb").read()
    cases = [
        (d0[:-4], "implies"),  # truncated
        (d0 + b"\0" * 4, "implies"),  # trailing bytes
        (d0[:20], "too short"),
        (struct.pack("<i", 0) + d0[4:], "dim = 0"),
        (d0[:12] + struct.pack("<i", 3) + d0[16:], "n_heads"),  # 64 % 3
        (d0[:16] + struct.pack("<i", 3) + d0[20:], "n_kv_heads"),
        (d0[:4] + struct.pack("<i", 2**30) + d0[8:], "hidden_dim"),
        (d2[:4] + struct.pack("<i", 7) + d2[8:], "version 7"),
        (d2[:36] + b"\x05" + d2[37:], "shared_classifier"),
        (d2[:37] + struct.pack("<i", 48) + d2[41:], "group_size 48"),
        (d2[:200], "truncated"),
    ]
    for data, match in cases:
        p = tmp_path / "bad.bin"
        p.write_bytes(data)
        with pytest.raises(ModelError, match=match):
            convert.read_llama2c(str(p))
    with pytest.raises(ModelError, match="cannot open"):
        convert.read_llama2c(str(tmp_path / "missing.bin"))


def test_converts_v2_that_pyllama_cannot_evaluate(tmp_path):
    """A runq.c file with a feed-forward width (80) and group size (16) off pyllama's 32-wide blocks:
    Llama refuses it, the converter still reads it, values q * fp32 scale (file written here by hand)."""
    dim, hidden, layers, heads, kv_heads, vocab, ctx, gs = 64, 80, 1, 4, 2, 40, 8, 16
    kv = kv_heads * dim // heads
    rng = np.random.default_rng(11)
    norms = [rng.standard_normal(dim).astype("<f4") for _ in range(3)]  # rms_att, rms_ffn, rms_final
    names = ["token_embd", "blk.0.attn_q", "blk.0.attn_k", "blk.0.attn_v", "blk.0.attn_output", "blk.0.ffn_gate",
             "blk.0.ffn_down", "blk.0.ffn_up", "output"]
    shapes = [(vocab, dim), (dim, dim), (kv, dim), (kv, dim), (dim, dim), (hidden, dim), (dim, hidden),
              (hidden, dim), (vocab, dim)]
    hdr = struct.pack("<Ii7iBi", 0x616B3432, 2, dim, hidden, layers, heads, kv_heads, vocab, ctx, 0, gs)
    body, want = [hdr + b"\0" * (256 - len(hdr))] + [n.tobytes() for n in norms], {}
    for name, shape in zip(names, shapes):
        q = rng.integers(-127, 128, size=shape, dtype=np.int8)
        scale = rng.uniform(0.001, 0.1, size=q.size // gs).astype("<f4")
        body += [q.tobytes(), scale.tobytes()]
        want[name + ".weight"] = (q.reshape(-1, gs).astype(np.float64) * scale[:, None]).reshape(shape)
    path = tmp_path / "odd_v2.bin"
    path.write_bytes(b"".join(body))

    c, got = convert.read_llama2c(path)
    assert (c.version, c.group_size, c.hidden_dim, c.shared_classifier) == (2, 16, 80, False)
    for name, w in want.items():
        np.testing.assert_array_equal(got[name], w.astype(np.float32), err_msg=name)
    for name, n in zip(["blk.0.attn_norm.weight", "blk.0.ffn_norm.weight", "output_norm.weight"], norms):
        np.testing.assert_array_equal(got[name], n)
    from pyllama import Llama

    with pytest.raises(ModelError, match="group_size 16"):
        Llama(str(path), verbose=False)


# ---------------------------------------------------------------------------------------
# tokenizer.bin


def test_tokenizer_bin_from_spm_gguf(tmp_path):
    src = write_tiny_gguf(tmp_path / "t.gguf", random_weights())
    out = str(tmp_path / "tok.bin")
    assert convert_cli.main([src, str(tmp_path / "t.bin"), "--tokenizer-out", out, "-q"]) == 0
    toks, scores, mx = read_tokenizer_bin(out, VOCAB)
    names, sc, _ = spm_vocab()
    # llama2.c's tokenizer.py conventions: '▁' -> ' ', BOS/EOS wrapped in newlines
    assert toks[:5] == [b"<unk>", b"\n<s>\n", b"\n</s>\n", b"<0x00>", b"<0x01>"]
    assert toks[19] == b" a" and toks[-1] == names[-1].replace("▁", " ").encode()
    np.testing.assert_array_equal(scores, np.array(sc, np.float32))
    assert mx == max(len(t) for t in toks)
    # and back into GGUF vocabulary metadata
    md = convert.gguf_vocab_from_tokenizer_bin(toks, scores)
    assert md["tokenizer.ggml.tokens"].value == names
    assert md["tokenizer.ggml.token_type"].tolist() == spm_vocab()[2]


def test_shared_llama2c_tokenizer_round_trip(tmp_path):
    path = os.path.join(SHARED, "data", "llama2c-tokenizer.bin")
    if not os.path.exists(path):
        pytest.skip("../shared/data/llama2c-tokenizer.bin is not available")
    toks, scores, mx = read_tokenizer_bin(path, 32000)
    md = {k: (v.value if hasattr(v, "type") and not isinstance(v, np.ndarray) else v)
          for k, v in convert.gguf_vocab_from_tokenizer_bin(toks, scores).items()}
    assert md["tokenizer.ggml.tokens"][:3] == ["<unk>", "<s>", "</s>"]
    assert md["tokenizer.ggml.tokens"][13] == "<0x0A>" and md["tokenizer.ggml.token_type"][13] == 6
    sp_path = os.path.join(SHARED, "data", "llama2-tokenizer.model")
    try:
        import sentencepiece
    except ImportError:
        sentencepiece = None
    if sentencepiece is not None and os.path.exists(sp_path):
        sp = sentencepiece.SentencePieceProcessor(model_file=sp_path)
        assert md["tokenizer.ggml.tokens"] == [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
    out = str(tmp_path / "tok.bin")
    t2, s2, mx2 = convert.tokenizer_bin_from_gguf(md)
    convert.write_tokenizer_bin(out, t2, s2, mx2)
    assert open(out, "rb").read() == open(path, "rb").read()


def test_gpt2_byte_level_tokens_become_raw_bytes():
    md = {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.tokens": ["<|endoftext|>", "a", "b", "Ġ", "Ċ", "ab", "Ġab", "Ã", "©", "Ã©"],
        "tokenizer.ggml.token_type": np.array([3, 1, 1, 1, 1, 1, 1, 1, 1, 1], np.int32),
        "tokenizer.ggml.merges": ["a b", "Ġ ab", "Ã ©"],
    }
    toks, scores, mx = convert.tokenizer_bin_from_gguf(md)
    assert toks == [b"<|endoftext|>", b"a", b"b", b" ", b"\n", b"ab", b" ab", b"\xc3", b"\xa9", "é".encode()]
    # merge rank r scores -(r + 1): earlier merges score higher; bytes 0; no merge -1e9
    assert scores[5] == -1.0 and scores[6] == -2.0 and scores[1] == 0.0 and scores[0] == -1e9
    assert mx == len(b"<|endoftext|>")
    back = convert.gguf_vocab_from_tokenizer_bin(toks, scores, 0, 0)
    assert back["tokenizer.ggml.model"] == "gpt2"
    assert back["tokenizer.ggml.tokens"].value == md["tokenizer.ggml.tokens"]
    assert back["tokenizer.ggml.token_type"].tolist() == md["tokenizer.ggml.token_type"].tolist()
    assert back["tokenizer.ggml.merges"].value == md["tokenizer.ggml.merges"]


def test_default_model_tokenizer_export(tmp_path):
    from pyllama.gguf import read_metadata
    from pyllama.models import default_model_path

    path = default_model_path(fetch_if_missing=False)
    if path is None:
        pytest.skip("default model not in the cache (run `python -m pyllama.models fetch`)")
    md = read_metadata(path)
    toks, scores, mx = convert.tokenizer_bin_from_gguf(md)
    assert len(toks) == 49152
    tok = md["tokenizer.ggml.tokens"]
    i = tok.index("Ġthe")
    assert toks[i] == b" the"
    assert toks[tok.index("<|im_start|>")] == b"<|im_start|>"
    # bytes of every non-special token decode back (as a byte-level BPE decoder would) to the token
    enc = BYTE_TO_CHAR
    types = md["tokenizer.ggml.token_type"]
    for t, b, ty in zip(tok, toks, types):
        if ty == 1:
            assert "".join(enc[x] for x in b) == t
    # back to a gpt2 vocabulary: tokens and types exact; merges rebuilt from the scores are
    # valid (each joins two earlier tokens into a token) and mostly the original ones
    back = convert.gguf_vocab_from_tokenizer_bin(toks, scores, 1, 2)
    assert back["tokenizer.ggml.tokens"].value == tok
    assert back["tokenizer.ggml.token_type"].tolist() == types.tolist()
    merges = back["tokenizer.ggml.merges"].value
    assert len(merges) == len(md["tokenizer.ggml.merges"])
    vocab = set(tok)
    assert all(m.replace(" ", "", 1) in vocab and len(m.split(" ")) == 2 for m in merges)
    same = sum(a == b for a, b in zip(merges, md["tokenizer.ggml.merges"]))
    assert same > 0.9 * len(merges)


def test_vocab_from_copies_the_gguf_vocabulary(tmp_path):
    src = write_tiny_gguf(tmp_path / "t.gguf", random_weights())
    v0 = str(tmp_path / "t.bin")
    convert.gguf_to_llama2c(src, v0, progress=False)
    back = str(tmp_path / "b.gguf")
    assert convert_cli.main([v0, back, "--vocab-from", src, "-q"]) == 0
    a, b = gguf.GGUFReader(src).fields, gguf.GGUFReader(back).fields
    keys = [k for k in a if k.startswith("tokenizer.")]
    assert keys and keys == [k for k in b if k.startswith("tokenizer.")]
    for k in keys:
        assert a[k].types == b[k].types and a[k].contents() == b[k].contents(), k
