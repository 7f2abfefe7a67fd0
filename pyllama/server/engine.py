"""The server's scheduler: N slots advanced together by one forward pass per round.

Each slot is a :meth:`pyllama.Llama.fork` of the loaded model: the same weights, a
KV cache of its own, so a conversation that comes back finds its earlier turns
still cached. A slot's request runs as the usual generator (create_completion's
stream: sampling, grammars, stop strings unchanged) in a greenlet of the slot on the
engine thread, handed control by the engine like a coroutine: when the stream calls
``eval()`` the slot parks its tokens with the engine (Llama._batch_hook) and switches
back. Once every busy slot has parked (or ended its
step), the engine evaluates all parked tokens in ONE forward pass
(:func:`pyllama.batch.eval_batch`: each weight read once for every slot) and hands
each slot its logits. A new request's prompt is prefilled in chunks (app.py's
_prefill, one chunk per step) that ride in the same passes as the other slots'
decode tokens, so running streams don't stall; the prompt's last part, which ends in
the request's first token, gets a pass to itself (Engine._first_tokens_first).
Requests beyond the slots wait in a bounded queue; past it :class:`QueueFull` is
raised so the web layer answers 429.

A job's results travel to the asyncio side through ``loop.call_soon_threadsafe``,
gathered: what every slot produced in a round goes over in one call (one wake-up of
the event loop per round, not one per slot), sent before the round's forward pass so
the web side writes them while the pass runs. A job whose client went away is marked
cancelled and its stream closed at the next step, freeing the slot.
"""
from __future__ import annotations

import asyncio
import collections
import threading
import time
from typing import Any, Callable, Iterator, Optional

import greenlet

END = object()  # the last item a job delivers


class QueueFull(Exception):
    """Every slot is busy and the waiting queue is full."""


class Job:
    """One request: ``start(slot)`` returns its stream of chunks (run on the engine thread).

    Items delivered to ``out``: ("started", None), then ("chunk", dict) ..., then
    ("end", usage) -- or ("error", exception) at any point. With ``prefill``, the
    engine first runs ``prefill(slot)`` one step per round (a chunk of the prompt
    each), so a long prompt does not stall the other slots' streams.
    """

    def __init__(self, start: Callable[[Any], Iterator[dict]], prefix_key: str,
                 loop: asyncio.AbstractEventLoop, prefill: Optional[Callable[[Any], Iterator[None]]] = None):
        self.start = start
        self.prefill = prefill  # prefill(slot): evaluates the prompt a chunk per resumption
        self.prefilling: Optional[Iterator[None]] = None
        self.prefix_key = prefix_key
        self.loop = loop
        self.out: asyncio.Queue = asyncio.Queue()
        self.cancelled = False
        self.client_checked = loop.time()  # when the web side last looked for the client (app.py)
        self.stream: Optional[Iterator[dict]] = None
        self.slot: Optional[Slot] = None
        self.text: list[str] = []  # what was generated, for the slot's prefix key
        self.pending: list = []  # items delivered since the engine last flushed
        self.generated = 0  # tokens its stream has sampled so far

    def deliver(self, kind: str, value: Any) -> None:
        """Queue an item; it reaches ``out`` at the engine's next :meth:`Engine._flush`."""
        self.pending.append((kind, value))


def _put_all(batch: list) -> None:
    """On the event loop: hand each job its items of the round."""
    for job, items in batch:
        for item in items:
            job.out.put_nowait(item)


