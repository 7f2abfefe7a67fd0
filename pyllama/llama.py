"""The model object: loads weights through the C core and runs forward passes.

``Llama`` follows llama-cpp-python's shape so code can switch between the two:
``Llama(model_path=..., n_ctx=..., n_threads=...)``, ``tokenize``, ``detokenize``,
``eval``, ``create_completion`` and ``create_chat_completion`` (the last two come
from :class:`pyllama.completion.GenerationMixin`).

The hot path is one C call per batch of tokens (``pl_eval``); logits land
directly in numpy arrays that the C code writes into.
"""
from __future__ import annotations

import numbers
import os
import sys
import threading
import weakref
from typing import Any, Optional, Sequence, Union

import numpy as np

from ._core import ffi, lib
from .errors import ContextOverflowError, ModelError, PyllamaError, c_error
from ._serial import CallLock, serialized
from .completion import GenerationMixin

ROPE_TYPES = {lib.PL_ROPE_NORM: "norm", lib.PL_ROPE_NEOX: "neox"}
ISA_NAMES = {lib.PL_ISA_SCALAR: "scalar", lib.PL_ISA_AVX2: "avx2", lib.PL_ISA_AVX512: "avx512",
             lib.PL_ISA_NEON: "neon"}

# llama.cpp / llama2.c ids used when a llama2.c checkpoint says nothing
LLAMA2C_BOS, LLAMA2C_EOS = 1, 2


def _default_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS
        return max(1, os.cpu_count() or 1)


