"""Variational Information Distillation (Ahn et al. 2019), checked on numbers: the Gaussian NLL
½·((μ − t)²/σ² + log σ²) averaged over all entries with one σ² = softplus(α) + eps per teacher channel, μ from a
three-conv regressor, summed over stage pairs, times `weight`; variances learned (RepDistiller) or fixed
(mdistiller, `train_variance=false`)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from oracle_kd.core.batch import Batch
from oracle_kd.errors import ConfigError
from oracle_kd.methods import build_distiller
from oracle_kd.methods.vid import VIDConfig, gaussian_nll, inverse_softplus, vid_loss
from oracle_kd.models import build_model


def test_the_nll_by_hand():
    # channel 0: μ − t = 2, σ² = 2 -> ½(4/2 + log 2); channel 1: μ − t = 1, σ² = 1/2 -> ½(1/(1/2) + log 1/2)
    mean = torch.tensor([[[[1.0]], [[0.0]]]], dtype=torch.float64)
    target = torch.tensor([[[[3.0]], [[1.0]]]], dtype=torch.float64)
    var = torch.tensor([2.0, 0.5], dtype=torch.float64)
    assert gaussian_nll(mean[:, :1], target[:, :1], var[:1]).item() == pytest.approx(1 + 0.5 * math.log(2), abs=1e-15)
    assert gaussian_nll(mean, target, var).item() == pytest.approx(1.0, abs=1e-15)  # the mean of the two
    # a perfect mean leaves ½·log σ², whose minimum over σ² sits at the squared error: the variance learns it
    s2 = torch.tensor([4.0], dtype=torch.float64, requires_grad=True)
    gaussian_nll(torch.zeros(1, 1, 1, 1, dtype=torch.float64), torch.full((1, 1, 1, 1), 2.0, dtype=torch.float64),
                 s2).backward()
    assert s2.grad.item() == pytest.approx(0.0, abs=1e-15)


def test_the_variance_starts_at_init_var():
    for y in (5.0 - 1e-5, 0.1, 30.0):
        assert F.softplus(torch.tensor(inverse_softplus(y), dtype=torch.float64)).item() == pytest.approx(y, rel=1e-14)


def _pair(teacher: str = "resnet8x4"):
    torch.manual_seed(0)
    return build_model("resnet8", 5, 1, image_size=8), build_model(teacher, 5, 1, image_size=8)


@pytest.mark.parametrize("train_variance", [True, False])
def test_regressors_from_the_probe_and_the_variances_learned_or_fixed(train_variance: bool):
    student, teacher = _pair()  # widths 16, 32, 64 -> 64, 128, 256 after the stem
    d = build_distiller(VIDConfig(train_variance=train_variance), student, teacher, (1, 8, 8)).train()
    shapes = [[tuple(m.weight.shape[:2]) for m in r if isinstance(m, torch.nn.Conv2d)] for r in d.regressors]
    assert shapes == [[(64, 16), (64, 64), (64, 64)], [(128, 32), (128, 128), (128, 128)],
                      [(256, 64), (256, 256), (256, 256)]]
    assert all(m.bias is None for r in d.regressors for m in r if isinstance(m, torch.nn.Conv2d))
    assert [v.shape for v in d.variances()] == [(64,), (128,), (256,)]
    assert all(torch.allclose(v, torch.full_like(v, 5.0), rtol=1e-6) for v in d.variances())  # init_var 5
    regressor_params = sum(p.numel() for p in d.regressors.parameters())
    state = d.trainable_state_dict()
    opt = torch.optim.SGD(d.trainable_parameters(), lr=0.1)
    x, y = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(1)), torch.tensor([0, 1, 2, 3])
    sum(d.forward_train(Batch(x, y), epoch=1)[1].values()).backward()
    opt.step()
    moved = not all(torch.allclose(v, torch.full_like(v, 5.0), rtol=1e-6) for v in d.variances())
    if train_variance:  # RepDistiller's: parameters the student's optimizer trains, saved in the checkpoint
        assert d.extra_parameter_count() == regressor_params + 64 + 128 + 256
        assert {"log_scales.0", "log_scales.1", "log_scales.2"} <= set(state) and moved
    else:  # mdistiller's: constants, neither trained nor saved, yet on the model's device and dtype
        assert d.extra_parameter_count() == regressor_params
        assert not any("log_scale" in k for k in state) and not moved
        assert all(v.dtype == torch.float64 for v in d.to(torch.float64).variances())


def test_a_larger_map_is_pooled_to_the_smaller_before_the_regressor():
    g = torch.Generator().manual_seed(2)
    regressor = torch.nn.Conv2d(3, 2, 1, bias=False).double()
    var = torch.tensor([1.5, 0.5], dtype=torch.float64)
    big_s, small_t = torch.rand(2, 3, 4, 4, generator=g, dtype=torch.float64), torch.rand(2, 2, 2, 2, generator=g,
                                                                                          dtype=torch.float64)
    want = gaussian_nll(regressor(F.avg_pool2d(big_s, 2)), small_t, var)  # the student's map pooled first
    assert vid_loss([regressor], [var], [big_s], [small_t]).item() == pytest.approx(want.item(), abs=1e-15)
    small_s, big_t = F.avg_pool2d(big_s, 2), torch.rand(2, 2, 4, 4, generator=g, dtype=torch.float64)
    want = gaussian_nll(regressor(small_s), F.avg_pool2d(big_t, 2), var)  # the teacher's
    assert vid_loss([regressor], [var], [small_s], [big_t]).item() == pytest.approx(want.item(), abs=1e-15)
    with pytest.raises(ValueError, match="one regressor and variance per stage pair"):
        vid_loss([regressor], [var], [small_s, small_s], [big_t, big_t])


def test_the_method_scales_the_term_by_weight():
    student, teacher = _pair("resnet14")
    x, y = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(3)), torch.tensor([0, 1, 2, 3])
    d = build_distiller(VIDConfig(weight=7.0), student, teacher, (1, 8, 8))
    logits, terms = d.forward_train(Batch(x, y), epoch=1)
    with torch.no_grad():
        _, f_t = teacher(x)
    _, f_s = student(x)
    want = vid_loss(d.regressors, d.variances(), f_s.stages[1:], f_t.stages[1:])
    assert set(terms) == {"ce", "vid"}
    assert terms["vid"].item() == pytest.approx(7.0 * want.item(), rel=1e-6)
    defaults = VIDConfig()
    assert (defaults.weight, defaults.init_var, defaults.eps, defaults.train_variance) == (1.0, 5.0, 1e-5, True)


def test_a_pair_with_different_stage_counts_is_refused_in_one_line():
    with pytest.raises(ConfigError, match="^method=vid: .*teacher has 2 stages and the student 3"):
        build_distiller(VIDConfig(), build_model("resnet8", 5, 3, image_size=8),
                        build_model("mlp16", 5, 3, image_size=8), (3, 8, 8))
    with pytest.raises(ConfigError, match="method.init_var"):
        VIDConfig(init_var=1e-6).validate()
