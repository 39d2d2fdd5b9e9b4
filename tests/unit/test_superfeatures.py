"""KED's superfeatures, checked on numbers: the input Hessian of Σ_c log softmax (autograd, ReLU closed form,
finite differences), W = |H| + |H|ᵀ, the Louvain resolution search, and chimeric samples."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from oracle_kd.core.superfeatures import (
    affinity,
    chimeric_indices,
    chimeric_samples,
    input_hessian,
    louvain_partition,
    louvain_search,
    partition_mask,
    relu_input_hessian,
)
from oracle_kd.errors import ConfigError

BLOCKS = [list(range(6 * b, 6 * b + 6)) for b in range(4)]


def mlp(act: type[nn.Module], d: int = 6, hidden: int = 8, classes: int = 4, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, hidden), act(), nn.Linear(hidden, hidden), act(),
                         nn.Linear(hidden, classes)).double().eval()


@torch.no_grad()
def summed_log_probs(model: nn.Module, x: torch.Tensor) -> float:
    return float(torch.log_softmax(model(x.unsqueeze(0)), dim=-1).sum())


def test_relu_closed_form_equals_autograd_hessian():
    model = mlp(nn.ReLU)
    x = torch.randn(5, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    h_auto = input_hessian(model, x, chunk=2)  # chunks of 2, 2, 1: the mean is over samples, not chunks
    h_relu = relu_input_hessian(model, x, chunk=3)
    assert h_auto.shape == (6, 6) and h_auto.abs().max() > 1e-3
    torch.testing.assert_close(h_relu, h_auto, rtol=0, atol=1e-10)
    torch.testing.assert_close(h_auto, h_auto.T, rtol=0, atol=1e-12)


def test_closed_form_by_hand_on_a_linear_model():
    # z = A x + b: J = A for every sample, so H = −C · mean_n Aᵀ (diag p_n − p_n p_nᵀ) A
    torch.manual_seed(2)
    linear = nn.Linear(3, 5).double()
    x = torch.randn(4, 3, dtype=torch.float64)
    a = linear.weight.detach()
    expected = torch.zeros(3, 3, dtype=torch.float64)
    for xn in x:
        p = torch.softmax(linear(xn), dim=0).detach()
        expected += -5 * a.T @ (torch.diag(p) - torch.outer(p, p)) @ a / 4
    torch.testing.assert_close(relu_input_hessian(linear, x), expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(input_hessian(linear, x), expected, rtol=0, atol=1e-12)


def test_autograd_hessian_equals_finite_differences_on_a_smooth_model():
    model = mlp(nn.Tanh, seed=3)
    x = torch.randn(1, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    eps, e = 1e-3, torch.eye(6, dtype=torch.float64)
    f = lambda v: summed_log_probs(model, v)
    fd = torch.tensor([[(f(x[0] + eps * (e[i] + e[j])) - f(x[0] + eps * (e[i] - e[j])) - f(x[0] - eps * (e[i] - e[j]))
                         + f(x[0] - eps * (e[i] + e[j]))) / (4 * eps**2) for j in range(6)] for i in range(6)],
                      dtype=torch.float64)
    h = input_hessian(model, x)
    assert h.abs().max() > 1e-2
    torch.testing.assert_close(h, fd, rtol=0, atol=1e-5)


def test_hessians_accept_models_that_return_logits_and_features():
    model = mlp(nn.ReLU)
    wrapped = lambda x: (model(x), {"features": None})
    x = torch.randn(3, 6, dtype=torch.float64)
    torch.testing.assert_close(relu_input_hessian(wrapped, x), relu_input_hessian(model, x))
    with pytest.raises(ConfigError):
        relu_input_hessian(model, x.to(torch.uint8))


def test_affinity_is_symmetric_nonnegative_with_zero_diagonal():
    h = torch.randn(7, 7, dtype=torch.float64)
    w = affinity(h)
    off = ~torch.eye(7, dtype=torch.bool)
    assert torch.equal(w, w.T) and bool((w >= 0).all()) and bool((w.diagonal() == 0).all())
    assert torch.equal(w[off], (h.abs() + h.abs().T)[off])


def planted(link: float = 0.0, seed: int = 0) -> torch.Tensor:
    """4 blocks of 6 features: intra weights in [0.8, 1.2], random inter weights in [0, 0.05]; `link` joins
    blocks 0-1 and 2-3 into two super-blocks, so a lower resolution finds 2 communities and a higher 4."""
    g = torch.Generator().manual_seed(seed)
    w = torch.rand(24, 24, generator=g, dtype=torch.float64) * 0.05
    w[:12, :12] = w[12:, 12:] = link
    for block in BLOCKS:
        s = slice(block[0], block[-1] + 1)
        w[s, s] = 0.8 + 0.4 * torch.rand(6, 6, generator=g, dtype=torch.float64)
    w = (w + w.T) / 2
    w.fill_diagonal_(0)
    return w


def test_louvain_recovers_planted_blocks_at_resolution_one():
    perm = torch.randperm(24, generator=torch.Generator().manual_seed(5))
    w = planted()[perm][:, perm]  # shuffled features: the answer is still the blocks, in canonical order
    partition, r = louvain_search(w, 4)
    inverse = perm.argsort()
    assert r == 1.0
    assert partition == sorted(sorted(inverse[block].tolist()) for block in BLOCKS)
    assert partition == louvain_partition(w, 4)


@pytest.mark.parametrize("link, groups, moves", [(0.2, 2, "down"), (0.4, 4, "up")])
def test_louvain_search_moves_the_resolution_until_exactly_m(link, groups, moves):
    w = planted(link)
    assert len(louvain_partition(w, groups, max_tries=100)) == groups
    with pytest.raises(ConfigError):  # resolution 1.0 alone gives the other count
        louvain_search(w, groups, max_tries=1)
    partition, r = louvain_search(w, groups)
    assert (r < 1.0) if moves == "down" else (r > 1.0)
    assert abs(round((r - 1.0) / 0.01) * 0.01 - (r - 1.0)) < 1e-9  # a whole number of steps from 1.0
    expected = [BLOCKS[0] + BLOCKS[1], BLOCKS[2] + BLOCKS[3]] if groups == 2 else BLOCKS
    assert partition == expected


def test_a_count_that_jumps_over_m_is_bracketed_by_halving_the_step():
    """Where ±step jumps from too few to too many communities, the search halves the step in that bracket (the
    released code would stop); on 4 planted blocks, 3 communities exist only in a narrow band of resolutions."""
    w = planted()
    partition, r = louvain_search(w, 3)
    assert len(partition) == 3 and sorted(i for g in partition for i in g) == list(range(24))
    assert abs(round((r - 1.0) / 0.01) * 0.01 - (r - 1.0)) > 1e-9  # between two whole steps
    with pytest.raises(ConfigError, match="jumps over 3 between neighbouring resolutions|max_tries"):
        louvain_search(w, 3, max_tries=4)


def test_louvain_partition_is_canonical_and_covers_every_feature():
    w = planted(0.2)
    w[7, :] = w[:, 7] = 0  # an isolated feature is still a node, its own community
    partition = louvain_partition(w, 5)
    assert [7] in partition
    assert partition == sorted(partition) and all(g == sorted(g) for g in partition)
    assert sorted(i for g in partition for i in g) == list(range(24))
    assert partition_mask(partition, 24).sum(dim=0).eq(1).all()


def test_unreachable_counts_raise_one_line():
    w = planted()
    with pytest.raises(ConfigError) as too_many:
        louvain_partition(w, 30)
    with pytest.raises(ConfigError) as short:
        louvain_partition(w, 6, max_tries=3)
    for exc in (too_many, short):
        assert "\n" not in str(exc.value)
    assert "never exactly 6" in str(short.value)
    assert louvain_partition(w, 1) == [list(range(24))]


def test_partition_mask_rejects_gaps_and_overlaps():
    assert partition_mask([[0, 2], [1]], 3).tolist() == [[True, False, True], [False, True, False]]
    for bad in ([[0], [1]], [[0, 1], [1, 2]], [[0, 1, 2], []], [[0, 1, 3]]):
        with pytest.raises(ConfigError):
            partition_mask(bad, 3)


@pytest.mark.parametrize("n, groups, size", [(3, 2, 9), (4, 3, 40), (1000, 4, 500), (60000, 10, 2000)])
def test_chimeric_indices_are_distinct_in_range_and_seeded(n, groups, size):
    donors = chimeric_indices(n, groups, size, torch.Generator().manual_seed(6))
    assert donors.shape == (size, groups) and donors.dtype == torch.int64
    assert bool((donors >= 0).all()) and bool((donors < n).all())
    assert torch.unique(donors, dim=0).shape[0] == size
    assert torch.equal(donors, chimeric_indices(n, groups, size, torch.Generator().manual_seed(6)))
    assert not torch.equal(donors, chimeric_indices(n, groups, size, torch.Generator().manual_seed(7)))


def test_chimeric_indices_are_uniform_per_group():
    # each of the 10 donors should serve each group about 5000 / 10 = 500 times (σ ≈ 21)
    donors = chimeric_indices(10, 8, 5000, torch.Generator().manual_seed(8))
    counts = torch.stack([torch.bincount(col, minlength=10) for col in donors.T])
    assert int(counts.min()) > 400 and int(counts.max()) < 600


def test_chimeric_indices_refuse_more_rows_than_tuples():
    assert chimeric_indices(2, 3, 8, torch.Generator()).unique(dim=0).shape[0] == 8
    with pytest.raises(ConfigError) as exc:
        chimeric_indices(2, 3, 9, torch.Generator())
    assert "2**3 = 8" in str(exc.value)
    assert chimeric_indices(5, 2, 0, torch.Generator()).shape == (0, 2)


def test_chimeric_samples_take_each_group_from_its_donor():
    x = torch.randint(0, 256, (7, 10), dtype=torch.uint8, generator=torch.Generator().manual_seed(9))
    partition = [[0, 3, 9], [1, 2], [4, 5, 6, 7, 8]]
    donors = chimeric_indices(7, 3, 20, torch.Generator().manual_seed(10))
    out = chimeric_samples(x, partition, donors)
    assert out.shape == (20, 10) and out.dtype == torch.uint8
    covered = torch.zeros(10, dtype=torch.int64)
    for i, group in enumerate(partition):
        assert torch.equal(out[:, group], x[donors[:, i]][:, group])
        covered[group] += 1
    assert covered.eq(1).all()
    same = chimeric_samples(x, partition, torch.tensor([[4, 4, 4]]))
    assert torch.equal(same[0], x[4])  # one donor for every group gives that sample back
    with pytest.raises(ConfigError):
        chimeric_samples(x, partition, torch.tensor([[0, 7, 1]]))
    with pytest.raises(ConfigError):
        chimeric_samples(x, partition[:2], donors[:, :2])
