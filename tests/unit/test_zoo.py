"""The CIFAR model zoo of the standard KD benchmark: mdistiller's exact parameter counts, its checkpoint layout loaded
strictly, and every method taking a step on one pair per family. (Every registered model's forward, backward and
Features contract on 32x32 RGB and 8x8 digits: test_contracts.py; BN folding: test_fold.py.)

The key/shape fixtures (tests/helpers/mdistiller_keys/*.json) and the counts were produced by running mdistiller's
own model definitions at 100 classes; family files (test_zoo_<family>.py) check each family's stage shapes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from helpers.methods import batch_of, plain_pair_config, refuses, tiny_data
from oracle_kd.engine.weights import load_weights, read_state_dict
from oracle_kd.errors import ConfigError
from oracle_kd.methods import available_methods, build_distiller, method_entry
from oracle_kd.models import build_model

KEYS = Path(__file__).resolve().parents[1] / "helpers" / "mdistiller_keys"

# exact parameter counts at 100 classes (mdistiller's definitions; its published M values in the comments)
PARAMS = {
    "wrn_16_1": 180_916,  # 0.181M
    "wrn_16_2": 703_284,  # 0.703M
    "wrn_40_1": 569_780,  # 0.570M
    "wrn_40_2": 2_255_156,  # 2.255M
    "vgg8": 3_965_028,  # 3.965M
    "vgg11": 9_277_284,  # 9.277M
    "vgg13": 9_462_180,  # 9.462M
    "vgg16": 14_774_436,  # 14.774M
    "vgg19": 20_086_692,  # 20.087M
    "mobilenetv2": 812_836,  # 0.813M (mdistiller's mobile_half)
    "shufflenetv1": 949_258,  # 0.949M
    "shufflenetv2": 1_355_528,  # 1.356M
    "resnet18c": 11_220_132,  # 11.220M
    "resnet50c": 23_705_252,  # 23.705M
}
PUBLISHED_M = {"wrn_16_1": 0.181, "wrn_16_2": 0.703, "wrn_40_1": 0.570, "wrn_40_2": 2.255, "vgg8": 3.965,
               "vgg11": 9.277, "vgg13": 9.462, "vgg16": 14.774, "vgg19": 20.087, "mobilenetv2": 0.813,
               "shufflenetv1": 0.949, "shufflenetv2": 1.356, "resnet18c": 11.220, "resnet50c": 23.705}
# mdistiller's released CIFAR-100 teachers: its name -> ours
RELEASED_TEACHERS = {"resnet56": "resnet56", "resnet110": "resnet110", "resnet32x4": "resnet32x4",
                     "ResNet50": "resnet50c", "wrn_40_2": "wrn_40_2", "vgg13": "vgg13"}
# one pair per family, the benchmark's cross-family pairs among them
PAIRS = [("wrn_40_2", "wrn_16_2"), ("vgg13", "vgg8"), ("vgg13", "mobilenetv2"), ("resnet50c", "mobilenetv2"),
         ("resnet32x4", "shufflenetv1"), ("resnet32x4", "shufflenetv2"), ("wrn_40_2", "shufflenetv1"),
         ("resnet18c", "resnet18c"), ("resnet56", "resnet20")]


def _n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _layout(arch: str) -> dict[str, list[int]]:
    path = KEYS / f"{arch}.json"
    return json.loads(path.read_text()) if path.exists() else {}


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_parameter_count_is_mdistillers(name: str) -> None:
    n = _n_params(build_model(name, 100, 3))
    assert n == PARAMS[name] and round(n / 1e6, 3) == PUBLISHED_M[name]


@pytest.mark.parametrize("theirs,ours", sorted(RELEASED_TEACHERS.items()))
def test_a_released_teacher_checkpoint_loads_strictly(theirs: str, ours: str, tmp_path: Path) -> None:
    """A `{"model": state_dict, ...}` file in mdistiller's exact key layout loads through the teacher path."""
    model = build_model(ours, 100, 3)
    layout = _layout(ours)
    assert layout and {k: list(v.shape) for k, v in model.state_dict().items()} == layout
    torch.manual_seed(0)
    state = {k: torch.zeros((), dtype=torch.long) if k.endswith("num_batches_tracked") else torch.randn(shape)
             for k, shape in layout.items()}
    path = tmp_path / f"{theirs}_vanilla.pth"
    torch.save({"model": state, "best_acc": 70.0, "epoch": 240}, path)
    load_weights(model, read_state_dict(path), source=str(path), arch=ours)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("name", sorted(p.stem for p in KEYS.glob("*.json")))
def test_state_dict_layout_is_mdistillers(name: str) -> None:
    assert {k: list(v.shape) for k, v in build_model(name, 100, 3).state_dict().items()} == _layout(name)


@pytest.mark.parametrize("teacher,student", PAIRS)
@pytest.mark.parametrize("method", available_methods())
def test_every_method_takes_a_step_on_each_family_pair(teacher: str, student: str, method: str) -> None:
    torch.manual_seed(0)
    t, s = build_model(teacher, 100, 3), build_model(student, 100, 3)
    if refuses(method, teacher, student):
        with pytest.raises(ConfigError, match=f"method={method}: "):
            build_distiller(plain_pair_config(method), s, t, data=tiny_data((3, 16, 16), 100))
        return
    distiller = build_distiller(plain_pair_config(method), s, t, data=tiny_data((3, 16, 16), 100)).train()  # 16 px
    optimizer = torch.optim.SGD(distiller.trainable_parameters(), lr=0.01)
    x, y = torch.randn(4, 3, 16, 16), torch.randint(0, 100, (4,))
    before = {k: v.clone() for k, v in t.state_dict().items()}
    logits, losses = distiller.forward_train(batch_of(x, y), 1)
    loss = sum(losses.values())
    assert logits.shape == (4, 100) and torch.isfinite(loss)
    loss.backward()
    optimizer.step()
    assert all(torch.equal(before[k], v) for k, v in t.state_dict().items())  # the teacher stays frozen


def test_at_refuses_a_pair_with_different_stage_counts_in_one_line() -> None:
    from oracle_kd.errors import ConfigError

    with pytest.raises(ConfigError, match="teacher has 4 stages and the student 3"):
        build_distiller(method_entry("at")[1](), build_model("resnet8x4", 10, 3), build_model("resnet18c", 10, 3),
                        (3, 32, 32))
