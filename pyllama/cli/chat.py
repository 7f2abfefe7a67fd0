"""Interactive chat in the terminal: ``python -m pyllama.chat``.

Replies stream token by token; after each one a dim line on stderr shows the
prompt and generation speed. Commands: ``/reset`` (forget the conversation),
``/system TEXT`` (new system prompt, starts over), ``/exit``. Ctrl-C stops a
reply (the program keeps running), Ctrl-D exits.

When stdin is not a terminal, each input line is one user message and only
the replies are printed (one per message), so scripts can drive it:

    printf 'What is the capital of France?\\n' | python -m pyllama.chat --temp 0

The options are llama.cpp's (pyllama/cli/options.py): -t threads, -sys / -sysf the
system prompt, -p / -f a first user message, -r a text that ends a reply.
"""
from __future__ import annotations

import argparse
import sys

from .loading import load_model
from .options import (ArgumentParser, add_conversation_arg, add_model_args, add_sampling_args, add_text_args,
                      check_conversation_arg, check_model_args, check_sampling_args, prompt_text, read_text_file,
                      reverse_prompts, sampling_kwargs)
from .progress import dim

HELP = "commands: /reset  /system TEXT  /exit  (Ctrl-C stops a reply, Ctrl-D exits)"


def stats_line(timings: dict) -> str:
    def rate(n, s):
        return f"{n / s:.1f} tok/s" if s > 0 and n > 0 else "- tok/s"

    p_n, p_s = timings.get("prompt_tokens", 0), timings.get("prompt_s", 0.0)
    g_n = timings.get("gen_tokens", 0)
    g_s = timings.get("gen_s", 0.0) + timings.get("sample_s", 0.0)
    return f"[prompt {p_n} tok, {rate(p_n, p_s)} | generation {g_n} tok, {rate(g_n, g_s)}]"


