"""DIST, TTM/WTTM and NKD: each equation on numbers worked out by hand, each loss against an independent float64
computation written from the paper and the official code's formula, the invariances that define each method, and
each method's terms as the functions times the configured weights."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from oracle_kd.core.batch import Batch
from oracle_kd.errors import ConfigError
from oracle_kd.methods import build_distiller, kd_loss
from oracle_kd.methods.dist import EPS, DISTConfig, dist_terms, pearson_rows
from oracle_kd.methods.nkd import NKDConfig, nkd_terms
from oracle_kd.methods.wttm import WTTMConfig, transformed_teacher, ttm_per_sample, wttm_loss

D = torch.float64


def _logits_of(probs: list[list[float]], temperature: float = 1.0) -> torch.Tensor:
    """Logits whose softmax at `temperature` is `probs` (τ·log p)."""
    return temperature * torch.tensor(probs, dtype=D).log()


def _random(shape: tuple[int, int], seed: int, scale: float = 3.0) -> torch.Tensor:
    return scale * torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=D)


def _step_of(cfg, tiny_net, classes: int = 5) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor,
                                                       torch.Tensor]:
    """One forward_train of `cfg` on the tiny nets: (terms, student logits, teacher logits, labels)."""
    student, teacher = tiny_net(num_classes=classes, seed=0), tiny_net(num_classes=classes, seed=1)
    x = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    d = build_distiller(cfg, student, teacher, (1, 8, 8))
    logits, terms = d.forward_train(Batch(x, y), epoch=1)
    with torch.no_grad():
        t_logits = teacher(x)[0]
    torch.testing.assert_close(logits, student(x)[0])  # train-mode BN: the same batch gives the same logits
    return terms, logits.detach(), t_logits, y


# ================================================================ DIST

S_ROWS = [[0.5, 0.25, 0.25], [0.25, 0.5, 0.25]]
T_ROWS = [[0.25, 0.5, 0.25], [0.5, 0.25, 0.25]]


def test_pearson_by_hand():
    # a = (.5, .25, .25), b = (.25, .5, .25): centred (1/6, −1/12, −1/12) and (−1/12, 1/6, −1/12);
    # a·b = −1/48 and |a|·|b| = 6/144 = 1/24, so ρ = (−1/48) / (1/24 + eps) ≈ −1/2
    rho = pearson_rows(torch.tensor(S_ROWS[:1], dtype=D), torch.tensor(T_ROWS[:1], dtype=D))
    assert rho.item() == pytest.approx((-1 / 48) / (1 / 24 + EPS), rel=1e-12)
    same = pearson_rows(torch.tensor(S_ROWS, dtype=D), torch.tensor(S_ROWS, dtype=D))
    torch.testing.assert_close(same, torch.full((2,), (1 / 24) / (1 / 24 + EPS), dtype=D), rtol=1e-12, atol=0)


def test_pearson_keeps_the_reference_eps_placement():
    # eps is added to |a|·|b|: with |a|·|b| = eps exactly, ρ is half the cosine (here 1 → 0.5); a constant row
    # gives 0/(0 + eps) = 0, not NaN
    x = math.sqrt(5e-9)  # a = b = (x, −x): |a|·|b| = 2x² = 1e-8
    a = torch.tensor([[x, -x]], dtype=D)
    assert pearson_rows(a, a).item() == pytest.approx(0.5, rel=1e-12)
    flat = torch.tensor([[0.25, 0.25, 0.25]], dtype=D)  # its mean is exact
    assert pearson_rows(flat, torch.tensor([[0.1, 0.3, 0.6]], dtype=D)).item() == 0.0


@pytest.mark.parametrize("tau", [1.0, 4.0])
def test_dist_terms_by_hand(tau):
    # rows: ρ ≈ −1/2 for both samples (above), inter = τ²·(1 + 1/2). Columns over the 2 samples: class 0 goes
    # .5 → .25 for the student and .25 → .5 for the teacher, centred (1/8, −1/8) and (−1/8, 1/8): a·b = −1/32,
    # |a|·|b| = 1/32, ρ ≈ −1; class 1 likewise; class 2 does not vary (ρ = 0): intra = τ²·(1 + 2/3)
    rho_row = (-1 / 48) / (1 / 24 + EPS)
    rho_col = (-1 / 32) / (1 / 32 + EPS)
    inter, intra = dist_terms(_logits_of(S_ROWS, tau), _logits_of(T_ROWS, tau), tau)
    assert inter.item() == pytest.approx(tau**2 * (1 - rho_row), rel=1e-12)
    assert intra.item() == pytest.approx(tau**2 * (1 - 2 * rho_col / 3), rel=1e-12)


def _reference_dist(s: torch.Tensor, t: torch.Tensor, tau: float, beta: float, gamma: float) -> float:
    """The official formula in plain float64 Python: Pearson = Σ(a−ā)(b−b̄) / (√Σ(a−ā)²·√Σ(b−b̄)² + 1e-8),
    averaged over the samples (inter) and over the classes (intra), each term 1 − mean ρ, times τ²."""
    def probs(z):
        rows = []
        for row in z.tolist():
            e = [math.exp(v / tau - max(row) / tau) for v in row]
            rows.append([v / sum(e) for v in e])
        return rows

    def rho(a, b):
        ma, mb = sum(a) / len(a), sum(b) / len(b)
        num = sum((u - ma) * (v - mb) for u, v in zip(a, b))
        den = math.sqrt(sum((u - ma) ** 2 for u in a)) * math.sqrt(sum((v - mb) ** 2 for v in b)) + 1e-8
        return num / den

    ys, yt = probs(s), probs(t)
    inter = 1 - sum(rho(a, b) for a, b in zip(ys, yt)) / len(ys)
    cols_s, cols_t = list(zip(*ys)), list(zip(*yt))
    intra = 1 - sum(rho(a, b) for a, b in zip(cols_s, cols_t)) / len(cols_s)
    return tau**2 * (beta * inter + gamma * intra)


@pytest.mark.parametrize("tau", [1.0, 4.0])
def test_dist_matches_the_reference_formula(tau):
    s, t = _random((6, 5), 0), _random((6, 5), 1)
    inter, intra = dist_terms(s, t, tau)
    assert inter.dtype == D  # an fp64 run stays fp64
    assert (1.0 * inter + 2.0 * intra).item() == pytest.approx(_reference_dist(s, t, tau, 1.0, 2.0), rel=1e-10)
    # in fp32: within a few fp32 ulps of O(1) numbers
    inter32, intra32 = dist_terms(s.float(), t.float(), tau)
    assert inter32.dtype == torch.float32
    torch.testing.assert_close((inter32.double(), intra32.double()), (inter, intra), rtol=1e-5, atol=1e-6)


def test_dist_asks_for_relations_not_values():
    # a student whose probabilities are the teacher's mixed half-half with the uniform distribution is a positive
    # affine map of them, row by row and column by column: both relations are perfect, ρ = n / (n + eps) with
    # n = |a|·|b| of the centred vectors, so each term is τ²·mean eps / (n + eps), zero but for eps; KD sees a gap
    t, tau, classes = _random((5, 7), 2), 4.0, 7
    y_t = torch.softmax(t / tau, dim=1)
    s = tau * (0.5 * y_t + 0.5 / classes).log()
    y_s = torch.softmax(s / tau, dim=1)

    def only_eps(a: torch.Tensor, b: torch.Tensor) -> float:
        n = (a - a.mean(1, keepdim=True)).norm(dim=1) * (b - b.mean(1, keepdim=True)).norm(dim=1)
        return tau**2 * (EPS / (n + EPS)).mean().item()

    inter, intra = dist_terms(s, t, tau)
    # 1 − ρ (~1e-7) is formed from numbers near 1: fp64 keeps it to ~1e-16 / 1e-7 = 1e-9 relative
    assert inter.item() == pytest.approx(only_eps(y_s, y_t), rel=1e-8)
    assert intra.item() == pytest.approx(only_eps(y_s.t(), y_t.t()), rel=1e-8)
    assert max(inter.item(), intra.item()) < 1e-4 and kd_loss(s, t, tau).item() > 0.01
    # ρ itself ignores any positive scale and shift of either side
    a, b = _random((3, 6), 3), _random((3, 6), 4)
    torch.testing.assert_close(pearson_rows(2.5 * a + 7.0, b), pearson_rows(a, b), rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(pearson_rows(-a, b), -pearson_rows(a, b))  # a negative scale flips it


def test_dist_is_symmetric_and_bounded():
    s, t = _random((4, 6), 5), _random((4, 6), 6)
    torch.testing.assert_close(dist_terms(s, t, 4.0), dist_terms(t, s, 4.0))
    for term in dist_terms(s, t, 4.0):  # 1 − ρ lies in [0, 2]
        assert 0.0 <= term.item() <= 2 * 16.0
    # one sample: the intra term has no variation to match (ρ = 0), so it is τ²
    assert dist_terms(s[:1], t[:1], 4.0)[1].item() == pytest.approx(16.0, rel=1e-12)


def test_dist_method_terms_are_the_functions_times_the_weights(tiny_net):
    cfg = DISTConfig(ce_weight=0.5, kd_weight=2.0, beta=3.0, gamma=0.25, temperature=4.0)
    terms, s, t, y = _step_of(cfg, tiny_net)
    inter, intra = dist_terms(s, t, 4.0)
    assert set(terms) == {"ce", "inter", "intra"}
    torch.testing.assert_close(terms["ce"], 0.5 * F.cross_entropy(s, y))
    torch.testing.assert_close(terms["inter"], 2.0 * 3.0 * inter)
    torch.testing.assert_close(terms["intra"], 2.0 * 0.25 * intra)


# ================================================================ TTM / WTTM

def test_the_transformed_teacher_by_hand():
    # p = (.8, .2), γ = 1/2: p^γ = (2/√5, 1/√5), U = 3/√5, q = (2/3, 1/3)
    log_q, u = transformed_teacher(_logits_of([[0.8, 0.2]]), 0.5)
    torch.testing.assert_close(log_q.exp(), torch.tensor([[2 / 3, 1 / 3]], dtype=D))
    assert u.item() == pytest.approx(3 / math.sqrt(5), rel=1e-12)


def test_ttm_and_wttm_by_hand():
    # sample 1: teacher (.8, .2) → q = (2/3, 1/3), U = 3/√5; student (.5, .5): KL = 2/3·ln(4/3) + 1/3·ln(2/3)
    # sample 2: teacher (.5, .5) → q = (.5, .5), U = 2·.5^½ = √2; student (.75, .25): KL = ½·ln(2/3) + ½·ln 2
    t = _logits_of([[0.8, 0.2], [0.5, 0.5]])
    s = _logits_of([[0.5, 0.5], [0.75, 0.25]])
    kl1 = 2 / 3 * math.log(4 / 3) + 1 / 3 * math.log(2 / 3)
    kl2 = 0.5 * math.log(2 / 3) + 0.5 * math.log(2)
    assert wttm_loss(s, t, 0.5, weighted=False).item() == pytest.approx((kl1 + kl2) / 2, rel=1e-12)
    assert wttm_loss(s, t, 0.5).item() == pytest.approx((3 / math.sqrt(5) * kl1 + math.sqrt(2) * kl2) / 2, rel=1e-12)


def _reference_wttm(s: torch.Tensor, t: torch.Tensor, gamma: float, weighted: bool) -> torch.Tensor:
    """The official computation in float64: p_t^γ by pow, its row sums as the weights, renormalise, KL against the
    student's log_softmax summed over classes, the batch mean (of weight·KL for WTTM)."""
    powered = torch.softmax(t, dim=1) ** gamma
    norm = powered.sum(dim=1)
    q = powered / norm[:, None]
    kl = (q * (q.log() - torch.log_softmax(s, dim=1))).sum(dim=1)
    return (norm * kl).mean() if weighted else kl.mean()


