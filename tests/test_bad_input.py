"""Bad input end to end: `videoring info` and `videoring analyze` over malformed files and every real clip.

Each file gives a result or one line `error: PATH: reason` (exit code 2 for the batch), no traceback,
no hang (the CLI runs under a timeout), and the good files in the same batch are still analysed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from .malformed import write_malformed

pytestmark = pytest.mark.timeout(900)  # whole-batch CLI runs; ~1 min each on an idle 2-core machine

FAST = ["track.fps=2", "sampling.fps=0.5", "output.annotate=false", "output.timeline=false", "output.csv=false"]


@pytest.fixture(scope="module")
def malformed(tmp_path_factory) -> tuple[Path, dict[str, bool]]:
    from videoring.synth import synthesize

    root = tmp_path_factory.mktemp("bad")
    base = root / "base.mp4"
    synthesize(base, seed=11, duration_s=6.0, fps=10.0, size=(160, 120))
    expect = write_malformed(base, root / "files")
    return root / "files", expect


def _cli(*args: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "videoring.cli", *args], capture_output=True, text=True, timeout=timeout)


def _check_errors(r: subprocess.CompletedProcess, names: set[str]) -> dict[str, str]:
    assert "Traceback" not in r.stderr, r.stderr[-2000:]
    errors = {}
    for line in r.stderr.splitlines():
        if line.startswith("error: "):
            path = line[len("error: "):].split(": ", 1)[0]
            errors[Path(path).name] = line
    assert set(errors) <= names
    return errors


def test_info_on_malformed_files(malformed):
    files, expect = malformed
    paths = [str(files / n) for n in sorted(expect)]
    r = _cli("info", "--json", "--timeout", "60", *paths, timeout=600)
    assert r.returncode == 2
    errors = _check_errors(r, set(expect))
    rows = {Path(row["path"]).name: row for row in json.loads(r.stdout)}
    for name, ok in expect.items():
        if ok:
            assert "error" not in rows[name], rows[name]
        else:
            assert name in errors and "error" in rows[name], (name, rows[name])
    assert rows["one_pixel.mkv"]["width"] == 1 and rows["one_pixel.mkv"]["frames"] == 20


def test_analyze_on_malformed_files(malformed, tmp_path):
    files, expect = malformed
    r = _cli("analyze", *(str(files / n) for n in sorted(expect)), "-o", str(tmp_path), *FAST, timeout=900)
    assert r.returncode == 2
    errors = _check_errors(r, set(expect))
    for name, ok in expect.items():
        stem = Path(name).stem
        if ok:
            assert name not in errors, errors.get(name)
            assert (tmp_path / stem / "results.json").exists()
        else:
            assert name in errors, f"{name}: no error line"
            assert not (tmp_path / stem / "results.json").exists()
    # nothing half-written anywhere
    assert not [p for p in tmp_path.rglob("*") if ".tmp" in p.name]


def test_analyze_on_every_real_clip(real_videos, tmp_path):
    from .conftest import manifest

    rows = manifest()
    r = _cli("analyze", str(real_videos), "-o", str(tmp_path), *FAST, timeout=1200)
    assert r.returncode in (0, 2)
    names = {row["file"] for row in rows} if rows and "file" in rows[0] else {p.name for p in real_videos.iterdir()}
    errors = _check_errors(r, names)
    done = {p.parent.name for p in tmp_path.glob("*/results.json")}
    from videoring.cli import VIDEO_SUFFIXES

    videos = [p for p in real_videos.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES]
    for p in videos:
        assert p.stem in done or p.name in errors, f"{p.name}: neither results nor an error line"
    assert len(done) >= len(videos) - len(errors)
    print(f"{len(done)} analysed, {len(errors)} refused:", *sorted(errors.values()), sep="\n")


def test_action_model_of_another_shape_is_a_config_error(tmp_path):
    """A checkpoint whose tensors have other shapes (trained with other actor features or
    sizes) is named with the fix, not a torch size-mismatch traceback."""
    from videoring.actions import ActionModel, load_model, save_model
    from videoring.config import PipelineConfig, load_config
    from videoring.errors import ConfigError

    small = ActionModel(load_config(None, ["temporal.dim=32", "temporal.heads=2"], PipelineConfig), 192, 5)
    save_model(small, tmp_path / "m.safetensors", {"labels": small.labels})
    other = ActionModel(load_config(None, ["temporal.dim=64", "temporal.heads=2"], PipelineConfig), 192, 5)
    with pytest.raises(ConfigError, match=r"m\.safetensors does not fit this config"):
        load_model(other, tmp_path / "m.safetensors")