class Slot:
    """A fork and the greenlet its request's generator runs in (one slot runs at a time).

    The generator is suspended inside eval(), deep in create_completion's call chain,
    so the slot needs a stack of its own. A greenlet is one: switching to it and back is
    a few microseconds on the engine thread, where a worker thread per slot cost two
    wake-ups of another thread (futex, GIL, often another core) per switch, four
    switches per slot per token.
    """

    def __init__(self, index: int, llm):
        self.index = index
        self.llm = llm
        self.key = ""  # the text the slot's cache holds: prompt key plus generated text
        self.job: Optional[Job] = None
        self.parked: Optional[list] = None  # tokens the slot waits to have evaluated
        self.eval_error: Optional[BaseException] = None
        self._engine: Optional[greenlet.greenlet] = None  # the engine thread's own greenlet
        # The greenlet that runs the slot's tasks one after another. One for the slot's life,
        # not one per task: a new greenlet gets a new Python frame stack (a 16 KiB mmap) and
        # unmaps it when it ends, an munmap that interrupts the forward pass's other thread.
        self._worker: Optional[greenlet.greenlet] = None
        self._in_task = False  # a task is running or parked in the worker
        llm._batch_hook = self._park

    def _work(self, task: Callable[[], None]) -> None:
        """The worker greenlet: run the task, hand control back, take the next one."""
        while True:
            self._in_task = True
            try:
                task()
            finally:
                self._in_task = False
            task = self._engine.switch()

    def _park(self, llm, tokens) -> None:
        """eval() on this slot's fork (inside its task): wait for the engine's batched pass."""
        if not self._in_task or greenlet.getcurrent() is not self._worker:
            raise RuntimeError("a server slot's model evaluates inside its request's task only")
        self.parked = list(tokens)
        self.eval_error = None
        self._engine.switch()
        if self.eval_error is not None:
            err, self.eval_error = self.eval_error, None
            raise err

    def run(self, task: Callable[[], None]) -> None:
        """Engine thread: run task until it ends or parks in eval()."""
        self._engine = greenlet.getcurrent()
        if self._worker is None or self._worker.dead:
            self._worker = greenlet.greenlet(self._work)  # a child of the engine's greenlet
        self._worker.switch(task)

    def resume(self) -> None:
        """Engine thread: let a parked task go on until it ends or parks again."""
        self.parked = None
        self._worker.switch()

    def close(self) -> None:
        """Engine thread: end a task still parked (its generators' finally blocks run) and the worker."""
        g, self._worker = self._worker, None
        if g is not None and not g.dead:
            g.throw(greenlet.GreenletExit)


def _common_prefix_len(a: str, b: str) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def _chunk_text(chunk: dict) -> str:
    for choice in chunk.get("choices") or ():
        if "text" in choice:
            return choice["text"] or ""
        return (choice.get("delta") or {}).get("content") or ""
    return ""


_invariance_lock = threading.Lock()
_invariance_users = 0
_invariance_before = 0


def _hold_batch_invariance(on: bool) -> None:
    """Count the engines that need the core's batch-invariant mode; the first turns it on,
    the last to stop puts back what the process had before."""
    global _invariance_users, _invariance_before
    from .._core import lib

    with _invariance_lock:
        if on:
            if _invariance_users == 0:
                _invariance_before = lib.pl_set_batch_invariant(1)
            _invariance_users += 1
        else:
            _invariance_users -= 1
            if _invariance_users == 0:
                lib.pl_set_batch_invariant(_invariance_before)


