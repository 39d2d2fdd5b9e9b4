"""Name -> model factory registry, so configs pick architectures by string and new families plug in."""

from __future__ import annotations

import re
from collections.abc import Callable

from torch import nn

from oracle_kd.errors import ConfigError

ModelFactory = Callable[[int, int], nn.Module]
"""A factory ``f(num_classes, in_channels) -> nn.Module``."""

_REGISTRY: dict[str, ModelFactory] = {}


def register_model(name: str) -> Callable[[ModelFactory], ModelFactory]:
    """Register ``factory`` under ``name``; a duplicate name is a programming error, so it raises."""

    def decorator(factory: ModelFactory) -> ModelFactory:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered")
        _REGISTRY[name] = factory
        return factory

    return decorator


def _natural_key(name: str) -> list[int | str]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def available_models() -> list[str]:
    """Registered model names in natural order (resnet8 before resnet14), for readable messages."""
    return sorted(_REGISTRY, key=_natural_key)


def build_model(name: str, num_classes: int, in_channels: int = 3) -> nn.Module:
    """Build a freshly initialised model; an unknown name is a one-line ``ConfigError``."""
    factory = _REGISTRY.get(name)
    if factory is None:
        raise ConfigError(f"unknown model {name!r}; choose one of: {', '.join(available_models())}")
    return factory(num_classes, in_channels)
