"""Built-in tools for ``python -m pyllama.chat --tools calculator,python``.

calculator: arithmetic evaluated from Python's parsed AST by a small interpreter of
its own (numbers, + - * / // % ** and ^ as power, parentheses, a few math functions
and constants). Nothing is ever passed to ``eval``; names, attributes, subscripts
and any other syntax are refused, and powers/factorials too large to compute quickly
are refused before they are computed.

python: the code runs in a separate ``python -I`` process:

* limits: CPU time (RLIMIT_CPU), address space (RLIMIT_AS), size of any file it
  writes (RLIMIT_FSIZE, which also caps its output: stdout and stderr go to a file),
  no core dumps, and a wall-clock timeout after which its process group is killed;
* network: where ``unshare`` can make a new user + network namespace (Linux, when
  unprivileged user namespaces are allowed, or as root) the process sees only a
  loopback interface that is down, so it cannot reach any host;
* files: it starts in an empty temporary directory, deleted afterwards, with an
  environment of only PATH, HOME (that directory) and LANG.

What it does NOT isolate: the file system is the user's own (the code can read, and
write within the size limit, anything the user can), other processes of the user
can be signalled, and without ``unshare`` the network is reachable. Treat it as
running the model's code as yourself, with a leash, not as a sandbox for hostile code.

Every tool returns text; a failure, a refusal or a timeout comes back as an
``error: ...`` text for the model to read, never as an exception in the chat.
"""
from __future__ import annotations

import ast
import json
import math
import operator
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from typing import Callable

__all__ = ["calculate", "CalculatorError", "run_python", "PythonLimits", "network_isolated", "BUILTIN_TOOLS",
           "run_tool", "tool_specs"]


# ---------------------------------------------------------------------------- calculator

class CalculatorError(ValueError):
    pass


_MAX_EXPRESSION = 2000   # characters
_MAX_INT_BITS = 100_000  # largest integer result a power or factorial may produce

_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
           ast.Div: operator.truediv, ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_CONSTANTS = {"pi": math.pi, "e": math.e, "tau": math.tau}


def _factorial(n):
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise CalculatorError("factorial needs a non-negative integer")
    if n > 5000:
        raise CalculatorError("factorial argument too large (at most 5000)")
    return math.factorial(n)


_FUNCTIONS = {
    "sqrt": math.sqrt, "exp": math.exp, "log": math.log, "log10": math.log10, "log2": math.log2,
    "sin": math.sin, "cos": math.cos, "tan": math.tan, "asin": math.asin, "acos": math.acos,
    "atan": math.atan, "abs": abs, "round": round, "floor": math.floor, "ceil": math.ceil,
    "factorial": _factorial, "min": min, "max": max,
}


def _power(base, exponent):
    if isinstance(base, int) and isinstance(exponent, int) and exponent > 0 and abs(base) > 1:
        if exponent * math.log2(abs(base)) > _MAX_INT_BITS:
            raise CalculatorError("power too large to compute")
    try:
        result = operator.pow(base, exponent)
    except OverflowError:
        raise CalculatorError("result too large") from None
    if isinstance(result, complex):
        raise CalculatorError("the result is a complex number")
    return result


def _evaluate(node):
    if isinstance(node, ast.Expression):
        return _evaluate(node.body)
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return node.value
    if isinstance(node, ast.BinOp):
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Pow):
            return _power(left, right)
        fn = _BINARY.get(type(node.op))
        if fn is None:
            raise CalculatorError(f"operator {type(node.op).__name__} is not supported")
        try:
            return fn(left, right)
        except ZeroDivisionError:
            raise CalculatorError("division by zero") from None
        except OverflowError:
            raise CalculatorError("result too large") from None
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_evaluate(node.operand))
    if isinstance(node, ast.Name):
        if node.id in _CONSTANTS:
            return _CONSTANTS[node.id]
        raise CalculatorError(f"unknown name {node.id!r}")
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not node.keywords:
        fn = _FUNCTIONS.get(node.func.id)
        if fn is None:
            raise CalculatorError(f"unknown function {node.func.id!r}; known: {', '.join(sorted(_FUNCTIONS))}")
        args = [_evaluate(a) for a in node.args]
        try:
            return fn(*args)
        except CalculatorError:
            raise
        except (ValueError, TypeError, OverflowError) as e:
            raise CalculatorError(f"{node.func.id}: {e}") from None
    raise CalculatorError(f"{type(node).__name__} is not allowed in arithmetic")


def _format_number(x) -> str:
    if isinstance(x, bool):
        x = int(x)
    if isinstance(x, float):
        if math.isfinite(x) and x == int(x) and abs(x) < 1e15:
            return str(int(x))
        return repr(x)
    return str(x)


def calculate(expression: str) -> str:
    """The value of an arithmetic expression, as text. Raises CalculatorError."""
    if not isinstance(expression, str) or not expression.strip():
        raise CalculatorError("empty expression")
    if len(expression) > _MAX_EXPRESSION:
        raise CalculatorError(f"expression longer than {_MAX_EXPRESSION} characters")
    text = expression.strip().replace("^", "**").replace("×", "*").replace("÷", "/")
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as e:
        raise CalculatorError(f"not an arithmetic expression: {e.msg}") from None
    except (ValueError, RecursionError, MemoryError):
        raise CalculatorError("expression too deeply nested") from None
    try:
        return _format_number(_evaluate(tree))
    except RecursionError:
        raise CalculatorError("expression too deeply nested") from None


# ---------------------------------------------------------------------------- python

@dataclass
class PythonLimits:
    cpu_seconds: int = 5
    wall_seconds: float = 10.0
    memory_bytes: int = 512 * 1024 * 1024
    output_bytes: int = 16 * 1024


