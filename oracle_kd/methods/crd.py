"""CRD, Contrastive Representation Distillation (Tian, Krishnan, Isola, ICLR 2020), as mdistiller trains it.

The student's and the teacher's pooled features are embedded (Linear → L2 norm, 128-d). A memory bank keeps
one embedding per training sample for each side. For sample i with embeddings s_i, t_i, the positive is bank
entry i and the negatives are K entries of samples of other classes ("exact" mode; "relax" takes the positive
from a random sample of i's class):

    h(v, e) = exp(vᵀe / T) / Z               Z: N · the mean of exp(vᵀe / T) over the first batch, then fixed
    ℓ(h)   = −[log(h⁺ / (h⁺ + K/N + ε)) + Σ_k log((K/N) / (h_k + K/N + ε))] / B     (NCE, noise 1/N, ε 1e-7)
    L      = ce_weight·CE + weight·(ℓ(h(s, bank_t)) + ℓ(h(t, bank_s)))

and after each step bank entry i moves to normalise(m·bank_i + (1 − m)·e_i) on each side (m = 0.5).

Where this differs from the reference, on purpose: the embedding input sizes come from a shape probe (the
reference fixes 256, right only for ResNet8x4/32x4), and the negatives are drawn from the batch's key (a pure
function of seed, epoch and batch) rather than numpy's global state in the dataset's workers, so a resumed,
solo or cohort run draws the same ones. Their distribution is the reference's: uniform over the other classes'
samples, with replacement only when K exceeds their number. The bank and Z are buffers: last.pt carries them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from oracle_kd.core.batch import Batch, DataInfo
from oracle_kd.core.precision import at_least_fp32
from oracle_kd.core.teacher_view import TeacherOut
from oracle_kd.errors import choice, require
from oracle_kd.methods.base import MethodConfig, TermsDistiller, probe_features
from oracle_kd.methods.registry import register_method

MODES = ("exact", "relax")
EPS = 1e-7


@dataclass
class CRDConfig(MethodConfig):
    """mdistiller's CIFAR defaults: CE 1, weight 0.8, 128-d embeddings, K = 16384 negatives, T = 0.07, bank
    momentum 0.5, exact mode."""

    name: str = "crd"
    weight: float = 0.8
    embed_dim: int = 128
    negatives: int = 16384
    temperature: float = 0.07
    momentum: float = 0.5
    mode: str = "exact"

    def validate(self) -> None:
        super().validate()
        require(self.weight >= 0, "method.weight", self.weight, "must be >= 0")
        require(self.embed_dim >= 1, "method.embed_dim", self.embed_dim, "must be >= 1")
        require(self.negatives >= 1, "method.negatives", self.negatives, "must be >= 1")
        require(self.temperature > 0, "method.temperature", self.temperature, "must be > 0")
        require(0 <= self.momentum < 1, "method.momentum", self.momentum, "must be in [0, 1)")
        choice("method.mode", self.mode, MODES)


class Embed(nn.Module):
    """Linear to the embedding size, then L2-normalised (the reference's Embed + Normalize)."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = self.linear(x.reshape(x.shape[0], -1))
        return v / v.pow(2).sum(1, keepdim=True).pow(0.5)


def nce_loss(h: torch.Tensor, num_data: int) -> torch.Tensor:
    """ℓ(h) of the module docstring; h is (B, K + 1) with the positive in column 0."""
    k = h.shape[1] - 1
    noise = k / num_data
    log_pos = torch.log(h[:, 0] / (h[:, 0] + noise + EPS))
    log_neg = torch.log(noise / (h[:, 1:] + noise + EPS))
    return -(log_pos.sum() + log_neg.sum()) / h.shape[0]


def draw_contrast(y: torch.Tensor, index: torch.Tensor, labels: torch.Tensor, k: int, mode: str,
                  generator: torch.Generator) -> torch.Tensor:
    """(B, K + 1) bank indices: the positive (i itself, or a random same-class sample in relax mode), then K
    samples of other classes, uniform, with replacement only for a class with at most K other samples."""
    others = (labels[None, :] != y[:, None]).to(torch.float32)
    counts = others.sum(1)
    neg = torch.empty(len(y), k, dtype=torch.long, device=y.device)
    for replace in (False, True):
        rows = ((counts < k) == replace).nonzero().flatten()
        if len(rows):
            neg[rows] = torch.multinomial(others[rows], k, replacement=replace, generator=generator)
    pos = index[:, None]
    if mode == "relax":
        pos = torch.multinomial(1.0 - others, 1, generator=generator)
    return torch.cat([pos, neg], dim=1)


class ContrastMemory(nn.Module):
    """The two banks (N × D, uniform in ±1/√(D/3) at first, as the reference) and the constants Z."""

    def __init__(self, dim: int, num_data: int, temperature: float, momentum: float) -> None:
        super().__init__()
        self.temperature, self.momentum, self.num_data = temperature, momentum, num_data
        stdv = 1.0 / math.sqrt(dim / 3)
        self.register_buffer("bank_s", torch.rand(num_data, dim).mul_(2 * stdv).add_(-stdv))
        self.register_buffer("bank_t", torch.rand(num_data, dim).mul_(2 * stdv).add_(-stdv))
        self.register_buffer("z", torch.full((2,), -1.0))  # Z for (student, teacher); < 0: not set yet

    def forward(self, s: torch.Tensor, t: torch.Tensor, index: torch.Tensor,
                contrast: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(h(s, bank_t), h(t, bank_s)), then the banks' momentum update at `index`."""
        b, d = s.shape
        w_s = self.bank_s[contrast.flatten()].view(b, -1, d)
        w_t = self.bank_t[contrast.flatten()].view(b, -1, d)
        h_t = torch.exp(torch.bmm(w_s, t.unsqueeze(2)).squeeze(2) / self.temperature)
        h_s = torch.exp(torch.bmm(w_t, s.unsqueeze(2)).squeeze(2) / self.temperature)
        first = torch.stack([h_s.mean(), h_t.mean()]).detach() * self.num_data
        self.z.copy_(torch.where(self.z < 0, first, self.z))  # set on the first batch, with no host sync
        with torch.no_grad():
            for bank, v in ((self.bank_s, s), (self.bank_t, t)):
                moved = bank[index] * self.momentum + v * (1 - self.momentum)
                bank.index_copy_(0, index, moved / moved.pow(2).sum(1, keepdim=True).pow(0.5))
        return h_s / self.z[0], h_t / self.z[1]


@register_method("crd", CRDConfig, paper="Tian, Krishnan, Isola, ICLR 2020", year=2020,
                 code="megvii-research/mdistiller: mdistiller/distillers/CRD.py")
class CRD(TermsDistiller):
    """Contrastive representation distillation on the pooled features; see the module docstring."""

    cfg: CRDConfig
    supports_ddp = False  # the bank spans the training split: each DDP rank would update its own copy

    def __init__(self, student: nn.Module, teacher: nn.Module | None, cfg: CRDConfig,
                 input_shape: tuple[int, ...] | None = None, data: DataInfo | None = None) -> None:
        super().__init__(student, teacher, cfg, input_shape, data)
        if data is None or self.teacher is None:
            raise ValueError("crd sizes its embeddings by a shape probe and its bank by the training split: "
                             "pass data (a DataInfo)")
        with torch.random.fork_rng(devices=[]):  # the probes must not move the run's RNG stream
            s_dim = probe_features(self.student, data.input_shape)[1].pooled.flatten(1).shape[1]
            t_dim = probe_features(self.teacher, data.input_shape)[1].pooled.flatten(1).shape[1]
        device = next(student.parameters()).device
        self.embed_s = Embed(s_dim, cfg.embed_dim).to(device)
        self.embed_t = Embed(t_dim, cfg.embed_dim).to(device)
        self.memory = ContrastMemory(cfg.embed_dim, data.num_train, cfg.temperature, cfg.momentum).to(device)
        self.register_buffer("labels", data.train_labels.to(device), persistent=False)

    def terms(self, student: TeacherOut, teacher: TeacherOut, batch: Batch, epoch: int) -> dict[str, torch.Tensor]:
        if batch.index is None:
            raise ValueError("crd reads each sample's index in the training split: the batch has none")
        contrast = draw_contrast(batch.y, batch.index, self.labels, self.cfg.negatives, self.cfg.mode,
                                 batch.generator())
        with torch.autocast(batch.x.device.type, enabled=False):  # the bank's dot products in fp32 (or fp64)
            s = self.embed_s(at_least_fp32(student[1].pooled))
            t = self.embed_t(at_least_fp32(teacher[1].pooled))
            h_s, h_t = self.memory(s, t, batch.index, contrast)
            crd = nce_loss(h_s, self.memory.num_data) + nce_loss(h_t, self.memory.num_data)
        return {"crd": self.cfg.weight * crd}