@pytest.mark.parametrize("gamma", [0.1, 0.5, 2.0])
@pytest.mark.parametrize("weighted", [True, False], ids=["wttm", "ttm"])
def test_wttm_matches_the_reference_formula(gamma, weighted):
    s, t = _random((6, 10), 7), _random((6, 10), 8)
    ours = wttm_loss(s, t, gamma, weighted)
    assert ours.dtype == D
    torch.testing.assert_close(ours, _reference_wttm(s, t, gamma, weighted), rtol=1e-10, atol=0)
    ours32 = wttm_loss(s.float(), t.float(), gamma, weighted)
    assert ours32.dtype == torch.float32  # fp32 log-probabilities: a few ulps of the O(1)–O(10) loss
    torch.testing.assert_close(ours32.double(), ours, rtol=1e-5, atol=1e-6)


def test_ttm_is_kd_without_the_student_temperature():
    # q = softmax(γ·z_t) is the teacher at T = 1/γ; Hinton's τ²·KL(softmax(t/τ) ‖ softmax(s/τ)) with s replaced by
    # τ·s (so the student is not softened) and the τ² removed is TTM
    s, t, gamma = _random((5, 8), 9), _random((5, 8), 10), 0.25
    tau = 1 / gamma
    torch.testing.assert_close(wttm_loss(s, t, gamma, weighted=False), kd_loss(tau * s, t, tau) / tau**2)


