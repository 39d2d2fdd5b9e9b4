"""Model zoo: importing this package registers every architecture with the registry."""

from oracle_kd.core.features import Features
from oracle_kd.models import cifar_resnet as _cifar_resnet  # noqa: F401  (registers models)
from oracle_kd.models import mlp as _mlp  # noqa: F401  (registers models)
from oracle_kd.models import mobilenetv2 as _mobilenetv2  # noqa: F401  (registers models)
from oracle_kd.models import resnet as _resnet  # noqa: F401  (registers models)
from oracle_kd.models import resnet_c as _resnet_c  # noqa: F401  (registers models)
from oracle_kd.models import sfx as _sfx  # noqa: F401  (registers models)
from oracle_kd.models import shufflenet as _shufflenet  # noqa: F401  (registers models)
from oracle_kd.models import vgg as _vgg  # noqa: F401  (registers models)
from oracle_kd.models import wrn as _wrn  # noqa: F401  (registers models)
from oracle_kd.models.registry import (
    available_models,
    build_model,
    model_family,
    model_options,
    models_in_table_order,
    register_model,
)
from oracle_kd.models.sfx import PLAIN_OF


def plain_counterpart(arch: str) -> str:
    """The plain model an explaining model (`sfx*`) is matched to; any other model is its own."""
    return PLAIN_OF.get(arch, arch)


__all__ = ["Features", "available_models", "build_model", "model_family", "model_options", "models_in_table_order",
           "plain_counterpart", "register_model"]
