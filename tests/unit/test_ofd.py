"""OFD (Heo et al., ICCV 2019) checked on numbers: each margin is E[x | x < 0] of its BN's Gaussian, the partial
L2 distance takes its three cases, the loss sums the stages with their 2^-k weights, the teacher normalises by
the batch without its statistics moving, and every family's pre-ReLU maps are what its ReLUs receive."""

from __future__ import annotations

import copy
import math
from statistics import NormalDist

import pytest
import torch
import torch.nn.functional as F

from helpers.methods import batch_of, tiny_data
from oracle_kd.errors import ConfigError
from oracle_kd.methods import build_distiller
from oracle_kd.methods.ofd import OFDConfig, bn_margins, channel_margin, partial_l2
from oracle_kd.models import build_model
from oracle_kd.models.shufflenet import channel_shuffle


def expected_negative_part(mean: float, std: float, steps: int = 200_000) -> float:
    """E[x | x < 0] for x ~ N(mean, std²) by the midpoint rule on [mean − 12·std, 0]: no closed form used."""
    lo = mean - 12 * std
    h = -lo / steps
    dist = NormalDist(mean, std)
    xs = [lo + (i + 0.5) * h for i in range(steps)]
    mass = sum(dist.pdf(x) for x in xs) * h
    return sum(x * dist.pdf(x) for x in xs) * h / mass


@pytest.mark.parametrize("scale,shift", [(1.0, 0.0), (0.5, 0.3), (2.0, -1.0), (-1.5, 0.7), (0.8, 2.0)])
def test_a_margin_is_the_expected_value_of_the_negative_part(scale, shift):
    assert NormalDist(shift, abs(scale)).cdf(0) > 0.001
    assert channel_margin(scale, shift) == pytest.approx(expected_negative_part(shift, abs(scale)), rel=1e-6)


def test_a_channel_that_is_almost_never_negative_gets_minus_three_scales():
    assert NormalDist(3.2, 1.0).cdf(0) < 0.001  # Φ(−3.2) ≈ 0.0007
    assert channel_margin(1.0, 3.2) == -3.0 and channel_margin(-0.5, 1.7) == -1.5


def test_bn_margins_read_each_channels_scale_and_shift():
    bn = torch.nn.BatchNorm2d(3)
    bn.weight.data = torch.tensor([1.0, -2.0, 1.0])
    bn.bias.data = torch.tensor([0.0, 0.5, 4.0])
    m = bn_margins(bn)
    assert m.shape == (1, 3, 1, 1) and m.dtype == torch.float32
    want = [-math.sqrt(2 / math.pi), channel_margin(2.0, 0.5), -3.0]  # E[x | x < 0] of N(0, 1) is −√(2/π)
    torch.testing.assert_close(m.flatten(), torch.tensor(want), rtol=1e-6, atol=0)


def test_the_partial_l2_takes_its_three_cases():
    # one channel, margin −1; (source, target) pairs, batch of 2, one position each
    pairs = [(0.5, -2.0),   # s > m ≥ t: (s − m)² = 2.25
             (-1.5, -2.0),  # s ≤ m: nothing
             (0.0, -0.5),   # s > t > m, t ≤ 0: (s − t)² = 0.25
             (-0.8, -0.5),  # s < t: nothing
             (1.0, 3.0),    # t > 0: (s − t)² = 4
             (3.0, 0.5)]    # t > 0: 6.25
    want = (2.25 + 0 + 0.25 + 0 + 4 + 6.25) / 2  # mean over the batch, sum over positions
    s = torch.tensor([[p[0] for p in pairs[:3]], [p[0] for p in pairs[3:]]], dtype=torch.float64).view(2, 1, 3, 1)
    t = torch.tensor([[p[1] for p in pairs[:3]], [p[1] for p in pairs[3:]]], dtype=torch.float64).view(2, 1, 3, 1)
    assert partial_l2(s, t, torch.full((1, 1, 1, 1), -1.0)).item() == pytest.approx(want, rel=1e-15)


def _ofd(teacher: str, student: str, shape=(3, 16, 16), classes: int = 10):
    torch.manual_seed(0)
    t, s = build_model(teacher, classes, shape[0]), build_model(student, classes, shape[0])
    return t, build_distiller(OFDConfig(), s, t, data=tiny_data(shape, classes)).train()