def test_wttm_weight_grows_with_the_teachers_uncertainty():
    # U = Σ p^γ: 1 for a one-hot teacher, C^(1−γ) for a uniform one (γ < 1); γ = 1 makes WTTM = TTM = KL(p_t ‖ p_s)
    classes, gamma = 10, 0.2
    one_hot = 1e4 * F.one_hot(torch.tensor([3]), classes).to(D)
    uniform = torch.zeros(1, classes, dtype=D)
    assert transformed_teacher(one_hot, gamma)[1].item() == pytest.approx(1.0, rel=1e-12)
    assert transformed_teacher(uniform, gamma)[1].item() == pytest.approx(classes ** (1 - gamma), rel=1e-12)
    s, t = _random((4, classes), 11), _random((4, classes), 12)
    torch.testing.assert_close(wttm_loss(s, t, 1.0), wttm_loss(s, t, 1.0, weighted=False))
    torch.testing.assert_close(wttm_loss(s, t, 1.0), kd_loss(s, t, 1.0))


def test_wttm_is_zero_at_the_transformed_teacher_and_positive_elsewhere():
    # the student's softmax equals q when its logits are γ·z_t plus any per-sample constant
    t, gamma = _random((4, 6), 13), 0.3
    shift = _random((4, 1), 14)
    assert wttm_loss(gamma * t + shift, t, gamma).item() == pytest.approx(0.0, abs=1e-12)
    kl, _ = ttm_per_sample(_random((4, 6), 15), t, gamma)
    assert (kl > 0).all()
    # finite on a one-hot teacher (q has underflowed classes) and a confident student
    hot = 1e4 * F.one_hot(torch.tensor([1, 2]), 6).float()
    assert torch.isfinite(wttm_loss(hot.flip(1), hot, gamma))


