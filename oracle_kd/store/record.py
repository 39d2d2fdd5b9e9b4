"""What a run folder holds, and the schema of result.json (the record that marks a run finished).

Layout of a run folder: config.json (semantic + full config), metrics.jsonl (one row per epoch),
last.pt (everything needed to resume), model.pt (final student weights) and, written last,
result.json — its presence is what "finished" means.
"""

from __future__ import annotations

import dataclasses
import functools
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

RESULT = "result.json"
METRICS = "metrics.jsonl"
CHECKPOINT = "last.pt"
MODEL = "model.pt"
CONFIG = "config.json"
REQUIRED = ("run_id", "status", "dataset", "method", "student", "seed", "best_top1", "last_top1", "semantic")


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """`git:<commit>` (with `+dirty` for uncommitted changes) when the package runs from a git checkout,
    else `oracle-kd <version>` of the installed package: which code produced a record."""
    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
        if commit:
            return f"git:{commit}{'+dirty' if dirty else ''}"
    except (OSError, subprocess.SubprocessError):
        pass
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"oracle-kd {version('oracle-kd')}"
    except PackageNotFoundError:
        return "unknown"


@dataclass
class RunResult:
    """result.json. Readers (the aggregator) rely on the REQUIRED keys; the rest is context."""

    run_id: str
    status: str
    folder: str
    dataset: str
    method: str
    student: str
    teacher: Optional[str]
    seed: int
    best_top1: float
    best_top5: float
    best_epoch: int
    last_top1: float
    last_top5: float
    last_test_loss: float
    epochs: int
    wall_time_s: float
    extra_params: int
    train_images_per_s: float
    teacher_info: Optional[dict[str, Any]]
    semantic: dict[str, Any]
    config: dict[str, Any]
    device: str
    world_size: int
    sync_bn: Optional[bool]
    torch_version: str
    finished_at: str
    cohort: Optional[dict[str, Any]] = None  # {"size": runs trained together, "time_share": this run's share}
    code_version: str = dataclasses.field(default_factory=code_version)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