class Engine:
    """Slots, a waiting queue and the thread that runs them (see the module doc)."""

    def __init__(self, llm, n_slots: int, max_queue: int):
        from .._core import lib

        self.llm = llm
        self._lib = lib
        self.slots = [Slot(i, llm.fork()) for i in range(n_slots)]  # first: a fork that fails leaves no hold
        # one kernel per token whatever the batch: a slot's answer must not depend on what
        # else shares its forward passes (issue 16); process-wide while an engine runs
        # (prompts evaluate slower), restored when the last engine stops
        _hold_batch_invariance(True)
        self._holds_invariance = True
        self.max_queue = max_queue
        self.waiting: collections.deque[Job] = collections.deque()
        self.calls: collections.deque = collections.deque()  # (fn, future) run between steps
        self._finished: list[Job] = []  # jobs that left their slot with items still to flush
        self.cond = threading.Condition()
        self.stopping = False
        # metrics
        self.decode_times: collections.deque = collections.deque()  # (time, tokens) of recent steps
        self.tokens_generated = 0  # completion tokens of finished requests (their usage)
        self.tokens_prompt = 0
        # the engine thread's time by phase (seconds): "steps", the slots' Python work between
        # passes (sampling, detokenizing, chunks, hand-overs); "forward", the batched passes;
        # "flush", handing the round's chunks to the event loop. /metrics shows them.
        self.phase_seconds = {"steps": 0.0, "forward": 0.0, "flush": 0.0}
        self.rounds = 0  # rounds that ran a forward pass
        self._firsts_went_alone = False  # the last round was a _first_tokens_first pass
        self._decoded = 0  # tokens the slots decoded this round, counted once per round
        self.thread = threading.Thread(target=self._run, name="pyllama-engine", daemon=True)
        self.thread.start()

    # ---------------------------------------------------------------- asyncio side

    def submit(self, job: Job) -> None:
        with self.cond:
            # room for a job in each free slot, and max_queue more: free slots are counted, not
            # looked for, because the engine thread hands them out later (a burst of requests
            # all arrives before it has assigned any)
            free = sum(1 for s in self.slots if s.job is None)
            if len(self.waiting) >= free + self.max_queue:
                raise QueueFull()
            self.waiting.append(job)
            self.cond.notify()

    def cancel(self, job: Job) -> None:
        with self.cond:
            job.cancelled = True
            try:
                self.waiting.remove(job)
            except ValueError:
                pass
            self.cond.notify()

    async def call(self, fn: Callable[[], Any]) -> Any:
        """Run fn on the engine thread between steps (C calls on the shared model) and return its result."""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        with self.cond:
            self.calls.append((fn, fut, loop))
            self.cond.notify()
        return await fut

    def queue_depth(self) -> int:
        with self.cond:
            return len(self.waiting)

    def busy_slots(self) -> int:
        return sum(1 for s in self.slots if s.job is not None)

    RATE_WINDOW = 10.0  # seconds of decoding tokens_per_second averages over

    def tokens_per_second(self) -> float:
        with self.cond:
            self._forget_old_rounds(time.monotonic())
            total = sum(n for _, n in self.decode_times)
        return total / self.RATE_WINDOW

    def _forget_old_rounds(self, now: float) -> None:
        """Drop decode_times entries older than the window (under self.cond)."""
        while self.decode_times and self.decode_times[0][0] < now - self.RATE_WINDOW:
            self.decode_times.popleft()

    def stop(self) -> None:
        with self.cond:
            self.stopping = True
            self.cond.notify()
        self.thread.join(timeout=30)
        if self._holds_invariance:
            self._holds_invariance = False
            _hold_batch_invariance(False)

    # ---------------------------------------------------------------- engine thread

    def _assign(self) -> None:
        """Give waiting jobs free slots, each the one whose cache shares most of its prompt."""
        while self.waiting:
            free = [s for s in self.slots if s.job is None]
            if not free:
                return
            job = self.waiting.popleft()
            slot = max(free, key=lambda s: _common_prefix_len(s.key, job.prefix_key))
            slot.job, job.slot = job, slot

    # Steps a slot may end in one round without evaluating anything (a chunk of held-back
    # text, the end of its stream) before the round's pass goes ahead without it.
    MAX_IDLE_STEPS = 4

    def _run(self) -> None:
        while True:
            with self.cond:
                while not self.stopping and not self.calls and not self.waiting and \
                        all(s.job is None for s in self.slots):
                    # what jobs that ended after the last pass left (an error while sampling):
                    # no next round will send it
                    self._flush()
                    self.cond.wait()
                if self.stopping:
                    break
                self._assign()
                calls = list(self.calls)
                self.calls.clear()
            for fn, fut, loop in calls:
                self._run_call(fn, fut, loop)
            self._round()
        for slot in self.slots:
            if slot.parked is not None:
                slot.eval_error = RuntimeError("the server is shutting down")
                slot.resume()
            if slot.job is not None:
                self._finish(slot, ("error", RuntimeError("the server is shutting down")))
            slot.close()
        self._flush()

    def _round(self) -> None:
        """Bring every busy slot to its next eval() (or the end of its steps), then one forward pass for all."""
        now = time.perf_counter
        t0 = now()
        for slot in self.slots:
            for _ in range(self.MAX_IDLE_STEPS):
                if slot.job is None or slot.parked is not None:
                    break
                slot.run(lambda slot=slot: self._step(slot))
        t1 = now()
        self._flush()
        t2 = now()
        parked = self._first_tokens_first([s for s in self.slots if s.parked is not None])
        phases = self.phase_seconds
        if not parked:
            phases["steps"] += t1 - t0
            phases["flush"] += t2 - t1
            self._count_decoded()
            return
        self._eval_parked(parked)
        # the slots then sample one after another, between Python work: a sampler that opens
        # an OpenMP team for each draw waits each time for the pass's other thread to wake,
        # which on shared cores costs far more than the draw itself
        self._lib.pl_set_sample_threads(1)
        t3 = now()
        for slot in parked:
            slot.resume()
        t4 = now()
        phases["steps"] += t1 - t0 + t4 - t3
        phases["flush"] += t2 - t1
        phases["forward"] += t3 - t2
        self.rounds += 1
        self._count_decoded()

    def _first_tokens_first(self, parked: list) -> list:
        """The slots whose tokens this round's pass evaluates: every parked one, except that
        requests waiting for their first token (the prompt, or its last chunk, is parked)
        go alone, ahead of the other slots' decode tokens, which wait for the next pass.

        Riding along, the decode tokens lengthen the new request's pass (7 of them add
        about a third to a 20-token prompt's pass on the default model), which showed as
        most of the time to first token a request loses to a busy server; the streams lose
        about as long once, in a pass they would have shared. Never twice in a row, so
        requests arriving round after round cannot stall the streams."""
        if self._firsts_went_alone:
            self._firsts_went_alone = False
            return parked
        firsts = [s for s in parked if s.job.stream is not None and not s.job.generated]
        if firsts and len(firsts) < len(parked):
            self._firsts_went_alone = True
            return firsts
        return parked

    def _count_decoded(self) -> None:
        """Add the round's decoded tokens to the rate behind /metrics (one lock a round)."""
        if self._decoded > 0:
            now = time.monotonic()
            with self.cond:
                self.decode_times.append((now, self._decoded))
                self._forget_old_rounds(now)  # not only when /metrics asks: nobody may
            self._decoded = 0

    def _flush(self) -> None:
        """Send every job's pending items to its event loop: one call per loop."""
        by_loop: dict = {}
        for slot in self.slots:
            job = slot.job
            if job is not None and job.pending:
                by_loop.setdefault(job.loop, []).append((job, job.pending))
                job.pending = []
        for job in self._finished:
            if job.pending:
                by_loop.setdefault(job.loop, []).append((job, job.pending))
                job.pending = []
        self._finished.clear()
        for loop, batch in by_loop.items():
            try:
                loop.call_soon_threadsafe(_put_all, batch)
            except RuntimeError:  # the event loop is gone (server shutting down)
                for job, _ in batch:
                    job.cancelled = True

    def _eval_parked(self, parked: list) -> None:
        """One pass for every parked slot's tokens; a slot whose tokens are refused gets the error."""
        from ..batch import eval_batch

        try:
            if len(parked) == 1 and len(parked[0].parked) == 1:
                self._eval_alone(parked[0])
                return
            eval_batch([(s.llm, s.parked) for s in parked])
            return
        except Exception:
            pass
        for s in parked:  # one request's bad tokens (or overflow) must not fail the others
            try:
                eval_batch([(s.llm, s.parked)])
            except Exception as e:
                s.eval_error = e

    @staticmethod
    def _eval_alone(slot: Slot) -> None:
        """One slot's one token through its fork's own eval(): the single-token path, without
        a batch's assembly. In batch-invariant mode it computes what eval_batch would."""
        llm = slot.llm
        llm._batch_hook = None  # the slot's call lock is this thread's (its greenlet's): eval may enter
        try:
            llm.eval(slot.parked)
        except Exception as e:
            slot.eval_error = e
        finally:
            llm._batch_hook = slot._park

    @staticmethod
    def _run_call(fn, fut, loop) -> None:
        def settle(ok, value):
            if fut.done():
                return
            fut.set_result(value) if ok else fut.set_exception(value)

        try:
            result = fn()
            ok = True
        except Exception as e:  # handed to the awaiting request
            result, ok = e, False
        try:
            loop.call_soon_threadsafe(settle, ok, result)
        except RuntimeError:
            pass

    def _step(self, slot: Slot) -> None:
        job = slot.job
        if job.cancelled:
            self._finish(slot, None)
            return
        llm = slot.llm
        try:
            if job.prefill is not None:
                if job.prefilling is None:
                    job.prefilling = iter(job.prefill(llm))
                try:
                    next(job.prefilling)
                    return
                except StopIteration:
                    job.prefill = job.prefilling = None
            if job.stream is None:  # and on to its first token in the same step
                llm.last_timings = {}  # the slot's previous request's token count must not be subtracted
                job.stream = job.start(llm)
                job.deliver("started", None)
            before = llm._timings().get("gen_tokens", 0)
            try:
                chunk = next(job.stream)
            except StopIteration:
                usage = getattr(llm, "last_usage", None)
                if usage:
                    with self.cond:
                        self.tokens_prompt += usage.get("prompt_tokens", 0)
                        self.tokens_generated += usage.get("completion_tokens", 0)
                self._finish(slot, ("end", usage))
                return
            new_tokens = llm._timings().get("gen_tokens", 0) - before
            self._decoded += new_tokens
            job.generated += new_tokens
            job.text.append(_chunk_text(chunk))
            job.deliver("chunk", chunk)
        except Exception as e:  # the request's own error (bad arguments, context overflow)
            self._finish(slot, ("error", e))

    def _finish(self, slot: Slot, final) -> None:
        job = slot.job
        if job.prefilling is not None:
            job.prefilling.close()
        if job.stream is not None:
            try:
                job.stream.close()
            except Exception:
                pass
        # what the cache now holds, roughly: a cancelled or failed job's cache is not worth matching
        slot.key = job.prefix_key + "".join(job.text) if final and final[0] == "end" else ""
        slot.job = None
        job.slot = None
        if final is not None:
            job.deliver(*final)
        self._finished.append(job)
