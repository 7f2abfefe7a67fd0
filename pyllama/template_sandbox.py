"""Rendering untrusted Jinja2 chat templates with a size budget and a CPU-time budget.

A GGUF file's ``tokenizer.chat_template`` is code from whoever made the file.
Jinja2's ``ImmutableSandboxedEnvironment`` stops it from reaching Python
internals or mutating its inputs, but not from asking for endless work or
memory: nested ``range`` loops, ``lipsum(100000)``, ``'a' * 10**6`` printed in a
loop, ``center(3e8)``, ``tojson(indent=3e8)``, strings doubled in a loop.
Here every operation that can make a string or list much larger than its
inputs is checked *before* it runs against the render's size budget (the most
characters a prompt may have), the output is counted as it is produced, and a
watchdog thread stops a render that has used more than its CPU time, also in
loops whose body is one long C call. Every refusal is a
:class:`~pyllama.errors.ChatTemplateError` saying what was too large or slow.
"""
from __future__ import annotations

import ctypes
import datetime
import functools
import json
import operator
import re
import threading
import time

import jinja2
import jinja2.ext
from jinja2 import nodes
from jinja2.compiler import CodeGenerator
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from .errors import ChatTemplateError

__all__ = ["render", "DEFAULT_MAX_CHARS", "DEFAULT_CPU_SECONDS", "MAX_SOURCE_CHARS"]

DEFAULT_MAX_CHARS = 4_000_000   # characters a rendered prompt (or any string in it) may have
DEFAULT_CPU_SECONDS = 2.0       # real templates render in milliseconds
MAX_SOURCE_CHARS = 1_000_000    # real templates are a few kB
_MAX_INT_BITS = 1 << 16         # integers a template computes (2**65536 is plenty for any prompt)
_MAX_INDENT = 256               # tojson indent
_MAX_LIPSUM = (100, 1000)       # paragraphs, words per paragraph


class _Timeout(BaseException):
    """Raised inside the rendering thread by the watchdog. A BaseException, so that
    ``except Exception`` in Jinja or a filter cannot swallow it."""


def _refuse(what: str):
    raise SecurityError(what)


# ---------------------------------------------------------------------------
# Size checks, done before the operation allocates anything


def _seq_len(x) -> int:
    return len(x) if isinstance(x, (str, bytes, list, tuple)) else 0


_PRINTF_SPEC = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?[hlL]?[a-zA-Z%]")
_DIGITS = re.compile(r"\d+")


def _check_printf(fmt: str, args, limit: int) -> None:
    """`fmt % args` may not ask for a field width or precision beyond the budget."""
    star = False
    for m in _PRINTF_SPEC.finditer(fmt):
        for g in m.groups():
            if g == "*":
                star = True
            elif g and int(g) > limit:
                _refuse(f"a %-format field of width {g} is larger than the {limit}-character budget")
    if star:
        values = args if isinstance(args, tuple) else (args,)
        for v in values:
            if isinstance(v, int) and abs(v) > limit:
                _refuse(f"a %-format field of width {v} is larger than the {limit}-character budget")


def _check_format_string(fmt: str, args, kwargs, limit: int) -> None:
    """`fmt.format(...)`: no width or precision in a field spec beyond the budget."""
    for spec in re.findall(r"\{[^{}]*?:([^{}]*)\}", fmt) + re.findall(r":([^{}]*\{[^{}]*\}[^{}]*)\}", fmt):
        for d in _DIGITS.findall(spec):
            if int(d) > limit:
                _refuse(f"a format field of width {d} is larger than the {limit}-character budget")
    if re.search(r":[^{}]*\{", fmt):  # a nested field gives the width: check the arguments
        for v in list(args) + list(kwargs.values()):
            if isinstance(v, int) and abs(v) > limit:
                _refuse(f"a format width of {v} is larger than the {limit}-character budget")


