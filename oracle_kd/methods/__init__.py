"""Distillation methods, one file each, behind the `Distiller` interface.

Importing this package registers every method.
"""

from oracle_kd.methods import ce, kd, oracle  # noqa: F401  (registration side effect)
from oracle_kd.methods.base import Distiller, MethodConfig, freeze
from oracle_kd.methods.losses import kd_loss
from oracle_kd.methods.registry import available_methods, build_distiller, method_entry, register_method

__all__ = ["Distiller", "MethodConfig", "freeze", "kd_loss", "available_methods", "build_distiller",
           "method_entry", "register_method"]
