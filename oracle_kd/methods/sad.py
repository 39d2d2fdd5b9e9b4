"""Show, Attend and Distill (Ji, Heo, Park, AAAI 2021): every teacher layer learns, by attention, which
student layers should match its spatial energy map. Follows the authors' code (clovaai
attention-feature-distillation) where the paper leaves a detail open."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from oracle_kd.core.batch import Batch, DataInfo
from oracle_kd.core.features import Features
from oracle_kd.core.losses import attention_map, kd_loss, pool_to
from oracle_kd.core.precision import at_least_fp32
from oracle_kd.core.teacher_view import TeacherOut
from oracle_kd.errors import require
from oracle_kd.methods.base import TermsDistiller, probe_features
from oracle_kd.methods.kd import KDConfig
from oracle_kd.methods.registry import register_method

HALVED_BLOCK_COUNT = 54  # resnet110: the reference distils every second block (its LAYER table)


@dataclass
class SADConfig(KDConfig):
    """L = ce_weight·CE + alpha·KD(τ) + beta·SAD; the released CIFAR-100 defaults α 0.9, τ 4, β 200, d 128. SAD's
    value is a mean over positions of unit-norm maps (1/P): beta is rescaled on inputs under 32 px."""

    SIZE_SCALED = {"beta": 1}

    name: str = "sad"
    alpha: float = 0.9
    temperature: float = 4.0
    beta: float = 200.0
    dim: int = 128

    def validate(self) -> None:
        super().validate()
        require(self.beta >= 0, "method.beta", self.beta, "must be >= 0")
        require(self.dim >= 1, "method.dim", self.dim, "must be >= 1")


def sad_layers(features: Features) -> list[torch.Tensor]:
    """The candidate layers: every residual block's output (no stem, no pooled vector). A 54-block model
    (resnet110) keeps blocks[1::2] — the 2nd, 4th, ..., last — as the reference does, so its 27 layers
    cost what resnet56's do."""
    blocks = list(features.blocks)
    return blocks[1::2] if len(blocks) == HALVED_BLOCK_COUNT else blocks


def _linear_bn(n_in: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, n_out), nn.BatchNorm1d(n_out))


class LayerAttention(nn.Module):
    """Queries from teacher layers, one key per (student, teacher) pair, and the SAD loss they weight.

    Everything runs in fp32 with autocast off: the logits are scaled dot products of 128-d vectors and the
    values are unit vectors whose squared differences are tiny, both of which bf16 would blur.
    """

    def __init__(self, s_channels: list[int], t_channels: list[int], dim: int) -> None:
        super().__init__()
        self.dim = dim
        n_t, n_s = len(t_channels), len(s_channels)
        self.query = nn.ModuleList(_linear_bn(c, dim) for c in t_channels)
        self.key = nn.ModuleList(nn.Sequential(_linear_bn(c, dim), nn.ReLU()) for c in s_channels)
        self.pair_key = _linear_bn(dim, dim * n_t)  # shared across student layers: key[s] → T keys
        self.p_t = nn.Parameter(torch.empty(n_t, dim))
        self.p_s = nn.Parameter(torch.empty(n_s, dim))
        nn.init.xavier_normal_(self.p_t)
        nn.init.xavier_normal_(self.p_s)

    def queries(self, t_pooled: list[torch.Tensor]) -> torch.Tensor:
        """(B, C_t) global-average-pooled teacher features, one per layer → (B, T, d)."""
        return torch.stack([q(f) for q, f in zip(self.query, t_pooled)], dim=1)

    def keys(self, s_pooled: list[torch.Tensor]) -> torch.Tensor:
        """(B, C_s) pooled student features, one per layer → (B, S, T, d): key[b, s, t] pairs s with t."""
        k = torch.stack([key(f) for key, f in zip(self.key, s_pooled)], dim=1)  # (B, S, d)
        b, n_s, d = k.shape
        return self.pair_key(k.reshape(b * n_s, d)).view(b, n_s, len(self.query), d)

    def attention(self, s_layers: list[torch.Tensor], t_layers: list[torch.Tensor]) -> torch.Tensor:
        """softmax over student layers of (key·query + p_t·p_s)/√d → (B, T, S)."""
        q = self.queries([f.mean(dim=(2, 3)) for f in t_layers])
        k = self.keys([f.mean(dim=(2, 3)) for f in s_layers])
        logits = torch.einsum("bstd,btd->bts", k, q) + self.p_t @ self.p_s.t()
        return F.softmax(logits / math.sqrt(self.dim), dim=2)

    def forward(self, s_layers: list[torch.Tensor], t_layers: list[torch.Tensor]) -> torch.Tensor:
        """Σ_t mean_b Σ_s att[b,t,s]·mean_HW((v_s − v_t)²), unweighted by beta."""
        with torch.autocast(t_layers[0].device.type, enabled=False):
            s_layers = [at_least_fp32(f) for f in s_layers]
            t_layers = [at_least_fp32(f) for f in t_layers]
            att = self.attention(s_layers, t_layers)
            # Channel-mean energy per student layer. The reference pools this map (not the features) to the
            # teacher's size and then normalizes; pooling commutes with the channel mean, so
            # attention_map(pool_to(energy), p=1) is exactly that.
            energy = [f.pow(2).mean(dim=1, keepdim=True) for f in s_layers]
            s_values: dict[tuple[int, int], torch.Tensor] = {}  # one (B, S, H·W) stack per teacher size
            loss = att.new_zeros(())
            for i, f_t in enumerate(t_layers):
                size = (f_t.shape[-2], f_t.shape[-1])
                if size not in s_values:
                    s_values[size] = torch.stack([attention_map(pool_to(e, size), 1) for e in energy], dim=1)
                diff = (s_values[size] - attention_map(f_t, 2).unsqueeze(1)).pow(2).mean(dim=2)  # (B, S)
                loss = loss + (att[:, i] * diff).sum(dim=1).mean()
            return loss


@register_method("sad", SADConfig, paper="Ji, Heo, Park, AAAI 2021", year=2021,
                 code="clovaai/attention-feature-distillation: distill/AFD.py")
class SAD(TermsDistiller):
    """CE + Hinton KD + attention-weighted matching of all block outputs. The attention module trains with
    the student's optimizer and is not part of the saved student."""

    cfg: SADConfig

    def __init__(self, student: nn.Module, teacher: nn.Module | None, cfg: SADConfig,
                 input_shape: tuple[int, ...] | None = None, data: DataInfo | None = None) -> None:
        super().__init__(student, teacher, cfg, input_shape, data)
        input_shape = self.input_shape
        if input_shape is None:
            raise ValueError("sad sizes its query/key layers from a shape probe: pass input_shape")
        # eval-mode probes: a train-mode forward would move the teacher's BN running statistics
        t_layers = sad_layers(probe_features(self.teacher, input_shape)[1])
        s_layers = sad_layers(probe_features(self.student, input_shape)[1])
        require(bool(t_layers) and bool(s_layers), "method", cfg.name, "needs models that report Features.blocks")
        self.attention = LayerAttention([f.shape[1] for f in s_layers], [f.shape[1] for f in t_layers],
                                        cfg.dim).to(next(student.parameters()).device)

    def terms(self, student: TeacherOut, teacher: TeacherOut, batch: Batch, epoch: int) -> dict[str, torch.Tensor]:
        return {"kd": self.cfg.alpha * kd_loss(student[0], teacher[0], self.cfg.temperature),
                "sad": self.cfg.beta * self.attention(sad_layers(student[1]), sad_layers(teacher[1]))}
