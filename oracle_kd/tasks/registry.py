"""Task registry: name → the function that runs one composed config, and the config section it owns.

A task is one decorated function; its options are a dataclass registered as a top-level section
(`bench.*`, `tune.*`, ...) whose defaults and validation live beside the task, as methods' do."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from oracle_kd.config import RunConfig, register_section
from oracle_kd.errors import choice

TaskFn = Callable[[RunConfig], Any]


@dataclass(frozen=True)
class Task:
    name: str
    fn: TaskFn
    summary: str
    section: str | None


_TASKS: dict[str, Task] = {}


def register_task(name: str, summary: str, *, section: str | None = None,
                  config: type | None = None) -> Callable[[TaskFn], TaskFn]:
    """Register `fn` as `task=<name>`; `section`/`config` declare the options it owns (`<section>.*`)."""
    if (section is None) != (config is None):
        raise ValueError("register_task: give both section and config, or neither")
    if section is not None:
        register_section(section, config)

    def deco(fn: TaskFn) -> TaskFn:
        _TASKS[name] = Task(name, fn, summary, section)
        return fn

    return deco


def available_tasks() -> list[str]:
    return list(_TASKS)


def task_entry(name: str) -> Task:
    choice("task", name, available_tasks())
    return _TASKS[name]
