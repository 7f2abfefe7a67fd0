"""pyllama: a C transformer core under a thin Python layer. See README.md."""
from setuptools import setup

setup(
    name="pyllama",
    version="0.1.0",
    description="Run Llama-family GGUF models and llama2.c checkpoints from Python with a hand-written C core",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=["pyllama", "pyllama.cli", "pyllama.models_data", "pyllama.server", "pyllama.vocab"],
    # the model catalog lives in models/ at the top of the repository
    package_dir={"pyllama.models_data": "models"},
    package_data={"pyllama.models_data": ["*.json"], "pyllama.server": ["static/*.html"]},
    setup_requires=["cffi>=1.15"],
    cffi_modules=["pyllama/_build.py:ffibuilder"],
    install_requires=[
        "cffi>=1.15",
        "numpy>=1.23",
        "sentencepiece>=0.1.99",
        "regex>=2022.1",     # the \p{L}-style split patterns of llama.cpp's pre-tokenizers
        "jinja2>=3.1",       # sandboxed rendering of chat templates shipped in model files
        "llguidance>=1.0",   # grammar / JSON-schema token masks for constrained decoding
    ],
    extras_require={
        "test": ["pytest>=7", "hypothesis>=6", "gguf>=0.10", "pytest-benchmark>=4", "pexpect>=4.8",
                 "tokenizers>=0.19",  # the reference BPE for tests/test_bpe.py (ignore_merges needs 0.19)
                 "jsonschema>=4"],  # the validator constrained JSON output is checked with
        "hub": ["huggingface_hub>=0.20"],
        # the OpenAI-compatible server: the stack llama-cpp-python's server uses
        "server": ["fastapi>=0.100", "uvicorn>=0.20", "sse-starlette>=3.3", "pydantic>=2",
                   # uvicorn's compiled HTTP parser and event loop (what uvicorn[standard] adds), which
                   # it picks up by itself: per streamed token, a third less event-loop CPU than h11
                   # and asyncio's loop, on cores the forward pass needs
                   "httptools>=0.6", "uvloop>=0.19; sys_platform != 'win32'",
                   # the slots' generators as coroutines on the engine thread (server/engine.py)
                   "greenlet>=3.0"],
        # its tests: the official OpenAI client, schema fuzzing, a headless-browser test of the page
        "server-test": ["openai>=1.0", "httpx>=0.24", "schemathesis>=4.0", "playwright>=1.40"],
    },
    entry_points={"console_scripts": ["pyllama=pyllama.__main__:main", "pyllama-chat=pyllama.cli.chat:main",
                                        "pyllama-server=pyllama.server.__main__:main"]},
    zip_safe=False,
)
