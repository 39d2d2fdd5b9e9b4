"""Oracle KD (Lee et al., BMVC 2023): distil from the teacher's output on a relevance-reinforced input."""

from __future__ import annotations

from dataclasses import dataclass

from oracle_kd.core.reinforce import REDUCTIONS
from oracle_kd.core.teacher_view import TeacherInput
from oracle_kd.errors import require
from oracle_kd.methods.kd import KD, KDConfig
from oracle_kd.methods.registry import register_method


@dataclass
class OracleConfig(KDConfig):
    """Defaults follow the released CIFAR-100 runs: τ = 2, α = 1, γ ∈ {0.2, 0.5}.

    gamma_reduction=mean is the released code (the step per sample is γ/B); `sum` is the
    batch-size-independent variant. rec_num repeats Step A on the detached x*.
    """

    name: str = "oracle"
    temperature: float = 2.0
    gamma: float = 0.5
    gamma_reduction: str = "mean"
    rec_num: int = 1

    def validate(self) -> None:
        super().validate()
        require(self.gamma >= 0, "method.gamma", self.gamma, "must be >= 0")
        require(self.gamma_reduction in REDUCTIONS, "method.gamma_reduction", self.gamma_reduction,
                 f"is not one of: {', '.join(REDUCTIONS)}")
        require(self.rec_num >= 1, "method.rec_num", self.rec_num, "must be >= 1")


@register_method("oracle", OracleConfig, paper="Lee, Cho, Kim, Kim, Lee, BMVC 2023", year=2023,
                 code="myunghakLee/Distillation-for-High-Quality-Knowledge-Extraction: utils.py", ours=True)
class Oracle(KD):
    """KD whose teacher sees x* = x − γ·|x| ⊙ ∂CE(teacher(x), y)/∂x, recomputed every step."""

    cfg: OracleConfig

    def teacher_input(self) -> TeacherInput:
        return TeacherInput.of(self.cfg.gamma, self.cfg.gamma_reduction, self.cfg.rec_num)
