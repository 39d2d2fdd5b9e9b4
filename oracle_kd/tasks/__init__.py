"""Tasks, one module (or package) each, registered with `register_task`.

Importing this package imports every task module, which registers the task and its config section, and
then registers the complete config schema with Hydra. No task imports another task's module."""

import importlib
import pkgutil

from oracle_kd.config import register_configs
from oracle_kd.tasks.registry import Task, available_tasks, register_task, task_entry

_ORDER = ("train", "tables", "analyze", "tune", "bench")  # the order `--help` lists them in
for _name in sorted((m.name for m in pkgutil.iter_modules(__path__) if m.name != "registry"),
                    key=lambda n: (_ORDER.index(n) if n in _ORDER else len(_ORDER), n)):
    importlib.import_module(f"{__name__}.{_name}")
register_configs()

__all__ = ["Task", "available_tasks", "register_task", "task_entry"]
