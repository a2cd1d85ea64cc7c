"""Jobs run on spawned gloo ranks by tests/test_pipeline.py (importable by the child processes)."""

from __future__ import annotations


def analyze_on_ranks(rank: int, world: int, video: str, overrides: dict) -> dict | None:
    from videoring.pipeline import Pipeline

    pipe = Pipeline.from_config("default", **overrides)
    res = pipe(video)
    return None if res is None else res.to_dict()