def _int_arg(name: str, value: Any, low: int, high: Optional[int] = None) -> int:
    """An integer argument in [low, high]: TypeError for a bool, float or other type (True is
    not 1 context position), ValueError outside the range."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer (got {type(value).__name__} {value!r})")
    value = int(value)
    if value < low or (high is not None and value > high):
        bound = f"from {low} to {high}" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be an integer {bound} (got {value})")
    return value


# More threads than CPUs only queue for the same cores, and each one costs stack and scratch
# memory: a thousand of them can exhaust a memory limit inside the OpenMP runtime, which then
# ends the process. Requests above 4 per CPU (and above 64, so that oversubscription stays
# measurable on a small machine) are lowered to that, with a warning.
THREADS_PER_CPU_MAX = 4
THREADS_ALWAYS_ALLOWED = 64


def thread_cap() -> int:
    return max(THREADS_ALWAYS_ALLOWED, THREADS_PER_CPU_MAX * max(1, os.cpu_count() or 1))


def _thread_count(name: str, value: Any) -> int:
    n = _int_arg(name, value, 1)
    cap = thread_cap()
    if n > cap:
        print(f"pyllama: warning: {name}={n} is more than this machine's {os.cpu_count()} CPUs can use; "
              f"using {cap}", file=sys.stderr)
        n = cap
    return n


def _token_ids(tokens: Any, n_vocab: int) -> np.ndarray:
    """Token ids as int32, checked: integers (not floats or bools, which numpy would
    truncate) inside the vocabulary (not wrapped around from int64)."""
    arr = np.asarray(tokens)
    if arr.size == 0:
        return np.zeros(0, dtype=np.int32)
    if arr.dtype.kind == "O":  # Python ints beyond int64, or mixed objects
        flat = arr.reshape(-1)
        for t in flat:
            if isinstance(t, bool) or not isinstance(t, numbers.Integral):
                raise TypeError(f"tokens must be integer token ids (got {type(t).__name__} {t!r})")
            if not 0 <= t < n_vocab:
                raise ValueError(f"token id {int(t)} is outside the vocabulary [0, {n_vocab})")
        return flat.astype(np.int32)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"tokens must be integer token ids (got an array of {arr.dtype})")
    flat = arr.reshape(-1)
    bad = (flat < 0) | (flat >= n_vocab)
    if bad.any():
        raise ValueError(f"token id {int(flat[bad][0])} is outside the vocabulary [0, {n_vocab})")
    return flat.astype(np.int32)


# llama-cpp-python constructor keywords for what a CPU-only engine has no use for (GPU
# placement, NUMA, performance counters): accepted and ignored.
_IGNORED_OPTIONS = frozenset({"split_mode", "main_gpu", "tensor_split", "rpc_servers", "offload_kqv",
                              "numa", "no_perf", "op_offload", "swa_full", "last_n_tokens_size"})

# llama-cpp-python constructor keywords for features pyllama lacks, with the values that
# mean "off" (code written for llama-cpp-python often passes them explicitly).
_NEUTRAL_OPTIONS = {
    "vocab_only": False, "kv_overrides": None, "rope_scaling_type": -1, "pooling_type": -1,
    "yarn_ext_factor": -1.0, "yarn_attn_factor": 1.0, "yarn_beta_fast": 32.0, "yarn_beta_slow": 1.0,
    "yarn_orig_ctx": 0, "lora_base": None, "lora_path": None, "lora_scale": 1.0,
    "chat_handler": None, "draft_model": None, "tokenizer": None, "spm_infill": False,
}


def _check_llama_cpp_options(options: dict) -> None:
    for name, value in options.items():
        if name in _IGNORED_OPTIONS:
            continue
        if name not in _NEUTRAL_OPTIONS:
            raise TypeError(f"Llama() got an unexpected keyword argument {name!r}")
        neutral = _NEUTRAL_OPTIONS[name]
        if name == "lora_scale" or (value == neutral and type(value) is type(neutral)) or (
                neutral is not None and isinstance(value, (int, float)) and value == neutral) or (
                name == "kv_overrides" and not value):
            continue
        raise ValueError(f"{name}={value!r} is not supported by pyllama (leave it at {neutral!r}; "
                         "the README lists what is not supported)")


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
        rope_freq_base: replaces the file's RoPE base (0 / None: the file's; llama2.c
            checkpoints carry none, and run.c uses 10000).
        bos_token_id, eos_token_id: llama2.c checkpoints carry neither (run.c: 1 and 2).
        chat_format: a built-in chat template name (chatml, llama-2, llama-3,
            mistral, gemma, phi-3) used instead of the file's own template.
        context_overflow: what generation does when the context is full:
            "shift" (drop the oldest half after the prompt start, like llama.cpp)
            or "error" (raise ContextOverflowError).
        use_mmap: True (default, as llama.cpp): the weights stay in the file, mapped
            with mmap: loading is instant and processes share the page cache's
            copy. False: the file is read into this process's memory, on 2 MB
            pages where the kernel has transparent huge pages: a load that reads
            the whole file, for fewer TLB misses while decoding (faster decode of
            files larger than the CPU caches where 4 KB pages are slow, as in VMs;
            bench/RESULTS.md, "Mapped or read into memory").
            A mapped file must not be truncated or rewritten while it is loaded: the
            kernel then ends the process with SIGBUS on the next read of a lost page
            (llama.cpp behaves the same). ``pyllama.models.fetch`` only ever renames a
            new file over an old one, which is safe; copy or download other files
            under a new name and rename them into place, or load with use_mmap=False.
        embedding: allow ``embed`` / ``create_embedding`` (as llama-cpp-python asks).
        type_k, type_v: element type of the cached keys / values, as GGML type
            ids (llama-cpp-python's convention: 1 = F16, 0 = F32) or "f16" / "f32".
            Default F16, as llama.cpp: half the memory and cache reads of F32;
            F32 keeps keys and values exactly as computed.
        parse_special_in_messages: False (default): in chat completions, text in the
            messages that spells a control token (``<|im_start|>system``) is tokenized
            as plain text; only the chat template's own markers become control tokens,
            so message contents cannot forge turns. True parses them in the messages
            too, as llama.cpp's server and llama-cpp-python do.

    llama-cpp-python's other keywords: ``logits_all`` (``eval_logits``/``scores`` keep a row
    of logits per cached position: n_ctx * n_vocab floats, touched as they are filled), ``n_ubatch`` (the batch per C call is the smaller of it
    and ``n_batch``), ``n_threads_batch`` (threads for prompts; ``n_threads`` decodes),
    ``use_mlock`` (lock the weights in RAM; a refusal is a warning, as in llama.cpp),
    ``f16_kv`` (False: an F32 cache, when type_k/type_v are not given), ``seed``. Accepted
    and ignored: ``n_gpu_layers``, ``flash_attn`` and the other GPU/NUMA placement options.
    Refused unless at their "off" value (ValueError naming them): ``vocab_only``, LoRA, ``kv_overrides``, YaRN and rope scaling overrides,
    ``rope_freq_scale``, ``pooling_type``, ``chat_handler``, ``draft_model``,
    ``tokenizer``, ``spm_infill``. Integer arguments must be integers (``n_ctx=True`` is
    a TypeError); thread counts above max(64, 4 per CPU) are lowered to that, with a warning.

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
        parse_special_in_messages: bool = False,
        n_ubatch: int = 512,
        n_threads_batch: Optional[int] = None,
        use_mlock: bool = False,
        rope_freq_scale: float = 0.0,
        f16_kv: Optional[bool] = None,
        flash_attn: bool = False,
        embedding: bool = False,
        **llama_cpp_options: Any,
    ):
        from . import models

        self._ctx = ffi.NULL
        # set by a batching scheduler (server/engine.py): eval() hands it its tokens instead
        self._batch_hook = None
        self._model = ffi.NULL
        # _call_lock serializes whole calls (see _serial.py); _c_lock guards each C call on the
        # model, so close() or a thread count change waits for an evaluation in progress
        self._call_lock = CallLock()
        self._c_lock = threading.Lock()
        self._forks: "weakref.WeakSet[Llama]" = weakref.WeakSet()
        self._parent: Optional[Llama] = None
        self.embedding = bool(embedding)
        _check_llama_cpp_options(llama_cpp_options)
        n_ctx = _int_arg("n_ctx", n_ctx, 0, 1 << 24)
        n_batch = _int_arg("n_batch", n_batch, 1)
        n_ubatch = _int_arg("n_ubatch", n_ubatch, 1)
        if n_threads is not None:
            n_threads = _thread_count("n_threads", n_threads)
        if n_threads_batch is not None:
            n_threads_batch = _thread_count("n_threads_batch", n_threads_batch)
        if seed is not None:
            _int_arg("seed", seed, -(1 << 63), (1 << 64) - 1)
            if seed == 0xFFFFFFFF:  # llama.cpp's LLAMA_DEFAULT_SEED: a random one
                seed = -1
        _int_arg("n_gpu_layers", n_gpu_layers, -1)
        if f16_kv is not None and type_k is None and type_v is None:
            type_k = type_v = "f16" if f16_kv else "f32"  # llama-cpp-python's older keyword
        kv_types = (_kv_type("type_k", type_k), _kv_type("type_v", type_v))
        if context_overflow not in ("shift", "error"):
            raise ValueError(f"context_overflow must be 'shift' or 'error' (got {context_overflow!r})")
        if rope_freq_base is not None and (isinstance(rope_freq_base, bool) or not isinstance(
                rope_freq_base, numbers.Real) or not (rope_freq_base == 0 or 1 < rope_freq_base < float("inf"))):
            raise ValueError(f"rope_freq_base must be a number above 1, or 0 for the model's own "
                             f"(got {rope_freq_base!r})")
        if rope_freq_scale not in (0, 0.0, 1, 1.0):
            raise ValueError(f"rope_freq_scale={rope_freq_scale!r} is not supported by pyllama: the rope "
                             "scaling comes from the model file (leave it at 0)")
        if chat_format is not None:
            from .chat_format import template_for

            template_for(chat_format, None, None)  # an unknown name fails here, not at the first chat

        if model_path is not None and not os.path.exists(model_path) and (
            os.sep in str(model_path) or str(model_path).endswith((".gguf", ".bin"))
        ):
            raise FileNotFoundError(f"model file not found: {model_path}")
        self.model_path = models.resolve_model(model_path)
        if not os.path.isfile(self.model_path):
            raise FileNotFoundError(f"model file not found: {self.model_path}")
        self.verbose = verbose
        # llama.cpp's physical batch (n_ubatch) at most its logical one (n_batch): the C core
        # takes a whole batch per call, so the smaller of the two bounds a call
        self.n_batch = min(n_batch, n_ubatch)
        self.seed = seed
        self.chat_format = chat_format
        self.parse_special_in_messages = bool(parse_special_in_messages)
        self.context_overflow = context_overflow
        self.format = detect_format(self.model_path)
        if verbose and n_gpu_layers:
            print(f"pyllama: note: n_gpu_layers={n_gpu_layers} ignored (pyllama runs on the CPU)", file=sys.stderr)

        path_b = os.fsencode(self.model_path)
        self.use_mmap = bool(use_mmap)
        load_flags = 0 if self.use_mmap else lib.PL_LOAD_NO_MMAP
        if self.format == "gguf":
            self._model = lib.pl_load_gguf(path_b, load_flags)
        else:
            self._model = lib.pl_load_llama2c(path_b, float(rope_freq_base or 0.0), load_flags)
        if self._model == ffi.NULL:
            raise ModelError(f"{self.model_path}: {c_error('could not load the model')}")
        if self.format == "gguf":
            self.metadata: dict[str, Any] = _loaded_metadata(self._model, self.model_path)
            lib.pl_model_drop_header(self._model)
        if rope_freq_base and lib.pl_model_set_rope_base(self._model, float(rope_freq_base)) != 0:
            raise ValueError(c_error("bad rope_freq_base"))

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
        self._n_threads_batch = n_threads_batch  # None: follow n_threads
        self._kv_types = kv_types
        self.logits_all = bool(logits_all)
        self._new_context(n_ctx)
        self.use_mlock = bool(use_mlock)
        if self.use_mlock:
            self._mlock_weights()
        lib.pl_release_free_heap()  # the tokenizer's temporaries: less resident (bench/RESULTS.md, "Memory")
        if verbose:
            print(
                f"pyllama: loaded {self.model_path} ({self.format}, {cfg.n_layers} layers, dim {cfg.dim}, "
                f"vocab {cfg.n_vocab}, rope {ROPE_TYPES.get(cfg.rope_type)} base {cfg.rope_base:g}); "
                f"n_ctx={n_ctx} n_threads={self._n_threads} isa={self.isa}",
                file=sys.stderr,
            )

    @classmethod
    def from_pretrained(cls, repo_id: str, filename: str, additional_files: Optional[Sequence[str]] = None,
                        local_dir: Optional[str] = None, local_dir_use_symlinks: Any = "auto",
                        cache_dir: Optional[str] = None, **kwargs: Any) -> "Llama":
        """A model from the Hugging Face hub (llama-cpp-python's signature): ``filename`` is a
        file of the repository ``repo_id`` or a glob pattern matching exactly one
        (``"*Q4_K_M.gguf"``); it is downloaded through ``huggingface_hub`` (needed for this
        call only) into its cache or ``local_dir``, and the other keywords go to ``Llama()``.
        Offline, a file downloaded before is taken from the cache; otherwise FetchError."""
        from .hub import download

        path = download(repo_id, filename, additional_files or (), local_dir=local_dir, cache_dir=cache_dir)
        return cls(model_path=path, **kwargs)

    def _mlock_weights(self) -> None:
        """use_mlock: keep the mapped weights in RAM; like llama.cpp, a refusal (RLIMIT_MEMLOCK) is a warning."""
        import ctypes
        import ctypes.util

        size = int(lib.pl_model_file_size(self._model))
        addr = int(ffi.cast("uintptr_t", lib.pl_model_file_data(self._model)))
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        page = os.sysconf("SC_PAGE_SIZE")
        start = addr - addr % page
        if size and libc.mlock(ctypes.c_void_p(start), ctypes.c_size_t(size + addr - start)) != 0:
            err = ctypes.get_errno()
            print(f"pyllama: warning: use_mlock: could not lock {size / 2**20:.0f} MiB of weights in RAM "
                  f"({os.strerror(err)}; raise `ulimit -l`)", file=sys.stderr)

    def _new_context(self, n_ctx: int) -> None:
        self._ctx = lib.pl_context_new(self._model, n_ctx, self._n_threads, *self._kv_types)
        if self._ctx == ffi.NULL:
            raise MemoryError(c_error("could not create the context"))
        self._c_threads = self._n_threads  # what the C context runs with now
        self._n_ctx = n_ctx
        self.n_tokens = 0
        self.input_ids: list[int] = []
        self._logits = np.zeros(self._n_vocab, dtype=np.float32)
        self._logits_p = ffi.from_buffer("float[]", self._logits)  # for the one-token path of eval()
        self._one_id = ffi.new("int32_t[1]")
        # logits_all: one row per cached position, as llama-cpp-python's `scores` (pages are
        # only touched as positions are evaluated)
        self.scores: Optional[np.ndarray] = (
            np.zeros((n_ctx, self._n_vocab), dtype=np.float32) if self.logits_all else None)
        self._last_rows: Optional[np.ndarray] = None

    def fork(self, n_ctx: Optional[int] = None) -> "Llama":
        """A Llama sharing this one's weights and tokenizer with a KV cache of its own.

        A server keeps one per slot, so each conversation keeps its cache. Forks take
        turns in the C core with their parent (one evaluation at a time); closing the
        parent closes its forks.
        """
        self._live()
        if n_ctx is not None and (not isinstance(n_ctx, int) or not 1 <= n_ctx <= 1 << 24):
            raise ValueError(f"n_ctx must be an integer from 1 to {1 << 24} (got {n_ctx!r})")
        child = object.__new__(type(self))
        child.__dict__.update({k: v for k, v in self.__dict__.items()
                               if k not in ("_file_map", "_pl_rng", "last_timings")})
        child._ctx = ffi.NULL
        child._call_lock = CallLock()
        child._forks = weakref.WeakSet()
        child._parent = self
        with self._c_lock:
            self._live()
            child._new_context(n_ctx or self._n_ctx)
        self._forks.add(child)
        return child

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
        from .errors import TokenizerError

        if tokenizer_path is not None and not os.path.isfile(tokenizer_path):
            raise FileNotFoundError(f"tokenizer file not found: {tokenizer_path}")
        try:
            return self._read_tokenizer(tokenizer_path)
        except TokenizerError as e:
            # the vocabulary is part of the model (or of the file given for it): its faults are the file's
            raise ModelError(f"{self.model_path}: vocabulary: {e}") from e

    def _read_tokenizer(self, tokenizer_path: Optional[str]):
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

    def n_embd(self) -> int:
        return int(self.config["dim"])

    def token_bos(self) -> int:
        return -1 if self.tokenizer.bos_id is None else self.tokenizer.bos_id

    def token_eos(self) -> int:
        return -1 if self.tokenizer.eos_id is None else self.tokenizer.eos_id

    def token_nl(self) -> int:
        """The token of a lone newline, as llama.cpp's (-1 when "\\n" takes several tokens)."""
        ids = self.tokenizer.tokenize("\n", add_bos=False, special=False)
        return ids[0] if len(ids) == 1 else -1

    @property
    def n_threads(self) -> int:
        return self._n_threads

    @n_threads.setter
    def n_threads(self, n: int) -> None:
        n = _thread_count("n_threads", n)
        self._set_c_threads(n)
        self._n_threads = n

    @property
    def n_threads_batch(self) -> int:
        """Threads for batches of more than one token (prompts; default: n_threads); n_threads decodes."""
        return self._n_threads_batch or self._n_threads

    @n_threads_batch.setter
    def n_threads_batch(self, n: int) -> None:
        self._n_threads_batch = _thread_count("n_threads_batch", n)

    def _set_c_threads(self, n: int) -> None:
        with self._c_lock:  # never while another thread evaluates on this context
            self._live()
            if lib.pl_set_threads(self._ctx, int(n)) != 0:
                raise MemoryError(c_error("could not set threads"))
            self._c_threads = n

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

    @property
    def eval_logits(self) -> Optional[np.ndarray]:
        """Rows of logits (float32, one row of n_vocab per token). Constructed with
        ``logits_all=True``: one row per cached position (``scores[:n_tokens]``, as
        llama-cpp-python's); otherwise the rows of the last ``eval(..., logits_all=True)``."""
        if self.scores is not None:
            return self.scores[:self.n_tokens]
        return self._last_rows

    @eval_logits.setter
    def eval_logits(self, rows: Optional[np.ndarray]) -> None:
        self._last_rows = rows

    @serialized
    def eval(self, tokens: Sequence[int], logits_all: Optional[bool] = None) -> None:
        """Append tokens to the KV cache, running the model over them in batches of n_batch.

        Afterwards ``logits`` holds the last position's logits and, with ``logits_all``
        (default: the constructor's), ``eval_logits`` holds one row per token.
        """
        self._live()
        if logits_all is None:
            logits_all = self.logits_all
        if self._batch_hook is not None and not logits_all:  # a server slot: the engine batches it
            return self._batch_hook(self, tokens)
        if type(tokens) is list and len(tokens) == 1 and not logits_all:  # decode, from generate()
            t = tokens[0]
            if type(t) is int and 0 <= t < self._n_vocab and self.n_tokens < self._n_ctx:
                if self._c_threads != self._n_threads:
                    self._set_c_threads(self._n_threads)
                self._one_id[0] = t
                with self._c_lock:
                    self._live()
                    rc = lib.pl_eval(self._ctx, self._one_id, 1, self.n_tokens, self._logits_p, 0)
                if rc != 0:
                    raise PyllamaError(c_error("evaluation failed"))
                self.input_ids.append(t)
                self.n_tokens += 1
                return
        if type(tokens) is list and len(tokens) <= 8:  # plain checks cost less than numpy's
            for t in tokens:
                if type(t) is not int or not 0 <= t < self._n_vocab:
                    break
            else:
                return self._eval_ids(np.array(tokens, dtype=np.int32), logits_all)
        self._eval_ids(_token_ids(tokens, self._n_vocab), logits_all)

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
        threads = (self._n_threads_batch or self._n_threads) if n > 1 else self._n_threads
        if self._c_threads != threads:
            self._set_c_threads(threads)
        if not logits_all:
            all_logits = None
        elif self.scores is not None:
            all_logits = self.scores[self.n_tokens:self.n_tokens + n]
        else:
            all_logits = np.empty((n, self._n_vocab), dtype=np.float32)
        for start in range(0, n, self.n_batch):
            chunk = ids[start:start + self.n_batch]
            out = all_logits[start:start + len(chunk)] if logits_all else self._logits
            with self._c_lock:
                self._live()
                rc = lib.pl_eval(self._ctx, ffi.from_buffer("int32_t[]", chunk), len(chunk), self.n_tokens,
                                 ffi.from_buffer("float[]", out), 1 if logits_all else 0)
            if rc != 0:
                raise PyllamaError(c_error("evaluation failed"))
            # input_ids first: n_tokens never counts a token input_ids lacks (Ctrl-C between the two)
            self.input_ids.extend(chunk.tolist())
            self.n_tokens += len(chunk)
        if logits_all:
            self._logits[:] = all_logits[-1]
            if self.scores is None:
                self._last_rows = all_logits

    # ------------------------------------------------------------ state

    @serialized
    def save_state(self) -> "LlamaState":
        """The cached sequence (token ids, KV cache, logits) as a :class:`LlamaState`,
        for :meth:`load_state` on this object or another one loaded from the same model
        with the same KV cache types."""
        from .state import LlamaState, save_kv

        with self._c_lock:
            self._live()
            kv = save_kv(self._ctx, self.n_tokens)
        rows = self.scores[:self.n_tokens].copy() if self.scores is not None else self._logits[None, :].copy()
        return LlamaState(input_ids=np.array(self.input_ids, dtype=np.intc), scores=rows,
                          n_tokens=self.n_tokens, llama_state=kv, llama_state_size=len(kv), seed=self.seed)

    @serialized
    def load_state(self, state: "LlamaState") -> None:
        """Restore a sequence saved with :meth:`save_state` (ValueError when it does not fit this model)."""
        from .state import LlamaState, load_kv

        self._live()
        if not isinstance(state, LlamaState):
            raise TypeError(f"load_state() takes a LlamaState from save_state() (got {type(state).__name__})")
        n = _int_arg("state.n_tokens", state.n_tokens, 0, self._n_ctx)
        ids = _token_ids(state.input_ids, self._n_vocab)
        if len(ids) != n:
            raise ValueError(f"state has {len(ids)} input_ids for n_tokens={n}")
        with self._c_lock:
            self._live()
            load_kv(self._ctx, n, state.llama_state)
        self.n_tokens = n
        self.input_ids = ids.tolist()
        rows = np.asarray(state.scores, dtype=np.float32)
        if rows.ndim == 2 and rows.shape[1] == self._n_vocab and len(rows):
            self._logits[:] = rows[-1]
            if self.scores is not None and len(rows) == n:
                self.scores[:n] = rows
        self.seed = state.seed
        self._pl_rng = None

    @serialized
    def truncate(self, n: int) -> None:
        """Keep only the first n cached positions (the rest will be overwritten)."""
        if not 0 <= n <= self.n_tokens:
            raise ValueError(f"cannot truncate {self.n_tokens} cached tokens to {n}")
        self.n_tokens = n
        del self.input_ids[n:]

    @serialized
    def shift_context(self, n_keep: int, n_discard: int) -> None:
        """Forget n_discard positions after the first n_keep and slide the rest down."""
        self._live()
        if not (0 <= n_keep <= self.n_tokens and 0 < n_discard <= self.n_tokens - n_keep):
            raise ValueError(f"cannot discard {n_discard} tokens after the first {n_keep} "
                             f"of {self.n_tokens} cached tokens")
        old = self.n_tokens
        with self._c_lock:
            self._live()
            new = lib.pl_kv_shift(self._ctx, self.n_tokens, n_keep, n_discard)
        if new < 0:
            raise ValueError(c_error("bad context shift"))
        if self.scores is not None:
            self.scores[n_keep:new] = self.scores[n_keep + n_discard:old]
        del self.input_ids[n_keep:n_keep + n_discard]
        self.n_tokens = new

    @serialized
    def reset(self) -> None:
        """Forget the cached sequence."""
        self.n_tokens = 0
        self.input_ids = []

    # ------------------------------------------------------------ one call at a time

    generate = serialized(GenerationMixin.generate)
    create_completion = serialized(GenerationMixin.create_completion)
    create_chat_completion = serialized(GenerationMixin.create_chat_completion)

    # ------------------------------------------------------------ embeddings

    def _hidden_states(self, ids: list[int]) -> np.ndarray:
        """Final hidden states (n_tokens, dim) of ids evaluated from position 0 (the KV cache is reused)."""
        arr = np.ascontiguousarray(ids, dtype=np.int32)
        out = np.empty((len(arr), self.config["dim"]), dtype=np.float32)
        self.reset()
        with self._c_lock:
            self._live()
            rc = lib.pl_eval_hidden(self._ctx, ffi.from_buffer("int32_t[]", arr), len(arr), 0,
                                    ffi.from_buffer("float[]", out))
        if rc != 0:
            raise PyllamaError(c_error("evaluation failed"))
        return out

    @serialized
    def embed(self, input: Union[str, list[str]], normalize: bool = True, truncate: bool = True,
              return_count: bool = False):
        """Embeddings of a text or a list of texts (llama-cpp-python's ``embed``).

        Pooling follows the file's ``{arch}.pooling_type`` (mean when absent; 2 = first
        token, 3 = last token, 0 = none: one vector per token). ``normalize``: scaled to
        unit length (llama-cpp-python's default is False; OpenAI's embeddings are unit
        length, so pyllama's is True). ``truncate``: a text longer than the context is cut
        to n_ctx tokens, else ContextOverflowError. One text gives one embedding, a list
        a list; ``return_count`` adds the number of tokens evaluated.
        """
        from .embeddings import pool

        if not self.embedding:
            raise ValueError("this Llama was created without embedding=True, which embed() needs")
        texts = [input] if isinstance(input, str) else input
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise ValueError("input must be a string or a list of strings")
        arch = str(self.metadata.get("general.architecture", "llama"))
        pooling = int(self.metadata.get(f"{arch}.pooling_type", 1))
        out, n_total = [], 0
        for text in texts:
            ids = self.tokenize(text.encode("utf-8"), add_bos=True, special=False) or [self.token_bos()]
            if len(ids) > self._n_ctx:
                if not truncate:
                    raise ContextOverflowError(
                        f"input is {len(ids)} tokens but the context holds n_ctx={self._n_ctx} "
                        "(pass truncate=True or a larger n_ctx)")
                ids = ids[:self._n_ctx]
            if not ids or ids[0] < 0:
                raise ValueError("an empty input has no tokens to embed (the model has no BOS token)")
            n_total += len(ids)
            out.append(pool(self._hidden_states(ids), pooling, normalize))
        result = out[0] if isinstance(input, str) else out
        return (result, n_total) if return_count else result

    def create_embedding(self, input: Union[str, list[str]], model: Optional[str] = None) -> dict:
        """OpenAI-shaped embeddings response for a text or a list of texts."""
        texts = [input] if isinstance(input, str) else input
        embeds, n_tokens = self.embed(texts, return_count=True)
        return {
            "object": "list",
            "data": [{"object": "embedding", "embedding": e, "index": i} for i, e in enumerate(embeds)],
            "model": model if model is not None else self.model_path,
            "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens},
        }

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
        """Free the KV cache and unmap the weights (also done when the object is collected).

        Safe from any thread: it waits for an evaluation in progress to finish; a call
        that continues after it (a stream) raises PyllamaError.
        """
        self._file_map = None  # views from tensors() keep their own reference to the Python mmap
        c_lock = getattr(self, "_c_lock", None)
        if c_lock is None:  # __init__ failed before the lock existed: nothing allocated
            return
        for child in list(getattr(self, "_forks", ())):
            child.close()
        with c_lock:
            if self._ctx != ffi.NULL:
                lib.pl_context_free(self._ctx)
                self._ctx = ffi.NULL
            if self._parent is None and self._model != ffi.NULL:
                lib.pl_model_free(self._model)
            self._model = ffi.NULL

    def __del__(self) -> None:
        self.close()

    def __enter__(self) -> "Llama":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

