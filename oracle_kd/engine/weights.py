"""Loading model weights from checkpoints other tools wrote, safely and with clear errors."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from oracle_kd.errors import CheckpointError, reason

WRAPPER_KEYS = ("model", "state_dict", "net")
# the global a weights_only refusal names: "Unsupported global: GLOBAL x.y was not an allowed global ..." or, for a
# module torch blocks outright (os, posix, subprocess, ...), "Trying to load unsupported GLOBAL x.y whose module x ..."
_REFUSED_GLOBAL = re.compile(r"GLOBAL ([\w.]+) (?:was not an allowed global|whose module)")
# where torch's refusals go on to advise loading with weights_only=False, in the wordings of its versions
_ADVICE = re.compile(r"\s*(?:In PyTorch [\d.]+, we changed|Re-running `torch\.load`|This file can still be loaded).*",
                     re.S)


def _allowed_globals() -> list[Any]:
    """What mdistiller/CRD checkpoints hold besides tensors: their `argparse.Namespace` of options and
    numpy scalars (best accuracy, ...). Exactly these are admitted to weights_only loading, under both
    numpy 1 (`numpy.core`) and numpy 2 (`numpy._core`) names; anything else is still refused."""
    import argparse

    import numpy as np

    scalar = np.float64(0).__reduce__()[0]  # numpy's scalar reconstructor, whichever module it lives in
    dtype_classes = {type(np.dtype(t)) for t in ("bool", "int8", "int16", "int32", "int64", "uint8", "uint16",
                                                  "uint32", "uint64", "float16", "float32", "float64")}
    return [argparse.Namespace, np.dtype, scalar, (scalar, "numpy.core.multiarray.scalar"),
            (scalar, "numpy._core.multiarray.scalar"), *sorted(dtype_classes, key=lambda c: c.__name__)]


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A plain state_dict from a file: accepts `{"model"|"state_dict"|"net": ...}` wrappers (mdistiller,
    CRD, torchvision weight files) and strips DataParallel's `module.` prefixes. Always
    `weights_only=True`: a checkpoint never runs code."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"teacher checkpoint {str(path.resolve())!r} does not exist; "
                              "give a state_dict file, or teacher.checkpoint=auto to use/train one in the store")
    try:
        with torch.serialization.safe_globals(_allowed_globals()):
            obj: Any = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise _unreadable(path, exc) from None
    if isinstance(obj, dict):
        for key in WRAPPER_KEYS:
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"checkpoint {str(path)!r} holds no state_dict (expected a dict of tensors, "
                              f"or one under {'/'.join(WRAPPER_KEYS)})")
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in obj.items()}


def _unreadable(path: Path, exc: BaseException) -> CheckpointError:
    """The one line for a checkpoint torch.load(weights_only=True) would not read. torch's own message advises
    weights_only=False, which would let the file run the code it names; this tool never unpickles an untrusted
    file, so the line names the global that was refused, and why, or gives torch's reason without that advice."""
    refused = _REFUSED_GLOBAL.search(str(exc))
    if refused:
        return CheckpointError(
            f"checkpoint {str(path)!r} is refused: it needs the global {refused.group(1)}, and checkpoints are read "
            "with weights_only=True, admitting tensors, argparse.Namespace and numpy scalars only, since any other "
            "global could run code from the file; save just the model's state_dict where the file was made")
    cause = _ADVICE.sub("", reason(exc)).strip()
    return CheckpointError(f"cannot read checkpoint {str(path)!r} with weights_only=True: {cause}")


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], *, source: str, arch: str) -> None:
    """Load strictly, or raise one line that names what does not fit (keys, shapes, class count)."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
              if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = []
        if shapes:
            parts.append(f"shape mismatch (checkpoint vs model): {'; '.join(shapes[:3])}"
                         + (f" and {len(shapes) - 3} more" if len(shapes) > 3 else ""))
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:3])})")
        raise CheckpointError(f"checkpoint {source} does not fit {arch} "
                              f"({getattr(model, 'num_classes', '?')} classes): {'; '.join(parts)}")
    model.load_state_dict(state, strict=True)
