"""Method registry: name → (Distiller class, config dataclass), and what tables and docs say about each method.

The registry is the one home of a method's name and of its facts (paper, year, reference code): the tables' row
order, the README's method table (checked by a test), the bench preset of every method and the test lists read them
from here, so adding a method is one decorated definition (plus its yaml and its test).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

from oracle_kd.core.batch import DataInfo
from oracle_kd.errors import ConfigError
from oracle_kd.methods.base import Distiller, MethodConfig


@dataclass(frozen=True)
class MethodInfo:
    """What a reader needs to place a method: `paper` ("Authors, Venue Year"; empty for plain training), its
    `year` (the tables order methods by it), the `code` it follows ("owner/repo: path"), and whether it is this
    project's own paper's method (`ours`: listed after the baselines)."""

    paper: str = ""
    year: int = 0
    code: str = ""
    ours: bool = False


_METHODS: dict[str, tuple[type[Distiller], type[MethodConfig]]] = {}
_INFO: dict[str, MethodInfo] = {}


def register_method(name: str, config_cls: type[MethodConfig], *, paper: str = "", year: int = 0, code: str = "",
                    ours: bool = False) -> Callable[[type[Distiller]], type[Distiller]]:
    """Register a Distiller under `name`; a duplicate name is a programming error, so it raises."""

    def deco(cls: type[Distiller]) -> type[Distiller]:
        if name in _METHODS:
            raise ValueError(f"method {name!r} is already registered (by {_METHODS[name][0].__qualname__})")
        _METHODS[name] = (cls, config_cls)
        _INFO[name] = MethodInfo(paper, year, code, ours)
        return cls

    return deco


def available_methods() -> list[str]:
    return sorted(_METHODS)


def method_info(name: str) -> MethodInfo:
    method_entry(name)
    return _INFO[name]


def methods_in_table_order() -> list[str]:
    """Plain training first, then the baselines by year (then name), then this project's own methods: the order of
    the tables' rows and of the README's method table."""
    def key(name: str) -> tuple[int, int, str]:
        info = _INFO[name]
        return (2 if info.ours else 0 if not info.paper else 1, info.year, name)

    return sorted(_METHODS, key=key)


def method_entry(name: str) -> tuple[type[Distiller], type[MethodConfig]]:
    if name not in _METHODS:
        raise ConfigError(f"unknown method {name!r}; choose one of: {', '.join(available_methods())}")
    return _METHODS[name]


def build_distiller(cfg: MethodConfig, student: nn.Module, teacher: nn.Module | None,
                    input_shape: tuple[int, ...] | None = None, data: DataInfo | None = None) -> Distiller:
    """The method's Distiller. Build it after the models are on their device: extras built from a shape
    probe are created on the student's device."""
    cls, _ = method_entry(cfg.name)
    if cls.needs_teacher and teacher is None:
        raise ConfigError(f"method {cfg.name!r} needs a teacher")
    return cls(student, teacher if cls.needs_teacher else None, cfg, input_shape, data)
