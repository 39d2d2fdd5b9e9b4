"""The two contracts every registered model and method must keep, checked over the registries: a new
architecture or method is covered by adding it, with no test to write first.

Features: forward returns (logits, Features) with the stem and stage outputs, every block's output and
the pooled fc input. Distiller: a frozen teacher (eval mode, no gradients, never optimised), named fp32
loss terms, and trainable state that is exactly student + extras."""

from __future__ import annotations

import contextlib
import copy

import pytest
import torch
import torch.nn.functional as F

from helpers.methods import batch_of, plain_pair_config, tiny_data
from oracle_kd.core.features import Features
from oracle_kd.engine.step import train_step
from oracle_kd.methods import available_methods, build_distiller, method_entry
from oracle_kd.models import available_models, build_model

SHAPE = (3, 16, 16)
CLASSES = 7


POOLED_AFTER_A_HEAD = ("wrn", "mobilenetv2", "shufflenetv2")  # a final BN-ReLU or 1x1 conv head before pooling


@pytest.mark.parametrize("arch", available_models())
@pytest.mark.parametrize("shape", [(3, 32, 32), (1, 8, 8)], ids=["rgb32", "digits8"])
def test_every_model_returns_logits_and_features(arch: str, shape: tuple[int, int, int]) -> None:
    torch.manual_seed(0)
    model = build_model(arch, CLASSES, shape[0], image_size=shape[1])
    logits, feats = model(torch.randn(2, *shape))
    assert isinstance(feats, Features) and model.num_classes == CLASSES
    assert logits.shape == (2, CLASSES) and torch.isfinite(logits).all()
    # an MLP has the input and one stage per hidden layer (2); every CNN a stem and at least 3 stages
    assert len(feats.stages) >= (3 if "mlp" in arch else 4) and len(feats.blocks) >= len(feats.stages) - 1
    assert all(f.dim() == 4 and f.shape[0] == 2 for f in [*feats.stages, *feats.blocks])
    assert feats.blocks[-1] is feats.stages[-1]  # the last stage ends with its last block
    assert feats.pooled.dim() == 2 and feats.pooled.shape[0] == 2  # the classifier's input
    if not arch.removeprefix("sfx4_").startswith(POOLED_AFTER_A_HEAD):
        torch.testing.assert_close(feats.pooled, feats.stages[-1].mean(dim=(2, 3)))
    if feats.preact:  # one pre-ReLU map per stage after the stem, shaped as that stage
        assert [p.shape for p in feats.preact] == [s.shape for s in feats.stages[1:]]
    snapshot = [t.detach().clone() for t in feats.stages + feats.blocks + feats.preact]
    (logits.sum() + sum(t.mean() for t in feats.stages[1:])).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    # nothing changed in place
    assert all(torch.equal(a, b) for a, b in zip(snapshot, feats.stages + feats.blocks + feats.preact))


EXPLAINING = {"ked"}  # methods whose teacher and student are superfeature-explaining (sfx*) models


def _pair(name: str, dtype: torch.dtype = torch.float32) -> tuple:
    torch.manual_seed(0)
    prefix = "sfx4_" if name in EXPLAINING else ""
    teacher = build_model(f"{prefix}resnet14", CLASSES, SHAPE[0], image_size=SHAPE[1]).to(dtype)
    student = build_model(f"{prefix}resnet8", CLASSES, SHAPE[0], image_size=SHAPE[1]).to(dtype)
    cls, cfg_cls = method_entry(name)
    cfg_cls().validate()  # a method's defaults are valid
    cfg = plain_pair_config(name) if name not in EXPLAINING else cfg_cls()
    return build_distiller(cfg, student, teacher if cls.needs_teacher else None, data=tiny_data(SHAPE, CLASSES)), cls


@pytest.mark.parametrize("name", available_methods())
def test_every_method_keeps_the_distiller_contract(name: str) -> None:
    d, cls = _pair(name)
    d.train()
    teacher = d.teacher
    if cls.needs_teacher:
        assert teacher is not None and not teacher.training
        assert not any(p.requires_grad for p in teacher.parameters())
        teacher_ids = {id(p) for p in teacher.parameters()}
        assert not teacher_ids & {id(p) for p in d.trainable_parameters()}
    else:
        assert teacher is None
    assert {id(p) for p in d.student.parameters()} <= {id(p) for p in d.trainable_parameters()}
    assert not any(k.startswith("teacher.") for k in d.trainable_state_dict())

    x, y = torch.randn(6, *SHAPE), torch.randint(0, CLASSES, (6,))
    logits, losses = d.forward_train(batch_of(x, y), 1)
    assert logits.shape == (6, CLASSES) and losses
    for term, value in losses.items():
        assert value.dim() == 0 and value.dtype == torch.float32 and torch.isfinite(value), term
    assert set(losses) >= {"ce"}
    if not cls.views:  # a method with extra views adds their CE terms to "ce" (MLKD: weak + strong)
        assert losses["ce"].item() == pytest.approx(d.cfg.ce_weight * F.cross_entropy(logits.float(), y).item(),
                                                    rel=1e-5)


@pytest.mark.parametrize("name", available_methods())
def test_a_step_trains_the_student_and_never_the_teacher(name: str) -> None:
    d, cls = _pair(name)
    d.train()
    teacher_before = copy.deepcopy(d.teacher.state_dict()) if d.teacher is not None else {}
    student_before = copy.deepcopy(d.student.state_dict())
    state_before = copy.deepcopy(d.trainable_state_dict())
    opt = torch.optim.SGD(d.trainable_parameters(), lr=0.1)
    x, y = torch.randn(6, *SHAPE), torch.randint(0, CLASSES, (6,))
    train_step(d.forward_train, opt, batch_of(x, y), 1, contextlib.nullcontext())
    for k, v in teacher_before.items():  # weights and BN running statistics alike
        assert torch.equal(d.teacher.state_dict()[k], v), k
    assert any(not torch.equal(d.student.state_dict()[k], v) for k, v in student_before.items())

    d2, _ = _pair(name)  # resuming: the trainable state alone restores the run's weights
    d2.load_trainable_state_dict(d.trainable_state_dict())
    assert all(torch.equal(d2.trainable_state_dict()[k], v) for k, v in d.trainable_state_dict().items())
    assert set(state_before) == set(d2.trainable_state_dict())


@pytest.mark.parametrize("name", available_methods())
def test_every_method_stays_in_float64_in_an_fp64_run(name: str) -> None:
    """hardware.precision=fp64: float64 models (the method's shape probe included) give float64 loss terms and
    gradients, so equality checks across processes and layouts hold to float64 rounding."""
    d, _ = _pair(name, torch.float64)
    d = d.to(torch.float64).train()  # as the engine does: the method's own modules too
    x, y = torch.randn(4, *SHAPE, dtype=torch.float64), torch.randint(0, CLASSES, (4,))
    logits, losses = d.forward_train(batch_of(x, y), 1)
    assert logits.dtype == torch.float64 and all(v.dtype == torch.float64 for v in losses.values()), losses
    sum(losses.values()).backward()
    assert all(p.grad.dtype == torch.float64 for p in d.trainable_parameters() if p.grad is not None)
