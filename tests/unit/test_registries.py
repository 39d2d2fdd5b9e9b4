"""The registries are the one home of names and order: a duplicate name raises, every method carries the facts the
tables and the README read (paper, year, reference code), and the tables' orders come from them."""

from __future__ import annotations

import pytest
from torch import nn

from oracle_kd.methods import available_methods, method_entry, method_info, methods_in_table_order, register_method
from oracle_kd.methods.base import Distiller, MethodConfig
from oracle_kd.models import available_models, models_in_table_order, register_model


def test_a_method_name_registered_twice_raises() -> None:
    with pytest.raises(ValueError, match="method 'kd' is already registered"):
        register_method("kd", MethodConfig)(type("AnotherKD", (Distiller,), {"forward_train": lambda *a: None}))
    assert method_entry("kd")[0].__name__ == "KD"  # the first registration stands


def test_a_model_name_registered_twice_raises() -> None:
    with pytest.raises(ValueError, match="model 'resnet20' is already registered"):
        register_model("resnet20")(lambda num_classes, in_channels: nn.Linear(1, 1))


@pytest.mark.parametrize("name", available_methods())
def test_every_method_says_its_paper_year_and_code(name: str) -> None:
    info = method_info(name)
    if name == "ce":  # plain training: no paper, listed first
        assert info.paper == "" and methods_in_table_order()[0] == "ce"
        return
    assert info.paper and info.code and 2014 <= info.year <= 2026
    assert str(info.year) in info.paper  # the year the tables order by is the one the paper line shows


def test_the_table_orders_come_from_the_registries() -> None:
    methods = methods_in_table_order()
    assert sorted(methods) == available_methods() and methods[-1] == "oracle"  # this project's method last
    years = [method_info(m).year for m in methods if m != "ce" and not method_info(m).ours]
    assert years == sorted(years)
    models = models_in_table_order()
    assert sorted(models) == sorted(available_models())
    # the CIFAR families of the benchmark first, each shallow to deep; the ImageNet layouts after them
    assert models.index("resnet20") < models.index("resnet110") < models.index("wrn_16_2") < models.index("vgg8")
    assert models.index("vgg13") < models.index("mobilenetv2") < models.index("resnet18")
