"""Making one model object safe to share between threads.

A ``Llama`` holds one KV cache, so two completions running at once on it would
interleave their tokens in the same cache and both come out wrong. Its public
calls therefore take a :class:`CallLock`: a second thread waits until the first
call is over. A streamed completion holds the lock from its first chunk until it
ends or is closed (an abandoned stream that is never closed keeps others
waiting until it is garbage-collected).

The lock is re-entrant for the thread that holds it (``create_completion`` calls
``eval``), and a held stream may be resumed from another thread (web servers
iterate streams on thread pools): each resumption makes the resuming thread the
owner.
"""
from __future__ import annotations

import functools
import inspect
import threading
from typing import Callable, Iterator, TypeVar

F = TypeVar("F", bound=Callable)


class CallLock:
    """A re-entrant lock whose ownership can move to another thread (see the module doc)."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._owner: int | None = None
        self._depth = 0

    def acquire(self) -> None:
        me = threading.get_ident()
        with self._cond:
            if self._owner == me:
                self._depth += 1
                return
            while self._owner is not None:
                self._cond.wait()
            self._owner, self._depth = me, 1

    def release(self) -> None:
        with self._cond:
            self._depth -= 1
            if self._depth <= 0:
                self._owner, self._depth = None, 0
                self._cond.notify()

    def adopt(self) -> None:
        """Make the calling thread the owner of a lock held on its behalf (a resumed stream)."""
        with self._cond:
            self._owner = threading.get_ident()

    def __enter__(self) -> "CallLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _locked_iter(lock: CallLock, it: Iterator) -> Iterator:
    lock.acquire()
    try:
        while True:
            lock.adopt()
            try:
                item = next(it)
            except StopIteration:
                return
            yield item
    finally:
        try:
            close = getattr(it, "close", None)
            if close is not None:
                close()
        finally:
            lock.release()


def serialized(method: F) -> F:
    """Run ``method`` under ``self._call_lock``; an iterator it returns keeps the lock while iterated."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with self._call_lock:
            out = method(self, *args, **kwargs)
        if inspect.isgenerator(out):
            return _locked_iter(self._call_lock, out)
        return out

    return wrapper  # type: ignore[return-value]