def _check_replace(s, old, new, count, limit: int) -> None:
    if not isinstance(s, (str, bytes)) or not isinstance(new, type(s)) or not isinstance(old, type(s)):
        return
    grow = len(new) - len(old)
    if grow <= 0:
        return
    n = s.count(old) if old else len(s) + 1
    if isinstance(count, int) and count >= 0:
        n = min(n, count)
    if len(s) + n * grow > limit:
        _refuse(f"replace() would build a string larger than the {limit}-character budget")


def _check_join(sep, items, limit: int) -> None:
    if not isinstance(items, (list, tuple)):
        return
    total = _seq_len(sep) * max(len(items) - 1, 0) + sum(_seq_len(x) for x in items)
    if total > limit:
        _refuse(f"join() would build a string larger than the {limit}-character budget")


def _check_width(name: str, width, limit: int) -> None:
    if isinstance(width, (int, float)) and width > limit:
        _refuse(f"{name}() with a width of {width:.0f} is larger than the {limit}-character budget")


def _check_expanded(value, limit: int, what: str) -> None:
    """Refuse a container whose text form (what printing, comparing or serializing it walks)
    is larger than the budget. Lists can hold the same big list many times over
    (``[b] * 1000``, ``[x, x]`` doubled in a loop): counted with multiplicity, as a single C
    call (``str()``, ``==``, ``json.dumps``) would walk it, which no watchdog can interrupt."""
    t = type(value)
    if t is str or t is int or t is float or t is bool or value is None:
        return
    if not isinstance(value, (list, tuple, dict)):
        return
    memo: dict = {}

    def size(v, depth: int) -> int:
        t = type(v)
        if t is str:
            return len(v) + 2
        if not isinstance(v, (list, tuple, dict)):
            return 8
        key = id(v)
        n = memo.get(key)
        if n is not None:
            return n
        if depth > 200:
            _refuse(f"{what}: data nested more than 200 deep")
        n = 2
        items = v.items() if isinstance(v, dict) else ((None, x) for x in v)
        for k, x in items:
            n += size(x, depth + 1) + 2 + (0 if k is None else size(k, depth + 1))
            if n > limit:
                _refuse(f"{what}: data whose text would be larger than the {limit}-character budget")
        memo[key] = n
        return n

    size(value, 0)


# str methods that can make their result much larger than the string; the rest cannot
_BANNED_STR_METHODS = frozenset(["expandtabs", "translate", "maketrans"])


