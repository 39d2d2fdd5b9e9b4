"""The fast path: no per-step host synchronisation, and the switches keep the step's numbers.

The synchronisation check needs CUDA (torch's sync debug mode only watches CUDA); on a CPU-only machine
it is skipped. The CPU checks confirm that channels_last and bf16 autocast are numerically the same
step (channels_last exactly up to float reassociation; bf16 within its precision).
"""

from __future__ import annotations

import contextlib

import pytest
import torch

from helpers.methods import WAITS_FOR_HOST, plain_pair_config
from oracle_kd.core.batch import Batch
from oracle_kd.data import BatchLoader, ImageSet
from oracle_kd.engine.hardware import autocast
from oracle_kd.engine.step import train_step
from oracle_kd.methods import available_methods, build_distiller, method_entry
from oracle_kd.models import build_model


def _step_setup(device: torch.device, method: str = "oracle", channels_last: bool = False):
    torch.manual_seed(0)
    teacher = build_model("resnet8", 10, 3).to(device)
    student = build_model("resnet8", 10, 3).to(device)
    if channels_last:
        teacher = teacher.to(memory_format=torch.channels_last)
        student = student.to(memory_format=torch.channels_last)
    cls, _ = method_entry(method)
    d = build_distiller(plain_pair_config(method), student, teacher if cls.needs_teacher else None,
                        (3, 16, 16)).to(device).train()
    opt = torch.optim.SGD(d.trainable_parameters(), lr=0.1, momentum=0.9)
    g = torch.Generator().manual_seed(1)
    data = ImageSet(torch.randint(0, 256, (64, 3, 16, 16), generator=g, dtype=torch.uint8),
                    torch.randint(0, 10, (64,), generator=g))
    loader = BatchLoader(data, batch_size=16, train=True, mean=(0.5,) * 3, std=(0.25,) * 3, pad=2, flip=True,
                         device=device, channels_last=channels_last)
    return d, opt, loader


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA's sync debug mode needs a GPU")
@pytest.mark.parametrize("method", available_methods())
def test_training_steps_never_wait_for_the_gpu(method):
    if method in WAITS_FOR_HOST:
        pytest.skip(f"{method}: {WAITS_FOR_HOST[method]}")
    device = torch.device("cuda")
    d, opt, loader = _step_setup(device, method, channels_last=True)
    batches = list(loader.epoch(1))  # the loader itself is checked below, inside the debug mode
    train_step(d.forward_train, opt, batches[0], 1, autocast(device, "bf16"))  # lazy init outside the check
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for x, y in loader.epoch(2):
            logits, losses, loss = train_step(d.forward_train, opt, Batch(x, y), 2, autocast(device, "bf16"))
            correct = (logits.argmax(dim=1) == y).sum()  # the runner's on-device accumulation
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert torch.isfinite(loss).item() and correct.item() >= 0


def _one_step(channels_last: bool, precision: str) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    device = torch.device("cpu")
    d, opt, loader = _step_setup(device, "oracle", channels_last=channels_last)
    x, y = next(iter(loader.epoch(1)))
    amp = autocast(device, precision) if precision == "bf16" else contextlib.nullcontext()
    _, losses, _ = train_step(d.forward_train, opt, Batch(x, y), 1, amp)
    return torch.cat([p.detach().flatten() for p in d.student.parameters()]), losses


def test_channels_last_takes_the_same_step():
    w_ref, l_ref = _one_step(False, "fp32")
    w_cl, l_cl = _one_step(True, "fp32")
    torch.testing.assert_close(w_cl, w_ref, rtol=1e-4, atol=1e-5)
    for k in l_ref:
        torch.testing.assert_close(l_cl[k], l_ref[k], rtol=1e-4, atol=1e-5)


def test_bf16_autocast_takes_nearly_the_same_step_with_fp32_losses():
    w_ref, l_ref = _one_step(False, "fp32")
    w_bf, l_bf = _one_step(False, "bf16")
    assert all(v.dtype == torch.float32 for v in l_bf.values())  # losses are computed in fp32
    for k in l_ref:
        assert l_bf[k].item() == pytest.approx(l_ref[k].item(), rel=0.05, abs=1e-3)
    assert (w_bf - w_ref).abs().max().item() < 0.05
