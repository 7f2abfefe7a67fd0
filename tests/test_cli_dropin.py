"""The command-line tools take llama.cpp's options (issue 18, "Drop-in conventions"):
-t is threads in every tool, --temp the temperature, -s, -f, -e, -n -1, -r, -sys, the
penalties, --rope-freq-base; -ngl/-fa/--jinja are noted and ignored; bench -o / -pg;
perplexity's errors are one line. Tiny models for the mechanics, the default model for
what a user sees."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run(*args, stdin="", timeout=120):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), TERM="dumb")
    env.pop("PYTHONWARNINGS", None)
    return subprocess.run([sys.executable, "-m", *args], input=stdin, capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env=env)


@pytest.fixture(scope="module")
def tiny(tiny_model_factory):
    return str(tiny_model_factory())


@pytest.mark.parametrize("module", ["chat", "generate", "perplexity"])
def test_t_is_threads_and_temp_is_temperature(module):
    import importlib

    mod = importlib.import_module(f"pyllama.cli.{module}")
    ap = mod.build_parser() if hasattr(mod, "build_parser") else None
    argv = ["-t", "4", "-s", "9", "-ngl", "99", "-c", "128"] + (["-f", "x.txt"] if module == "perplexity" else
                                                                ["--temp", "0.5", "--repeat-last-n", "32"])
    if ap is None:  # perplexity builds its parser inside main(): parse through a stub load_model
        captured = {}

        def stub(args, **extra):
            captured.update(vars(args))
            raise SystemExit(0)
        mod.load_model, saved = stub, mod.load_model
        mod.read_text_file, saved_read = (lambda ap, path: "text"), mod.read_text_file
        try:
            with pytest.raises(SystemExit):
                mod.main(argv)
        finally:
            mod.load_model, mod.read_text_file = saved, saved_read
        args = captured
    else:
        args = vars(ap.parse_args(argv))
    assert args["threads"] == 4 and args["seed"] == 9 and args["ctx_size"] == 128
    if module != "perplexity":
        assert args["temp"] == 0.5 and args["repeat_last_n"] == 32


def test_bench_t_is_threads():
    from pyllama.cli import bench

    with pytest.raises(SystemExit) as info:
        bench.main(["-t", "0"])
    assert info.value.code == 2


def test_gpu_options_are_noted_and_ignored(tiny):
    p = run("pyllama.generate", "-m", tiny, "-p", "hi", "-n", "2", "-t", "1", "--temp", "0", "-ngl", "99",
            "-fa", "--jinja")
    assert p.returncode == 0, p.stderr
    notes = [line for line in p.stderr.splitlines() if line.startswith("note: ignored")]
    assert len(notes) == 3 and "-ngl 99" in notes[0] and "-fa" in notes[1] and "--jinja" in notes[2]


def test_escapes_prompt_file_and_seed(tiny, tmp_path):
    def gen(*extra):
        p = run("pyllama.generate", "-m", tiny, "-n", "6", "-t", "1", *extra)
        assert p.returncode == 0, p.stderr
        return p.stdout

    assert gen("-p", "a\\tb", "--temp", "0").startswith("a\tb")  # llama.cpp processes escapes by default
    assert gen("-p", "a\\tb", "--temp", "0", "--no-escape").startswith("a\\tb")
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("a\\tb\n")  # llama.cpp's -f: one trailing newline dropped, escapes processed
    assert gen("-f", str(prompt), "--temp", "0") == gen("-p", "a\\tb", "--temp", "0")
    literal = gen("-f", str(prompt), "--temp", "0", "--no-escape")
    assert literal.startswith("a\\tb") and literal == gen("-p", "a\\tb", "--temp", "0", "--no-escape")
    # llama-completion's spelling of the same run: -no-cnv is a no-op here, -ub a smaller batch
    assert gen("-p", "a\\tb", "--temp", "0", "-no-cnv", "-ub", "2", "--typical", "1") == gen("-p", "a\\tb", "--temp", "0")
    seeded = [gen("-p", "x", "--temp", "8", "--top-p", "1", "-s", s) for s in ("5", "5", "6")]  # a peaked model
    assert seeded[0] == seeded[1] != seeded[2]


@pytest.mark.parametrize("cmd,args", [
    ("pyllama.generate", ["-n", "-3"]),
    ("pyllama.generate", ["--rope-freq-base", "-1"]),
    ("pyllama.generate", ["-tb", "0"]),
    ("pyllama.generate", ["--frequency-penalty", "nan"]),
    ("pyllama.chat", ["--repeat-last-n", "-2"]),
    ("pyllama.chat", ["-n", "-2"]),
    ("pyllama.perplexity", ["-t", "0", "-f", "x"]),
    ("pyllama.perplexity", ["--bogus"]),
    ("pyllama.generate", ["-cnv"]),
    ("pyllama.chat", ["-no-cnv"]),
    ("pyllama.generate", ["--typical", "2"]),
    ("pyllama.generate", ["-ub", "0"]),
    ("pyllama.bench", ["-pg", "512"]),
    ("pyllama.bench", ["-o", "xml"]),
])
def test_bad_arguments_one_line_exit_2(cmd, args):
    p = run(cmd, *args)
    assert p.returncode == 2, p.stderr
    assert p.stderr.count("\n") == 1 and "error:" in p.stderr and p.stdout == ""


def test_perplexity_errors_are_one_line(tiny, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("hello world " * 4)
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"GGUF" + b"\xff" * 60)
    for args, what in [(["-m", tiny, "-f", str(tmp_path / "missing.txt")], "cannot read"),
                       (["-m", str(tmp_path / "missing.gguf"), "-f", str(text)], "not found"),
                       (["-m", str(junk), "-f", str(text)], "junk.gguf"),
                       (["-m", tiny, "-f", str(text), "-c", "64", "-t", "1"], "at least 128 tokens")]:
        p = run("pyllama.perplexity", *args)
        assert p.returncode == 1, p.stderr
        errors = [line for line in p.stderr.splitlines() if "error" in line]
        assert len(errors) == 1 and errors[0].startswith("error: ") and what in errors[0], p.stderr
        assert "Traceback" not in p.stderr


def test_bench_outputs_and_prompt_gen(tiny):
    p = run("pyllama.bench", "-m", tiny, "-p", "8", "-n", "4", "-pg", "8,4", "-r", "2", "-t", "1", "-o", "json")
    assert p.returncode == 0, p.stderr
    rows = json.loads(p.stdout)
    assert [(r["n_prompt"], r["n_gen"]) for r in rows] == [(8, 0), (0, 4), (8, 4)]
    assert all(len(r["samples_ts"]) == 2 and r["avg_ts"] > 0 for r in rows)
    p = run("pyllama.bench", "-m", tiny, "-p", "0", "-n", "2", "-r", "1", "-t", "1", "-o", "jsonl")
    assert [json.loads(line)["n_gen"] for line in p.stdout.splitlines()] == [2]
    p = run("pyllama.bench", "-m", tiny, "-p", "0", "-n", "0", "-pg", "4,2", "-r", "1", "-t", "1", "-o", "csv")
    head, row = p.stdout.splitlines()
    assert dict(zip(head.split(","), row.split(",")))["n_prompt"] == "4"
    p = run("pyllama.bench", "-m", tiny, "-p", "0", "-n", "0", "-pg", "4,2", "-r", "1", "-t", "1")
    assert "pp4+tg2" in p.stdout


# ------------------------------------------------------------------ real model


@pytest.mark.slow
def test_chat_t_4_is_threads_not_gibberish(default_model_path):
    """`chat -t 4` was a temperature of 4 (gibberish); it is 4 threads now."""
    p = run("pyllama", "chat", "-m", default_model_path, "-t", "4", "--temp", "0", "-c", "256", "-n", "24",
            "-sys", "You are a helpful assistant. Answer in one sentence.",
            stdin="What is the capital of France?\n")
    assert p.returncode == 0, p.stderr
    assert "Paris" in p.stdout


@pytest.mark.slow
def test_chat_first_message_and_system_prompt_file(default_model_path, tmp_path):
    """-p / -f: a first user message (before stdin's); -sysf: the system prompt from a file."""
    system = tmp_path / "system.txt"
    system.write_text("You are a helpful assistant. Answer in one sentence.\n")
    p = run("pyllama", "chat", "-m", default_model_path, "--temp", "0", "-c", "256", "-n", "24",
            "-sysf", str(system), "-p", "What is the capital of France?",
            stdin="/reset\nWhat is the capital of France?\n")
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert len(lines) == 2 and all("Paris" in line for line in lines), p.stdout
    p = run("pyllama", "chat", "-m", default_model_path, "-sysf", str(tmp_path / "missing.txt"))
    assert p.returncode == 1 and p.stderr.startswith("error: cannot read") and p.stderr.count("\n") == 1


@pytest.mark.slow
def test_reverse_prompt_ends_an_unlimited_generation(default_model_path):
    p = run("pyllama.generate", "-m", default_model_path, "-p", "The capital of France is", "-n", "-1",
            "-r", ".", "--temp", "0", "-c", "128", "-t", "2")
    assert p.returncode == 0, p.stderr
    out = p.stdout.rstrip("\n")
    assert out.startswith("The capital of France is") and "Paris" in out
    assert out.endswith(".") and out.count(".") == 1, out
    p = run("pyllama", "chat", "-m", default_model_path, "--temp", "0", "-c", "256", "-n", "60", "-r", "Paris",
            stdin="What is the capital of France?\n")
    assert p.returncode == 0, p.stderr
    assert "Paris" not in p.stdout  # a stop text ends the reply and is not shown (as a stop string)
