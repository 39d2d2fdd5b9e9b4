"""Fresh weights as the reference code draws them, one function for every family: He et al.'s kaiming-normal
(fan_out) convolutions with zero bias and BatchNorm at weight 1, bias 0 (torchvision and mdistiller agree), and
the classifier as each reference leaves it."""

from __future__ import annotations

from torch import nn

LINEAR_INITS = ("default", "zero_bias", "small")


def init_weights(model: nn.Module, linear: str = "default") -> None:
    """linear: "default" keeps PyTorch's Linear init (torchvision's ResNets, mdistiller's resnet/resnetv2);
    "zero_bias" zeroes only its bias (mdistiller's WRN); "small" draws N(0, 0.01) with zero bias (its VGG and
    MobileNetV2). Modules are visited in order, so the random draws match the references' for one seed."""
    if linear not in LINEAR_INITS:
        raise ValueError(f"linear={linear!r} is not one of {LINEAR_INITS}")
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and linear != "default":
            if linear == "small":
                nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.zeros_(m.bias)
