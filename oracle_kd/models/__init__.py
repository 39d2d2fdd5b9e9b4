"""Model zoo: importing this package registers every architecture with the registry."""

from oracle_kd.core.features import Features
from oracle_kd.models import cifar_resnet as _cifar_resnet  # noqa: F401  (registers models)
from oracle_kd.models import resnet as _resnet  # noqa: F401  (registers models)
from oracle_kd.models.registry import available_models, build_model, model_options, register_model

__all__ = ["Features", "available_models", "build_model", "model_options", "register_model"]
