"""Command-line tools: help, argument and model errors, and (real default model)
chat through a pipe and under a pseudo-terminal, and generate."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SYSTEM = "You are a helpful assistant. Answer in one sentence."  # see test_chat.py


def env():
    e = dict(os.environ)
    e["PYTHONPATH"] = str(ROOT) + os.pathsep + e.get("PYTHONPATH", "")
    e["TERM"] = "dumb"
    e.pop("PYTHONWARNINGS", None)
    return e


def run(*args, stdin="", timeout=120):
    return subprocess.run([sys.executable, "-m", *args], input=stdin, capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env=env())


# ------------------------------------------------------------------ no model needed


def test_main_help_lists_subcommands():
    p = run("pyllama", "--help")
    assert p.returncode == 0
    for name in ("chat", "generate", "bench", "perplexity", "convert", "models"):
        assert f"\n  {name} " in p.stdout
    p = run("pyllama")
    assert p.returncode == 2 and "subcommand is required" in p.stderr
    p = run("pyllama", "nope")
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "unknown subcommand" in p.stderr


@pytest.mark.parametrize("cmd", [("pyllama.chat",), ("pyllama.generate",), ("pyllama", "chat"),
                                 ("pyllama", "generate")])
def test_help(cmd):
    p = run(*cmd, "--help")
    assert p.returncode == 0 and "usage:" in p.stdout and "--model" in p.stdout and p.stderr == ""


@pytest.mark.parametrize("cmd,args", [
    ("pyllama.chat", ["--bogus"]),
    ("pyllama.chat", ["-t", "hot"]),
    ("pyllama.chat", ["-c", "-5"]),
    ("pyllama.chat", ["--chat-format", "klingon"]),
    ("pyllama.generate", ["-n", "x"]),
    ("pyllama.generate", ["--top-p", "2"]),
    ("pyllama.generate", ["--threads", "0"]),
    ("pyllama.generate", ["-ctk", "q8_0"]),
    ("pyllama.chat", ["--cache-type-v", "f64"]),
])
def test_bad_arguments_one_line_exit_2(cmd, args):
    p = run(cmd, *args)
    assert p.returncode == 2
    assert p.stderr.count("\n") == 1 and "error:" in p.stderr
    assert p.stdout == ""


@pytest.mark.parametrize("cmd", ["pyllama.chat", "pyllama.generate"])
def test_missing_or_bad_model_one_line_exit_1(cmd, tmp_path):
    missing = tmp_path / "missing.gguf"
    p = run(cmd, "-m", str(missing), stdin="hi\n")
    assert p.returncode == 1
    assert p.stderr.startswith("error: ") and p.stderr.count("\n") == 1, p.stderr
    assert "Traceback" not in p.stderr and p.stdout == ""
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"GGUF" + b"\xff" * 60)
    p = run(cmd, "-m", str(junk), stdin="hi\n")
    assert p.returncode == 1 and p.stderr.startswith("error: ") and "Traceback" not in p.stderr


# ------------------------------------------------------------------ real model


@pytest.mark.slow
def test_chat_through_a_pipe(default_model_path):
    p = run("pyllama", "chat", "-m", default_model_path, "--temp", "0", "-c", "256", "-n", "24",
            "--system", SYSTEM, stdin="What is the capital of France?\n/reset\n\n"
                                      "What is the capital of France?\n")
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert len(lines) == 2, p.stdout  # one reply per message; commands print nothing
    assert all("Paris" in line for line in lines)


@pytest.mark.slow
@pytest.mark.parametrize("cache", [[], ["-ctk", "f32", "-ctv", "f32"], ["--no-mmap"]])
def test_generate_cli(default_model_path, cache):
    p = run("pyllama.generate", "-m", default_model_path, "-p", "The capital of France is",
            "-n", "4", "--temp", "0", "-c", "64", *cache)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("The capital of France is") and "Paris" in p.stdout
    assert "achieved tok/s:" in p.stderr


@pytest.mark.slow
def test_chat_under_a_pty_streams_and_survives_ctrl_c(default_model_path):
    pexpect = pytest.importorskip("pexpect", reason="pexpect is needed to drive a pseudo-terminal")
    child = pexpect.spawn(sys.executable, ["-m", "pyllama.chat", "-m", default_model_path, "--temp", "0",
                                           "-c", "512", "-n", "300"],
                          cwd=str(ROOT), env=env(), encoding="utf-8", timeout=90, dimensions=(24, 200))
    try:
        child.expect_exact("/exit")  # the help line of the banner
        child.expect_exact("> ")
        child.send("\x03")  # Ctrl-C at the prompt: a new prompt, not an exit
        child.expect_exact("> ")
        child.sendline("Write a long story about a dragon who bakes bread.")
        child.expect_exact("bread.\r\n")  # the terminal's echo of the line
        # Streaming: the first words are on the screen while the reply is still going.
        child.expect(r"\w+\W+\w+\W+\w+\W+\w+")
        child.sendintr()
        child.expect_exact("(interrupted)")
        child.expect_exact("> ")
        child.sendline("/exit")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0, child.before