@pytest.mark.parametrize("weighted", [True, False], ids=["wttm", "ttm"])
def test_wttm_method_terms_are_the_functions_times_the_weights(tiny_net, weighted):
    cfg = WTTMConfig(ce_weight=0.5, beta=3.0, gamma=0.2, weighted=weighted)
    terms, s, t, y = _step_of(cfg, tiny_net)
    name = "wttm" if weighted else "ttm"
    assert set(terms) == {"ce", name}
    torch.testing.assert_close(terms["ce"], 0.5 * F.cross_entropy(s, y))
    torch.testing.assert_close(terms[name], 3.0 * wttm_loss(s, t, 0.2, weighted))


def test_the_ttm_preset_is_the_readme_run():
    from oracle_kd.cli import compose

    m = compose(["method=ttm"]).method
    assert isinstance(m, WTTMConfig) and (m.weighted, m.gamma, m.beta, m.ce_weight) == (False, 0.1, 45.0, 1.0)


# ================================================================ NKD

def test_nkd_terms_by_hand():
    # T = 2. Sample 1, y = 0: teacher (2, 1, 1)/4 → p_t[y] = ½; student uniform → log p_s[y] = −ln 3; the non-target
    # logits (0, 0) of both are uniform → soft CE = ln 2.
    # Sample 2, y = 1: teacher logits (0, ln 5, 2 ln 2) → p = (1, 5, 4)/10, p_t[y] = ½, non-target (0, 2 ln 2)/T →
    # (1/3, 2/3); student (0, 0, 2 ln 3) → p = (1, 1, 9)/11, non-target (0, 2 ln 3)/T → (1/4, 3/4):
    # soft CE = −(1/3·ln ¼ + 2/3·ln ¾).
    t = torch.tensor([[math.log(2), 0.0, 0.0], [0.0, math.log(5), 2 * math.log(2)]], dtype=D)
    s = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 2 * math.log(3)]], dtype=D)
    y = torch.tensor([0, 1])
    target, non_target = nkd_terms(s, t, y, 2.0)
    assert target.item() == pytest.approx((0.5 * math.log(3) + 0.5 * math.log(11)) / 2, rel=1e-12)
    ce2 = -(1 / 3 * math.log(1 / 4) + 2 / 3 * math.log(3 / 4))
    assert non_target.item() == pytest.approx(4.0 * (math.log(2) + ce2) / 2, rel=1e-12)


