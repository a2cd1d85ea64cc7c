"""Refuse pickled code in checkpoints before anything unpickles them.

Ultralytics ``.pt`` files are full pickles (the model object), which
``torch.load(weights_only=True)`` cannot read, and ultralytics loads them with
plain pickle. So videoring reads the pickle's opcodes first (no execution) and
allows only the globals such checkpoints are made of: torch storages and
``torch.nn`` modules, ultralytics' own modules, and a few containers. A file
that names anything else (``os.system``, ``builtins.eval``, ``subprocess``,
...) is refused with a one-line error.
"""

from __future__ import annotations

import pickletools
import zipfile
from pathlib import Path

from .errors import ConfigError

__all__ = ["pickle_globals", "check_yolo_checkpoint"]

_ALLOWED_PREFIXES = ("torch.nn.modules.", "ultralytics.nn.")
_ALLOWED = {
    ("torch", n) for n in ("Size", "device", "dtype", "float32", "float16", "bfloat16")
} | {
    ("torch._utils", n) for n in ("_rebuild_parameter", "_rebuild_tensor_v2", "_rebuild_parameter_with_state")
} | {
    ("collections", "OrderedDict"), ("__builtin__", "set"), ("builtins", "set"), ("__builtin__", "frozenset"),
    ("builtins", "frozenset"), ("ultralytics.utils", "IterableSimpleNamespace"), ("types", "SimpleNamespace"),
    ("argparse", "Namespace"), ("pathlib", "PosixPath"), ("pathlib", "WindowsPath"),
    ("numpy", "dtype"), ("numpy", "ndarray"), ("numpy.core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "scalar"),
    ("datetime", "datetime"), ("torch.serialization", "_get_layout"), ("torch", "strided"),
}


def _allowed(module: str, name: str) -> bool:
    if (module, name) in _ALLOWED:
        return True
    if module == "torch" and name.endswith("Storage"):
        return True
    return module.startswith(_ALLOWED_PREFIXES)


def pickle_globals(data: bytes) -> set[tuple[str, str]]:
    """Every (module, name) a pickle would import, found by reading opcodes only."""
    found: set[tuple[str, str]] = set()
    memo: dict[int, object] = {}
    stack: list[object] = []  # only what STACK_GLOBAL may consume matters: recent pushes
    for op, arg, _ in pickletools.genops(data):
        name = op.name
        if name == "GLOBAL":
            mod, _, attr = str(arg).partition(" ")
            found.add((mod, attr))
            stack.append(None)
        elif name == "STACK_GLOBAL":
            attr, mod = (stack.pop() if stack else None), (stack.pop() if stack else None)
            found.add((str(mod), str(attr)))
            stack.append(None)
        elif name in ("SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING", "BINSTRING", "STRING"):
            stack.append(arg)
        elif name == "MEMOIZE":
            memo[len(memo)] = stack[-1] if stack else None
        elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
            memo[int(arg)] = stack[-1] if stack else None
        elif name in ("GET", "BINGET", "LONG_BINGET"):
            stack.append(memo.get(int(arg)))
        else:
            stack.append(None)
            if len(stack) > 64:
                del stack[:32]
    return found


def check_yolo_checkpoint(path: str | Path) -> None:
    p = Path(path)
    try:
        with zipfile.ZipFile(p) as z:
            pkls = [n for n in z.namelist() if n.endswith(".pkl")]
            if not pkls:
                raise ConfigError(f"{p}: not a torch checkpoint (no pickle inside the archive)")
            bad = sorted({g for n in pkls for g in pickle_globals(z.read(n)) if not _allowed(*g)})
    except zipfile.BadZipFile:
        raise ConfigError(f"{p}: not a torch zip checkpoint; give a .pt saved by ultralytics (or an ONNX/OpenVINO export)") from None
    except (ValueError, EOFError) as e:
        raise ConfigError(f"{p}: corrupt checkpoint ({e})") from None
    if bad:
        shown = ", ".join(f"{m}.{n}" for m, n in bad[:3])
        raise ConfigError(f"{p}: refused: the checkpoint would run code it should not need ({shown}); "
                          "only load checkpoints you trust, or re-export the weights")
