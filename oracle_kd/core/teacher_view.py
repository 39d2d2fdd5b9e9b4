"""What a method reads from the frozen teacher, so that runs sharing a batch compute it once.

A method declares the input its teacher sees (`TeacherInput`: x itself, or Step A's x*(γ)); the engine
computes teacher(input) → (logits, Features) once per batch for every distinct input its runs asked for,
and Step A's input gradient once per reduction for all single-step x*(γ) (it does not depend on γ).
The values are the same as each method computing its own: the same ops on the same tensors."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch
from torch import nn

from oracle_kd.core.features import Features
from oracle_kd.core.reinforce import input_gradient_and_output, reinforce, reinforced

TeacherOut = tuple[torch.Tensor, Features]


@dataclass(frozen=True)
class TeacherInput:
    """x (gamma = 0) or x*(γ) by `rec_num` steps of Step A with the given reduction."""

    gamma: float = 0.0
    reduction: str = "mean"
    rec_num: int = 1

    @classmethod
    def of(cls, gamma: float, reduction: str = "mean", rec_num: int = 1) -> "TeacherInput":
        """The canonical key: every γ = 0 input is the plain x, whatever its other options."""
        return cls() if gamma == 0 else cls(float(gamma), reduction, rec_num)


PLAIN = TeacherInput()


def teacher_outputs(teacher: nn.Module, inputs: Iterable[TeacherInput], x: torch.Tensor, y: torch.Tensor,
                    mean_over: int | None = None) -> dict[TeacherInput, TeacherOut]:
    """teacher(input) for each distinct input, the teacher's forwards under no_grad; the plain pass teacher(x) is
    the forward of Step A's input gradient when one is taken (the same ops on the same tensors: no pass twice)."""
    grads: dict[str, torch.Tensor] = {}
    out: dict[TeacherInput, TeacherOut] = {}
    wanted = list(dict.fromkeys(inputs))
    for inp in sorted(wanted, key=lambda i: i == PLAIN):  # Step A's forward first: it is the plain pass too
        if inp == PLAIN and inp in out:
            continue
        if inp.gamma == 0:
            x_t = x
        elif inp.rec_num == 1:
            if inp.reduction not in grads:
                grads[inp.reduction], plain = input_gradient_and_output(teacher, x, y, reduction=inp.reduction,
                                                                        mean_over=mean_over)
                if PLAIN in wanted:
                    out.setdefault(PLAIN, plain)
            x_t = reinforced(x, grads[inp.reduction], inp.gamma)
        else:
            x_t = reinforce(teacher, x, y, gamma=inp.gamma, reduction=inp.reduction, rec_num=inp.rec_num,
                            mean_over=mean_over)
        with torch.no_grad():
            out[inp] = teacher(x_t)
    return out
