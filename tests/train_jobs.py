"""Training jobs for spawned ranks (tests/test_train.py)."""

from __future__ import annotations


def train_on_rank(rank: int, world: int, overrides: list[str]) -> float:
    from videoring.train import load_train_config, train

    done = train(load_train_config("configs/train_synth.yaml", overrides), log=lambda *a: None)
    return float(sum(p.double().sum() for p in done.model.parameters()))
