"""The network guard itself works: a lookup is blocked and recorded (then the record is cleared)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest


def test_network_guard_blocks_and_records():
    log = Path(os.environ["VIDEORING_NET_LOG"])
    before = log.read_text() if log.exists() else ""
    with pytest.raises(OSError, match="blocked"):
        socket.getaddrinfo("one.one.one.one", 443)
    with pytest.raises(OSError, match="blocked"):
        socket.create_connection(("8.8.8.8", 53), timeout=1)
    assert "one.one.one.one" in log.read_text()
    log.write_text(before)  # this test's own attempts are expected; anything else fails the session
