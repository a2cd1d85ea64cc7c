"""Exceptions and warnings raised by videoring.

Every error names the thing that is wrong (a file, a config field), the value
received and, where there is one, the fix: the CLI prints ``str(error)`` as a
single line.
"""

from __future__ import annotations

__all__ = ["VideoError", "ConfigError", "DecodeWarning"]


class VideoError(Exception):
    """A video file cannot be read (missing, empty, not a video, corrupt...)."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self):  # picklable across the isolation process boundary
        return (VideoError, (self.path, self.reason))


class ConfigError(ValueError):
    """A configuration value is unknown, of the wrong type or out of range."""


class DecodeWarning(UserWarning):
    """Part of a video could not be decoded; the frames that did decode are returned."""
