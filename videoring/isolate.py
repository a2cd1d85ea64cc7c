"""Run native decoding in a child process, so a crash or hang cannot take the caller down.

FFmpeg and decord are C/C++; a malformed file can in principle segfault or
spin inside them. :class:`IsolatedWorker` keeps one spawned worker process and
sends it calls over a pipe: a call that crashes the worker or runs past its
timeout becomes a :class:`~videoring.errors.VideoError` and the worker is
restarted for the next call.
"""

from __future__ import annotations

import multiprocessing as mp
import signal
from typing import Any, Callable, Generator, Iterator

from .errors import VideoError

__all__ = ["IsolatedWorker", "iter_isolated"]


def _serve(conn) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C
    while True:
        try:
            msg = conn.recv()
        except EOFError:
            return
        if msg is None:
            return
        fn, args = msg
        try:
            conn.send(("ok", fn(*args)))
        except BaseException as e:  # sent back and re-raised in the caller
            conn.send(("err", e))


class IsolatedWorker:
    """A reusable child process for calls that may crash or hang."""

    def __init__(self) -> None:
        self._proc = None
        self._conn = None

    def _start(self) -> None:
        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve, args=(child,), daemon=True)
        self._proc.start()
        child.close()
        self._conn = parent

    def _kill(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.join(5)
        self._proc = self._conn = None

    def call(self, fn: Callable[..., Any], *args: Any, timeout: float, path: str = "") -> Any:
        """``fn(*args)`` in the worker; VideoError on crash or after ``timeout`` seconds."""
        if self._proc is None or not self._proc.is_alive():
            self._start()
        try:
            self._conn.send((fn, args))
            if not self._conn.poll(timeout):
                self._kill()
                raise VideoError(path, f"decoder did not answer within {timeout:g}s (hung on this file); skipped")
            status, value = self._conn.recv()
        except (EOFError, ConnectionError, BrokenPipeError):
            self._proc.join(5)  # reap it, so the exit code (the signal) is known
            code = self._proc.exitcode
            self._kill()
            sig = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
            raise VideoError(path, f"the native decoder crashed on this file ({sig}); the file is malformed") from None
        if status == "err":
            raise value
        return value

    def close(self) -> None:
        if self._proc is not None and self._proc.is_alive():
            try:
                self._conn.send(None)
                self._proc.join(2)
            except (BrokenPipeError, OSError):
                pass
        self._kill()

    def __enter__(self) -> "IsolatedWorker":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _stream(conn, fn, args) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        gen = fn(*args)
        while True:
            try:
                item = next(gen)
            except StopIteration as stop:
                conn.send(("done", stop.value))
                return
            conn.send(("item", item))
    except BaseException as e:
        conn.send(("err", e))
    finally:
        conn.close()


def iter_isolated(fn: Callable[..., Iterator], args: tuple, *, timeout: float, path: str = "") -> Generator[Any, None, Any]:
    """Iterate the generator ``fn(*args)`` in a spawned child; returns the generator's return value.

    A crash of the child, or ``timeout`` seconds without the next item, raises VideoError.
    """
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_stream, args=(child, fn, args), daemon=True)
    proc.start()
    child.close()
    try:
        while True:
            if not parent.poll(timeout):
                raise VideoError(path, f"decoder did not answer within {timeout:g}s (hung on this file)")
            try:
                kind, value = parent.recv()
            except (EOFError, ConnectionError):
                proc.join(5)
                code = proc.exitcode
                sig = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
                raise VideoError(path, f"the native decoder crashed on this file ({sig}); the file is malformed") from None
            if kind == "item":
                yield value
            elif kind == "done":
                return value
            else:
                raise value
    finally:
        if proc.is_alive():
            proc.kill()
        proc.join(5)
        parent.close()
