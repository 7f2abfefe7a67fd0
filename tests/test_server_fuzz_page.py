"""The server against generated input and in a real browser.

* schemathesis reads the server's own OpenAPI schema and sends generated requests to
  every operation (a bounded run): no answer may be a 5xx;
* the chat page (GET /) in headless Chromium (Debian's `chromium`, driven by Playwright
  with executable_path; no browser is downloaded): type a message, see the reply stream
  in (caught part-written before it is done), and take a screenshot.
Each part skips with the reason when its tool is absent.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the server extra is not installed (pip install -e '.[server]')")
pytest.importorskip("uvicorn", reason="the server extra is not installed (pip install -e '.[server]')")
httpx = pytest.importorskip("httpx", reason="httpx is not installed")

from test_server import RunningServer  # noqa: E402

from pyllama.server.app import create_app  # noqa: E402

pytestmark = pytest.mark.slow

CHROMIUM = os.environ.get("PYLLAMA_CHROMIUM", "/usr/bin/chromium")


@pytest.fixture(scope="module")
def server(default_model_path):
    # small limits so generated requests stay cheap: n_predict caps every request's tokens
    srv = RunningServer(create_app(default_model_path, n_slots=2, n_ctx=96, n_threads=2, max_queue=8,
                                   max_body_bytes=16 * 1024, n_predict=4))
    srv.wait_ready()
    yield srv
    srv.stop()


def test_schemathesis_finds_no_server_errors(server, tmp_path):
    st = shutil.which("st", path=str(Path(sys.executable).parent)) or shutil.which("st")
    if st is None:
        pytest.skip("schemathesis is not installed (pip install -e '.[server-test]')")
    cmd = [st, "run", server.url + "/openapi.json", "--checks", "not_a_server_error", "--max-examples", "4",
           "--phases", "examples,coverage,fuzzing", "--request-timeout", "60", "--workers", "1",
           "--generation-deterministic", "--suppress-health-check", "all", "--no-color"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=tmp_path)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-6000:]
    counts = re.search(r"(\d+) generated, (\d+) passed", out)
    assert counts and counts.group(1) == counts.group(2) and int(counts.group(1)) > 20, out[-3000:]
    assert httpx.get(server.url + "/health").status_code == 200  # still serving


def test_chat_page_streams_a_reply_in_chromium(server, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium; PYLLAMA_CHROMIUM=path)")
    question = "What is the capital of France?"
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update"])
        try:
            page = browser.new_page()
            requests = []
            page.on("request", lambda req: requests.append(req.url))
            page.goto(server.url + "/")
            page.wait_for_function("document.getElementById('model').textContent.includes('SmolLM') || "
                                   "!document.getElementById('model').textContent.includes('loading')")
            page.fill("#prompt", question)
            page.keyboard.press("Enter")
            page.wait_for_selector(".msg.user")
            # streamed: the reply is seen partly written before it is done
            page.wait_for_function("(() => { const m = document.querySelector('.msg.assistant');"
                                   " return m && m.textContent.length > 0; })()", timeout=60000)
            partial = page.eval_on_selector(".msg.assistant", "m => [m.textContent, m.dataset.done || '']")
            page.wait_for_selector(".msg.assistant[data-done='1']", timeout=120000)
            reply = page.inner_text(".msg.assistant")
            page.screenshot(path=str(tmp_path / "chat.png"), full_page=True)
        finally:
            browser.close()
    assert (tmp_path / "chat.png").stat().st_size > 1000
    assert reply.strip() and not page_errors(reply)
    assert partial[1] == "" or partial[0] == reply  # caught mid-stream, or it was already whole
    assert all(u.startswith(server.url) for u in requests), "the page fetched something from elsewhere"
    shots = os.environ.get("PYLLAMA_SCREENSHOT_DIR")
    if shots:
        shutil.copy(tmp_path / "chat.png", Path(shots) / "chat_page.png")


def page_errors(text: str) -> bool:
    return text.startswith("error:")