def _network_isolation() -> list[str]:
    """The command prefix that puts the child in new user + network namespaces, or []."""
    unshare = shutil.which("unshare")
    if not unshare or not sys.platform.startswith("linux"):
        return []
    try:
        ok = subprocess.run([unshare, "--user", "--map-root-user", "--net", "true"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=5).returncode == 0
    except (OSError, subprocess.SubprocessError):
        ok = False
    return [unshare, "--user", "--map-root-user", "--net"] if ok else []


_ISOLATION: list | None = None


def network_isolated() -> bool:
    """Whether run_python can cut the child off the network on this machine."""
    global _ISOLATION
    if _ISOLATION is None:
        _ISOLATION = _network_isolation()
    return bool(_ISOLATION)


def run_python(code: str, limits: PythonLimits | None = None) -> str:
    """Run code in a limited child process; its output (stdout then stderr), truncated, as text."""
    if not isinstance(code, str) or not code.strip():
        return "error: no code given"
    lim = limits or PythonLimits()
    network_isolated()
    import resource

    def child_limits():
        os.setsid()  # its own process group: the timeout kills everything it started
        resource.setrlimit(resource.RLIMIT_CPU, (lim.cpu_seconds, lim.cpu_seconds + 1))
        resource.setrlimit(resource.RLIMIT_AS, (lim.memory_bytes, lim.memory_bytes))
        resource.setrlimit(resource.RLIMIT_FSIZE, (lim.output_bytes, lim.output_bytes))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    with tempfile.TemporaryDirectory(prefix="pyllama-tool-") as work:
        out_path = os.path.join(work, ".output")
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": work, "LANG": "C.UTF-8",
               "PYTHONIOENCODING": "utf-8"}
        with open(out_path, "wb") as out:
            try:
                proc = subprocess.Popen(_ISOLATION + [sys.executable, "-I", "-c", code], cwd=work, env=env,
                                        stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                        preexec_fn=child_limits)
            except OSError as e:
                return f"error: could not start python: {e}"
            timed_out = False
            try:
                rc = proc.wait(timeout=lim.wall_seconds)
            except subprocess.TimeoutExpired:
                timed_out = True
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except OSError:
                    proc.kill()
                rc = proc.wait()
        with open(out_path, "rb") as f:
            data = f.read(lim.output_bytes + 1)
    text = data[:lim.output_bytes].decode("utf-8", "replace")
    notes = []
    if len(data) >= lim.output_bytes or rc == -signal.SIGXFSZ:
        notes.append(f"output cut at {lim.output_bytes} bytes")
    if timed_out:
        notes.append(f"error: killed after {lim.wall_seconds:g} s (wall-clock limit)")
    elif rc in (-signal.SIGXCPU, -signal.SIGKILL):
        notes.append(f"error: killed at the CPU time limit ({lim.cpu_seconds} s)")
    elif rc != 0 and not notes:  # (a cut output also fails the child's last flush)
        notes.append(f"error: exit status {rc}")
    if "MemoryError" in text:
        notes.append(f"(memory is limited to {lim.memory_bytes // 2**20} MiB)")
    if not text and not notes:
        text = "(no output; print() what you want to see)"
    return text + ("\n" if text and notes and not text.endswith("\n") else "") + "\n".join(notes)


# ---------------------------------------------------------------------------- registry

@dataclass
class Tool:
    spec: dict
    run: Callable[[dict], str]


def _run_calculator(args: dict) -> str:
    return calculate(args.get("expression", ""))


def _run_python_tool(args: dict) -> str:
    return run_python(args.get("code", ""))


BUILTIN_TOOLS = {
    "calculator": Tool(
        {"type": "function", "function": {
            "name": "calculator",
            "description": "Evaluate an arithmetic expression exactly, e.g. 1234*5678 or sqrt(2)/3. "
                           "Use it for any calculation.",
            "parameters": {"type": "object",
                           "properties": {"expression": {
                               "type": "string", "description": "the arithmetic expression",
                               # what the calculator reads; it also keeps a constrained call short
                               "pattern": "^[-+*/%^()., 0-9a-z_]+$", "maxLength": 200}},
                           "required": ["expression"]}}},
        _run_calculator),
    "python": Tool(
        {"type": "function", "function": {
            "name": "python",
            "description": "Run a Python 3 program and return what it prints (stdout and stderr). "
                           "No network; a few seconds of CPU time.",
            "parameters": {"type": "object",
                           "properties": {"code": {"type": "string", "description": "the program"}},
                           "required": ["code"]}}},
        _run_python_tool),
}


def tool_specs(names) -> list[dict]:
    """OpenAI tool specs of the named built-in tools."""
    unknown = [n for n in names if n not in BUILTIN_TOOLS]
    if unknown:
        raise ValueError(f"unknown tool(s) {', '.join(unknown)}; built-in tools: {', '.join(BUILTIN_TOOLS)}")
    return [BUILTIN_TOOLS[n].spec for n in names]


def run_tool(name: str, arguments) -> str:
    """Run a built-in tool on a call's arguments (a JSON string or a dict); always returns text."""
    tool = BUILTIN_TOOLS.get(name)
    if tool is None:
        return f"error: there is no tool named {name!r} (tools: {', '.join(BUILTIN_TOOLS)})"
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError as e:
            return f"error: the arguments are not valid JSON: {e}"
    if not isinstance(arguments, dict):
        return "error: the arguments must be a JSON object"
    try:
        return tool.run(arguments)
    except CalculatorError as e:
        return f"error: {e}"
    except Exception as e:  # a tool must never take the chat down
        return f"error: {type(e).__name__}: {e}"
