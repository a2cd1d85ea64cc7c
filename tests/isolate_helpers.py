"""Functions run in isolated children by tests/test_isolate.py (importable by spawned processes)."""

import os
import signal
import time


def segfault(*_):
    os.kill(os.getpid(), signal.SIGSEGV)


def hang(*_):
    time.sleep(600)


def double(x):
    return 2 * x


def gen_then_crash(n):
    for i in range(n):
        yield i
    os.kill(os.getpid(), signal.SIGSEGV)


def gen_ok(n):
    for i in range(n):
        yield i
    return ["done"]
