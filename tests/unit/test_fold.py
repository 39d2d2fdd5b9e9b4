"""Folding the frozen teacher's eval-mode BN into its convs: conv(x)·s + β − μ·s is the same function."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from oracle_kd.core.batch import Batch
from oracle_kd.core.reinforce import reinforce
from oracle_kd.methods import build_distiller, method_entry
from oracle_kd.models import available_models, build_model
from oracle_kd.models.fold import fold_batchnorm


def _trained_like(arch: str, classes: int = 10) -> nn.Module:
    """A model whose BN layers carry non-trivial statistics and affine parameters, as a trained one would."""
    torch.manual_seed(0)
    model = build_model(arch, classes, 3, **({"image_size": 16} if "mlp" in arch else {}))  # an MLP's input size is fixed
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return model.eval()


@pytest.mark.parametrize("arch, size", [("resnet8", 16), ("resnet8x4", 16), ("resnet18", 32), ("resnet50", 32)])
def test_folded_model_computes_the_same_logits_and_features(arch, size):
    model = _trained_like(arch)
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    x = torch.randn(4, 3, size, size)
    with torch.no_grad():
        ref_logits, ref_feats = model(x)
    assert fold_batchnorm(model) == n_bn  # every BN follows a conv in these ResNets (incl. shortcuts)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    with torch.no_grad():
        logits, feats = model(x)
    torch.testing.assert_close(logits, ref_logits, rtol=1e-4, atol=1e-4)
    for a, b in zip(feats.stages, ref_feats.stages):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    assert all(not p.requires_grad for n, p in model.named_parameters() if "conv" in n or "downsample" in n)


@pytest.mark.parametrize("arch", available_models())
def test_every_model_folds_to_the_same_function(arch):
    """Every BN that normalises a conv's output is folded, and only those: a pre-activation family (WRN) folds
    nothing by name, since its bn1 comes before conv1. float64, so only the fold's own error could show."""
    model = _trained_like(arch).double()
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    with torch.no_grad():
        ref_logits, ref_feats = model(x)
    assert fold_batchnorm(model) == (0 if "wrn" in arch else n_bn)  # sfx4_wrn_*: pre-activation too
    with torch.no_grad():
        logits, feats = model(x)
    torch.testing.assert_close(logits, ref_logits, rtol=1e-10, atol=1e-8)
    for a, b in zip(feats.stages + [feats.pooled], ref_feats.stages + [ref_feats.pooled]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-8)


def test_step_a_and_the_oracle_losses_are_unchanged_by_folding():
    teacher = _trained_like("resnet14")
    folded = _trained_like("resnet14")
    fold_batchnorm(folded)
    x, y = torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,))
    torch.testing.assert_close(reinforce(folded, x, y, gamma=0.5), reinforce(teacher, x, y, gamma=0.5),
                               rtol=1e-4, atol=1e-5)
    cls, cfg_cls = method_entry("oracle")
    losses = []
    for t in (teacher, folded):
        torch.manual_seed(1)
        d = build_distiller(cfg_cls(), build_model("resnet8", 10, 3), t, (3, 16, 16)).train()
        losses.append(d.forward_train(Batch(x, y), 1)[1])
    for k in losses[0]:
        torch.testing.assert_close(losses[1][k], losses[0][k], rtol=1e-4, atol=1e-5)


def test_folding_a_model_in_training_mode_is_refused():
    with pytest.raises(ValueError, match="eval mode"):
        fold_batchnorm(build_model("resnet8", 10, 3).train())