def _reference_nkd(s: torch.Tensor, t: torch.Tensor, y: torch.Tensor, temp: float, gamma: float) -> torch.Tensor:
    """The official computation in float64: the target entries of log_softmax(s) and softmax(t) at T = 1; then a
    boolean mask that drops each row's target, the kept logits reshaped to (N, C − 1), log_softmax/softmax at T,
    −mean over samples of Σ_c q_t·log q_s times γ·T²."""
    n, c = s.shape
    label = y.view(-1, 1)
    loss_t = -(torch.softmax(t, 1).gather(1, label) * torch.log_softmax(s, 1).gather(1, label)).mean()
    keep = torch.ones(n, c, dtype=torch.bool).scatter(1, label, False)
    s_non, t_non = s[keep].reshape(n, c - 1), t[keep].reshape(n, c - 1)
    loss_non = -(torch.softmax(t_non / temp, 1) * torch.log_softmax(s_non / temp, 1)).sum(1).mean()
    return loss_t + gamma * temp**2 * loss_non


@pytest.mark.parametrize("temp, gamma", [(1.0, 1.5), (3.0, 3.5)])
def test_nkd_matches_the_reference_formula(temp, gamma):
    s, t = _random((8, 10), 16), _random((8, 10), 17)
    y = torch.randint(0, 10, (8,), generator=torch.Generator().manual_seed(18))
    target, non_target = nkd_terms(s, t, y, temp)
    assert target.dtype == non_target.dtype == D
    torch.testing.assert_close(target + gamma * non_target, _reference_nkd(s, t, y, temp, gamma), rtol=1e-10, atol=0)
    t32, n32 = nkd_terms(s.float(), t.float(), y, temp)
    assert t32.dtype == n32.dtype == torch.float32  # a few fp32 ulps of O(1)–O(10) numbers
    torch.testing.assert_close((t32.double(), n32.double()), (target, non_target), rtol=1e-5, atol=1e-6)


def test_nkd_non_target_part_leaves_out_the_target_class():
    # the normalised non-target term does not see either side's target logit (the SDD copy's mask keeps it)
    s, t, y = _random((5, 6), 19), _random((5, 6), 20), torch.tensor([0, 1, 2, 3, 5])
    bump = 10.0 * F.one_hot(y, 6).to(D)
    assert nkd_terms(s + bump, t - bump, y, 3.0)[1].item() == pytest.approx(nkd_terms(s, t, y, 3.0)[1].item(),
                                                                          rel=1e-12)
    # ... and a per-sample constant added to every logit changes neither term
    shift = _random((5, 1), 21)
    torch.testing.assert_close(nkd_terms(s + shift, t, y, 3.0), nkd_terms(s, t, y, 3.0))


def test_nkd_minimum_is_at_the_teachers_non_target_distribution():
    # a soft cross-entropy: at student == teacher it is T²·H(q_t) (not 0), and any other student's non-target
    # logits give more (Gibbs' inequality)
    t, y, temp = _random((4, 5), 22), torch.tensor([4, 3, 2, 1]), 3.0
    _, at_teacher = nkd_terms(t, t, y, temp)
    keep = torch.ones(4, 5, dtype=torch.bool).scatter(1, y.view(-1, 1), False)
    q = torch.softmax(t[keep].reshape(4, 4) / temp, dim=1)
    entropy = -(q * q.log()).sum(dim=1).mean()
    assert at_teacher.item() == pytest.approx(temp**2 * entropy.item(), rel=1e-12)
    for seed in range(23, 28):
        assert nkd_terms(_random((4, 5), seed), t, y, temp)[1].item() > at_teacher.item()
    # the target term −p_t[y]·log p_s[y] falls as the student grows surer of the label, whatever the teacher says
    sure = t + 5.0 * F.one_hot(y, 5).to(D)
    assert nkd_terms(sure, t, y, temp)[0].item() < nkd_terms(t, t, y, temp)[0].item()


