"""The model object: loads weights through the C core and runs forward passes.

``Llama`` follows llama-cpp-python's shape so code can switch between the two:
``Llama(model_path=..., n_ctx=..., n_threads=...)``, ``tokenize``, ``detokenize``,
``eval``, ``create_completion`` and ``create_chat_completion`` (the last two come
from :class:`pyllama.generation.GenerationMixin`).

The hot path is one C call per batch of tokens (``pl_eval``); logits land
directly in numpy arrays that the C code writes into.
"""
from __future__ import annotations

import os
import sys
from typing import Any, Optional, Sequence, Union

import numpy as np

from ._core import ffi, lib
from .errors import ContextOverflowError, ModelError, PyllamaError
from .generation import GenerationMixin

ROPE_TYPES = {lib.PL_ROPE_NORM: "norm", lib.PL_ROPE_NEOX: "neox"}
ISA_NAMES = {lib.PL_ISA_SCALAR: "scalar", lib.PL_ISA_AVX2: "avx2", lib.PL_ISA_AVX512: "avx512",
             lib.PL_ISA_NEON: "neon"}

# llama.cpp / llama2.c ids used when a llama2.c checkpoint says nothing
LLAMA2C_BOS, LLAMA2C_EOS = 1, 2


def _error(default: str) -> str:
    msg = ffi.string(lib.pl_last_error()).decode("utf-8", "replace")
    return msg or default


def _default_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS
        return max(1, os.cpu_count() or 1)


_KV_TYPES = {0: lib.PL_TYPE_F32, 1: lib.PL_TYPE_F16, "f32": lib.PL_TYPE_F32, "f16": lib.PL_TYPE_F16}


def _kv_type(name: str, value: Optional[int | str]) -> int:
    """A KV cache element type from a GGML type id or name (None: F16)."""
    if value is None:
        return lib.PL_TYPE_F16
    key = value.lower() if isinstance(value, str) else value
    if isinstance(key, bool) or not isinstance(key, (int, str)) or key not in _KV_TYPES:
        raise ValueError(f"{name} must be 1 / 'f16' or 0 / 'f32' (got {value!r}); "
                         "pyllama's KV cache holds F16 or F32 values")
    return _KV_TYPES[key]


def detect_format(path: str) -> str:
    """'gguf' or 'llama2c', from the file's first bytes."""
    with open(path, "rb") as f:
        head = f.read(4)
    if head == b"GGUF":
        return "gguf"
    if len(head) < 4:
        raise ModelError(f"{path}: file too short to be a model ({len(head)} bytes)")
    return "llama2c"


def _loaded_metadata(model, path: str) -> dict:
    """The GGUF metadata the C loader read and checked, as Python values (the file is parsed once;
    pyllama.gguf's reader decodes each value's bytes as read_metadata would)."""
    from .gguf import _Parser

    entry = ffi.new("pl_metadata_entry *")
    out: dict = {}
    for i in range(lib.pl_model_n_metadata(model)):
        lib.pl_model_metadata(model, i, entry)
        key = ffi.buffer(entry.key, entry.key_len)[:].decode("utf-8", "surrogateescape")
        if key in out:
            raise ModelError(f"{path}: duplicate metadata key {key!r}")
        raw = ffi.buffer(entry.value, entry.value_bytes)
        out[key] = _Parser(raw, entry.value_bytes, path).value(entry.type, f"metadata {key!r}")[0]
    return out


