"""Name -> model factory registry, so configs pick architectures by string and new families plug in."""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from typing import Any

from torch import nn

from oracle_kd.errors import ConfigError

ModelFactory = Callable[..., nn.Module]
"""A factory ``f(num_classes, in_channels, **options) -> nn.Module``; its keyword parameters after the
first two are the options it accepts (e.g. ``image_size``, ``stem``)."""

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


# The order families appear in tables and plots (a family is the module that registers it): the CIFAR benchmark's
# families first, as its papers list them, then the ImageNet layouts, the MLPs and the explaining models.
FAMILY_ORDER = ("cifar_resnet", "wrn", "vgg", "resnet_c", "mobilenetv2", "shufflenet", "resnet", "mlp", "sfx")


def model_family(name: str) -> str:
    """The family of a registered model: the last part of the module that registers it (`cifar_resnet`, `wrn`)."""
    return _factory(name).__module__.rsplit(".", 1)[-1]


def models_in_table_order() -> list[str]:
    """Registered models by family (FAMILY_ORDER, unknown families last), then in the order their family registers
    them (shallow to deep): the order of the tables' rows and the plots' axes."""
    names = list(_REGISTRY)

    def key(name: str) -> tuple[int, int]:
        family = model_family(name)
        rank = FAMILY_ORDER.index(family) if family in FAMILY_ORDER else len(FAMILY_ORDER)
        return rank, names.index(name)

    return sorted(names, key=key)


def available_models() -> list[str]:
    """Registered model names in natural order (resnet8 before resnet14), for readable messages."""
    return sorted(_REGISTRY, key=_natural_key)


def model_options(name: str) -> list[str]:
    """The options ``name``'s factory accepts, read from its signature so a family declares them once."""
    params = list(inspect.signature(_factory(name)).parameters.values())[2:]
    return [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def _factory(name: str) -> ModelFactory:
    factory = _REGISTRY.get(name)
    if factory is None:
        raise ConfigError(f"unknown model {name!r}; choose one of: {', '.join(available_models())}")
    return factory


def build_model(name: str, num_classes: int, in_channels: int = 3, **options: Any) -> nn.Module:
    """Build a freshly initialised model, forwarding ``options`` (e.g. ``image_size=64``) to its factory.

    An unknown name or an option the family does not take is a one-line ``ConfigError`` rather than a
    TypeError from deep inside a factory.
    """
    factory = _factory(name)
    accepted = model_options(name)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ConfigError(f"model {name!r} does not take option(s) {', '.join(unknown)}; "
                          f"it takes: {', '.join(accepted) or 'none'}")
    return factory(num_classes, in_channels, **options)