def test_nkd_is_finite_for_confident_predictions():
    # one log_softmax per log-probability: no log(0) when a probability underflows (NaN otherwise)
    y = torch.tensor([0, 1, 2])
    hot = 1e4 * F.one_hot(y, 4).float()
    s = (1e4 * F.one_hot((y + 1) % 4, 4).float()).requires_grad_(True)  # sure of a wrong class
    target, non_target = nkd_terms(s, hot, y, 1.0)
    (target + 1.5 * non_target).backward()
    assert torch.isfinite(target) and torch.isfinite(non_target) and torch.isfinite(s.grad).all()


def test_nkd_method_terms_are_the_functions_times_the_weights(tiny_net):
    cfg = NKDConfig(ce_weight=0.5, gamma=1.5, temperature=2.0)
    terms, s, t, y = _step_of(cfg, tiny_net)
    target, non_target = nkd_terms(s, t, y, 2.0)
    assert set(terms) == {"ce", "target", "non_target"}
    torch.testing.assert_close(terms["ce"], 0.5 * F.cross_entropy(s, y))
    torch.testing.assert_close(terms["target"], target)
    torch.testing.assert_close(terms["non_target"], 1.5 * non_target)



def test_the_sdd_copy_option_keeps_the_target_in_the_second_term_and_ramps_both(tiny_net):
    """SDD-CVPR2024's copy: its mask scatters 1, so its "non-target" softmax runs over every class; both terms are
    scaled by min(epoch/20, 1). The option reproduces that formula (float64), and method=nkd_sdd its fixed values."""
    from oracle_kd.cli import compose

    s, t = _random((8, 10), 21), _random((8, 10), 22)
    y = torch.randint(0, 10, (8,), generator=torch.Generator().manual_seed(23))
    target, every_class = nkd_terms(s, t, y, 1.0, keep_target=True)
    label = y.view(-1, 1)
    want_t = -(torch.softmax(t, 1).gather(1, label) * torch.log_softmax(s, 1).gather(1, label)).mean()
    want_non = -(torch.softmax(t, 1) * torch.log_softmax(s, 1)).sum(1).mean()  # the whole row: target kept
    torch.testing.assert_close((target, every_class), (want_t, want_non), rtol=1e-12, atol=0)
    assert every_class.item() != pytest.approx(nkd_terms(s, t, y, 1.0)[1].item(), rel=1e-3)
    cfg = compose(["method=nkd_sdd"]).method
    assert (cfg.keep_target, cfg.warmup, cfg.temperature, cfg.gamma) == (True, 20, 1.0, 1.5)
    terms, s, t, y = _step_of(cfg, tiny_net)
    target, every_class = nkd_terms(s, t, y, 1.0, keep_target=True)
    torch.testing.assert_close(terms["target"], target / 20)  # epoch 1 of a 20-epoch warm-up
    torch.testing.assert_close(terms["non_target"], 1.5 * every_class / 20)

# ================================================================ configs

@pytest.mark.parametrize("cfg, needle", [
    (DISTConfig(temperature=0.0), "method.temperature"),
    (DISTConfig(gamma=-1.0), "method.gamma"),
    (DISTConfig(kd_weight=-1.0), "method.kd_weight"),
    (WTTMConfig(gamma=0.0), "method.gamma"),
    (WTTMConfig(beta=-1.0), "method.beta"),
    (NKDConfig(temperature=-1.0), "method.temperature"),
    (NKDConfig(gamma=-0.5), "method.gamma"),
])
def test_bad_values_are_one_line_errors(cfg, needle):
    with pytest.raises(ConfigError, match=needle) as err:
        cfg.validate()
    assert "\n" not in str(err.value)
