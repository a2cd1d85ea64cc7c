"""Network guard for the test suite: loaded by every Python process the tests start (PYTHONPATH).

Connections and DNS lookups to anything but this machine raise OSError and are
logged to $VIDEORING_NET_LOG; tests/conftest.py fails the session if the log is
not empty. Proves that videoring, ultralytics and timm code paths run offline.
"""

import os
import socket

_LOG = os.environ.get("VIDEORING_NET_LOG")
if _LOG:
    _orig_connect = socket.socket.connect
    _orig_connect_ex = socket.socket.connect_ex
    _orig_getaddrinfo = socket.getaddrinfo
    _LOCAL_NAMES = {None, "", "localhost", "127.0.0.1", "::1", "0.0.0.0", socket.gethostname()}

    def _record(what: str):
        import traceback

        # where it came from, innermost last: the fix starts there
        where = " <- ".join(f"{os.path.basename(fr.filename)}:{fr.lineno}" for fr in traceback.extract_stack()[-8:-2][::-1])
        with open(_LOG, "a") as f:
            f.write(f"pid {os.getpid()}: {what} at {where}\n")
        raise OSError(f"network access blocked in tests: {what}")

    def _local(addr) -> bool:
        if isinstance(addr, (str, bytes)):  # AF_UNIX path
            return True
        host = addr[0] if isinstance(addr, tuple) and addr else addr
        if host in _LOCAL_NAMES:
            return True
        return isinstance(host, str) and (host.startswith("127.") or host == "::1")

    def connect(self, addr):
        if self.family == getattr(socket, "AF_UNIX", None) or _local(addr):
            return _orig_connect(self, addr)
        _record(f"connect {addr!r}")

    def connect_ex(self, addr):
        if self.family == getattr(socket, "AF_UNIX", None) or _local(addr):
            return _orig_connect_ex(self, addr)
        _record(f"connect_ex {addr!r}")

    def getaddrinfo(host, *args, **kwargs):
        if host in _LOCAL_NAMES or (isinstance(host, str) and host.startswith("127.")):
            return _orig_getaddrinfo(host, *args, **kwargs)
        _record(f"getaddrinfo {host!r}")

    socket.socket.connect = connect
    socket.socket.connect_ex = connect_ex
    socket.getaddrinfo = getaddrinfo
