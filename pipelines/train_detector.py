"""Train the shipped actor detector: YOLO26n from scratch on synthetic frames.

    python pipelines/train_detector.py [--out sample_data/detector_yolo26n.pt] [--epochs 15]

Frames come from the synthetic generator (seeds 1000+ for training, 5000+
held out for validation; never the seeds the tests and action benchmark use),
at several sizes and with and without camera pan, saved as JPEG (quality 75,
so the detector sees compression artefacts like a decoded H.264 frame).
Labels are the ground-truth boxes (one class, ``actor``); boxes less than
20% in view are not labelled (the generator's own rule). Everything runs
offline; the final held-out mAP50 is printed and written beside the weights.
Training takes ~19 minutes on 2 cores (15 epochs at imgsz 256; written as
``train_s`` in OUT.json), after a few minutes of rendering the frames.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import cv2

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from videoring.synth import ground_truth, make_scenario  # noqa: E402
from videoring.synth.render import Renderer  # noqa: E402
from videoring.synth import _frames  # noqa: E402
from videoring.yolo import import_ultralytics  # noqa: E402

SIZES = ((320, 240), (480, 270), (256, 192), (640, 360), (400, 300))


def make_split(root: Path, split: str, seeds: range, every_s: float) -> int:
    img_dir, lab_dir = root / "images" / split, root / "labels" / split
    img_dir.mkdir(parents=True, exist_ok=True)
    lab_dir.mkdir(parents=True, exist_ok=True)
    n = 0
    for seed in seeds:
        W, H = SIZES[seed % len(SIZES)]
        fps = 10.0
        sc = make_scenario(seed, 24.0, fps, W, H, pan=bool(seed % 2))
        r = Renderer(sc)
        gt = ground_truth(sc, r, "x.mp4")
        by_t: dict[float, list] = {}
        for tr in gt.tracks:
            for t, x1, y1, x2, y2, _ in tr.boxes:
                by_t.setdefault(round(t, 6), []).append((x1, y1, x2, y2))
        step = max(1, int(round(every_s * fps)))
        for i, img in enumerate(_frames(sc, r)):
            if i % step:
                continue
            t = round(i / fps, 6)
            name = f"s{seed}_{i:05d}"
            cv2.imwrite(str(img_dir / f"{name}.jpg"), img[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 75])
            rows = [
                f"0 {(x1 + x2) / 2 / W:.6f} {(y1 + y2) / 2 / H:.6f} {(x2 - x1) / W:.6f} {(y2 - y1) / H:.6f}"
                for x1, y1, x2, y2 in by_t.get(t, [])
            ]
            (lab_dir / f"{name}.txt").write_text("\n".join(rows) + ("\n" if rows else ""))
            n += 1
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="sample_data/detector_yolo26n.pt")
    ap.add_argument("--work", default=".cache/videoring/detector_train")
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--imgsz", type=int, default=256)
    ap.add_argument("--train-clips", type=int, default=80)
    ap.add_argument("--val-clips", type=int, default=10)
    args = ap.parse_args()

    work = Path(args.work).resolve()
    data = work / "data"
    t0 = time.perf_counter()
    if not (data / "data.yaml").exists():
        shutil.rmtree(data, ignore_errors=True)
        n_tr = make_split(data, "train", range(1000, 1000 + args.train_clips), every_s=2.0)
        n_va = make_split(data, "val", range(5000, 5000 + args.val_clips), every_s=1.0)
        (data / "data.yaml").write_text(f"path: {data}\ntrain: images/train\nval: images/val\nnames:\n  0: actor\n")
        print(f"dataset: {n_tr} train / {n_va} val images in {time.perf_counter() - t0:.0f} s")

    ul = import_ultralytics()
    model = ul.YOLO("yolo26n.yaml", task="detect")  # architecture from the package: random init, no download
    t1 = time.perf_counter()
    model.train(
        data=str(data / "data.yaml"), epochs=args.epochs, imgsz=args.imgsz, batch=16, device="cpu", workers=2,
        project=str(work), name="run", exist_ok=True, plots=False, amp=False, seed=0, deterministic=True,
        mosaic=1.0, close_mosaic=3, fliplr=0.5, hsv_h=0.0, patience=100, verbose=False,
    )
    train_s = time.perf_counter() - t1
    best = work / "run" / "weights" / "best.pt"
    metrics = ul.YOLO(str(best)).val(data=str(data / "data.yaml"), imgsz=args.imgsz, device="cpu", plots=False, verbose=False)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(best, out)
    report = {
        "model": "yolo26n", "imgsz": args.imgsz, "epochs": args.epochs, "train_s": round(train_s, 1),
        "mAP50": round(float(metrics.box.map50), 4), "mAP50_95": round(float(metrics.box.map), 4),
        "size_mb": round(out.stat().st_size / 2**20, 2), "command": " ".join(sys.argv),
    }
    out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
