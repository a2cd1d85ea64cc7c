"""The CLI as a user runs it: exit codes, one-line errors, JSON output."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path



def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "videoring.cli", *args], capture_output=True, text=True, timeout=300, cwd=cwd)


def test_info_json_mixed_good_and_bad(tmp_path, real_videos, lossless_clip):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(bytes(range(256)) * 40)
    png = tmp_path / "image.mp4"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 100)
    r = run("info", "--json", str(lossless_clip), str(empty), str(junk), str(tmp_path / "missing.mp4"), str(png))
    assert r.returncode == 2
    rows = json.loads(r.stdout)
    assert [row["path"] for row in rows][0] == str(lossless_clip)
    ok = rows[0]
    for key in ("path", "duration_s", "fps", "frames", "width", "height", "rotation", "codec", "has_audio"):
        assert key in ok
    assert (ok["frames"], ok["width"], ok["height"], ok["codec"]) == (120, 160, 120, "h264")
    errors = {Path(row["path"]).name: row["error"] for row in rows[1:]}
    assert "empty file" in errors["empty.mp4"]
    assert "no such file" in errors["missing.mp4"]
    assert "not a video" in errors["junk.mp4"] or "no frame" in errors["junk.mp4"]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 4 and all(line.startswith("error: ") for line in lines)
    assert "Traceback" not in r.stderr


def test_info_whole_real_folder_no_traceback(real_videos):
    r = run("info", "--json", str(real_videos))
    rows = json.loads(r.stdout)
    assert len(rows) == len(list(real_videos.glob("*"))) - 1  # every clip but MANIFEST.tsv
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr


def test_debug_shows_traceback(tmp_path):
    r = run("--debug", "info", str(tmp_path / "missing.mp4"))
    assert r.returncode == 2 and "Traceback" in r.stderr


def test_synth_cli(tmp_path):
    out = tmp_path / "s.mp4"
    r = run("synth", str(out), "--seed", "1", "--duration", "3", "--size", "96x64", "--fps", "8", "--lossless")
    assert r.returncode == 0, r.stderr
    assert out.exists() and out.with_suffix(".json").exists()
    r = run("synth", str(out), "--size", "nonsense")
    assert r.returncode == 2 and "--size" in r.stderr
    r = run("synth", str(out), "--duration", "-1")
    assert r.returncode == 2 and "duration" in r.stderr and "Traceback" not in r.stderr


def test_features_same_file_for_any_nproc(tmp_path, lossless_clip):
    from safetensors.torch import load_file

    common = ["encoder.precision=fp32", "sampling.fps=2", "temporal.depth=2", f"cache_dir={tmp_path / 'cache'}"]
    outs = {}
    for n in (1, 2):
        out = tmp_path / f"f{n}.safetensors"
        r = run("features", str(lossless_clip), "-o", str(out), "--nproc", str(n), *common)
        assert r.returncode == 0, r.stderr[-2000:]
        outs[n] = load_file(str(out))
    a, b = outs[1], outs[2]
    assert a["features"].shape == (24, 192) and a["timestamps"].dtype.is_floating_point
    assert a["timestamps"].tolist() == [i / 2 for i in range(24)]
    assert (a["timestamps"] == b["timestamps"]).all()
    assert (a["features"] - b["features"]).abs().max() <= 1e-4
    # a rerun reads the encoder cache instead of re-encoding: no cache file is rewritten
    cached = {p: p.stat().st_ino for p in (tmp_path / "cache").glob("*.safetensors")}
    assert cached
    r = run("features", str(lossless_clip), "-o", str(tmp_path / "again.safetensors"), *common)
    assert r.returncode == 0
    assert {p: p.stat().st_ino for p in (tmp_path / "cache").glob("*.safetensors")} == cached
    assert (load_file(str(tmp_path / "again.safetensors"))["features"] == a["features"]).all()


def test_features_bad_config_is_one_line(tmp_path, lossless_clip):
    r = run("features", str(lossless_clip), "-o", str(tmp_path / "x.safetensors"), "temporal.heads=abc")
    assert r.returncode == 2 and "temporal.heads" in r.stderr and "Traceback" not in r.stderr
