"""Method registry: name → (Distiller class, config dataclass)."""

from __future__ import annotations

from typing import Callable

from torch import nn

from oracle_kd.core.batch import DataInfo
from oracle_kd.errors import ConfigError
from oracle_kd.methods.base import Distiller, MethodConfig

_METHODS: dict[str, tuple[type[Distiller], type[MethodConfig]]] = {}


def register_method(name: str, config_cls: type[MethodConfig]) -> Callable[[type[Distiller]], type[Distiller]]:
    def deco(cls: type[Distiller]) -> type[Distiller]:
        _METHODS[name] = (cls, config_cls)
        return cls

    return deco


def available_methods() -> list[str]:
    return sorted(_METHODS)


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
