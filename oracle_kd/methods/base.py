"""The one interface every distillation method implements.

A `Distiller` owns the student, the frozen teacher and any learnable extras of its method (a FitNet
regressor, SAD's attention). The runner only ever calls `forward_train`, `trainable_parameters` and
`trainable_state_dict`, so adding a method never touches the training loop.
"""

from __future__ import annotations

import abc
import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, Iterator, Optional

import torch
import torch.nn.functional as F
from torch import nn

from oracle_kd.core.batch import Batch, DataInfo
from oracle_kd.core.precision import at_least_fp32
from oracle_kd.core.teacher_view import PLAIN, TeacherInput, TeacherOut, teacher_outputs
from oracle_kd.errors import ConfigError, require

PAIR_TABLE = "_by_pair"  # the suffix of a per-pair table's field: `<option>_by_pair`
# metadata={"identity": WHEN_SET}: an option added after runs were stored, part of a run's identity only when it is not
# its default (store/identity.py), so the stored runs keep their run_ids
WHEN_SET = "when_set"


@dataclass
class MethodConfig:
    """Options every method has. `name` selects the method; `ce_weight` scales CE(student(x), y);
    `ce_weight_by_teacher` (teacher arch → ce_weight) lets one sweep preset follow the released Oracle
    runs, whose CE weight depended on the teacher. It is resolved into `ce_weight` before a run starts."""

    # Weights whose term's size follows the number of map positions P, and how: +1 for a term averaged over
    # unit-norm maps (it goes as 1/P: AT, SAD), −1 for one summed over positions (it goes as P: OFD). Their defaults
    # are tuned at REFERENCE_SIZE (CIFAR's 32 px); `for_input` rescales them for smaller inputs.
    SIZE_SCALED: ClassVar[dict[str, int]] = {}
    REFERENCE_SIZE: ClassVar[int] = 32

    name: str = "ce"
    ce_weight: float = 1.0
    # The composed config holds an empty table, not None: Hydra cannot merge `method.ce_weight_by_teacher={...}`
    # into a None node. An empty table is None again once built (`__post_init__`), so run_ids do not change.
    ce_weight_by_teacher: Optional[dict[str, float]] = dataclasses.field(default_factory=dict)
    # False: keep the SIZE_SCALED weights as given on inputs smaller than REFERENCE_SIZE. Not part of a run's
    # identity: the weight a run uses is (`for_input` resolves it).
    size_scaled: bool = dataclasses.field(default=True, metadata={"identity": False})

    def __post_init__(self) -> None:
        empty_tables_to_none(self)

    def validate(self) -> None:
        """Raise ConfigError (one line) for values no method can use."""
        require(self.ce_weight >= 0, "method.ce_weight", self.ce_weight, "must be >= 0")
        for arch, w in (self.ce_weight_by_teacher or {}).items():
            require(w >= 0, f"method.ce_weight_by_teacher.{arch}", w, "must be >= 0")

    def for_teacher(self, arch: str) -> "MethodConfig":
        """This config with `ce_weight_by_teacher` resolved for a teacher arch (and then dropped, so the
        run's identity is the same as with that ce_weight given directly)."""
        if not self.ce_weight_by_teacher:
            return self
        weight = self.ce_weight_by_teacher.get(arch, self.ce_weight)
        return dataclasses.replace(self, ce_weight=weight, ce_weight_by_teacher=None)

    def for_input(self, image_size: int) -> tuple["MethodConfig", str | None]:
        """This config at an input of `image_size` px, and the line that says what changed (None: nothing).

        The rule: a term averaged over unit-norm maps of P positions goes as 1/P at the same misalignment, one
        summed over them as P, so on inputs smaller than REFERENCE_SIZE each SIZE_SCALED weight is multiplied by
        r^k, r = (image_size / REFERENCE_SIZE)² (the ratio of every stage's P), to keep the term's weight beside
        CE what it is at 32 px. Inputs of 32 px and more keep the published weights: the references use them
        unchanged on ImageNet too, and results must compare with theirs."""
        if not self.SIZE_SCALED or not self.size_scaled or image_size >= self.REFERENCE_SIZE:
            return self, None
        ratio = (image_size / self.REFERENCE_SIZE) ** 2
        scaled = {key: getattr(self, key) * ratio ** k for key, k in self.SIZE_SCALED.items()}
        said = ", ".join(f"method.{key}={getattr(self, key):g} -> {value:g}" for key, value in scaled.items())
        return dataclasses.replace(self, **scaled), (
            f"{self.name} at {image_size} px: {said} ((maps of {image_size}/{self.REFERENCE_SIZE} px) squared, raised "
            f"to the term's order), so the term weighs beside CE what it does at {self.REFERENCE_SIZE} px; "
            f"method.size_scaled=false keeps the values as given")

    def for_pair(self, teacher: str, student: str) -> "MethodConfig":
        """This config with every per-teacher or per-pair table resolved for one run: `ce_weight_by_teacher`, then
        each `<option>_by_pair` table ("teacher-student" → value of `<option>`; a pair it does not list keeps the
        option as given). The tables are dropped once resolved, so what remains is what the run's identity hashes:
        the same run as the plain options they set."""
        cfg = self.for_teacher(teacher)
        pair, resolved = f"{teacher}-{student}", {}
        for f in dataclasses.fields(cfg):
            table = getattr(cfg, f.name)
            if f.name.endswith(PAIR_TABLE) and table:
                option = f.name[:-len(PAIR_TABLE)]
                resolved[option] = table.get(pair, getattr(cfg, option))
                resolved[f.name] = None
        return dataclasses.replace(cfg, **resolved) if resolved else cfg