class Llama(GenerationMixin):
    """A loaded model with one KV cache (one sequence).

    Args:
        model_path: a GGUF file, a llama2.c checkpoint, or a catalog name
            (see ``python -m pyllama.models list``). ``None`` loads the default
            model, fetching it on first use.
        n_ctx: context length (KV cache positions); 0 means the model's own.
        n_threads: threads for the matrix kernels (default: all CPUs available).
        n_batch: most tokens sent to the C core in one call while evaluating a prompt.
        seed: sampling seed; -1 picks a random one per call.
        verbose: print loading details to stderr.
        tokenizer_path: llama2.c ``tokenizer.bin`` or SentencePiece ``.model``
            (llama2.c checkpoints only; default: ``tokenizer.bin`` beside the model).
        rope_freq_base: llama2.c checkpoints carry no rope base (run.c uses 10000).
        bos_token_id, eos_token_id: llama2.c checkpoints carry neither (run.c: 1 and 2).
        chat_format: a built-in chat template name (chatml, llama-2, llama-3,
            mistral, gemma) used instead of the file's own template.
        context_overflow: what generation does when the context is full:
            "shift" (drop the oldest half after the prompt start, like llama.cpp)
            or "error" (raise ContextOverflowError).
        use_mmap: True (default, as llama.cpp): the weights stay in the file, mapped
            with mmap: loading is instant and processes share the page cache's
            copy. False: the file is read into this process's memory, on 2 MB
            pages where the kernel has transparent huge pages: a load that reads
            the whole file, for fewer TLB misses while decoding (on the project's
            Intel VM the F16 file decodes at 87-92 tok/s so, at 57-64 mapped in
            the minutes when 4 KB pages are slow; bench/RESULTS.md G).
        type_k, type_v: element type of the cached keys / values, as GGML type
            ids (llama-cpp-python's convention: 1 = F16, 0 = F32) or "f16" / "f32".
            Default F16, as llama.cpp: half the memory and cache reads of F32;
            F32 keeps keys and values exactly as computed.

    ``metadata`` holds the GGUF file's scalar keys (strings, numbers); its arrays
    (the vocabulary and merges, ~10 MB of Python strings for a 49k vocabulary) are
    not kept: read them with :func:`pyllama.gguf.read_metadata` when needed.
    """

    def __init__(
        self,
        model_path: Optional[str] = None,
        *,
        n_ctx: int = 512,
        n_threads: Optional[int] = None,
        n_batch: int = 512,
        seed: int = -1,
        verbose: bool = False,
        tokenizer_path: Optional[str] = None,
        rope_freq_base: Optional[float] = None,
        bos_token_id: Optional[int] = None,
        eos_token_id: Optional[int] = None,
        chat_format: Optional[str] = None,
        context_overflow: str = "shift",
        n_gpu_layers: int = 0,
        use_mmap: bool = True,
        logits_all: bool = False,
        type_k: Optional[int | str] = None,
        type_v: Optional[int | str] = None,
    ):
        from . import models

        self._ctx = ffi.NULL
        self._model = ffi.NULL
        if not isinstance(n_ctx, int) or not 0 <= n_ctx <= 1 << 24:
            raise ValueError(f"n_ctx must be an integer from 0 to {1 << 24} (got {n_ctx!r})")
        if not isinstance(n_batch, int) or n_batch < 1:
            raise ValueError(f"n_batch must be a positive integer (got {n_batch!r})")
        if n_threads is not None and (not isinstance(n_threads, int) or n_threads < 1):
            raise ValueError(f"n_threads must be a positive integer (got {n_threads!r})")
        kv_types = (_kv_type("type_k", type_k), _kv_type("type_v", type_v))
        if context_overflow not in ("shift", "error"):
            raise ValueError(f"context_overflow must be 'shift' or 'error' (got {context_overflow!r})")

        if model_path is not None and not os.path.exists(model_path) and (
            os.sep in str(model_path) or str(model_path).endswith((".gguf", ".bin"))
        ):
            raise FileNotFoundError(f"model file not found: {model_path}")
        self.model_path = models.resolve_model(model_path)
        if not os.path.isfile(self.model_path):
            raise FileNotFoundError(f"model file not found: {self.model_path}")
        self.verbose = verbose
        self.n_batch = n_batch
        self.seed = seed
        self.chat_format = chat_format
        self.context_overflow = context_overflow
        self.format = detect_format(self.model_path)

        path_b = os.fsencode(self.model_path)
        self.use_mmap = bool(use_mmap)
        load_flags = 0 if self.use_mmap else lib.PL_LOAD_NO_MMAP
        if self.format == "gguf":
            self._model = lib.pl_load_gguf(path_b, load_flags)
        else:
            self._model = lib.pl_load_llama2c(path_b, float(rope_freq_base or 0.0), load_flags)
        if self._model == ffi.NULL:
            raise ModelError(f"{self.model_path}: {_error('could not load the model')}")
        if self.format == "gguf":
            self.metadata: dict[str, Any] = _loaded_metadata(self._model, self.model_path)
            lib.pl_model_drop_header(self._model)

        cfg = ffi.new("pl_config *")
        lib.pl_model_config(self._model, cfg)
        self.config = {name: getattr(cfg, name) for name in dir(cfg)}
        if self.format == "llama2c":
            self.metadata = self._llama2c_metadata(bos_token_id, eos_token_id)
        self._n_vocab = cfg.n_vocab

        self.tokenizer = self._load_tokenizer(tokenizer_path)
        # like llama-cpp-python's: scalars only (the arrays were for the tokenizer)
        self.metadata = {k: v for k, v in self.metadata.items() if isinstance(v, (str, int, float))}
        if self.format == "llama2c":
            if bos_token_id is not None:
                self.tokenizer.bos_id = bos_token_id
            if eos_token_id is not None:
                self.tokenizer.eos_id = eos_token_id

        if n_ctx == 0:
            n_ctx = cfg.n_ctx_train
        self._n_threads = n_threads or _default_threads()
        self._ctx = lib.pl_context_new(self._model, n_ctx, self._n_threads, *kv_types)
        if self._ctx == ffi.NULL:
            raise MemoryError(_error("could not create the context"))
        self._n_ctx = n_ctx

        self.n_tokens = 0
        self.input_ids: list[int] = []
        self._logits = np.zeros(self._n_vocab, dtype=np.float32)
        self._logits_p = ffi.from_buffer("float[]", self._logits)  # for the one-token path of eval()
        self._one_id = ffi.new("int32_t[1]")
        self.eval_logits: Optional[np.ndarray] = None
        lib.pl_release_free_heap()  # the tokenizer's temporaries: 2-4 MiB less resident (bench/RESULTS.md E)
        if verbose:
            print(
                f"pyllama: loaded {self.model_path} ({self.format}, {cfg.n_layers} layers, dim {cfg.dim}, "
                f"vocab {cfg.n_vocab}, rope {ROPE_TYPES.get(cfg.rope_type)} base {cfg.rope_base:g}); "
                f"n_ctx={n_ctx} n_threads={self._n_threads} isa={self.isa}",
                file=sys.stderr,
            )

    # ------------------------------------------------------------ loading helpers

    def _llama2c_metadata(self, bos: Optional[int], eos: Optional[int]) -> dict[str, Any]:
        c = self.config
        return {
            "general.architecture": "llama",
            "general.file_type": "llama2.c",
            "llama.context_length": c["n_ctx_train"],
            "llama.embedding_length": c["dim"],
            "llama.feed_forward_length": c["hidden_dim"],
            "llama.block_count": c["n_layers"],
            "llama.attention.head_count": c["n_heads"],
            "llama.attention.head_count_kv": c["n_kv_heads"],
            "llama.rope.freq_base": c["rope_base"],
            "tokenizer.ggml.bos_token_id": LLAMA2C_BOS if bos is None else bos,
            "tokenizer.ggml.eos_token_id": LLAMA2C_EOS if eos is None else eos,
        }

    def _load_tokenizer(self, tokenizer_path: Optional[str]):
        from .tokenizer import Tokenizer

        if self.format == "gguf" and tokenizer_path is None:
            tok = Tokenizer.from_gguf_metadata(self.metadata)
        else:
            if tokenizer_path is None:
                tokenizer_path = os.path.join(os.path.dirname(self.model_path), "tokenizer.bin")
                if not os.path.exists(tokenizer_path):
                    raise ModelError(
                        f"{self.model_path} is a llama2.c checkpoint, which has no vocabulary: pass "
                        "tokenizer_path= (a llama2.c tokenizer.bin or a SentencePiece .model)"
                    )
            # a tokenizer.bin has no count of its own: llama2.c reads as many entries as the model has
            tok = Tokenizer.from_file(tokenizer_path, vocab_size=self._n_vocab)
        if tok.n_vocab != self._n_vocab:
            raise ModelError(
                f"the tokenizer has {tok.n_vocab} tokens but the model's embedding has {self._n_vocab} rows"
            )
        return tok

    # ------------------------------------------------------------ llama-cpp-python API

    def n_vocab(self) -> int:
        return self._n_vocab

    def n_ctx(self) -> int:
        return self._n_ctx

    def token_bos(self) -> int:
        return -1 if self.tokenizer.bos_id is None else self.tokenizer.bos_id

    def token_eos(self) -> int:
        return -1 if self.tokenizer.eos_id is None else self.tokenizer.eos_id

    @property
    def n_threads(self) -> int:
        return self._n_threads

    @n_threads.setter
    def n_threads(self, n: int) -> None:
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n_threads must be a positive integer (got {n!r})")
        self._live()
        if lib.pl_set_threads(self._ctx, int(n)) != 0:
            raise ValueError(_error("could not set threads"))
        self._n_threads = int(n)

    @property
    def isa(self) -> str:
        """The kernel path in use: 'scalar', 'avx2', 'avx512' or 'neon'."""
        return ISA_NAMES.get(lib.pl_current_isa(), "scalar")

    def tokenize(self, text: Union[bytes, str], add_bos: bool = True, special: bool = False) -> list[int]:
        """Text to token ids. ``add_bos=True`` adds BOS when the model asks for it (as llama.cpp does)."""
        return self.tokenizer.tokenize(text, add_bos=None if add_bos else False, special=special)

    def detokenize(self, tokens: Sequence[int], prev_tokens: Optional[Sequence[int]] = None,
                   special: bool = False) -> bytes:
        """Token ids to raw bytes (may end inside a UTF-8 character)."""
        prev = list(prev_tokens) if prev_tokens is not None else None
        return self.tokenizer.detokenize(list(tokens), special=special, prev_ids=prev)

    @property
    def logits(self) -> np.ndarray:
        """Logits of the last evaluated position (float32, n_vocab)."""
        return self._logits

    def eval(self, tokens: Sequence[int], logits_all: bool = False) -> None:
        """Append tokens to the KV cache, running the model over them in batches of n_batch.

        Afterwards ``logits`` holds the last position's logits and, with
        ``logits_all=True``, ``eval_logits`` holds one row per token.
        """
        self._live()
        if type(tokens) is list and len(tokens) == 1 and not logits_all:  # decode, from generate()
            t = tokens[0]
            if type(t) is int and 0 <= t < self._n_vocab and self.n_tokens < self._n_ctx:
                self._one_id[0] = t
                if lib.pl_eval(self._ctx, self._one_id, 1, self.n_tokens, self._logits_p, 0) != 0:
                    raise PyllamaError(_error("evaluation failed"))
                self.input_ids.append(t)
                self.n_tokens += 1
                return
        if type(tokens) is list and len(tokens) <= 8:  # plain checks cost less than numpy's
            for t in tokens:
                if type(t) is not int or not 0 <= t < self._n_vocab:
                    break
            else:
                return self._eval_ids(np.array(tokens, dtype=np.int32), logits_all)
        ids = np.ascontiguousarray(tokens, dtype=np.int32).reshape(-1)
        bad = (ids < 0) | (ids >= self._n_vocab)
        if bad.any():
            raise ValueError(f"token id {int(ids[bad][0])} is outside the vocabulary [0, {self._n_vocab})")
        self._eval_ids(ids, logits_all)

    def _eval_ids(self, ids: np.ndarray, logits_all: bool) -> None:
        """eval() on checked ids (int32, in the vocabulary)."""
        n = len(ids)
        if n == 0:
            return
        if self.n_tokens + n > self._n_ctx:
            raise ContextOverflowError(
                f"context overflow: {self.n_tokens} cached + {n} new tokens exceed n_ctx = {self._n_ctx} "
                "(raise n_ctx or shorten the prompt)"
            )
        all_logits = np.empty((n, self._n_vocab), dtype=np.float32) if logits_all else None
        for start in range(0, n, self.n_batch):
            chunk = ids[start:start + self.n_batch]
            out = all_logits[start:start + len(chunk)] if logits_all else self._logits
            rc = lib.pl_eval(self._ctx, ffi.from_buffer("int32_t[]", chunk), len(chunk), self.n_tokens,
                             ffi.from_buffer("float[]", out), 1 if logits_all else 0)
            if rc != 0:
                raise PyllamaError(_error("evaluation failed"))
            # input_ids first: n_tokens never counts a token input_ids lacks (Ctrl-C between the two)
            self.input_ids.extend(chunk.tolist())
            self.n_tokens += len(chunk)
        if logits_all:
            self._logits[:] = all_logits[-1]
            self.eval_logits = all_logits

    def truncate(self, n: int) -> None:
        """Keep only the first n cached positions (the rest will be overwritten)."""
        if not 0 <= n <= self.n_tokens:
            raise ValueError(f"cannot truncate {self.n_tokens} cached tokens to {n}")
        self.n_tokens = n
        del self.input_ids[n:]

    def shift_context(self, n_keep: int, n_discard: int) -> None:
        """Forget n_discard positions after the first n_keep and slide the rest down."""
        self._live()
        if not (0 <= n_keep <= self.n_tokens and 0 < n_discard <= self.n_tokens - n_keep):
            raise ValueError(f"cannot discard {n_discard} tokens after the first {n_keep} "
                             f"of {self.n_tokens} cached tokens")
        new = lib.pl_kv_shift(self._ctx, self.n_tokens, n_keep, n_discard)
        if new < 0:
            raise ValueError(_error("bad context shift"))
        del self.input_ids[n_keep:n_keep + n_discard]
        self.n_tokens = new

    def reset(self) -> None:
        """Forget the cached sequence."""
        self.n_tokens = 0
        self.input_ids = []

    # ------------------------------------------------------------ tensors, cleanup

    def tensors(self) -> list[dict[str, Any]]:
        """Name, type, shape and raw bytes (numpy uint8) of each tensor.

        Bytes that sit in the model file are a zero-copy view of a Python mmap of it, so
        they stay valid after ``close()``, in the file's own layout and type (also for the
        Q4 matrices the C core regroups in its private copy at load); tensors a loader
        converted (norm vectors to F32) are copied, with the type they were converted to.
        """
        import mmap

        self._live()
        if getattr(self, "_file_map", None) is None:
            with open(self.model_path, "rb") as f:
                self._file_map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        base = int(ffi.cast("uintptr_t", lib.pl_model_file_data(self._model)))
        size = len(self._file_map)
        out = []
        info = ffi.new("pl_tensor_info *")
        for i in range(lib.pl_model_n_tensors(self._model)):
            lib.pl_model_tensor(self._model, i, info)
            shape = tuple(info.ne[d] for d in range(info.n_dims))
            offset = int(ffi.cast("uintptr_t", info.data)) - base
            if 0 <= offset and offset + info.nbytes <= size:
                data = np.frombuffer(self._file_map, dtype=np.uint8, count=info.nbytes, offset=offset)
            else:
                data = np.frombuffer(bytes(ffi.buffer(info.data, info.nbytes)), dtype=np.uint8)
            out.append({"name": ffi.string(info.name).decode(), "type": info.type, "shape": shape, "data": data})
        return out

    def _live(self) -> None:
        if self._ctx == ffi.NULL:
            raise PyllamaError("this Llama has been closed")

    def close(self) -> None:
        """Free the KV cache and unmap the weights (also done when the object is collected)."""
        self._file_map = None  # views from tensors() keep their own reference to the Python mmap
        if getattr(self, "_ctx", ffi.NULL) != ffi.NULL:
            lib.pl_context_free(self._ctx)
            self._ctx = ffi.NULL
        if getattr(self, "_model", ffi.NULL) != ffi.NULL:
            lib.pl_model_free(self._model)
            self._model = ffi.NULL

    def __del__(self) -> None:
        self.close()

    def __enter__(self) -> "Llama":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

