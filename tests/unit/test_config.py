"""Configs mirror the code: every default has one home (the dataclass); the yaml files under conf/ that
show a schema's defaults agree with it key for key; teacher/student options come from the model registry;
`--help` lists the user's options only."""

from __future__ import annotations

import dataclasses

import pytest
from omegaconf import OmegaConf

import oracle_kd.tasks  # noqa: F401  (registers every task and its section)
from oracle_kd.cli import help_text
from oracle_kd.config import CONF_DIR, HardwareConfig, TrainConfig, group_options, sections
from oracle_kd.methods import available_methods, method_entry
from oracle_kd.models import available_models


def _yaml(path) -> dict:
    data = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    data.pop("defaults", None)
    return data


@pytest.mark.parametrize("name", sorted(sections()))
def test_section_yaml_shows_the_dataclass_defaults(name: str) -> None:
    assert _yaml(CONF_DIR / name / "default.yaml") == dataclasses.asdict(sections()[name]())


@pytest.mark.parametrize("name", available_methods())
def test_method_yaml_agrees_with_the_dataclass_defaults(name: str) -> None:
    """conf/method/<name>.yaml documents the method; each value it shows is the schema's default."""
    _, cfg_cls = method_entry(name)
    shown = _yaml(CONF_DIR / "method" / f"{name}.yaml")
    defaults = dataclasses.asdict(cfg_cls())
    assert set(shown) <= set(defaults) and shown == {k: defaults[k] for k in shown}


def test_the_default_train_preset_is_the_schema() -> None:
    assert _yaml(CONF_DIR / "train" / "paper.yaml") == dataclasses.asdict(TrainConfig())


@pytest.mark.parametrize("preset", group_options("hardware"))
def test_hardware_presets_change_only_what_they_list(preset: str) -> None:
    """Presets start from HardwareConfig and list only differences (device always, for clarity)."""
    data = _yaml(CONF_DIR / "hardware" / f"{preset}.yaml")
    defaults = dataclasses.asdict(HardwareConfig())
    assert set(data) <= set(defaults)
    assert all(v != defaults[k] for k, v in data.items() if k != "device"), data


def test_teacher_and_student_options_are_the_model_registry() -> None:
    assert group_options("teacher") == group_options("student") == available_models()
    assert not (CONF_DIR / "teacher").exists() and not (CONF_DIR / "student").exists()


def test_help_lists_user_options_only() -> None:
    text = help_text()
    assert "_schema" not in text
    for option in [*available_methods(), "oracle_paper", "resnet56", "quick", "gpu", "cifar100"]:
        assert option in text
    for task in ("train", "plan", "tables", "analyze", "tune", "bench"):
        assert f"  {task} " in text


def test_the_ked_papers_kd_baseline_is_a_preset_of_kd() -> None:
    """(1 − λ)·CE + λ·T²·KL with λ = 0.7 and T = 10 is KD with ce_weight 0.3, alpha 0.7, temperature 10."""
    from oracle_kd.cli import compose

    m = compose(["method=kd_ked"]).method
    assert (m.name, m.ce_weight, m.alpha, m.temperature) == ("kd", 0.3, 0.7, 10.0)


@pytest.mark.parametrize("table, override, plain", [
    ("ce_weight_by_teacher", "+method.ce_weight_by_teacher.resnet56=0.3", ["method=oracle", "method.ce_weight=0.3"]),
    ("beta_by_pair", "++method.beta_by_pair={resnet56-resnet20: 2.0}", ["method=dkd", "method.beta=2.0"]),
])
def test_a_per_teacher_table_can_be_given_on_the_command_line(table, override, plain) -> None:
    """The tables compose as empty dicts (Hydra cannot merge into None), become None once built, and are resolved
    before the run's identity: a table entry is the same run as the plain option it sets."""
    from oracle_kd.cli import compose
    from oracle_kd.engine.teacher import identify

    via_table, direct = compose([plain[0], override]), compose(plain)
    assert getattr(via_table.method, table) is None and via_table.method == direct.method
    assert identify(via_table)[1] == identify(direct)[1]
    assert getattr(method_entry(plain[0].split("=")[1])[1](), table) is None  # a fresh config: no table