class _BudgetCodeGenerator(CodeGenerator):
    """Compiles ``a ~ b`` (string concatenation) to a checked call: a loop that doubles a
    string with ``~`` would otherwise reach gigabytes in 30 steps."""

    def visit_Concat(self, node, frame):
        if frame.eval_ctx.volatile or frame.eval_ctx.autoescape:
            return super().visit_Concat(node, frame)  # never: autoescape is off here
        self.write("environment.checked_concat((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


    def visit_Compare(self, node, frame):
        # comparisons of containers run in C: checked like printing them
        self.write("environment.checked_compare(")
        self.visit(node.expr, frame)
        self.write(", (")
        for op in node.ops:
            self.write(f"({op.op!r}, ")
            self.visit(op.expr, frame)
            self.write("), ")
        self.write("))")


_COMPARE = {"eq": operator.eq, "ne": operator.ne, "gt": operator.gt, "gteq": operator.ge, "lt": operator.lt,
            "lteq": operator.le, "in": lambda a, b: a in b, "notin": lambda a, b: a not in b}


class _StrictUnsafeUndefined(jinja2.Undefined):
    """Undefined that is lenient like the default one, except for sandbox refusals:
    those raise even when merely printed, so ``{{ ''.__class__ }}`` fails loudly
    instead of rendering an empty string."""

    __slots__ = ()

    def _strict(self):
        if self._undefined_exception is SecurityError:
            self._fail_with_undefined_error()

    def __str__(self):
        self._strict()
        return super().__str__()

    def __iter__(self):
        self._strict()
        return super().__iter__()

    def __bool__(self):
        self._strict()
        return super().__bool__()

    def __len__(self):
        self._strict()
        return super().__len__()


class _GenerationTag(jinja2.ext.Extension):
    """``{% generation %}...{% endgeneration %}``: templates written for Hugging Face mark the
    assistant's text with it (transformers uses it to build a training mask). Rendering a prompt
    needs only the text, so the block renders its body, in its own scope as transformers' does."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    @staticmethod
    def _body(caller):
        return caller()


class _Sandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox, with every string-, list- or number-growing operation
    checked against `max_chars` before it runs."""

    code_generator_class = _BudgetCodeGenerator
    intercepted_binops = frozenset(["*", "**", "+", "%"])

    def __init__(self, max_chars: int, **kw):
        super().__init__(**kw)
        self.max_chars = max_chars
        self.globals["raise_exception"] = _raise_exception
        self.globals["strftime_now"] = _strftime_now
        self.globals["lipsum"] = self._lipsum(self.globals["lipsum"])
        self.filters["tojson"] = self._tojson
        for name in ("center", "indent", "format", "replace", "join", "batch", "slice", "wordwrap",
                     "truncate", "string", "pprint", "sort", "unique", "min", "max", "dictsort", "groupby",
                     "list", "map", "select", "reject", "selectattr", "rejectattr"):
            self.filters[name] = self._checked_filter(name, self.filters[name])
        self.filters["sum"] = self._sum
        self.finalize = self._finalize

    # -- operators

    def call_binop(self, context, operator_name, left, right):
        limit = self.max_chars
        if operator_name == "*":
            for seq, count in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple, bytes)) and isinstance(count, int):
                    if len(seq) * count > limit:
                        _refuse(f"template tried to build a sequence of {len(seq) * count} items "
                                f"(budget {limit})")
            if isinstance(left, int) and isinstance(right, int):
                if left.bit_length() + right.bit_length() > _MAX_INT_BITS:
                    _refuse("template tried to compute an integer that is too large")
            return operator.mul(left, right)
        if operator_name == "**":
            if isinstance(right, (int, float)) and isinstance(left, (int, float)) and abs(left) > 1:
                bits = max(abs(int(left)).bit_length(), 1) * abs(right)
                if abs(right) > 64 or (isinstance(left, int) and bits > _MAX_INT_BITS):
                    _refuse("template tried to compute a power that is too large")
            return operator.pow(left, right)
        if operator_name == "+":
            if _seq_len(left) + _seq_len(right) > limit:
                _refuse(f"template tried to build a sequence of {_seq_len(left) + _seq_len(right)} "
                        f"items (budget {limit})")
            return operator.add(left, right)
        if operator_name == "%":
            if isinstance(left, str):
                _check_printf(left, right, limit)
                _check_expanded(right, limit, "%")
                out = operator.mod(left, right)
                if len(out) > limit:
                    _refuse(f"template tried to build a string of {len(out)} characters (budget {limit})")
                return out
            return operator.mod(left, right)
        return super().call_binop(context, operator_name, left, right)

    def checked_concat(self, values) -> str:
        for v in values:
            _check_expanded(v, self.max_chars, "~")
        parts = [str(v) for v in values]
        if sum(map(len, parts)) > self.max_chars:
            _refuse(f"template tried to build a string larger than the {self.max_chars}-character budget")
        return "".join(parts)

    def checked_compare(self, left, ops):
        limit = self.max_chars
        _check_expanded(left, limit, "comparison")
        for op, right in ops:
            _check_expanded(right, limit, "comparison")
            if op in ("in", "notin") and isinstance(right, (list, tuple)) and isinstance(left, (list, tuple, dict)):
                # each element is compared with the left side
                if len(right) * max(len(left), 1) > limit:
                    _refuse(f"'in' over {len(right)} items of containers is larger than the budget")
            if not _COMPARE[op](left, right):
                return False
            left = right
        return True

    def _finalize(self, value):
        """Every ``{{ value }}`` passes here before it is made a string."""
        if type(value) is not str:
            _check_expanded(value, self.max_chars, "output")
        return value

    def _sum(self, iterable, attribute=None, start=0):
        """Jinja's sum, as a Python loop (interruptible) with each addition checked:
        builtin sum() of lists is quadratic in C."""
        getter = jinja2.filters.make_attrgetter(self, attribute) if attribute is not None else None
        total = start
        for x in iterable:
            total = self.call_binop(None, "+", total, getter(x) if getter else x)
        return total

    # -- method calls

    def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 - Jinja's signature
        owner = getattr(__obj, "__self__", None)
        if isinstance(owner, (str, bytes)):
            name = getattr(__obj, "__name__", "")
            limit = __self.max_chars
            if name in _BANNED_STR_METHODS:
                _refuse(f"str.{name}() is not available to chat templates")
            if name in ("center", "ljust", "rjust", "zfill") and args:
                _check_width(name, args[0], limit)
            elif name == "replace" and len(args) >= 2:
                _check_replace(owner, args[0], args[1], args[2] if len(args) > 2 else kwargs.get("count", -1),
                               limit)
            elif name == "join" and args:
                _check_join(owner, args[0], limit)
        return super().call(__context, __obj, *args, **kwargs)

    def wrap_str_format(self, value):
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None
        fmt, limit = value.__self__, self.max_chars

        def checked(*args, **kwargs):
            for v in list(args) + list(kwargs.values()):
                _check_expanded(v, limit, "format()")
            if value.__name__ == "format_map":
                _check_format_string(fmt, (), dict(args[0]) if args and isinstance(args[0], dict) else {},
                                     limit)
            else:
                _check_format_string(fmt, args, kwargs, limit)
            out = wrapped(*args, **kwargs)
            if len(out) > limit:
                _refuse(f"template tried to build a string of {len(out)} characters (budget {limit})")
            return out

        return checked

    # -- filters and globals

    def _checked_filter(self, name, f):
        limit = self.max_chars
        lead = 1 if hasattr(f, "jinja_pass_arg") else 0  # Jinja passes its context/environment first

        def checked(*args, **kwargs):
            a = list(args[lead:])
            value = a[0] if a else None
            for v in a + list(kwargs.values()):
                _check_expanded(v, limit, f"{name}()")
            if name == "center":
                _check_width(name, a[1] if len(a) > 1 else kwargs.get("width", 80), limit)
            elif name == "indent":
                width = a[1] if len(a) > 1 else kwargs.get("width", 4)
                w = len(width) if isinstance(width, str) else width
                lines = str(value).count("\n") + 1
                if isinstance(w, int) and w * lines + len(str(value)) > limit:
                    _refuse(f"indent() would build a string larger than the {limit}-character budget")
            elif name == "format":
                if isinstance(value, str):
                    _check_printf(value, tuple(a[1:]) if not kwargs else kwargs, limit)
            elif name == "replace" and len(a) >= 3:
                _check_replace(value, a[1], a[2], a[3] if len(a) > 3 else kwargs.get("count"), limit)
            elif name == "join":
                if isinstance(value, (list, tuple)):
                    sep = a[1] if len(a) > 1 else kwargs.get("d", "")
                    _check_join(sep, [x if isinstance(x, str) else "" for x in value], limit)
            elif name in ("batch", "slice"):
                n = a[1] if len(a) > 1 else kwargs.get("linecount", kwargs.get("slices"))
                if isinstance(n, int) and n > limit:
                    _refuse(f"{name}({n}) is larger than the {limit}-item budget")
            elif name == "wordwrap":
                wrapstring = a[3] if len(a) > 3 else kwargs.get("wrapstring")
                if isinstance(wrapstring, str) and len(wrapstring) * (len(str(value)) + 1) > limit:
                    _refuse(f"wordwrap() could build a string larger than the {limit}-character budget")
            elif name == "truncate":
                end = a[3] if len(a) > 3 else kwargs.get("end", "...")
                if _seq_len(end) > limit:
                    _refuse("truncate() end string too long")
            out = f(*args, **kwargs)
            if _seq_len(out) > limit:
                _refuse(f"{name}() built {len(out)} items (budget {limit})")
            return out

        checked.__name__ = name
        for attr in ("jinja_pass_arg",):  # keep Jinja's pass_context / pass_environment marks
            if hasattr(f, attr):
                setattr(checked, attr, getattr(f, attr))
        return checked

    def _tojson(self, value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        # Like Hugging Face's: plain JSON (Jinja's own tojson HTML-escapes <, >, & and ').
        if indent is not None and not (
            (isinstance(indent, int) and 0 <= indent <= _MAX_INDENT)
            or (isinstance(indent, str) and len(indent) <= _MAX_INDENT)
        ):
            _refuse(f"tojson indent {indent!r} is not an integer from 0 to {_MAX_INDENT}")
        _check_expanded(value, self.max_chars, "tojson")
        out = json.dumps(value, ensure_ascii=bool(ensure_ascii), indent=indent, separators=separators,
                         sort_keys=sort_keys)
        if len(out) > self.max_chars:
            _refuse(f"tojson built {len(out)} characters (budget {self.max_chars})")
        return out

    @staticmethod
    def _lipsum(f):
        def lipsum(n=5, html=True, min=20, max=100):
            if not all(isinstance(v, int) for v in (n, min, max)) or n > _MAX_LIPSUM[0] or max > _MAX_LIPSUM[1] \
                    or min > _MAX_LIPSUM[1]:
                _refuse(f"lipsum() is limited to {_MAX_LIPSUM[0]} paragraphs of {_MAX_LIPSUM[1]} words")
            return f(n=n, html=html, min=min, max=max)

        return lipsum


def _raise_exception(message):
    raise jinja2.TemplateError(str(message))


def _strftime_now(fmt):
    fmt = str(fmt)
    if len(fmt) > 1000:
        _refuse("strftime_now() format too long")
    return datetime.datetime.now().strftime(fmt)


# ---------------------------------------------------------------------------
# CPU-time watchdog


def _thread_cpu_clock(ident: int):
    """A function giving the CPU seconds thread `ident` has used, or wall seconds where
    the platform has no per-thread clock."""
    try:
        clock = time.pthread_getcpuclockid(ident)
        time.clock_gettime(clock)
        return lambda: time.clock_gettime(clock)
    except (AttributeError, OSError):
        return time.monotonic


_set_async_exc = ctypes.pythonapi.PyThreadState_SetAsyncExc
_set_async_exc.argtypes = (ctypes.c_ulong, ctypes.py_object)
_set_async_exc.restype = ctypes.c_int


class _Watchdog:
    """Interrupts the calling thread with :class:`_Timeout` once it has used `seconds` of
    CPU time between :meth:`start` and :meth:`stop`. The exception is raised at the next
    bytecode the thread runs, so a loop in the template stops even if each step is a long
    C call. Call :meth:`start` inside the ``try`` that handles :class:`_Timeout`: with a
    tiny budget the interrupt can land while the watching thread is still starting."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.ident = threading.get_ident()
        self.fired = False
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._cpu = _thread_cpu_clock(self.ident)
        self._start = 0.0

    def start(self) -> None:
        self._start = self._cpu()
        threading.Thread(target=self._watch, name="pyllama-template-watchdog", daemon=True).start()

    def _watch(self) -> None:
        while True:
            left = self.seconds - (self._cpu() - self._start)
            if left <= 0:
                break
            if self._done.wait(max(left, 0.01)):
                return
        with self._lock:
            if not self._done.is_set():
                self.fired = True
                _set_async_exc(self.ident, _Timeout)

    def stop(self) -> bool:
        """Stop watching; True if the budget ran out.

        An interrupt that fired after the render's last bytecode is still pending: it is
        taken here, not withdrawn. Withdrawing it (SetAsyncExc with NULL) leaves CPython
        3.11's per-interpreter "async exception pending" flag raised for good, and the next
        function entered under sys.settrace (a debugger, coverage, hypothesis after a
        failure) then loops forever on that flag."""
        with self._lock:
            self._done.set()
        if self.fired:
            try:
                for _ in range(64):  # a pending interrupt is raised at this loop's first check
                    pass
            except _Timeout:
                pass
        return self.fired


# ---------------------------------------------------------------------------


def render(source: str, variables: dict, *, max_chars: int = DEFAULT_MAX_CHARS,
           cpu_seconds: float = DEFAULT_CPU_SECONDS) -> str:
    """Render template `source` with `variables` in the budgeted sandbox."""
    if not isinstance(source, str):
        raise ChatTemplateError(f"chat template must be a string, not {type(source).__name__}")
    if len(source) > MAX_SOURCE_CHARS:
        raise ChatTemplateError(f"chat template is {len(source)} characters long; the limit is "
                                f"{MAX_SOURCE_CHARS}")
    dog = _Watchdog(cpu_seconds)
    try:
        try:
            dog.start()
            return _render(source, variables, max_chars)
        finally:
            fired = dog.stop()
    except _Timeout:
        fired = True
    if fired:
        raise ChatTemplateError(f"chat template took more than {cpu_seconds:g} s of CPU time to render "
                                "(an endless or huge loop?)")
    raise AssertionError("unreachable")  # pragma: no cover


@functools.lru_cache(maxsize=16)
def _compile(source: str, max_chars: int) -> jinja2.Template:
    """The compiled template (a chat renders the same template every turn; compiling
    it takes longer than rendering it)."""
    # The settings transformers' apply_chat_template renders with (templates are written against
    # it): trim_blocks, lstrip_blocks, {% break %} / {% continue %}, {% generation %}.
    env = _Sandbox(max_chars, trim_blocks=True, lstrip_blocks=True, undefined=_StrictUnsafeUndefined,
                   loader=jinja2.BaseLoader(), autoescape=False,
                   extensions=[jinja2.ext.loopcontrols, _GenerationTag])
    return env.from_string(source)


def _render(source: str, variables: dict, max_chars: int) -> str:
    try:
        template = _compile(source, max_chars)
    except jinja2.TemplateSyntaxError as e:
        raise ChatTemplateError(f"chat template has a syntax error (line {e.lineno}): {e.message}") from None
    except RecursionError:
        raise ChatTemplateError("chat template is nested too deeply to parse") from None
    except (SyntaxError, MemoryError, ValueError, OverflowError) as e:
        # Python's compiler refusing the generated code (e.g. too many nested parentheses)
        raise ChatTemplateError(f"chat template cannot be compiled: {type(e).__name__}: {e}") from None
    out, n = [], 0
    try:
        for chunk in template.generate(**variables):
            n += len(chunk)
            if n > max_chars:
                raise ChatTemplateError(f"chat template output exceeds the budget of {max_chars} characters "
                                        "(a rendered prompt that long cannot fit any context)")
            out.append(chunk)
    except ChatTemplateError:
        raise
    except SecurityError as e:
        raise ChatTemplateError(f"chat template refused by the sandbox: {e}") from None
    except jinja2.TemplateError as e:
        raise ChatTemplateError(f"chat template failed: {e}") from None
    except RecursionError:
        raise ChatTemplateError("chat template failed: it recurses too deeply") from None
    except MemoryError:
        raise ChatTemplateError("chat template failed: it ran out of memory") from None
    except Exception as e:  # whatever a template makes Jinja or a filter raise is the template's fault
        raise ChatTemplateError(f"chat template failed: {type(e).__name__}: {e}") from None
    return "".join(out)
