"""Distillation methods, one file each, behind the `Distiller` interface.

Importing this package imports every method module in it, which registers the method (and its config
schema); a new method is one new file here plus one yaml in conf/method/.
"""

import importlib
import pkgutil

from oracle_kd.core.losses import kd_loss
from oracle_kd.methods.base import Distiller, MethodConfig, freeze, probe_features
from oracle_kd.methods.registry import (
    MethodInfo,
    available_methods,
    build_distiller,
    method_entry,
    method_info,
    methods_in_table_order,
    register_method,
)

_INFRASTRUCTURE = {"base", "registry"}
for _module in pkgutil.iter_modules(__path__):
    if _module.name not in _INFRASTRUCTURE:
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["Distiller", "MethodConfig", "freeze", "probe_features", "kd_loss", "available_methods",
           "build_distiller", "method_entry", "method_info", "methods_in_table_order", "MethodInfo", "register_method"]
