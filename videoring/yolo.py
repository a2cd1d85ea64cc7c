"""Ultralytics, imported the offline-safe way.

Ultralytics reads its settings when it is first imported: without these it
may try the network (font downloads for plots, pip auto-installs of missing
packages, hub checks). :func:`import_ultralytics` applies them before the
import and undoes the thread clamp the import makes (it sets
``OMP_NUM_THREADS=1`` and each predictor calls ``torch.set_num_threads``),
which would otherwise slow every torch op in the process, the ViT included.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from types import ModuleType

import torch

from .errors import ConfigError

__all__ = ["import_ultralytics", "load_detector", "restore_threads", "untimed_predictor"]

_FONTS = ("Arial.ttf", "Arial.Unicode.ttf")


def _config_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "videoring" / "ultralytics"


def _offline_env(allow_download: bool) -> None:
    cfg = Path(os.environ.get("YOLO_CONFIG_DIR") or _config_dir())
    cfg.mkdir(parents=True, exist_ok=True)
    os.environ["YOLO_CONFIG_DIR"] = str(cfg)
    os.environ["YOLO_AUTOINSTALL"] = "false"  # never pip-install at run time
    if not allow_download:
        os.environ["YOLO_OFFLINE"] = "1"
    _no_openvino_telemetry()  # never: the OpenVINO export would otherwise report usage online
    # plotting/labelling code downloads Arial.ttf when it is missing: give it a local font
    import matplotlib

    src = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    for name in _FONTS:
        if not (cfg / name).exists() and src.exists():
            shutil.copyfile(src, cfg / name)


def _no_openvino_telemetry() -> None:
    """OpenVINO's model converter sends usage telemetry (Google Analytics) unless told otherwise.

    Hiding the optional ``openvino_telemetry`` package makes the converter use its
    built-in no-op stub, in this process only (nothing written to the user's home).
    """
    import sys

    sys.modules["openvino_telemetry"] = None  # type: ignore[assignment]  (import now raises ImportError)
    for name in ("openvino.tools.ovc.telemetry_utils", "openvino.tools.ovc.convert_impl", "openvino.tools.ovc.utils",
                 "openvino.tools.ovc.main"):
        mod = sys.modules.get(name)
        if mod is not None and hasattr(mod, "tm"):
            import openvino.tools.ovc.telemetry_stub as stub

            mod.tm = stub


def restore_threads(n: int) -> None:
    """Set torch's intra-op threads back after an ultralytics call clamped them."""
    if n > 0 and torch.get_num_threads() != n:
        torch.set_num_threads(n)


def import_ultralytics(allow_download: bool = False) -> ModuleType:
    threads = torch.get_num_threads()
    omp = os.environ.get("OMP_NUM_THREADS")
    _offline_env(allow_download)
    import ultralytics

    restore_threads(threads)
    if omp is None:
        os.environ.pop("OMP_NUM_THREADS", None)
    else:
        os.environ["OMP_NUM_THREADS"] = omp
    return ultralytics


def load_detector(weights: str, allow_download: bool = False):
    """A YOLO model from a local ``.pt``/export, a ``.yaml`` (random init) or, opted in, a hub name."""
    p = Path(weights)
    local = p.exists()
    if not local and p.suffix != ".yaml" and not allow_download:
        raise ConfigError(
            f"track.detector: {weights!r} is not a local file; give a .pt path, a model .yaml, "
            "or set track.allow_download=true to fetch a named model"
        )
    if p.suffix == ".pt" and local:
        _refuse_pickle_payload(p)
    ul = import_ultralytics(allow_download)
    try:
        return ul.YOLO(str(weights), task="detect")
    except Exception as e:  # ultralytics raises many kinds for a bad file
        raise ConfigError(f"track.detector: cannot load {weights!r} ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None


def _refuse_pickle_payload(path: Path) -> None:
    """Ultralytics loads .pt checkpoints with full pickle: refuse foreign globals before it does."""
    from .checkpoint import check_yolo_checkpoint

    check_yolo_checkpoint(path)


def untimed_predictor(allow_download: bool = False) -> type:
    """ultralytics' detection predictor, with its NMS time limit lifted.

    ``non_max_suppression`` stops after ``2 + 0.05 * batch`` seconds and returns no boxes for
    the batch's remaining frames (one warning line). On a loaded machine (another job on the
    cores) a 16-frame batch can take that long, and frames would silently lose every actor:
    results would depend on the machine's load. Pass as ``model.predict(predictor=...)``."""
    import_ultralytics(allow_download)
    from ultralytics.models.yolo.detect import DetectionPredictor
    from ultralytics.utils import nms

    class UntimedPredictor(DetectionPredictor):
        def postprocess(self, preds, img, orig_imgs, **kwargs):
            timed = nms.non_max_suppression

            def untimed(*args, **kw):
                return timed(*args, **{**kw, "max_time_img": float("inf")})

            # the predictor calls nms.non_max_suppression by module attribute: swap it for this call
            nms.non_max_suppression = untimed
            try:
                return super().postprocess(preds, img, orig_imgs, **kwargs)
            finally:
                nms.non_max_suppression = timed

    return UntimedPredictor
