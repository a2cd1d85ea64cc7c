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
from typing import Any, Callable

from .errors import VideoError

__all__ = ["IsolatedWorker"]


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
            code = self._proc.exitcode if self._proc is not None else None
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