class ChatSession:
    """A conversation with a model: history, trimming to the context, streaming replies."""

    MAX_TOOL_ROUNDS = 5  # model turns with tool calls per user message

    def __init__(self, llm, system: str | None = None, max_tokens: int | None = None, tools=None,
                 show_tool=None, **sampling):
        self.llm = llm
        self.system = system
        self.max_tokens = max_tokens if max_tokens and max_tokens > 0 else None
        self.sampling = sampling
        self.tools = list(tools) if tools else None  # built-in tool names (pyllama.builtin_tools)
        self.show_tool = show_tool  # called with (name, arguments, result) after each tool call
        self.messages: list[dict] = []
        self.reset()

    def reset(self, system: str | None = None) -> None:
        if system is not None:
            self.system = system or None
        self.messages = [{"role": "system", "content": self.system}] if self.system else []

    def _fit(self) -> None:
        """Drop the oldest exchanges until the prompt leaves room for a reply."""
        from ..chat_format import format_chat
        from ..errors import ContextOverflowError

        n_ctx = self.llm.n_ctx()
        reserve = min(self.max_tokens or n_ctx // 4, n_ctx // 2)
        first = 1 if self.system else 0
        while True:
            n = len(format_chat(self.llm, self.messages).tokens)
            if n + reserve <= n_ctx:
                return
            if len(self.messages) - first <= 1:
                if n < n_ctx:
                    return  # only the new message left: let it run in what remains
                raise ContextOverflowError(
                    f"the message is {n} tokens with the chat template, more than the context "
                    f"window (n_ctx={n_ctx}); restart with a larger -c")
            del self.messages[first]  # oldest user (or assistant) message

    def reply(self, text: str, out) -> tuple[str, bool]:
        """Stream the reply to ``text`` into ``out``; returns (reply, interrupted)."""
        self.messages.append({"role": "user", "content": text})
        parts: list[str] = []
        interrupted = False
        stream = None
        try:
            self._fit()
            extra = {}
            if self.tools:
                from ..builtin_tools import tool_specs

                extra["tools"] = tool_specs(self.tools)
            done_calls: set = set()
            results: set = set()
            answer_now = False
            for _round in range(self.MAX_TOOL_ROUNDS + 1):
                if answer_now or _round == self.MAX_TOOL_ROUNDS:
                    # enough calls: answer with what is known, in words (a small model that
                    # keeps writing calls would otherwise write one here as plain text)
                    extra.update(tool_choice="none", grammar=_answer_grammar())
                stream = self.llm.create_chat_completion(self.messages, stream=True,
                                                         max_tokens=self.max_tokens, **extra, **self.sampling)
                calls = []
                for chunk in stream:
                    delta = chunk["choices"][0]["delta"]
                    piece = delta.get("content")
                    if piece:
                        out.write(piece)
                        parts.append(piece)
                        out.flush()
                    calls.extend(delta.get("tool_calls") or [])
                stream.close()
                stream = None
                if not calls:
                    break
                fresh = [c for c in calls if not _repeated_call(c, done_calls, results)]
                if not fresh:  # the same call again, or the calculator on its own result
                    answer_now = True
                    continue
                results.update(self._run_tools(fresh, "".join(parts)))
                parts = []
        except KeyboardInterrupt:
            interrupted = True
        except BaseException:
            while self.messages and self.messages[-1]["role"] != "user":
                self.messages.pop()  # a tool round of this question
            if self.messages:
                self.messages.pop()
            raise
        finally:
            if stream is not None:
                stream.close()
        reply = "".join(parts)
        if interrupted and not parts:  # stopped before any answer: as if never asked
            while self.messages and self.messages[-1]["role"] != "user":
                self.messages.pop()  # a tool round of this question
            self.messages.pop()
        else:
            self.messages.append({"role": "assistant", "content": reply})
        return reply, interrupted

    def _run_tools(self, calls: list, content: str) -> list:
        """Run the tool calls of one model turn; the calls and results join the conversation.
        Returns the results."""
        from ..builtin_tools import run_tool

        results = []
        calls = [{k: v for k, v in c.items() if k != "index"} for c in calls]
        self.messages.append({"role": "assistant", "content": content or None, "tool_calls": calls})
        for call in calls:
            name, arguments = call["function"]["name"], call["function"]["arguments"]
            result = run_tool(name, arguments) if name in (self.tools or ()) else (
                f"error: the tool {name!r} is not enabled (enabled: {', '.join(self.tools or [])})")
            if self.show_tool is not None:
                self.show_tool(name, arguments, result)
            self.messages.append({"role": "tool", "tool_call_id": call.get("id", ""), "name": name,
                                  "content": result})
            results.append(result.strip())
        return results


def _answer_grammar():
    """Prose: a reply that starts with a letter or digit and holds no JSON braces."""
    from ..grammar import LlamaGrammar

    return LlamaGrammar.from_lark("start: /[A-Za-z0-9][^{}]*/")


def _repeated_call(call: dict, done: set, results: set) -> bool:
    """Whether a call adds nothing: made before in this reply, or a calculator call on a
    number that a tool already returned. New calls are added to ``done``."""
    import json

    f = call.get("function", {})
    try:
        args = json.loads(f.get("arguments") or "{}")
    except json.JSONDecodeError:
        args = f.get("arguments")
    key = (f.get("name"), json.dumps(args, sort_keys=True))
    if key in done:
        return True
    done.add(key)
    if f.get("name") == "calculator" and isinstance(args, dict):
        return str(args.get("expression", "")).strip() in results
    return False


def build_parser() -> argparse.ArgumentParser:
    ap = ArgumentParser(
        prog="python -m pyllama.chat",
        description="Chat with a model in the terminal. " + HELP + ". With stdin not a terminal: "
                    "one user message per line, only replies printed.")
    add_model_args(ap, n_ctx_default=2048)
    add_conversation_arg(ap, always=True)
    ap.add_argument("-sys", "--system-prompt", "--system", dest="system", default=None, metavar="TEXT",
                    help="system prompt")
    ap.add_argument("-sysf", "--system-prompt-file", default=None, metavar="FILE",
                    help="read the system prompt from a file (one trailing newline dropped)")
    add_text_args(ap, prompt_help="a first user message, sent before any input is read")
    add_sampling_args(ap, temp=0.2, top_k=40, top_p=0.95, min_p=0.05, repeat_penalty=1.1)
    ap.add_argument("-n", "--n-predict", "--max-tokens", dest="max_tokens", type=int, default=-1, metavar="N",
                    help="longest reply in tokens (-1: until the model ends its turn)")
    ap.add_argument("-r", "--reverse-prompt", action="append", default=[], metavar="TEXT",
                    help="end a reply where this text appears (repeatable)")
    ap.add_argument("--chat-format", default=None,
                    help="built-in template (chatml, llama-2, llama-3, mistral, gemma, phi-3) instead of the file's")
    ap.add_argument("--tools", default=None, metavar="NAMES",
                    help="built-in tools the model may call, comma-separated: calculator, python "
                         "(calls and results are shown on stderr; see pyllama/builtin_tools.py for the "
                         "python tool's limits)")
    return ap


def parse_tools(ap, value):
    if not value:
        return None
    from ..builtin_tools import BUILTIN_TOOLS

    names = [n.strip() for n in value.split(",") if n.strip()]
    unknown = [n for n in names if n not in BUILTIN_TOOLS]
    if not names:
        ap.error(f"--tools needs tool names; choose from {', '.join(BUILTIN_TOOLS)}")
    if unknown:
        ap.error(f"--tools: unknown tool {', '.join(unknown)}; choose from {', '.join(BUILTIN_TOOLS)}")
    return names


def show_tool_call(name, arguments, result, stream=None) -> None:
    """One line per call on stderr: the call, then its result (cut to a few lines)."""
    stream = stream or sys.stderr
    lines = result.splitlines() or [""]
    shown = "\n".join(lines[:8]) + (f"\n... ({len(lines) - 8} more lines)" if len(lines) > 8 else "")
    stream.write(dim(f"[{name}] {arguments}\n=> {shown}", stream) + "\n")
    stream.flush()


def main(argv=None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    check_model_args(ap, args)
    check_conversation_arg(ap, args)
    check_sampling_args(ap, args)
    if args.max_tokens < -1:
        ap.error(f"--n-predict must be >= -1 (got {args.max_tokens})")
    if args.system_prompt_file is not None:
        if args.system is not None:
            ap.error("give the system prompt with -sys or -sysf, not both")
        args.system = read_text_file(ap, args.system_prompt_file, prompt=True)
    first = prompt_text(ap, args) or None
    if args.chat_format is not None:
        from ..chat_format import BUILTIN_TEMPLATES

        if args.chat_format not in BUILTIN_TEMPLATES:
            ap.error(f"--chat-format must be one of {', '.join(BUILTIN_TEMPLATES)}")

    tools = parse_tools(ap, args.tools)
    interactive = sys.stdin.isatty()
    if interactive:
        try:
            import readline  # noqa: F401  (line editing and history for input())
        except ImportError:
            pass
        sys.stderr.write(dim("loading model...", sys.stderr) + "\n")
    llm = load_model(args, chat_format=args.chat_format)

    from ..errors import PyllamaError

    session = ChatSession(llm, system=args.system, max_tokens=args.max_tokens, tools=tools,
                          show_tool=show_tool_call,
                          stop=reverse_prompts(args) or None,
                          **sampling_kwargs(args))
    if interactive:
        sys.stderr.write(dim(f"{llm.model_path}\n{HELP}", sys.stderr) + "\n")
    out = sys.stdout
    while True:
        if first is not None:  # -p / -f: a message, never a command
            text, first, command = first, None, False
            if interactive:
                sys.stderr.write(f"> {text}\n")
        else:
            try:
                if interactive:
                    line = input("> ")
                else:
                    line = sys.stdin.readline()
                    if not line:
                        break
            except EOFError:
                if interactive:
                    sys.stderr.write("\n")
                break
            except KeyboardInterrupt:  # at the prompt: drop the line, keep going
                sys.stderr.write("\n")
                continue
            text, command = line.strip(), True
        if not text:
            continue
        if command and text.startswith("/"):
            cmd, _, rest = text.partition(" ")
            if cmd in ("/exit", "/quit"):
                break
            if cmd == "/reset":
                session.reset()
                if interactive:
                    sys.stderr.write(dim("(conversation cleared)", sys.stderr) + "\n")
                continue
            if cmd == "/system":
                session.reset(system=rest.strip())
                if interactive:
                    sys.stderr.write(dim("(system prompt set; conversation cleared)", sys.stderr) + "\n")
                continue
            if cmd in ("/help", "/?"):
                sys.stderr.write(HELP + "\n")
                continue
            sys.stderr.write(f"unknown command {cmd}; {HELP}\n")
            continue
        try:
            _, interrupted = session.reply(text, out)
        except PyllamaError as e:
            out.write("\n")
            out.flush()
            print(f"error: {e}", file=sys.stderr)
            if not interactive:
                return 1
            continue
        out.write("\n")
        out.flush()
        if interactive:
            note = " (interrupted)" if interrupted else ""
            sys.stderr.write(dim(stats_line(getattr(llm, "last_timings", {}) or {}) + note, sys.stderr)
                             + "\n")
    return 0

