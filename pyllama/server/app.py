"""The FastAPI application: OpenAI-compatible endpoints over the slot engine (engine.py).

``create_app`` returns an app that loads the model in a background thread when it
starts (``/health`` answers 503 until then). Errors use OpenAI's body:
``{"error": {"message", "type", "param", "code"}}``.
"""
from __future__ import annotations

import asyncio
import base64
import collections
import hmac
import json
import os
import sys
import threading
import time
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any, Callable, Iterator, Optional

import anyio
import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from sse_starlette.sse import EventSourceResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import ContextOverflowError, PyllamaError
from ..completion import _common_prefix
from .engine import Engine, Job, QueueFull
from .schemas import (ChatCompletionRequest, CompletionRequest, DetokenizeRequest, EmbeddingRequest,
                      TokenizeRequest)

MAX_STOP_STRINGS = 16
OPEN_PATHS = ("/", "/health")  # answered without an API key (the page asks for one itself)


class APIError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 param: Optional[str] = None, code: Optional[str] = None,
                 headers: Optional[dict] = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code
        self.headers = headers


def error_body(message: str, type_: str, param: Optional[str] = None, code: Optional[str] = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def error_response(e: APIError) -> JSONResponse:
    return JSONResponse(error_body(e.message, e.type, e.param, e.code), status_code=e.status, headers=e.headers)


def api_error_from(exc: BaseException) -> APIError:
    """The HTTP error for an exception raised while starting or running a request."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, ContextOverflowError):
        return APIError(400, str(exc), code="context_length_exceeded")
    if isinstance(exc, (ValueError, TypeError, PyllamaError)):
        return APIError(400, str(exc))
    return APIError(500, f"internal error: {type(exc).__name__}: {exc}", "server_error")


class StreamResponse(EventSourceResponse):
    """sse-starlette's response without a cancel scope per event when no send timeout is set.

    Its send wraps every event in ``anyio.move_on_after(send_timeout)``, a cancel scope
    entered and left for each token of each stream even when the timeout is None (the
    default), on the event loop that shares the cores with the forward pass. Versions
    without the ``_send_interrupted`` flag this keeps up to date get the base class's send."""

    async def _send_with_timeout(self, send, message) -> None:
        if self.send_timeout is not None or not hasattr(self, "_send_interrupted"):
            return await super()._send_with_timeout(send, message)
        try:
            await send(message)
        except BaseException:
            self._send_interrupted = True  # as the base class does: no closing send after a failed one
            raise


class BodyLimit:
    """ASGI middleware: request bodies over ``limit`` bytes get 413 (by Content-Length or as read)."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        for name, value in scope.get("headers") or ():
            if name == b"content-length" and value.isdigit() and int(value) > self.limit:
                resp = JSONResponse(error_body(f"request body is {int(value)} bytes; the limit is {self.limit}",
                                               "invalid_request_error", code="request_too_large"), 413)
                return await resp(scope, receive, send)
        received, too_big, started = 0, False, False

        async def limited():
            nonlocal received, too_big
            msg = await receive()
            if msg["type"] == "http.request":
                received += len(msg.get("body", b""))
                if received > self.limit:  # the app sees a client that went away; we answer 413
                    too_big = True
                    return {"type": "http.disconnect"}
            return msg

        async def guarded_send(msg):
            nonlocal started
            if too_big:
                return
            if msg["type"] == "http.response.start":
                started = True
            await send(msg)

        try:
            await self.app(scope, limited, guarded_send)
        except Exception:
            if not too_big:
                raise
        if too_big and not started:
            resp = JSONResponse(error_body(f"request body over the limit of {self.limit} bytes",
                                           "invalid_request_error", code="request_too_large"), 413)
            await resp(scope, receive, send)


class AuthAndCount:
    """ASGI middleware: the API key check and the request counters behind /metrics.

    Plain ASGI rather than ``@app.middleware("http")``: Starlette's BaseHTTPMiddleware
    passes every body chunk of a streamed response through a memory stream and a task of
    its own, a cost paid per token of every SSE stream."""

    def __init__(self, app, state: "ServerState", api_key: Optional[str], known_paths: set):
        self.app, self.state, self.api_key, self.known_paths = app, state, api_key, known_paths

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        requests = self.state.requests
        # only the app's own paths are labels: any other path a client sends (with or without
        # a key) would add a line to /metrics for good, and could carry quotes and newlines into it
        counted = path if path in self.known_paths else "other"
        if self.api_key is not None and path not in OPEN_PATHS:
            header = ""
            for name, value in scope.get("headers") or ():
                if name == b"authorization":
                    header = value.decode("latin-1")
                    break
            token = header[7:].strip() if header.lower().startswith("bearer ") else None
            if token is None or not hmac.compare_digest(token.encode(), self.api_key.encode()):
                requests[(counted, 401)] += 1
                why = "no API key given" if token is None else "wrong API key"
                resp = error_response(APIError(401, f"{why}: send 'Authorization: Bearer KEY'",
                                               code="invalid_api_key"))
                return await resp(scope, receive, send)

        async def counting_send(msg):
            if msg["type"] == "http.response.start":
                requests[(counted, msg["status"])] += 1
            await send(msg)

        await self.app(scope, receive, counting_send)


class ServerState:
    """The loaded model, its engine and the request counters behind /metrics."""

    def __init__(self, model_path, n_slots, n_ctx, n_threads, max_queue, llm_kwargs, verbose, cache_prompt):
        self.model_path, self.n_slots, self.n_ctx, self.n_threads = model_path, n_slots, n_ctx, n_threads
        self.max_queue, self.llm_kwargs, self.verbose = max_queue, llm_kwargs, verbose
        self.cache_prompt = cache_prompt
        self.llm = None
        self.engine: Optional[Engine] = None
        self.embedder = None
        self.model_id = ""
        self.model_names: set[str] = set()
        self.load_error: Optional[str] = None
        self.created = int(time.time())
        self.requests: collections.Counter = collections.Counter()
        self.on_load_failure: Optional[Callable[[str], None]] = None

    def load(self) -> None:
        from ..llama import Llama

        try:
            llm = Llama(model_path=self.model_path, n_ctx=self.n_ctx, n_threads=self.n_threads,
                        embedding=True, verbose=self.verbose, **self.llm_kwargs)
            self.embedder = llm.fork()
            self.engine = Engine(llm, self.n_slots, self.max_queue)  # last: /health is "ok" once it is set
        except Exception as e:  # reported by /health and, from the CLI, on exit
            self.load_error = f"{type(e).__name__}: {e}"
            print(f"pyllama.server: could not load the model: {self.load_error}", file=sys.stderr)
            if self.on_load_failure:
                self.on_load_failure(self.load_error)
            return
        base = os.path.basename(llm.model_path)
        self.model_id = os.path.splitext(base)[0]
        self.model_names = {self.model_id, base, llm.model_path}
        if self.model_path:
            self.model_names.add(str(self.model_path))
        self.llm = llm
        print(f"pyllama.server: {self.model_id} ready: {self.n_slots} slots of {llm.n_ctx()} tokens, "
              f"{llm.n_threads} threads ({llm.isa})", file=sys.stderr)

    def close(self) -> None:
        if self.engine is not None:
            self.engine.stop()
        if self.llm is not None:
            self.llm.close()

    def ready(self) -> Engine:
        if self.engine is None or self.llm is None:
            if self.load_error:
                raise APIError(503, f"the model failed to load: {self.load_error}", "server_error",
                               code="model_load_failed")
            raise APIError(503, "the model is loading; retry shortly", "server_error", code="loading",
                           headers={"Retry-After": "2"})
        return self.engine

    def check_model(self, name: Optional[str]) -> None:
        if name is not None and name not in self.model_names:
            raise APIError(404, f"The model '{name}' does not exist; this server serves '{self.model_id}' "
                                "(GET /v1/models)", param="model", code="model_not_found")


# ------------------------------------------------------------------------ request helpers

def _stops(stop) -> list[str]:
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if len(stops) > MAX_STOP_STRINGS:
        raise APIError(400, f"at most {MAX_STOP_STRINGS} stop strings (got {len(stops)})", param="stop")
    return [s for s in stops if s]


def _logit_bias(bias, n_vocab: int) -> Optional[dict]:
    if not bias:
        return None
    out = {}
    for key, value in bias.items():
        try:
            tok = int(key)
        except ValueError:
            raise APIError(400, f"logit_bias keys must be token ids (got {key!r})", param="logit_bias")
        if not 0 <= tok < n_vocab:
            raise APIError(400, f"logit_bias token {tok} is outside the vocabulary [0, {n_vocab})",
                           param="logit_bias")
        if not -100.0 <= value <= 100.0:
            raise APIError(400, f"logit_bias values must be in [-100, 100] (got {value})", param="logit_bias")
        out[tok] = float(value)
    return out


def _sampling(req, n_vocab: int) -> dict:
    return dict(temperature=req.temperature, top_p=req.top_p, top_k=req.top_k, min_p=req.min_p,
                repeat_penalty=req.repeat_penalty, presence_penalty=req.presence_penalty,
                frequency_penalty=req.frequency_penalty, stop=_stops(req.stop), seed=req.seed,
                logit_bias=_logit_bias(req.logit_bias, n_vocab))


def _check_budget(n_prompt: int, max_tokens: Optional[int], n_ctx: int) -> None:
    if n_prompt >= n_ctx:
        raise ContextOverflowError(
            f"This model's maximum context length is {n_ctx} tokens; the prompt is {n_prompt} tokens")
    if max_tokens is not None and n_prompt + max_tokens > n_ctx:
        raise APIError(400, f"This model's maximum context length is {n_ctx} tokens. However, you requested "
                            f"{n_prompt + max_tokens} tokens ({n_prompt} in the prompt, {max_tokens} in the "
                            "completion). Please reduce the prompt or max_tokens.",
                       param="max_tokens", code="context_length_exceeded")


# A text prompt, or chat messages, of more characters than this many per context position may
# not fit (English runs at about 4.5 per token): it is tokenized on a worker thread before it is
# queued, so the engine never spends a round tokenizing a prompt it would refuse (a 1 MB one held
# every stream 0.2 s); one that fits takes its ids along
LONG_PROMPT_CHARS_PER_TOKEN = 3


async def _on_worker_thread(fn: Callable[[], Any]) -> Any:
    """fn() on a worker thread, neither the engine's (every stream would wait) nor the event
    loop's, its exceptions raised as the HTTP errors they stand for."""
    try:
        return await anyio.to_thread.run_sync(fn)
    except Exception as e:
        raise api_error_from(e)


async def _prompt_ids_that_fit(tokenize: Callable[[], list[int]], max_tokens: Optional[int],
                               n_ctx: int) -> list[int]:
    """A long prompt's ids (see LONG_PROMPT_CHARS_PER_TOKEN), tokenized and checked against the
    context on a worker thread."""
    def run() -> list[int]:
        ids = tokenize()
        _check_budget(len(ids), max_tokens, n_ctx)
        return ids

    return await _on_worker_thread(run)


PREFILL_CHUNK = 128  # the C core's own slice (MAX_UBATCH): chunks on its boundaries compute what one call does


def _prefill(slot, ids: list[int], cache_prompt: bool) -> Iterator[None]:
    """Evaluate all but the tail of the prompt into the slot, a chunk per step, so a long prompt
    shares the engine with running streams. From position 0 the chunks fall where pl_eval
    would cut one long call, so the result is the same; create_* then finds them cached."""
    if not cache_prompt:
        slot.reset()
    keep = _common_prefix(slot.input_ids, ids[:-1])
    if keep == 0:
        slot.reset()
    elif keep < slot.n_tokens:
        slot.truncate(keep)
    end = (len(ids) - 1) // PREFILL_CHUNK * PREFILL_CHUNK
    pos = keep
    while pos < end:
        stop = min(end, (pos // PREFILL_CHUNK + 1) * PREFILL_CHUNK)
        slot.eval(ids[pos:stop])
        pos = stop
        yield


def _chat_key(messages: list[dict]) -> str:
    return "".join(f"{m['role']}\x00{m['content']}\x01" for m in messages) + "assistant\x00"


def _merge_completion_logprobs(parts: list) -> Optional[dict]:
    if not parts:
        return None
    out = {"tokens": [], "text_offset": [], "token_logprobs": [], "top_logprobs": []}
    for p in parts:
        for k in out:
            out[k].extend(p.get(k) or [])
    return out


SHUTDOWN_GRACE_S = 2.0  # how long a stream has to send its last event once the server shuts down
CLIENT_CHECK_S = 0.25  # how often a request that is not streamed looks for its client


async def _next_item(job: Job, request: Request, engine: Engine):
    """The job's next item, or None when the client went away (the job is then cancelled).
    The client is looked for every CLIENT_CHECK_S, also while items keep coming: a long
    answer that is not streamed would otherwise run to its end for nobody."""
    loop = asyncio.get_running_loop()
    while True:
        if loop.time() - job.client_checked >= CLIENT_CHECK_S:
            job.client_checked = loop.time()
            if await request.is_disconnected():
                engine.cancel(job)
                return None
        try:
            return await asyncio.wait_for(job.out.get(), timeout=CLIENT_CHECK_S)
        except asyncio.TimeoutError:
            pass


# ------------------------------------------------------------------------ the app

def create_app(model_path: Optional[str] = None, *, n_slots: int = 4, n_ctx: int = 2048,
               n_threads: Optional[int] = None, api_key: Optional[str] = None, max_queue: int = 32,
               max_body_bytes: int = 1 << 20, cache_prompt: bool = True, n_predict: int = -1,
               verbose: bool = False,
               **llm_kwargs: Any) -> FastAPI:
    """The server's app; the model loads in a background thread once the app starts.

    ``n_slots`` conversations are served at once, each with ``n_ctx`` tokens of KV cache;
    ``max_queue`` more wait; past that requests get 429. ``n_predict`` > 0: no request
    generates more tokens than that (llama-server's -n). ``cache_prompt``: a request
    evaluates only the part of its prompt its slot has not cached (a request may override it).
    The engine runs the core in batch-invariant mode (engine.py), so a prompt whose cached
    prefix leaves one token to evaluate continues as the same prompt on a fresh cache does.
    """
    if n_slots < 1 or max_queue < 0 or n_ctx < 0 or max_body_bytes < 1:
        raise ValueError("n_slots must be >= 1, max_queue >= 0, n_ctx >= 0, max_body_bytes >= 1")
    def capped(max_tokens: Optional[int]) -> Optional[int]:
        if n_predict > 0:
            return n_predict if max_tokens is None else min(max_tokens, n_predict)
        return max_tokens

    state = ServerState(model_path, n_slots, n_ctx, n_threads, max_queue, llm_kwargs, verbose, cache_prompt)

    @asynccontextmanager
    async def lifespan(app):
        loader = threading.Thread(target=state.load, name="pyllama-load", daemon=True)
        loader.start()
        try:
            yield
        finally:
            await asyncio.get_running_loop().run_in_executor(None, loader.join)
            state.close()

    app = FastAPI(title="pyllama server", version="0.1.0", lifespan=lifespan,
                  description="OpenAI-compatible API over pyllama's C core")
    app.state.pyllama = state

    # -------------------------------------------------------------- errors, auth, counters

    @app.exception_handler(APIError)
    async def _api_error(request, exc: APIError):
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request, exc: RequestValidationError):
        errs = exc.errors()
        first = errs[0] if errs else {}
        loc = [str(x) for x in first.get("loc", ()) if x != "body"]
        if first.get("type") == "json_invalid":
            return error_response(APIError(400, f"the body is not valid JSON: {first.get('ctx', {}).get('error', '')}",
                                           code="invalid_json"))
        message = "; ".join(f"{'.'.join(str(x) for x in e.get('loc', ()) if x != 'body') or 'body'}: {e.get('msg')}"
                            for e in errs[:5])
        return error_response(APIError(400, message, param=".".join(loc) or None))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, exc: StarletteHTTPException):
        type_ = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return error_response(APIError(exc.status_code, str(exc.detail), type_))

    @app.exception_handler(Exception)
    async def _internal(request, exc: Exception):
        return error_response(api_error_from(exc))

    # -------------------------------------------------------------- running jobs

    async def run_job(request: Request, start, key: str, stream: bool, include_usage: bool, kind: str,
                      prefill=None):
        engine = state.ready()
        job = Job(start, key, asyncio.get_running_loop(), prefill)
        try:
            engine.submit(job)
        except QueueFull:
            raise APIError(429, f"all {state.n_slots} slots are busy and {state.max_queue} requests are "
                                "waiting; retry shortly", "server_error", code="queue_full",
                           headers={"Retry-After": "1"})
        first = await _next_item(job, request, engine)
        if first is None:
            return Response(status_code=499)
        if first[0] == "error":
            raise api_error_from(first[1])
        if stream:
            return _stream_response(job, engine, include_usage)
        return await _collect(job, request, engine, kind)

    def _stream_response(job: Job, engine: Engine, include_usage: bool) -> StreamResponse:
        """The job's SSE response. When the server shuts down (SIGTERM, Ctrl-C), the stream ends
        with an error event, where sse-starlette would cancel it silently and the client would
        take a cut-off answer for a whole one."""
        shutdown = anyio.Event()  # set by sse-starlette when the server starts shutting down

        async def end_on_shutdown() -> None:
            await shutdown.wait()
            engine.cancel(job)
            job.out.put_nowait(("error", APIError(503, "the server is shutting down", "server_error",
                                                  code="server_shutting_down")))

        return StreamResponse(_sse(job, engine, include_usage), ping=15, shutdown_event=shutdown,
                              shutdown_grace_period=SHUTDOWN_GRACE_S, data_sender_callable=end_on_shutdown)

    async def _sse(job: Job, engine: Engine, include_usage: bool):
        """The job's items as SSE events, encoded here (one JSON line each: no newline can
        occur in json.dumps' output) and every item already waiting sent in one write."""
        last = None
        done = False
        try:
            while not done:
                items = [await job.out.get()]
                while not job.out.empty():
                    items.append(job.out.get_nowait())
                events = []
                for kind, value in items:
                    if kind == "chunk":
                        last = value
                        if include_usage:
                            value = dict(value, usage=None)
                        events.append(json.dumps(value, ensure_ascii=False))
                    elif kind == "end":
                        if include_usage and last is not None:
                            tail = {k: last[k] for k in ("id", "object", "created", "model")}
                            events.append(json.dumps(dict(tail, choices=[], usage=value)))
                        done = True
                        events.append("[DONE]")
                        break
                    else:  # an error after the stream started: OpenAI's body as one event
                        done = True
                        err = api_error_from(value)
                        events.append(json.dumps(error_body(err.message, err.type, err.param, err.code)))
                        break
                yield "".join(f"data: {e}\r\n\r\n" for e in events).encode("utf-8")
        finally:
            if not done:
                engine.cancel(job)  # the client went away: free the slot now

    async def _collect(job: Job, request: Request, engine: Engine, kind: str):
        parts, lp_parts, lp_content, calls = [], [], [], []
        finish, meta, usage, any_lp = None, None, None, False
        while True:
            item = await _next_item(job, request, engine)
            if item is None:
                return Response(status_code=499)
            what, value = item
            if what == "error":
                raise api_error_from(value)
            if what == "end":
                usage = value
                break
            meta = value
            for choice in value.get("choices") or ():
                if kind == "chat":
                    delta = choice.get("delta") or {}
                    parts.append(delta.get("content") or "")
                    for call in delta.get("tool_calls") or ():
                        calls.append({k: v for k, v in call.items() if k != "index"})
                    if choice.get("logprobs"):
                        any_lp = True
                        lp_content.extend(choice["logprobs"].get("content") or [])
                else:
                    parts.append(choice.get("text") or "")
                    if choice.get("logprobs"):
                        lp_parts.append(choice["logprobs"])
                finish = choice.get("finish_reason") or finish
        head = {k: meta[k] for k in ("id", "created", "model")} if meta else {}
        if kind == "chat":
            lp = {"content": lp_content} if any_lp else None
            message = {"role": "assistant", "content": "".join(parts)}
            if calls:  # as create_chat_completion: no content when it was only whitespace
                message = {"role": "assistant", "content": message["content"] if message["content"].strip() else None,
                           "tool_calls": calls}
            choice = {"index": 0, "message": message, "logprobs": lp, "finish_reason": finish or "stop"}
            return dict(head, object="chat.completion", choices=[choice], usage=usage)
        choice = {"text": "".join(parts), "index": 0, "logprobs": _merge_completion_logprobs(lp_parts),
                  "finish_reason": finish or "stop"}
        return dict(head, object="text_completion", choices=[choice], usage=usage)

    # -------------------------------------------------------------- endpoints

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page():
        return HTMLResponse(resources.files(__package__).joinpath("static/index.html").read_text("utf-8"))

    @app.get("/health")
    async def health():
        if state.engine is None:
            status = "error" if state.load_error else "loading"
            return JSONResponse({"status": status, "error": state.load_error}, status_code=503,
                                headers={"Retry-After": "2"})
        return {"status": "ok", "slots_idle": state.n_slots - state.engine.busy_slots(),
                "slots_processing": state.engine.busy_slots()}

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics():
        lines = ["# HELP pyllama_requests_total HTTP requests answered, by path and status",
                 "# TYPE pyllama_requests_total counter"]
        for (path, status), n in sorted(state.requests.items()):
            lines.append(f'pyllama_requests_total{{path="{path}",status="{status}"}} {n}')
        eng = state.engine
        values = [
            ("pyllama_prompt_tokens_total", "counter", "prompt tokens of finished requests",
             eng.tokens_prompt if eng else 0),
            ("pyllama_generated_tokens_total", "counter", "tokens generated by finished requests",
             eng.tokens_generated if eng else 0),
            ("pyllama_queue_depth", "gauge", "requests waiting for a slot", eng.queue_depth() if eng else 0),
            ("pyllama_slots_busy", "gauge", "slots serving a request", eng.busy_slots() if eng else 0),
            ("pyllama_slots_total", "gauge", "slots", state.n_slots),
            ("pyllama_tokens_per_second", "gauge", "tokens decoded per second over the last 10 s",
             round(eng.tokens_per_second(), 3) if eng else 0.0),
            ("pyllama_model_loaded", "gauge", "1 once the model is loaded", 1 if eng else 0),
        ]
        if eng is not None:
            values.append(("pyllama_engine_rounds_total", "counter", "forward passes the engine ran", eng.rounds))
        for name, kind, help_, value in values:
            lines += [f"# HELP {name} {help_}", f"# TYPE {name} {kind}", f"{name} {value}"]
        if eng is not None:
            name = "pyllama_engine_seconds_total"
            lines += [f"# HELP {name} the engine thread's time: steps (the slots' Python work between passes), "
                      "forward (batched forward passes), flush (handing chunks to the event loop)",
                      f"# TYPE {name} counter"]
            for phase, seconds in eng.phase_seconds.items():
                lines.append(f'{name}{{phase="{phase}"}} {seconds:.6f}')
        return PlainTextResponse("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models():
        state.ready()
        return {"object": "list", "data": [{"id": state.model_id, "object": "model", "created": state.created,
                                            "owned_by": "pyllama"}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(req: ChatCompletionRequest, request: Request):
        state.ready()
        state.check_model(req.model)
        llm = state.llm
        messages = []
        for m in req.messages:
            msg: dict = {"role": m.role, "content": m.text()}
            for field in ("name", "tool_call_id"):
                if getattr(m, field):
                    msg[field] = getattr(m, field)
            if m.tool_calls:
                msg["tool_calls"] = [c.model_dump(exclude_none=True) for c in m.tool_calls]
            messages.append(msg)
        max_tokens = req.max_completion_tokens or req.max_tokens
        _check_budget(0, max_tokens, state.llm.n_ctx())  # before the prompt is known: max_tokens alone
        max_tokens = capped(max_tokens)
        n_top = req.top_logprobs if req.logprobs else None
        kwargs = dict(_sampling(req, llm.n_vocab()), max_tokens=max_tokens, stream=True, model=state.model_id,
                      logprobs=req.logprobs, top_logprobs=n_top, response_format=req.response_format,
                      grammar=req.grammar)
        uses_tools = bool(req.tools or req.functions or any(m.get("tool_calls") or m["role"] == "tool"
                                                             for m in messages))
        if req.tools or req.functions:
            kwargs.update(tools=req.tools, functions=req.functions, tool_choice=req.tool_choice)
        cache_prompt = state.cache_prompt if req.cache_prompt is None else req.cache_prompt
        known_ids = None
        n_chars = sum(len(m.get("content") or "") for m in messages)
        if uses_tools:  # the tools' definitions and past calls are rendered into the prompt too
            n_chars += len(json.dumps([req.tools, req.functions, [m.get("tool_calls") for m in messages]],
                                      default=str))
        if n_chars > LONG_PROMPT_CHARS_PER_TOKEN * llm.n_ctx():
            # as for a long text completion (the slots are forks of llm: the same template and tokenizer)
            from ..chat_format import format_chat

            def tokenize() -> list[int]:
                if uses_tools:  # as create_chat_completion prepares them; the ids serve the check only
                    return llm.chat_prompt_tokens(messages, tools=req.tools, tool_choice=req.tool_choice,
                                                  functions=req.functions)
                return format_chat(llm, messages).tokens

            known_ids = await _prompt_ids_that_fit(tokenize, max_tokens, llm.n_ctx())

        def prefill(slot):
            from ..chat_format import format_chat

            if uses_tools:  # rendered with the tools' own preparation: create_chat_completion checks it
                if not cache_prompt:
                    slot.reset()  # as _prefill does: the whole prompt evaluated, as on a fresh model
                return iter(())
            ids = known_ids if known_ids is not None else format_chat(slot, messages).tokens
            _check_budget(len(ids), max_tokens, slot.n_ctx())
            return _prefill(slot, ids, cache_prompt)

        def start(slot):
            return slot.create_chat_completion(messages, **kwargs)

        include = bool(req.stream_options and req.stream_options.include_usage)
        return await run_job(request, start, _chat_key(messages), req.stream, include, "chat", prefill)

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest, request: Request):
        state.ready()
        state.check_model(req.model)
        llm = state.llm
        prompt = req.prompt
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
            if len(prompt) != 1:
                raise APIError(400, "only one prompt per request is supported", param="prompt")
            prompt = prompt[0]
        if isinstance(prompt, list):
            if not prompt:
                raise APIError(400, "the prompt has no tokens", param="prompt")
            bad = [t for t in prompt if not 0 <= t < llm.n_vocab()]
            if bad:
                raise APIError(400, f"token id {bad[0]} is outside the vocabulary [0, {llm.n_vocab()})",
                               param="prompt")
        _check_budget(0, req.max_tokens, llm.n_ctx())
        max_tokens = capped(req.max_tokens)
        kwargs = dict(_sampling(req, llm.n_vocab()), max_tokens=max_tokens, stream=True,
                      model=state.model_id, suffix=req.suffix, echo=req.echo, logprobs=req.logprobs)
        if req.grammar is not None or req.json_schema is not None:  # llama-server's constraint fields
            from ..grammar import LlamaGrammar

            if req.grammar is not None and req.json_schema is not None:
                raise APIError(400, "pass either grammar or json_schema, not both", param="grammar")
            try:
                kwargs["grammar"] = (LlamaGrammar.from_string(req.grammar) if req.grammar is not None
                                     else LlamaGrammar.from_json_schema(req.json_schema))
            except ValueError as e:
                raise APIError(400, str(e), param="grammar" if req.grammar is not None else "json_schema")
        cache_prompt = state.cache_prompt if req.cache_prompt is None else req.cache_prompt
        known_ids = None
        if isinstance(prompt, str) and len(prompt) > LONG_PROMPT_CHARS_PER_TOKEN * llm.n_ctx():
            # perhaps longer than the context: a prompt the engine would only refuse must not hold
            # every stream still while it is tokenized
            known_ids = await _prompt_ids_that_fit(lambda: llm.tokenize(prompt.encode("utf-8"), special=True),
                                                   max_tokens, llm.n_ctx())

        def prefill(slot):
            if isinstance(prompt, list):
                ids = list(prompt)
            elif known_ids is not None:
                ids = known_ids
            elif prompt:
                ids = slot.tokenize(prompt.encode("utf-8"), special=True)
            else:
                ids = [slot.token_bos()]
            _check_budget(len(ids), max_tokens, slot.n_ctx())
            if req.echo and req.logprobs is not None:  # re-evaluates the prompt itself
                return iter(())
            return _prefill(slot, ids, cache_prompt)

        def start(slot):
            return slot.create_completion(prompt, **kwargs)

        key = prompt if isinstance(prompt, str) else ""
        include = bool(req.stream_options and req.stream_options.include_usage)
        return await run_job(request, start, key, req.stream, include, "completion", prefill)

    @app.post("/v1/embeddings")
    async def embeddings(req: EmbeddingRequest, request: Request):
        engine = state.ready()
        state.check_model(req.model)
        texts = [req.input] if isinstance(req.input, str) else req.input
        if not texts:
            raise APIError(400, "input is an empty list", param="input")
        if any(t == "" for t in texts):
            raise APIError(400, "input contains an empty string", param="input")
        dim = state.llm.config["dim"]
        if req.dimensions is not None and req.dimensions != dim:
            raise APIError(400, f"this model's embeddings have {dim} dimensions (got dimensions={req.dimensions})",
                           param="dimensions")
        # one engine call per text: the engine runs the calls waiting for it between two rounds,
        # so a long list given whole held every stream still for its whole length (a minute for a
        # 1000-text request); and a client that went away stops the rest
        vectors, n_tokens = [], 0
        for text in texts:
            if await request.is_disconnected():
                return Response(status_code=499)
            try:
                vector, n = await engine.call(
                    lambda text=text: state.embedder.embed(text, normalize=True, truncate=False, return_count=True))
            except Exception as e:
                raise api_error_from(e)
            vectors.append(vector)
            n_tokens += n
        data = []
        for i, v in enumerate(vectors):
            emb: Any = v
            if req.encoding_format == "base64":
                emb = base64.b64encode(np.asarray(v, dtype=np.float32).tobytes()).decode("ascii")
            data.append({"object": "embedding", "embedding": emb, "index": i})
        return {"object": "list", "data": data, "model": state.model_id,
                "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens}}

    @app.post("/tokenize")
    async def tokenize(req: TokenizeRequest):
        state.ready()
        llm = state.llm

        def run() -> bytes:
            ids = llm.tokenize(req.content.encode("utf-8"), add_bos=req.add_special, special=True)
            if not req.with_pieces:
                return json.dumps({"tokens": ids}).encode()
            pieces = [llm.tokenizer.token_to_piece(t).decode("utf-8", errors="replace") for t in ids]
            return json.dumps({"tokens": [{"id": t, "piece": p} for t, p in zip(ids, pieces)]},
                              ensure_ascii=False).encode("utf-8")

        # the JSON included: encoded on the event loop, a long text's ids held every stream still too
        return Response(await _on_worker_thread(run), media_type="application/json")

    @app.post("/detokenize")
    async def detokenize(req: DetokenizeRequest):
        state.ready()
        llm = state.llm
        bad = [t for t in req.tokens if not 0 <= t < llm.n_vocab()]
        if bad:
            raise APIError(400, f"token id {bad[0]} is outside the vocabulary [0, {llm.n_vocab()})", param="tokens")
        text = await _on_worker_thread(lambda: llm.detokenize(req.tokens))
        return {"content": text.decode("utf-8", errors="replace")}

    app.add_middleware(AuthAndCount, state=state, api_key=api_key, known_paths={r.path for r in app.routes})
    app.add_middleware(BodyLimit, limit=max_body_bytes)  # added last: the outermost layer
    return app
