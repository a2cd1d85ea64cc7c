"""Exported detectors (ONNX Runtime, OpenVINO), made once from the user's ``.pt`` and cached.

Ultralytics exports both offline. The export is keyed by the checkpoint's
content hash, the format, the image size and the batch (static shapes run
fastest on CPU; ultralytics pads a short last batch), and lives in
``~/.cache/videoring/exports`` -- never beside the user's weights. PyTorch
stays the fallback: ``track.export=none``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from .errors import ConfigError

__all__ = ["exported_detector"]


def _cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "videoring" / "exports"


def exported_detector(pt: str | Path, fmt: str, imgsz: int | tuple[int, int], batch: int) -> Path:
    """Path of the exported model (an .onnx file or an *_openvino_model dir), exporting on first use."""
    pt = Path(pt)
    h = hashlib.blake2b(pt.read_bytes(), digest_size=12).hexdigest()
    shape = "x".join(map(str, imgsz)) if isinstance(imgsz, tuple) else str(imgsz)
    work = _cache_root() / f"{pt.stem}-{h}-{fmt}-{shape}-b{batch}"
    target = work / (f"{pt.stem}.onnx" if fmt == "onnx" else f"{pt.stem}_openvino_model")
    if target.exists():
        return target
    from .checkpoint import check_yolo_checkpoint
    from .yolo import import_ultralytics, restore_threads

    check_yolo_checkpoint(pt)
    import torch

    threads = torch.get_num_threads()
    ul = import_ultralytics()
    tmp = work.with_name(work.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    shutil.copyfile(pt, tmp / pt.name)
    try:
        out = ul.YOLO(str(tmp / pt.name), task="detect").export(
            format=fmt, imgsz=list(imgsz) if isinstance(imgsz, tuple) else imgsz, batch=batch, dynamic=False, half=False, device="cpu", verbose=False
        )
    except Exception as e:  # missing onnx/openvino packages, converter failures
        shutil.rmtree(tmp, ignore_errors=True)
        raise ConfigError(f"track.export={fmt}: exporting {pt} failed ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                          f"install openvino (or the 'onnx' extra for track.export=onnx) or set track.export=none") from None
    finally:
        restore_threads(threads)
    (tmp / pt.name).unlink(missing_ok=True)
    if work.exists():  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        tmp.rename(work)
    made = work / Path(out).name
    return made if made.exists() else target
