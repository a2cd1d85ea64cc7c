"""Seeded mutation fuzzing in CI: 100 mutated clips, none may crash the caller, hang or raise a bug."""

from __future__ import annotations


def test_fuzz_100_cases(tmp_path):
    from videoring.fuzz import fuzz

    rep = fuzz(100, seed=1234, workdir=tmp_path, timeout_s=30.0)
    assert rep.cases == 100
    assert not rep.failures, rep.failures[:5]
    assert rep.timeouts == 0, rep.summary()
    # the mutations really break files: both outcomes occur
    assert rep.decoded > 0 and rep.clean_errors + rep.worker_crashes > 10, rep.summary()
    assert len(rep.by_kind) == 6