def test_the_loss_sums_each_stage_with_deeper_stages_weighing_twice_as_much():
    teacher, d = _ofd("resnet32", "resnet8")
    x, y = torch.randn(6, 3, 16, 16), torch.arange(6) % 10
    stats = copy.deepcopy(teacher).train()  # the reference's teacher: train mode, batch statistics
    frozen = {k: v.clone() for k, v in teacher.state_dict().items()}
    logits, losses = d.forward_train(batch_of(x, y), 1)
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in frozen.items())  # no statistic moved
    _, t_feats = stats(x)
    s_logits, s_feats = copy.deepcopy(d.student)(x)
    terms = [partial_l2(conn(s), F.adaptive_avg_pool2d(t, s.shape[-2:]), m) / 2 ** (2 - i)
             for i, (conn, s, t, m) in enumerate(zip(copy.deepcopy(d.connectors), s_feats.preact, t_feats.preact,
                                                      d.margins()))]
    assert torch.equal(logits, s_logits) and len(terms) == 3
    assert torch.equal(losses["ce"], F.cross_entropy(s_logits, y))
    torch.testing.assert_close(losses["ofd"], 1e-3 * (terms[0] + terms[1] + terms[2]), rtol=0, atol=0)


def test_the_method_runs_its_own_teacher_pass_and_reads_the_unfolded_bn():
    _, d = _ofd("resnet20", "resnet8")
    assert d.teacher_input() is None and type(d).teacher_bn
    assert all(m.running_mean is None for m in d.teacher.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert "teacher" not in "".join(d.trainable_state_dict())


def test_a_deeper_teacher_pairs_its_last_stages_and_their_margins_with_the_students():
    teacher, d = _ofd("resnet18c", "resnet8")  # 4 stages against 3
    assert len(d.connectors) == 3
    for margin, bn in zip(d.margins(), teacher.bn_before_relu()[1:]):
        assert torch.equal(margin, bn_margins(bn))
    assert [c[0].out_channels for c in d.connectors] == [128, 256, 512]


@pytest.mark.parametrize("teacher,student,side", [("resnet20", "mobilenetv2", "student MobileNetV2 has no pre-ReLU"),
                                                  ("mobilenetv2", "resnet8", "teacher MobileNetV2 has no BN"),
                                                  ("shufflenetv2", "resnet8", "teacher ShuffleNetV2 has no BN"),
                                                  ("resnet8", "mlp64", "student MLP has no pre-ReLU")])
def test_a_family_without_pre_relu_maps_or_margins_is_refused_in_one_line(teacher, student, side):
    t = build_model(teacher, 10, 1 if "mlp" in student else 3)
    s = build_model(student, 10, 1 if "mlp" in student else 3)
    shape = (1, 8, 8) if "mlp" in student else (3, 16, 16)
    with pytest.raises(ConfigError, match=f"method=ofd: {side}") as err:
        build_distiller(OFDConfig(), s, t, data=tiny_data(shape, 10))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("arch", ["resnet20", "resnet18", "resnet50c", "vgg8", "shufflenetv1"])
def test_a_pre_relu_map_is_what_its_stage_relu_receives(arch):
    torch.manual_seed(0)
    _, f = build_model(arch, 10, 3).eval()(torch.randn(2, 3, 16, 16))
    offset = len(f.stages) - 1 - len(f.preact)
    for pre, stage in zip(f.preact, f.stages[1 + offset:]):
        assert torch.equal(F.relu(pre), stage)


def test_shufflenetv2s_pre_relu_map_is_its_last_units_halves_before_the_shuffle():
    torch.manual_seed(0)
    _, f = build_model("shufflenetv2", 10, 3).eval()(torch.randn(2, 3, 16, 16))
    for pre, stage in zip(f.preact, f.stages[1:]):
        assert torch.equal(channel_shuffle(F.relu(pre), 2), stage)


def test_wrns_pre_relu_map_is_the_next_bn_applied_to_its_stage():
    torch.manual_seed(0)
    model = build_model("wrn_16_2", 10, 3).eval()
    _, f = model(torch.randn(2, 3, 16, 16))
    for pre, stage, bn in zip(f.preact, f.stages[1:], model.bn_before_relu()):
        assert torch.equal(pre, bn(stage))
