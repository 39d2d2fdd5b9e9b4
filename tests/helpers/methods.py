"""Every registered method, configured for a plain teacher-student pair (what the zoo and step tests build)."""

from __future__ import annotations

from oracle_kd.methods import method_entry
from oracle_kd.methods.base import MethodConfig

# KED needs superfeature-explaining models; on a plain pair it is the paper's KD+X baseline (FitNet's regressor)
ON_PLAIN_MODELS = {"ked": {"baseline": True, "feature": "fitnet"}}


def plain_pair_config(method: str) -> MethodConfig:
    """The method's default config, with the options that make it run on plain (non-explaining) models."""
    return method_entry(method)[1](**ON_PLAIN_MODELS.get(method, {}))