def empty_tables_to_none(cfg: Any) -> None:
    """Per-teacher/per-pair tables (`*_by_*` fields) that are empty become None: "no table", as stored runs say."""
    for f in dataclasses.fields(cfg):
        if "_by_" in f.name and getattr(cfg, f.name) == {}:
            setattr(cfg, f.name, None)


def freeze(model: nn.Module) -> nn.Module:
    """Put a teacher in eval mode with no parameter needing a gradient: it is never trained."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


@torch.no_grad()
def probe_features(model: nn.Module, input_shape: tuple[int, ...], batch: int = 2) -> tuple[torch.Tensor, Any]:
    """One forward pass to learn feature shapes, in eval mode under no_grad so that no BatchNorm running
    statistic moves (a probe in train mode would perturb a teacher's statistics). Restores the mode."""
    was_training = model.training
    model.eval()
    try:
        p = next(model.parameters())  # the probe in the model's dtype: float64 in an fp64 run
        return model(torch.randn(batch, *input_shape, device=p.device, dtype=p.dtype))
    finally:
        model.train(was_training)


class Distiller(nn.Module, metaclass=abc.ABCMeta):
    """Student + frozen teacher + the method's own learnable extras.

    `forward_train(batch, epoch)` returns the student's logits and a dict of named loss terms whose sum
    is the training loss; naming the terms lets the runner log each one (and lets an optimizer such as DOT
    step the task term `ce` apart from the rest). `input_shape` (C, H, W) is given to methods whose extras
    depend on feature shapes (build them with `probe_features`); `data` (a `DataInfo`: shape, classes, the
    training labels) to methods that size state by the training split, such as CRD's memory bank.
    """

    needs_teacher: ClassVar[bool] = True
    # False for a method whose per-run state spans the whole training split (CRD's memory bank): under DDP each
    # rank would update its own copy from its shard. Refused in `validate` and when torchrun starts the run.
    supports_ddp: ClassVar[bool] = True
    # Extra views of every training batch the method reads from `batch.views` (MLKD: "strong"). They are part of
    # the batch stream, so runs that need them train in cohorts of their own.
    views: ClassVar[tuple[str, ...]] = ()
    # True for a method that reads the teacher's BatchNorm layers themselves (OFD: margins from their affine
    # parameters, batch statistics). The engine folds a teacher's BN into its convs for speed; such a method gets
    # a teacher with its BNs kept instead (built once per cohort, beside the folded one the others share).
    teacher_bn: ClassVar[bool] = False
    # Under DDP a batch is one rank's shard; the runner sets the global batch size here so that a method
    # whose loss is *not* a per-sample mean (Oracle's Step A with gamma_reduction=mean) can use it.
    global_batch_size: Optional[int] = None

    def __init__(self, student: nn.Module, teacher: nn.Module | None, cfg: MethodConfig,
                 input_shape: tuple[int, ...] | None = None, data: DataInfo | None = None) -> None:
        super().__init__()
        self.input_shape = input_shape if input_shape is not None else (data.input_shape if data else None)
        self.data = data
        self.student = student
        self.teacher = freeze(teacher) if teacher is not None else None
        self.cfg = cfg

    def train(self, mode: bool = True) -> "Distiller":
        """Train the student and extras; the teacher stays in eval mode (its BN statistics are fixed)."""
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """Student and extras: everything except the teacher, which never enters the optimizer."""
        for name, p in self.named_parameters():
            if not name.startswith("teacher."):
                yield p

    def extra_parameter_count(self) -> int:
        """Parameters the method trains besides the student (FitNet regressor, SAD attention, ...)."""
        student = {id(p) for p in self.student.parameters()}
        return sum(p.numel() for p in self.trainable_parameters() if id(p) not in student)

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """What a checkpoint must hold to resume: student and extras, never the (fixed) teacher."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("teacher.")}

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing, unexpected = self.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith("teacher.")]
        if missing or unexpected:
            raise RuntimeError(f"checkpoint does not fit this method: missing {missing}, unexpected {unexpected}")

    def teacher_input(self) -> TeacherInput | None:
        """The input the teacher sees each step (None: no teacher). Runs that share a batch get
        teacher(input) computed once for all of them and handed to `forward_train` as `teacher_out`."""
        return PLAIN if self.teacher is not None else None

    def teacher_out(self, batch: Batch, given: TeacherOut | None) -> TeacherOut:
        """(teacher logits, teacher Features) on `teacher_input()`: the engine's, or computed here."""
        if given is not None:
            return given
        inp = self.teacher_input()
        assert inp is not None and self.teacher is not None, f"{type(self).__name__} has no teacher"
        return teacher_outputs(self.teacher, [inp], batch.x, batch.y, mean_over=self.global_batch_size)[inp]

    def ce_loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """ce_weight · CE(student(x), y), computed in fp32 even under autocast."""
        return self.cfg.ce_weight * F.cross_entropy(at_least_fp32(logits), y)

    @abc.abstractmethod
    def forward_train(self, batch: Batch, epoch: int,
                      teacher_out: TeacherOut | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One training step's forward on a `Batch` (x, y, index, key): (student logits, {loss name: scalar
        tensor}), losses in fp32. `teacher_out`: teacher(teacher_input()) when the engine computed it (read it
        via `teacher_out()`)."""


def paired_stage_shapes(method: str, student: nn.Module, teacher: nn.Module,
                        input_shape: tuple[int, ...]) -> tuple[list[tuple[int, ...]], list[tuple[int, ...]]]:
    """(C, H, W) of each stage output after the stem (`Features.stages[1:]`), student's and teacher's, from
    eval-mode shape probes that leave the run's RNG stream where it was. A pair with different stage counts
    cannot be matched one to one: ConfigError naming the method."""
    with torch.random.fork_rng(devices=[]):
        s_stages = probe_features(student, input_shape)[1].stages[1:]
        t_stages = probe_features(teacher, input_shape)[1].stages[1:]
    if len(s_stages) != len(t_stages) or not s_stages:
        raise ConfigError(f"method={method}: pairs stage outputs one to one, but the teacher has {len(t_stages)} "
                          f"stages and the student {len(s_stages)}; pick models with as many stages")
    return [tuple(f.shape[1:]) for f in s_stages], [tuple(f.shape[1:]) for f in t_stages]


class TermsDistiller(Distiller):
    """A method whose step is the common one: the teacher's outputs on `teacher_input()` (the engine's shared pass, or
    its own), the student's on x, CE, then the method's own `terms` of the two (KD, DKD, DIST, the feature methods, ...).
    Methods that step otherwise (a second view, their own teacher pass, no teacher) implement `forward_train`."""

    @abc.abstractmethod
    def terms(self, student: TeacherOut, teacher: TeacherOut, batch: Batch, epoch: int) -> dict[str, torch.Tensor]:
        """The method's named, weighted loss terms beside CE, from (logits, Features) of the student and the teacher."""

    def forward_train(self, batch: Batch, epoch: int,
                      teacher_out: TeacherOut | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        teacher = self.teacher_out(batch, teacher_out)
        student = self.student(batch.x)
        terms = self.terms(student, teacher, batch, epoch)  # before CE: the order autograd accumulates gradients in
        return student[0], {"ce": self.ce_loss(student[0], batch.y), **terms}


class StagePairs(TermsDistiller):
    """A method whose term compares each stage output after the stem of the student with the teacher's, one to one
    (`Features.stages[1:]`: AT, NST, KDSVD, VID). A pair whose stage counts differ is refused when the method is
    built; `stage_shapes` holds the probed (C, H, W) lists (student's, teacher's) for methods that size extras by
    them. The term is logged under the method's name."""

    def __init__(self, student: nn.Module, teacher: nn.Module | None, cfg: MethodConfig,
                 input_shape: tuple[int, ...] | None = None, data: DataInfo | None = None) -> None:
        super().__init__(student, teacher, cfg, input_shape, data)
        self.stage_shapes = None
        if self.input_shape is not None and teacher is not None:  # an unmatched pair fails at build time
            self.stage_shapes = paired_stage_shapes(cfg.name, student, teacher, self.input_shape)

    @abc.abstractmethod
    def stage_term(self, student_stages: list[torch.Tensor], teacher_stages: list[torch.Tensor]) -> torch.Tensor:
        """The method's weighted term on the paired stage outputs."""

    def terms(self, student: TeacherOut, teacher: TeacherOut, batch: Batch, epoch: int) -> dict[str, torch.Tensor]:
        return {self.cfg.name: self.stage_term(student[1].stages[1:], teacher[1].stages[1:])}
