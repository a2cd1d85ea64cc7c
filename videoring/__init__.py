"""videoring: long-video understanding -- who does what, and when.

Entry points:

- :func:`probe` / :class:`VideoSource`: read any FFmpeg-readable video, sampled by
  time, in bounded memory (:mod:`videoring.source`).
- :class:`Sampling`: which frames a consumer wants (:mod:`videoring.sampling`).
- :mod:`videoring.ring`: exact ring attention across processes.
- :func:`synthesize`: synthetic clips with ground truth (:mod:`videoring.synth`).
- :class:`Pipeline`: the whole job, video -> tracks and actions (:mod:`videoring.pipeline`).
- :class:`Results`: the output schema (:mod:`videoring.results`).
- the ``videoring`` CLI (:mod:`videoring.cli`).

Importing the package is cheap and has no side effects: submodules load on
first use.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "probe": "videoring.videoinfo",
    "VideoInfo": "videoring.videoinfo",
    "VideoSource": "videoring.source",
    "FrameChunk": "videoring.source",
    "Sampling": "videoring.sampling",
    "Results": "videoring.results",
    "Pipeline": "videoring.pipeline",
    "PipelineConfig": "videoring.config",
    "evaluate": "videoring.evaluate",
    "synthesize": "videoring.synth",
    "VideoError": "videoring.errors",
    "ConfigError": "videoring.errors",
    "DecodeWarning": "videoring.errors",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'videoring' has no attribute {name!r}")
