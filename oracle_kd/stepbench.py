"""Per-step training time of every method relative to `kd`, on synthetic batches (a benchmark, not a test).

    python -m oracle_kd.stepbench [--teacher resnet56] [--student resnet20] [--size 32] [--channels 3]
                                  [--classes 100] [--batch 64] [--steps 20] [--device cpu]

Each method's step (forward_train + backward + SGD step) runs on the same device and batch; warm-up
steps are excluded and the median of the timed steps is reported.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from oracle_kd.methods import available_methods, build_distiller, method_entry
from oracle_kd.models import build_model


def step_times(method: str, args: argparse.Namespace, device: torch.device) -> list[float]:
    torch.manual_seed(0)
    shape = (args.channels, args.size, args.size)
    teacher = build_model(args.teacher, args.classes, args.channels).to(device)
    student = build_model(args.student, args.classes, args.channels).to(device)
    cls, cfg_cls = method_entry(method)
    d = build_distiller(cfg_cls(), student, teacher if cls.needs_teacher else None, shape).to(device).train()
    opt = torch.optim.SGD(d.trainable_parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(args.batch, *shape, device=device)
    y = torch.randint(0, args.classes, (args.batch,), device=device)
    times = []
    for i in range(args.warmup + args.steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        _, losses = d.forward_train(x, y, epoch=1)
        loss = sum(losses.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", default="resnet56")
    p.add_argument("--student", default="resnet20")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--channels", type=int, default=3)
    p.add_argument("--classes", type=int, default=100)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--methods", default=",".join(available_methods()))
    args = p.parse_args()
    device = torch.device(args.device)
    medians = {m: statistics.median(step_times(m, args, device)) for m in args.methods.split(",")}
    kd = medians.get("kd")
    print(f"{args.teacher}->{args.student}, {args.channels}x{args.size}x{args.size}, batch {args.batch}, "
          f"{args.device} ({torch.get_num_threads()} threads), median of {args.steps} steps")
    print(f"{'method':<8} {'ms/step':>8} {'images/s':>9} {'vs kd':>6}")
    for m, t in medians.items():
        print(f"{m:<8} {1000 * t:8.1f} {args.batch / t:9.0f} {t / kd if kd else float('nan'):6.2f}")


if __name__ == "__main__":
    main()
